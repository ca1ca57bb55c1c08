"""Surrogate objectives: per-token losses built from the advantages and the policy log-probs.

Each adds its per-token loss l_t (to minimise) to `terms.token_loss`. The ratio is
r_t = pi_theta(o_t) / pi_old(o_t) = exp(logp - behaviour_logp); `behaviour_logp` is the log-prob
of the policy that sampled the batch (the "old" policy of PPO). Log-ratios are zeroed on padding
before exp(), so garbage in padded positions can reach neither the loss nor the gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rft_jax.losses.base import (
    LossTransform,
    loss_mask,
    masked_mean,
    require_advantages,
    safe_log_ratio,
    stateless,
)


def _eps_pair(who: str, eps_low: float, eps_high: float | None) -> tuple[float, float]:
  # eps_high < 0 (the config sentinel, -1.0) or None: symmetric clip, eps_high = eps_low.
  eps_high = eps_low if eps_high is None or eps_high < 0 else eps_high
  if eps_low < 0 or eps_low >= 1:
    raise ValueError(f"{who}: eps_low={eps_low} must be in [0, 1)")
  return eps_low, eps_high


def _add_loss(terms, token_loss, **metrics):
  return terms.replace(token_loss=terms.token_loss + token_loss,
                       metrics=dict(terms.metrics, **metrics))


def policy_gradient() -> LossTransform:
  """Plain policy gradient (REINFORCE, Williams 1992): l_t = -A_t log pi_theta(o_t).

  Its gradient is -A_t grad log pi(o_t), with no importance ratio: exact on-policy (one update
  per round), biased on stale data (use clipped_ratio then).
  """

  def update(terms, batch):
    adv = require_advantages(terms, "policy_gradient")
    return _add_loss(terms, -adv * terms.logp * loss_mask(terms, batch))

  return stateless(update)


def _check_clamp(who: str, name: str, value: float) -> None:
  if value == 0:
    raise ValueError(f"{who}: {name}=0 would fix the ratio at 1; use a value > 0, or < 0 (the "
                     "default -1.0) for no clamp")


def _token_ratio(terms, batch, mask, log_ratio_clamp):
  # verl clamps the log-ratio to [-20, 20] before exp ("for stability"); a clamped token then
  # has zero gradient, as with torch.clamp.
  log_ratio = safe_log_ratio(terms.logp, batch.behaviour_logp, mask)
  if log_ratio_clamp > 0:
    log_ratio = jnp.clip(log_ratio, -log_ratio_clamp, log_ratio_clamp)
  return jnp.exp(log_ratio)


def _clipped(ratio, adv, eps_low, eps_high):
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
  return jnp.minimum(unclipped, clipped), clipped < unclipped


def clipped_ratio(eps_low: float = 0.2, eps_high: float = -1.0,
                  log_ratio_clamp: float = -1.0) -> LossTransform:
  """PPO / GRPO clipped surrogate, with separate lower and upper clip (clip-higher, DAPO).

      r_t  = exp(log pi_theta(o_t) - log pi_old(o_t))
      l_t  = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A)

  (Schulman et al. 2017, eq. 7; eps_high > eps_low is DAPO's clip-higher, Yu et al. 2025.)
  eps_high < 0 (default -1.0) means eps_high = eps_low. With one on-policy update r_t = 1, the
  clip never binds and the gradient is -A grad log pi(o_t): REINFORCE. log_ratio_clamp > 0 clips
  log r_t to [-log_ratio_clamp, log_ratio_clamp] before exp (verl: 20); < 0 (default) does not.
  """
  eps_low, eps_high = _eps_pair("clipped_ratio", eps_low, eps_high)
  _check_clamp("clipped_ratio", "log_ratio_clamp", log_ratio_clamp)

  def update(terms, batch):
    adv = require_advantages(terms, "clipped_ratio")
    mask = loss_mask(terms, batch)
    ratio = _token_ratio(terms, batch, mask, log_ratio_clamp)
    objective, is_clipped = _clipped(ratio, adv, eps_low, eps_high)
    return _add_loss(terms, -objective * mask,
                     clip_frac=masked_mean(is_clipped.astype(ratio.dtype), mask),
                     ratio_mean=masked_mean(ratio, mask))

  return stateless(update)


def dual_clip(eps_low: float = 0.2, eps_high: float = -1.0, c: float = 3.0,
              log_ratio_clamp: float = -1.0) -> LossTransform:
  """Dual-clip PPO: the clipped surrogate, bounded below by c A for negative advantages.

      o_t = min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A)
      l_t = -o_t                 if A >= 0
      l_t = -max(o_t, c A)       if A < 0

  (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", dual-clip PPO.)
  When r_t >> 1 on a negative advantage the plain clipped loss grows without bound; the second
  clip caps it at -c A (and its gradient is then 0). c > 1; eps_high < 0 means eps_high = eps_low.
  verl's `vanilla` policy loss is this with c = 3 (clip_ratio_c) and log_ratio_clamp = 20 (see
  clipped_ratio).
  """
  eps_low, eps_high = _eps_pair("dual_clip", eps_low, eps_high)
  if c <= 1:
    raise ValueError(f"dual_clip: c={c} must be > 1")
  _check_clamp("dual_clip", "log_ratio_clamp", log_ratio_clamp)

  def update(terms, batch):
    adv = require_advantages(terms, "dual_clip")
    mask = loss_mask(terms, batch)
    ratio = _token_ratio(terms, batch, mask, log_ratio_clamp)
    objective, is_clipped = _clipped(ratio, adv, eps_low, eps_high)
    dual = (adv < 0) & (c * adv > objective)
    objective = jnp.where(dual, c * adv, objective)
    return _add_loss(terms, -objective * mask,
                     clip_frac=masked_mean(is_clipped.astype(ratio.dtype), mask),
                     dual_clip_frac=masked_mean(dual.astype(ratio.dtype), mask),
                     ratio_mean=masked_mean(ratio, mask))

  return stateless(update)


def sequence_ratio(eps_low: float = 3e-4, eps_high: float = 4e-4,
                   max_log_ratio: float = -1.0) -> LossTransform:
  """GSPO: one length-normalised importance ratio per sequence, clipped at the sequence level.

      s_i = exp( (1/|o_i|) sum_t (log pi_theta(o_it) - log pi_old(o_it)) )
      l_i = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)

  (Zheng et al. 2025, "Group Sequence Policy Optimization"; their eps are 3e-4 and
  4e-4.) l_i is written on every token of sequence i, so `seq_mean_token_mean` gives GSPO's
  (1/G) sum_i l_i. With [B, T] advantages each token uses its own A_it (GSPO-token, with
  equal values). |o_i| counts the loss tokens of the sequence. max_log_ratio > 0 caps log s_i
  from above before exp (verl's gspo loss: 10; a capped sequence has zero gradient); < 0
  (default) does not.

  Every token of sequence i then has d l_i / d log pi(o_it) = -A_i s_i / |o_i| (unclipped), so
  under any aggregation this equals verl's GSPO-token form s_it = sg(s_i) pi(o_it) / sg(pi(o_it))
  with l_it = -min(s_it A, clip(s_it) A) aggregated the same way: values and gradients.
  """
  eps_low, eps_high = _eps_pair("sequence_ratio", eps_low, eps_high)
  _check_clamp("sequence_ratio", "max_log_ratio", max_log_ratio)

  def update(terms, batch):
    adv = require_advantages(terms, "sequence_ratio")
    mask = loss_mask(terms, batch)
    log_ratio = safe_log_ratio(terms.logp, batch.behaviour_logp, mask)
    length = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    log_seq_ratio = jnp.sum(log_ratio, axis=-1) / length
    if max_log_ratio > 0:
      log_seq_ratio = jnp.minimum(log_seq_ratio, max_log_ratio)
    seq_ratio = jnp.exp(log_seq_ratio)[:, None]
    objective, is_clipped = _clipped(seq_ratio, adv, eps_low, eps_high)
    return _add_loss(terms, -objective * mask,
                     clip_frac=masked_mean(jnp.broadcast_to(is_clipped, mask.shape), mask),
                     # over loss tokens, as micro-batches combine metrics (token-weighted)
                     seq_ratio_mean=masked_mean(jnp.broadcast_to(seq_ratio, mask.shape), mask))

  return stateless(update)


def truncated_is(cap: float = 2.0) -> LossTransform:
  """Truncated importance sampling for sampler/trainer mismatch (TIS): scales the surrogate by

      w_t = stop_gradient(min(exp(log pi_trainer(o_t) - log pi_sampler(o_t)), C))

  (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training".)
  Where the log-probs come from:
    - batch.sampler_logp given: pi_sampler = sampler_logp and pi_trainer = behaviour_logp, i.e. the
      trainer's recomputation of the old policy's log-probs (the exact TIS weight; constant).
    - batch.sampler_logp None: pi_sampler = behaviour_logp (the sampler's log-probs) and
      pi_trainer = stop_gradient(terms.logp). At the first update after sampling the trainer's
      parameters are the sampler's, so this is the same weight without a second forward pass;
      after further updates it also absorbs the policy change, so give sampler_logp then.
  Place it directly after the surrogate: it multiplies `terms.token_loss` accumulated so far.
  """
  if cap <= 0:
    raise ValueError(f"truncated_is: cap={cap} must be > 0")

  def update(terms, batch):
    mask = loss_mask(terms, batch)
    if batch.sampler_logp is not None:
      log_w = safe_log_ratio(batch.behaviour_logp, batch.sampler_logp, mask)
    else:
      log_w = safe_log_ratio(jax.lax.stop_gradient(terms.logp), batch.behaviour_logp, mask)
    w = jax.lax.stop_gradient(jnp.minimum(jnp.exp(log_w), cap))
    metrics = dict(terms.metrics, tis_weight_mean=masked_mean(w, mask),
                   tis_capped_frac=masked_mean((w >= cap).astype(w.dtype), mask))
    return terms.replace(token_loss=terms.token_loss * w, metrics=metrics)

  return stateless(update)
