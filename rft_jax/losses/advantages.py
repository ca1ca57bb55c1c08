"""Advantage transforms: how the learning signal of each sequence is made from its reward.

Baselines (raw_reward, group_mean, leave_one_out, history_baseline) set `terms.advantages` from
`terms.rewards`; scalings (group_std, batch_std) divide the advantages set before them;
`baseline_only` picks the rollouts that carry the gradient. All of them honour a precomputed
`batch.advantages` (set by `accumulate` over the whole batch): they then pass it through unchanged
and leave any state alone, so a micro-batch sees exactly the whole batch's advantages.

Groups are given by `batch.group_ids` (any integers; rollouts of one prompt share one). Group
statistics use a [B, B] same-group matrix: exact for any id values, cheap for RL batch sizes
(element-wise sums, not matmuls, so TPU default matmul precision cannot round the rewards).
"""

from __future__ import annotations

import jax.numpy as jnp

from rft_jax.losses.base import LossTransform, advantages_given, require_advantages, stateless


def _given(terms, batch):
  return terms.replace(advantages=batch.advantages.astype(terms.logp.dtype))


def _same_group(ids, dtype):
  return (ids[:, None] == ids[None, :]).astype(dtype)


def _rank_in_group(ids):
  """[B] int: how many earlier rows (in batch order) share the row's group."""
  b = ids.shape[0]
  earlier = jnp.arange(b)[None, :] < jnp.arange(b)[:, None]
  return jnp.sum((ids[:, None] == ids[None, :]) & earlier, axis=1)


def _group_offsets(r, same):
  """Per row [B]: group size n, reference ref (the group's smallest reward) and the sum of the
  group's offsets from it; the group mean is ref + offsets / n.

  Summed as offsets from the reference, a group of equal rewards has exactly that reward as its
  mean (in float32, sum / n is not always the value: 7 x 0.7 gives a mean one rounding unit
  away, which GRPO's std scaling turns into an advantage of 0.06). With {0, 1} rewards the
  reference is 0 unless the group is all ones, so the mean is k / n exactly as before.
  """
  n = jnp.sum(same, axis=1)
  ref = jnp.min(jnp.where(same > 0, r[None, :], jnp.inf), axis=1)
  offsets = jnp.sum(same * (r[None, :] - ref[:, None]), axis=1)
  return n, ref, offsets


def _group_stats(r, ids, ddof: int):
  """Per-row group mean [B], group std [B] (with ddof), whether the std is defined (n > ddof)."""
  same = _same_group(ids, r.dtype)
  n, ref, offsets = _group_offsets(r, same)
  mean = ref + offsets / n
  var = jnp.sum(same * (r[None, :] - mean[:, None]) ** 2, axis=1) / jnp.maximum(n - ddof, 1)
  return mean, jnp.sqrt(var), n > ddof


def _adv_metrics(terms, adv):
  return dict(terms.metrics, adv_mean=jnp.mean(adv), adv_abs_mean=jnp.mean(jnp.abs(adv)))


def raw_reward() -> LossTransform:
  """No baseline, no scaling: A_i = R_i.

  The paper's minimalist configuration (L0): the {0, 1} outcome reward is the signal itself, so a
  wrong answer gives no gradient and only correct responses are reinforced.
  """

  def update(terms, batch):
    if advantages_given(batch):
      return _given(terms, batch)
    return terms.replace(advantages=terms.rewards, metrics=_adv_metrics(terms, terms.rewards))

  return stateless(update)


SINGLETON_BASELINES = ("mean", "zero")


def group_mean(singleton: str = "mean") -> LossTransform:
  """Group baseline: A_i = R_i - mean_{j in g(i)} R_j (the mean includes i itself).

  GRPO's baseline (Shao et al. 2024, DeepSeekMath, sec. 4.1.2); alone it is Dr. GRPO's advantage
  (Liu et al. 2025, "Understanding R1-Zero-Like Training"). A group of one rollout:
  singleton="mean" (default) uses its own reward as the mean, so A = 0 (as TRL); "zero" uses
  baseline 0, so A = R (verl's grpo estimator: a group of one gets mean 0 and std 1).
  """
  if singleton not in SINGLETON_BASELINES:
    raise ValueError(f"group_mean: singleton={singleton!r}; choose one of {SINGLETON_BASELINES}")

  def update(terms, batch):
    if advantages_given(batch):
      return _given(terms, batch)
    r = terms.rewards
    n, ref, offsets = _group_offsets(r, _same_group(batch.group_ids, r.dtype))
    mean = ref + offsets / n
    if singleton == "zero":
      mean = jnp.where(n > 1, mean, 0.0)
    adv = r - mean
    return terms.replace(advantages=adv, metrics=_adv_metrics(terms, adv))

  return stateless(update)


