"""Surrogate objectives: per-token losses built from the policy/behaviour log-prob ratio."""

from __future__ import annotations

import jax.numpy as jnp

from rft_jax.losses.base import LossTransform, masked_mean, require_advantages, stateless


def clipped_ratio(eps_low: float = 0.2, eps_high: float | None = None) -> LossTransform:
  """PPO / GRPO clipped surrogate, with separate lower and upper clip (clip-higher, DAPO).

      r_t  = exp(log pi_theta(o_t) - log pi_old(o_t))
      l_t  = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A)

  (Schulman et al. 2017, eq. 7; eps_high > eps_low is Yu et al. 2025, DAPO.) With one on-policy
  update r_t = 1, the clip never binds and the gradient is -A grad log pi(o_t): REINFORCE.
  """
  eps_high = eps_low if eps_high is None else eps_high
  if eps_low < 0 or eps_high < 0:
    raise ValueError(f"clip epsilons must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")

  def update(terms, batch):
    adv = require_advantages(terms, "clipped_ratio")
    ratio = jnp.exp(terms.logp - batch.behaviour_logp)
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    token_loss = -jnp.minimum(unclipped, clipped)
    clip_frac = masked_mean((clipped < unclipped).astype(ratio.dtype), batch.mask)
    metrics = dict(terms.metrics, clip_frac=clip_frac, ratio_mean=masked_mean(ratio, batch.mask))
    return terms.replace(token_loss=terms.token_loss + token_loss, metrics=metrics)

  return stateless(update)
