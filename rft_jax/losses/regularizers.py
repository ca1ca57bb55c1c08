"""Regularizers: per-token terms added to the loss next to the surrogate."""

from __future__ import annotations

import jax.numpy as jnp

from rft_jax.losses.base import LossTransform, loss_mask, masked_mean, safe_log_ratio, stateless
from rft_jax.losses.reward_maps import check_kl_settings, kl_estimate


def kl_loss(coef: float = 0.001, estimator: str = "k3", clamp: float = -1.0,
            log_ratio_clamp: float = -1.0, ratio_weight: bool = False) -> LossTransform:
  """KL to the reference policy as a loss term: l_t += coef * w_t * kl_t(log pi_theta, log pi_ref).

  kl_t is k1, k2, k3 or abs (see `kl_estimate`; Schulman 2020), differentiated through
  log pi_theta. GRPO uses k3 with coef 0.04 (Shao et al. 2024, eq. 3-4); the companion code of
  Hu et al. uses k3 with 0.001, as verl's `low_var_kl`, which clamps (clamp=10,
  log_ratio_clamp=20; < 0, the default, is no clamp). w_t = 1, or with ratio_weight the
  importance ratio r_t = exp(log pi_theta - log pi_old), differentiated too: TRL's
  `use_bias_correction_kl` (default True in TRL 1.16), which makes the KL gradient the unbiased
  reverse-KL gradient on stale data and adds k3 grad log pi to it even on-policy (r = 1).
  Note: the gradient of k1 is grad log pi, zero in expectation on-policy, so k1 regularizes only
  through its off-policy part; k2's gradient is the one of KL(pi||ref) to first order (Schulman
  2020). coef = 0 disables it (ref_logp is then not needed).
  """
  check_kl_settings("kl_loss", estimator, clamp, log_ratio_clamp)

  def update(terms, batch):
    if coef == 0:
      return terms
    if batch.ref_logp is None:
      raise ValueError("kl_loss needs batch.ref_logp (reference-policy log-probs), got None")
    mask = loss_mask(terms, batch)
    kl = kl_estimate(terms.logp, batch.ref_logp, mask, estimator, clamp, log_ratio_clamp)
    metrics = dict(terms.metrics, kl=masked_mean(kl, mask))
    if ratio_weight:
      kl = kl * jnp.exp(safe_log_ratio(terms.logp, batch.behaviour_logp, mask))
    return terms.replace(token_loss=terms.token_loss + coef * kl, metrics=metrics)

  return stateless(update)


def entropy_bonus(coef: float = 0.001) -> LossTransform:
  """Entropy bonus: l_t -= coef * H_t, with H_t = -sum_v pi(v | o_<t) log pi(v | o_<t).

  (Williams & Peng 1991; Mnih et al. 2016, A3C.) Reads terms.entropy [B, T], which compute_loss
  takes as `entropy=`; it must be differentiable in the parameters. coef = 0 disables it.
  """

  def update(terms, batch):
    if coef == 0:
      return terms
    if terms.entropy is None:
      raise ValueError(
          "entropy_bonus needs per-token entropy: pass compute_loss(..., entropy=[B, T])")
    mask = loss_mask(terms, batch)
    return terms.replace(token_loss=terms.token_loss - coef * terms.entropy * mask,
                         metrics=dict(terms.metrics, entropy=masked_mean(terms.entropy, mask)))

  return stateless(update)