def group_std(eps: float = 1e-6, ddof: int = 1, singleton_std: float = -1.0) -> LossTransform:
  """Group scaling: A_i <- A_i / (std_{j in g(i)} R_j + eps).

  With `group_mean` before it this is GRPO's advantage (R - mean) / (std + eps) (Shao et al.
  2024, sec. 4.1.2). ddof=1 (the unbiased std) matches TRL and verl, which use torch.std; ddof=0
  is the population std. verl's eps is 1e-6, TRL's 1e-4. A group of at most ddof rollouts has
  no std: with singleton_std < 0 (default -1.0) it is left unscaled; with singleton_std >= 0 it
  is divided by (singleton_std + eps) (verl: 1.0, so a group of one gets R / (1 + eps)).
  With eps = 0 a group without spread is left unscaled (after group_mean its advantages are
  exactly 0; dividing them by 0 would give NaN). Needs an advantage transform before it.
  """
  if eps < 0 or ddof < 0:
    raise ValueError(f"group_std: eps={eps} and ddof={ddof} must be >= 0")
  if 0 <= singleton_std and singleton_std + eps == 0:
    raise ValueError("group_std: singleton_std + eps must be > 0 (or singleton_std < 0)")

  def update(terms, batch):
    if advantages_given(batch):
      return _given(terms, batch)
    require_advantages(terms, "group_std")
    r = terms.rewards
    _, std, defined = _group_stats(r, batch.group_ids, ddof)
    undefined_scale = 1.0 if singleton_std < 0 else 1.0 / (singleton_std + eps)
    scale = jnp.where(defined, 1.0 / jnp.where(std + eps > 0, std + eps, 1.0), undefined_scale)
    adv = terms.advantages * (scale if terms.advantages.ndim == 1 else scale[:, None])
    metrics = dict(_adv_metrics(terms, adv), zero_std_frac=jnp.mean((std == 0).astype(r.dtype)))
    return terms.replace(advantages=adv, metrics=metrics)

  return stateless(update)


def batch_std(eps: float = 1e-6, ddof: int = 1) -> LossTransform:
  """Batch scaling: A_i <- A_i / (std_{j in batch} R_j + eps).

  With `group_mean` before it this is "group mean, batch std" (Lite PPO; Liu et al. 2025, "Tricks
  or Traps? A Deep Dive into RL for LLM Reasoning", sec. 4.1), robust to zero-variance groups.
  ddof as in group_std; with eps = 0 a batch without spread is left unscaled. Needs an
  advantage transform before it.
  """
  if eps < 0 or ddof < 0:
    raise ValueError(f"batch_std: eps={eps} and ddof={ddof} must be >= 0")

  def update(terms, batch):
    if advantages_given(batch):
      return _given(terms, batch)
    require_advantages(terms, "batch_std")
    r = terms.rewards
    _, std, defined = _group_stats(r, jnp.zeros(r.shape, jnp.int32), ddof)  # one group: the batch
    std, defined = std[0], defined[0]
    spread = defined & (std + eps > 0)
    adv = terms.advantages * jnp.where(spread, 1.0 / jnp.where(spread, std + eps, 1.0), 1.0)
    return terms.replace(advantages=adv, metrics=dict(_adv_metrics(terms, adv), reward_std=std))

  return stateless(update)


def leave_one_out() -> LossTransform:
  """Leave-one-out baseline: A_i = R_i - (1 / (n_g - 1)) sum_{j in g(i), j != i} R_j.

  RLOO (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et al.
  2024, "Back to Basics"). Equal to n/(n-1) (R_i - mean_g R). A group of one rollout has
  no other sample: its baseline is 0 (A = R).
  """

  def update(terms, batch):
    if advantages_given(batch):
      return _given(terms, batch)
    r = terms.rewards
    n, ref, offsets = _group_offsets(r, _same_group(batch.group_ids, r.dtype))
    others_mean = ref + (offsets - (r - ref)) / jnp.maximum(n - 1, 1)
    adv = r - jnp.where(n > 1, others_mean, 0.0)
    return terms.replace(advantages=adv, metrics=_adv_metrics(terms, adv))

  return stateless(update)


