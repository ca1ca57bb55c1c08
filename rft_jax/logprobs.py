"""Per-token log-probs and entropy from logits, and the trainer's forward over rollouts.

The sampler and the trainer both call `Decoder.apply`; both scale logits by the sampling
temperature before the softmax, so the behaviour log-probs the sampler records and the log-probs
the trainer differentiates are the same function of the same tokens:

    logp_t = log softmax(z_t / tau)[y_t],     H_t = -sum_v p_v log p_v,  p = softmax(z_t / tau)

A temperature of 0 (greedy) scores with tau = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rft_jax.models.decoder import Decoder, positions_from_mask

Array = jax.Array


def scale_logits(logits: Array, temperature: Array | float) -> Array:
  """logits / tau, with tau = 1 where tau <= 0 (greedy decoding is scored at tau = 1)."""
  temperature = jnp.asarray(temperature, jnp.float32)
  tau = jnp.where(temperature > 0, temperature, 1.0)
  return logits.astype(jnp.float32) / tau


def token_logprobs(logits: Array, targets: Array, temperature: Array | float = 1.0) -> Array:
  """logits [..., V], targets [...] int -> log p(targets) [...] under softmax(logits / tau)."""
  return token_logprobs_and_entropy(logits, targets, temperature)[0]


def entropy(logits: Array, temperature: Array | float = 1.0) -> Array:
  """logits [..., V] -> entropy [...] of softmax(logits / tau), in nats."""
  targets = jnp.zeros(logits.shape[:-1], jnp.int32)
  return token_logprobs_and_entropy(logits, targets, temperature)[1]


def token_logprobs_and_entropy(logits: Array, targets: Array,
                               temperature: Array | float = 1.0) -> tuple[Array, Array]:
  """logits [..., V], targets [...] int -> (log p(targets), entropy H), both [...].

  With z = logits / tau, m = max z, S = sum_v exp(z_v - m), p = softmax(z):

      log p_y = (z_y - m) - log S                        (jax.nn.log_softmax's operations)
      H       = log S - sum_v p_v (z_v - m)
      d log p_y / d logits = (onehot(y) - p) / tau
      d H / d logits       = -p (log p + H) / tau

  The custom VJP is the point: autodiff of log_softmax + take_along_axis writes several [..., V]
  float32 arrays (the log-softmax, a zero array scattered into for the gather, the broadcast
  temperature); here the forward reads the logits twice (max, then S and the entropy sum in one
  reduction) and the backward writes d logits in one elementwise pass. On the train-step
  benchmark's 16 x 128 x 32k logits that is most of the step's non-matmul time.
  """
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f"targets {targets.shape} must be logits {logits.shape} without the "
                     "vocabulary axis")
  temperature = jnp.asarray(temperature, jnp.float32)
  if temperature.ndim:
    raise ValueError(f"temperature must be a scalar, got shape {temperature.shape}")
  tau = jnp.where(temperature > 0, temperature, 1.0)  # as scale_logits: the sampler's z
  # Negative ids count from the end, as take_along_axis reads them, in the backward pass too.
  targets = targets.astype(jnp.int32)
  targets = jnp.where(targets < 0, targets + logits.shape[-1], targets)
  return _logp_entropy(logits.astype(jnp.float32), targets, tau)


def _logp_entropy_parts(logits, targets, tau):
  z = logits / tau
  top = jnp.max(z, axis=-1, keepdims=True)
  shifted = z - top
  e = jnp.exp(shifted)
  total = jnp.sum(e, axis=-1)
  log_total = jnp.log(total)
  picked = jnp.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
  # A -inf logit (a masked token) has p = 0 and adds nothing; 0 * -inf would be NaN.
  ent = log_total - jnp.sum(jnp.where(e > 0, e * shifted, 0.0), axis=-1) / total
  return picked - log_total, ent, top[..., 0], log_total


@jax.custom_vjp
def _logp_entropy(logits, targets, tau):
  logp, ent, _, _ = _logp_entropy_parts(logits, targets, tau)
  return logp, ent


def _logp_entropy_fwd(logits, targets, tau):
  logp, ent, top, log_total = _logp_entropy_parts(logits, targets, tau)
  return (logp, ent), (logits, targets, tau, ent, top, log_total)


def _logp_entropy_bwd(residuals, cotangents):
  logits, targets, tau, ent, top, log_total = residuals
  g_logp, g_ent = cotangents
  z = logits / tau
  log_p = (z - top[..., None]) - log_total[..., None]  # the forward's operations and rounding
  p = jnp.exp(log_p)
  onehot = jnp.arange(logits.shape[-1], dtype=jnp.int32) == targets[..., None]
  d_z = (g_logp[..., None] * (onehot - p)
         - g_ent[..., None] * jnp.where(p > 0, p * (log_p + ent[..., None]), 0.0))
  # z = logits / tau: d z / d tau = -z / tau (unused by the trainer: XLA drops it).
  d_tau = -jnp.sum(jnp.where(jnp.isfinite(z), d_z * z, 0.0)) / tau
  targets_cotangent = np.zeros(targets.shape, jax.dtypes.float0)
  return d_z / tau, targets_cotangent, d_tau


_logp_entropy.defvjp(_logp_entropy_fwd, _logp_entropy_bwd)


def completion_logprobs(decoder: Decoder, params, prompt_tokens: Array, prompt_mask: Array,
                        completion: Array, completion_mask: Array,
                        temperature: Array | float = 1.0, with_entropy: bool = False):
  """Log-probs of completions given left-padded prompts, in one forward pass.

  prompt_tokens, prompt_mask [B, P]; completion, completion_mask [B, N].
  Returns logp [B, N] (and entropy [B, N] when asked); token n is predicted by slot P + n - 1.
  """
  p, n = prompt_tokens.shape[1], completion.shape[1]
  if n == 0:
    empty = jnp.zeros(completion.shape, jnp.float32)
    return (empty, empty) if with_entropy else empty
  # The last completion token predicts nothing scored: it is left out of the forward, so the
  # decoder's T - (p - 1) head slots are exactly the N that predict completion tokens.
  tokens = jnp.concatenate([prompt_tokens, completion[:, :-1]], axis=1).astype(jnp.int32)
  mask = jnp.concatenate([prompt_mask, completion_mask[:, :-1]], axis=1).astype(bool)
  logits, _ = decoder.apply({"params": params}, tokens, positions_from_mask(mask), mask,
                            logits_from=p - 1)
  logp, ent = token_logprobs_and_entropy(logits, completion, temperature)
  return (logp, ent) if with_entropy else logp
