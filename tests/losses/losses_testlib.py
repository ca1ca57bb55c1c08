"""Shared builders for the loss tests: random batches, a tiny bigram policy, a context chain per
transform (the smallest valid chain that exercises it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import rft_jax.losses as rl

AGGREGATIONS = (
    "token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")
REWARD_MAPS = ("affine_reward", "clip_reward", "kl_reward")
SCALINGS = ("group_std", "batch_std", "baseline_only")
SURROGATES = ("policy_gradient", "clipped_ratio", "dual_clip", "sequence_ratio")
AFTER_SURROGATE = ("truncated_is", "kl_loss", "entropy_bonus")
BASELINES = ("raw_reward", "group_mean", "leave_one_out", "history_baseline")

# Settings that make each transform bite on the random batches below (non-trivial clip ranges,
# visible coefficients, a history with room for the prompts).
SETTINGS = {
    "affine_reward": {"scale": 2.0, "shift": -1.0},
    "clip_reward": {"low": 0.0, "high": 0.5},
    "kl_reward": {"coef": 0.1, "estimator": "k3"},
    "history_baseline": {"num_prompts": 4, "window": 3, "empty_value": 0.25},
    "clipped_ratio": {"eps_low": 0.05, "eps_high": 0.1},
    "dual_clip": {"eps_low": 0.05, "eps_high": 0.1, "c": 1.5},
    "sequence_ratio": {"eps_low": 0.01, "eps_high": 0.02},
    "truncated_is": {"cap": 1.05},
    "kl_loss": {"coef": 0.1, "estimator": "k3"},
    "entropy_bonus": {"coef": 0.1},
    "seq_mean_token_sum_norm": {"max_len": 16},
}


def context_chain(name: str) -> list[str]:
  """The smallest sensible chain around one registered transform."""
  if name in REWARD_MAPS:
    return [name, "group_mean", "clipped_ratio", "token_mean"]
  if name in SCALINGS:
    return ["group_mean", name, "clipped_ratio", "token_mean"]
  if name in SURROGATES:
    return ["group_mean", name, "token_mean"]
  if name in AFTER_SURROGATE:
    return ["group_mean", "clipped_ratio", name, "token_mean"]
  if name in AGGREGATIONS:
    return ["group_mean", "clipped_ratio", name]
  if name in BASELINES:
    return [name, "clipped_ratio", "token_mean"]
  raise KeyError(f"no context chain for {name!r}; add the new transform to losses_testlib")


def build(names, settings=None) -> rl.LossTransform:
  settings = SETTINGS if settings is None else settings
  return rl.build_chain((n, settings.get(n, {})) for n in names)


# Visible KL terms in the peer recipes (their default is off); a fixed L_max (padding-proof).
RECIPE_SETTINGS = {"dr_grpo": {"max_len": 16}, "verl_grpo": {"kl_coef": 0.1},
                   "verl_dr_grpo": {"max_len": 16, "kl_coef": 0.1},
                   "verl_gspo": {"kl_coef": 0.1}, "trl_grpo": {"beta": 0.1}}


def recipe(name: str) -> rl.LossTransform:
  return getattr(rl, name)(**RECIPE_SETTINGS.get(name, {}))


def random_batch(seed=0, b=8, t=6, group_size=4, noise=0.3, dtype=np.float32, interleave=True):
  """Random rollouts with variable lengths, groups interleaved in batch order (so consecutive
  micro-batches split every group), {0,1} rewards with a few continuous ones, and a current logp
  near the behaviour logp. Returns (batch, logp, entropy)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t + 1, size=b)
  lengths[0] = t
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(dtype)
  n_groups = b // group_size
  group_ids = (np.arange(b) % n_groups if interleave else np.arange(b) // group_size)
  rewards = rng.integers(0, 2, size=b).astype(dtype)
  rewards[0], rewards[n_groups] = 1.0, 0.0  # group 0 has both outcomes
  rewards[-1] = 0.3
  behaviour = np.log(rng.uniform(0.05, 0.95, size=(b, t))).astype(dtype)
  logp = (behaviour + noise * rng.normal(size=(b, t))).astype(dtype)
  logp = np.minimum(logp, -1e-3)
  ref = (behaviour + 0.5 * rng.normal(size=(b, t))).astype(dtype)
  sampler = (behaviour + 0.05 * rng.normal(size=(b, t))).astype(dtype)
  entropy = rng.uniform(0.1, 2.0, size=(b, t)).astype(dtype)
  batch = rl.Batch(
      tokens=jnp.asarray(rng.integers(0, 5, size=(b, t)), jnp.int32),
      mask=jnp.asarray(mask),
      behaviour_logp=jnp.asarray(behaviour),
      rewards=jnp.asarray(rewards),
      group_ids=jnp.asarray(group_ids, jnp.int32),
      ref_logp=jnp.asarray(ref),
      prompt_ids=jnp.asarray(group_ids, jnp.int32),
      sampler_logp=jnp.asarray(sampler),
  )
  return batch, jnp.asarray(logp), jnp.asarray(entropy)


def pad_time(batch: rl.Batch, logp, entropy, extra: int):
  """Appends `extra` masked columns filled with hostile garbage (overflowing exp if unmasked)."""

  def pad(x, value):
    if x is None:
      return None
    return jnp.concatenate([x, jnp.full((x.shape[0], extra), value, x.dtype)], axis=1)

  batch = batch.replace(
      tokens=pad(batch.tokens, 3),
      mask=pad(batch.mask, 0.0),
      behaviour_logp=pad(batch.behaviour_logp, -200.0),
      ref_logp=pad(batch.ref_logp, 150.0),
      sampler_logp=pad(batch.sampler_logp, 300.0),
  )
  return batch, pad(logp, 60.0), pad(entropy, 1e30)


# A tiny bigram policy: logits of token t are W[token t-1] (token -1 is BOS = row V).
VOCAB = 5


def bigram_params(seed=0, dtype=jnp.float32):
  return {"W": jax.random.normal(jax.random.PRNGKey(seed), (VOCAB + 1, VOCAB), dtype)}


def bigram_logp(params, tokens):
  prev = jnp.concatenate([jnp.full((tokens.shape[0], 1), VOCAB), tokens[:, :-1]], axis=1)
  logits = params["W"][prev]
  logprobs = jax.nn.log_softmax(logits)
  logp = jnp.take_along_axis(logprobs, tokens[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logprobs) * logprobs, axis=-1)
  return logp, entropy


def finite_differences(reference, d, h=1e-6):
  """Central differences of reference(d) w.r.t. d["logp"], at the masked-in tokens only."""
  fd = np.zeros_like(d["logp"])
  for i, t in zip(*np.nonzero(d["mask"])):
    up, down = dict(d, logp=d["logp"].copy()), dict(d, logp=d["logp"].copy())
    up["logp"][i, t] += h
    down["logp"][i, t] -= h
    fd[i, t] = (reference(up) - reference(down)) / (2 * h)
  return fd