def history_baseline(num_prompts: int = 1, window: int = 8,
                     empty_value: float = 0.0) -> LossTransform:
  """Per-prompt history baseline: A_i = R_i - mean(last `window` rewards of prompt p_i).

  The companion code of Hu et al. (arXiv 2601.22532) baselines each prompt by a sliding window of
  its past rewards. The window holds rewards of earlier rounds only: this round's rewards are
  pushed after the baseline is read, so A_i never includes R_i itself. An empty window gives the
  baseline `empty_value`.

  Keyed by `batch.prompt_ids` in [0, num_prompts) (rows with other ids get `empty_value` and are
  not stored; the metric history_dropped counts them). State: {"rewards": [P, W] ring buffer,
  "count": [P] number of stored rewards (<= W), "next": [P] next slot}. When one round has more
  than W rollouts of a prompt, the last W in batch order are kept.
  """
  if num_prompts < 1 or window < 1:
    raise ValueError(
        f"history_baseline: num_prompts={num_prompts} and window={window} must be >= 1")

  def init():
    return {
        "rewards": jnp.zeros((num_prompts, window)),
        "count": jnp.zeros((num_prompts,), jnp.int32),
        "next": jnp.zeros((num_prompts,), jnp.int32),
    }

  def update(terms, state, batch):
    if advantages_given(batch):
      return _given(terms, batch), state  # the whole batch already read and updated the window
    if batch.prompt_ids is None:
      raise ValueError("history_baseline needs batch.prompt_ids (stable prompt ids), got None")
    r = terms.rewards
    pid = batch.prompt_ids.astype(jnp.int32)
    valid = (pid >= 0) & (pid < num_prompts)
    p = jnp.where(valid, pid, 0)
    count = state["count"][p]
    # Slots past `count` hold zeros, so the row sum is the sum of the stored rewards.
    total = jnp.sum(state["rewards"], axis=1)[p].astype(r.dtype)
    baseline = jnp.where(valid & (count > 0), total / jnp.maximum(count, 1), empty_value)
    adv = r - baseline

    # Push this round's rewards: row i goes to slot next[p] + (its rank among the prompt's rows).
    same = (pid[:, None] == pid[None, :]) & valid[None, :] & valid[:, None]
    rank = _rank_in_group(jnp.where(valid, pid, -1 - jnp.arange(pid.shape[0])))
    n_p = jnp.sum(same, axis=1)
    write = valid & (rank >= n_p - window)
    slot = (state["next"][p] + rank) % window
    rows = jnp.where(write, p, num_prompts)  # out of bounds: dropped
    rewards = state["rewards"].at[rows, slot].set(r.astype(state["rewards"].dtype), mode="drop")
    added = jnp.zeros((num_prompts,), jnp.int32).at[p].add(valid.astype(jnp.int32))
    new_state = {
        "rewards": rewards,
        "count": jnp.minimum(state["count"] + added, window),
        "next": (state["next"] + added) % window,
    }
    metrics = dict(_adv_metrics(terms, adv), history_baseline=jnp.mean(baseline),
                   history_dropped=jnp.sum(~valid).astype(r.dtype))
    return terms.replace(advantages=adv, metrics=metrics), new_state

  return LossTransform(init, update)


def baseline_only(num_grad: int = 1) -> LossTransform:
  """Extra rollouts only for the baseline: the first `num_grad` rollouts of each group (in batch
  order) carry the gradient; the others only entered the baseline computed before this transform.

  The companion code of Hu et al. (arXiv 2601.22532) samples one rollout for the gradient and
  extra ones only for the baseline. Place it after the baseline (e.g. group_mean, baseline_only):
  it zeroes the advantages of baseline-only rollouts and removes their tokens from `terms.mask`,
  so they add nothing to the surrogate, the regularizers or the aggregation normalisers (token and
  sequence counts), exactly as if they had been dropped after the baseline was computed.
  If `batch.grad_mask` is given (a per-sequence flag from the data side, or set by `accumulate`),
  it is used instead of the first-num_grad rule.
  """
  if num_grad < 1:
    raise ValueError(f"baseline_only: num_grad={num_grad} must be >= 1")

  def update(terms, batch):
    require_advantages(terms, "baseline_only")
    adv = terms.advantages
    if batch.grad_mask is not None:
      keep = batch.grad_mask.astype(terms.logp.dtype)
    else:
      keep = (_rank_in_group(batch.group_ids) < num_grad).astype(terms.logp.dtype)
    adv = adv * (keep if adv.ndim == 1 else keep[:, None])
    metrics = dict(terms.metrics, grad_rollout_frac=jnp.mean(keep))
    return terms.replace(advantages=adv, mask=terms.mask * keep[:, None], metrics=metrics)

  return stateless(update)
