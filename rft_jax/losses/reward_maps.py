"""Reward maps: how the outcome reward is transformed before any baseline sees it.

Every reward map must precede the advantage transforms (an error says so otherwise), and is
skipped when `batch.advantages` is precomputed: `accumulate` already ran it over the whole batch,
so running it again on a micro-batch would apply it twice.
"""

from __future__ import annotations

import jax.numpy as jnp

from rft_jax.losses.base import LossTransform, advantages_given, safe_log_ratio, stateless

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def _check_order(terms, who: str) -> None:
  if terms.advantages is not None:
    raise ValueError(
        f"{who} changes rewards, but advantages were already computed earlier in the chain; "
        "put it before the advantage transform (raw_reward, group_mean, ...)")


def _set_rewards(terms, rewards):
  return terms.replace(rewards=rewards, metrics=dict(terms.metrics, reward_mean=jnp.mean(rewards)))


def affine_reward(scale: float = 1.0, shift: float = 0.0) -> LossTransform:
  """R' = scale * R + shift.

  The paper's L3 "reward form" layer (Hu et al. 2026, arXiv 2601.14599): {0, 1} -> {-1, +1} is
  scale=2, shift=-1; {0, 1} -> {-1, 0} is scale=1, shift=-1.
  """

  def update(terms, batch):
    _check_order(terms, "affine_reward")
    if advantages_given(batch):
      return terms
    rewards = scale * terms.rewards + shift
    return _set_rewards(terms, rewards)

  return stateless(update)


def clip_reward(low: float = -1.0, high: float = 1.0) -> LossTransform:
  """R' = clip(R, low, high): bounds a shaped or learned reward (PPO-style reward clipping)."""
  if low > high:
    raise ValueError(f"clip_reward: low={low} must be <= high={high}")

  def update(terms, batch):
    _check_order(terms, "clip_reward")
    if advantages_given(batch):
      return terms
    rewards = jnp.clip(terms.rewards, low, high)
    return _set_rewards(terms, rewards)

  return stateless(update)


def kl_estimate(logp, ref_logp, mask, estimator: str, clamp: float = -1.0,
                log_ratio_clamp: float = -1.0):
  """Per-token estimate of KL(pi || ref) from samples of pi, with d = log pi - log ref:

      k1 = d,   k2 = d^2 / 2,   k3 = exp(-d) - 1 + d  (= ref/pi - 1 - log(ref/pi)),   abs = |d|

  (J. Schulman, "Approximating KL divergence", 2020; k3 is GRPO's estimator, Shao et al. 2024,
  eq. 4; abs is verl's `abs` kl_penalty.) Padding tokens give 0. Optional clamps, as verl's
  `low_var_kl` (d to [-20, 20] before exp, k3 to [-10, 10]):

      d  <- clip(d, -log_ratio_clamp, log_ratio_clamp)     if log_ratio_clamp > 0
      kl <- clip(kl, -clamp, clamp)                        if clamp > 0

  (< 0, the default -1.0: no clamp; 0 is refused.) A clamped token has zero gradient (as torch.clamp). The first clamp also keeps exp(-d) finite,
  so the second one cannot multiply an infinite derivative by 0 into a NaN gradient.
  """
  d = safe_log_ratio(logp, ref_logp, mask)
  if log_ratio_clamp > 0:
    d = jnp.clip(d, -log_ratio_clamp, log_ratio_clamp)
  if estimator == "k1":
    kl = d
  elif estimator == "k2":
    kl = 0.5 * d * d
  elif estimator == "k3":
    kl = jnp.expm1(-d) + d
  elif estimator == "abs":
    kl = jnp.abs(d)
  else:
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")
  if clamp > 0:
    kl = jnp.clip(kl, -clamp, clamp)
  return kl * mask


def check_kl_settings(who: str, estimator: str, clamp: float, log_ratio_clamp: float) -> None:
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"{who}: unknown estimator {estimator!r}; choose one of {KL_ESTIMATORS}")
  for name, value in (("clamp", clamp), ("log_ratio_clamp", log_ratio_clamp)):
    if value == 0:
      raise ValueError(f"{who}: {name}=0 would zero every estimate; use a value > 0, or <= -1 "
                       "(the default -1.0) for no clamp")


def kl_reward(coef: float = 0.001, estimator: str = "k1", clamp: float = -1.0,
              log_ratio_clamp: float = -1.0) -> LossTransform:
  """KL folded into the reward, before the advantage: R' = R - coef * sum_t kl_t.

  kl_t is `kl_estimate(behaviour_logp, ref_logp)` over the sequence's completion tokens
  (batch.mask; baseline-only rollouts are penalised too, since their reward enters the baseline).
  As in RLHF PPO (Ouyang et al. 2022, eq. 2; Ziegler et al. 2019), the penalty is measured on the
  sampling policy: `behaviour_logp` is a constant, so it is stop-gradient by construction, equals
  the current policy at the first (on-policy) update, and keeps the advantages independent of the
  parameters, which is what lets `accumulate` precompute them once for the whole batch.
  coef = 0 disables it (ref_logp is then not needed). clamp, log_ratio_clamp: see kl_estimate
  (< 0: none).
  """
  check_kl_settings("kl_reward", estimator, clamp, log_ratio_clamp)

  def update(terms, batch):
    _check_order(terms, "kl_reward")
    if coef == 0 or advantages_given(batch):
      return terms
    if batch.ref_logp is None:
      raise ValueError("kl_reward needs batch.ref_logp (reference-policy log-probs), got None")
    mask = batch.mask.astype(terms.logp.dtype)
    kl = kl_estimate(batch.behaviour_logp, batch.ref_logp, mask, estimator, clamp,
                     log_ratio_clamp)
    seq_kl = jnp.sum(kl, axis=-1)
    metrics = dict(terms.metrics, kl_reward_seq=jnp.mean(seq_kl))
    return terms.replace(rewards=terms.rewards - coef * seq_kl, metrics=metrics)

  return stateless(update)
