"""Per-token log-probs and entropy from logits, and the trainer's forward over rollouts.

The sampler and the trainer both call `Decoder.apply`; both scale logits by the sampling
temperature before the softmax, so the behaviour log-probs the sampler records and the log-probs
the trainer differentiates are the same function of the same tokens:

    logp_t = log softmax(z_t / tau)[y_t],     H_t = -sum_v p_v log p_v,  p = softmax(z_t / tau)

A temperature of 0 (greedy) scores with tau = 1.

The trainer can score from the decoder's final hidden states instead of its logits
(`head_logprobs_and_entropy`, `completion_logprobs(..., chunk=)`): the head matmul and the same
fused formulas then run over sequence chunks, so the step never holds [B, N, V] float32 logits or
their gradient, only [B, chunk, V].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# _dense: the decoder's own head matmul, so the chunked logits are the decoder's operations.
from rft_jax.models.decoder import PRECISION, Decoder, _dense, head_matrix, positions_from_mask

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


def _logits_cotangent(logits, targets, tau, ent, top, log_total, g_logp, g_ent):
  """(d logits, d tau) from the cotangents of (logp, H): the backward formulas of both paths."""
  z = logits / tau
  log_p = (z - top[..., None]) - log_total[..., None]  # the forward's operations and rounding
  p = jnp.exp(log_p)
  onehot = jnp.arange(logits.shape[-1], dtype=jnp.int32) == targets[..., None]
  d_z = (g_logp[..., None] * (onehot - p)
         - g_ent[..., None] * jnp.where(p > 0, p * (log_p + ent[..., None]), 0.0))
  # z = logits / tau: d z / d tau = -z / tau (unused by the trainer: XLA drops it).
  d_tau = -jnp.sum(jnp.where(jnp.isfinite(z), d_z * z, 0.0)) / tau
  return d_z / tau, d_tau


def _logp_entropy_bwd(residuals, cotangents):
  logits, targets, tau, ent, top, log_total = residuals
  d_logits, d_tau = _logits_cotangent(logits, targets, tau, ent, top, log_total, *cotangents)
  return d_logits, np.zeros(targets.shape, jax.dtypes.float0), d_tau


_logp_entropy.defvjp(_logp_entropy_fwd, _logp_entropy_bwd)


def head_logprobs_and_entropy(hidden: Array, head: Array, targets: Array,
                              temperature: Array | float = 1.0,
                              chunk: int = 128) -> tuple[Array, Array]:
  """hidden [B, N, D], head [D, V], targets [B, N] int -> (log p(targets), entropy H), [B, N].

  The values of `token_logprobs_and_entropy(logits, targets, temperature)` with
  logits = (hidden @ head).astype(float32) (the decoder's head: `Decoder(...,
  return_hidden=True)` and `head_matrix`), computed `chunk` positions at a time so that only
  [B, chunk, V] float32 logits exist at once, in the forward and in the backward pass:

      forward, per chunk c:   z_c = (h_c @ W) / tau  ->  logp_c, H_c, m_c, log S_c   (fused)
      backward, per chunk c:  recompute z_c; d logits_c from (g_logp_c, g_H_c) by the fused
                              formulas (token_logprobs_and_entropy's docstring);
                              d h_c = d logits_c @ W^T,   d W += h_c^T @ d logits_c

  d logits_c is cast to the compute dtype before both matmuls, as autodiff of the decoder's
  `.astype(float32)` does; d W accumulates in float32 across chunks. Residuals are hidden, W and
  [B, N] per-position statistics: memory O(B chunk V + B N D + D V) instead of O(B N V). The
  scan takes as few chunks as `chunk` allows, of equal size (balanced_chunk: N = 160 at chunk
  128 is two chunks of 80), N zero-padded to their total (the padded rows get zero cotangents
  and are sliced off). chunk is static (a Python int).
  """
  if hidden.ndim != 3 or head.ndim != 2:
    raise ValueError(f"hidden must be [B, N, D] and head [D, V], got {hidden.shape} and "
                     f"{head.shape}")
  if hidden.shape[-1] != head.shape[0]:
    raise ValueError(f"hidden's model dimension {hidden.shape[-1]} differs from head's "
                     f"{head.shape[0]} (head is [D, V])")
  if targets.shape != hidden.shape[:2]:
    raise ValueError(f"targets {targets.shape} must be hidden {hidden.shape} without the model "
                     "axis")
  if not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f"chunk must be a positive int, got {chunk!r}")
  temperature = jnp.asarray(temperature, jnp.float32)
  if temperature.ndim:
    raise ValueError(f"temperature must be a scalar, got shape {temperature.shape}")
  n = hidden.shape[1]
  if n == 0:
    empty = jnp.zeros(targets.shape, jnp.float32)
    return empty, empty
  tau = jnp.where(temperature > 0, temperature, 1.0)
  targets = targets.astype(jnp.int32)
  targets = jnp.where(targets < 0, targets + head.shape[1], targets)
  return _head_logp_entropy(hidden, head, targets, tau, balanced_chunk(n, chunk))


def balanced_chunk(n: int, chunk: int) -> int:
  """ceil(n / ceil(n / chunk)): the fewest chunks of at most `chunk` positions, evenly sized,
  so that padding is under one position per chunk. Chunks of `chunk` would pad up to
  chunk - 1 positions, whose head matmuls (forward, recompute, backward) are wasted: a
  train step on 160 completion positions at chunk 128 spent ~10% of its time on them."""
  return -(-n // -(-n // chunk))


def _chunks(x: Array, chunk: int) -> Array:
  """[B, N, ...] -> [C, B, chunk, ...], N zero-padded to C * chunk (the scanned axis first)."""
  b, n = x.shape[:2]
  c = -(-n // chunk)
  x = jnp.pad(x, [(0, 0), (0, c * chunk - n)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape(b, c, chunk, *x.shape[2:]), 1, 0)


def _unchunk(x: Array, n: int) -> Array:
  """[C, B, chunk, ...] -> [B, N, ...]: the inverse of _chunks."""
  c, b, k = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape(b, c * k, *x.shape[3:])[:, :n]


def _chunk_logits(h: Array, head: Array) -> Array:
  return _dense(h, head).astype(jnp.float32)


def _head_parts(hidden, head, targets, tau, chunk):
  def body(_, xs):
    h, t = xs
    return None, _logp_entropy_parts(_chunk_logits(h, head), t, tau)

  _, parts = jax.lax.scan(body, None, (_chunks(hidden, chunk), _chunks(targets, chunk)))
  return tuple(_unchunk(x, hidden.shape[1]) for x in parts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _head_logp_entropy(hidden, head, targets, tau, chunk):
  logp, ent, _, _ = _head_parts(hidden, head, targets, tau, chunk)
  return logp, ent


def _head_logp_entropy_fwd(hidden, head, targets, tau, chunk):
  logp, ent, top, log_total = _head_parts(hidden, head, targets, tau, chunk)
  return (logp, ent), (hidden, head, targets, tau, ent, top, log_total)


def _head_logp_entropy_bwd(chunk, residuals, cotangents):
  hidden, head, targets, tau, ent, top, log_total = residuals
  g_logp, g_ent = cotangents
  dt = head.dtype

  def body(carry, xs):
    d_head, d_tau = carry
    h, t, e, m, log_s, g_l, g_e = xs
    d_logits, d_tau_c = _logits_cotangent(_chunk_logits(h, head), t, tau, e, m, log_s, g_l, g_e)
    d_logits = d_logits.astype(dt).reshape(-1, head.shape[1])  # [B chunk, V]
    h2 = h.reshape(-1, h.shape[-1])  # [B chunk, D]
    d_head = d_head + jax.lax.dot_general(h2, d_logits, (((0,), (0,)), ((), ())),
                                          precision=PRECISION,
                                          preferred_element_type=jnp.float32)
    d_h = jnp.matmul(d_logits, head.T, precision=PRECISION).reshape(h.shape)
    return (d_head, d_tau + d_tau_c), d_h

  xs = tuple(_chunks(x, chunk) for x in (hidden, targets, ent, top, log_total, g_logp, g_ent))
  init = (jnp.zeros(head.shape, jnp.float32), jnp.zeros((), jnp.float32))
  (d_head, d_tau), d_hidden = jax.lax.scan(body, init, xs)
  d_hidden = _unchunk(d_hidden, hidden.shape[1]).astype(hidden.dtype)
  return (d_hidden, d_head.astype(dt), np.zeros(targets.shape, jax.dtypes.float0),
          d_tau.astype(tau.dtype))


_head_logp_entropy.defvjp(_head_logp_entropy_fwd, _head_logp_entropy_bwd)


def completion_logprobs(decoder: Decoder, params, prompt_tokens: Array, prompt_mask: Array,
                        completion: Array, completion_mask: Array,
                        temperature: Array | float = 1.0, with_entropy: bool = False,
                        chunk: int = 0):
  """Log-probs of completions given left-padded prompts, in one forward pass.

  prompt_tokens, prompt_mask [B, P]; completion, completion_mask [B, N].
  Returns logp [B, N] (and entropy [B, N] when asked); token n is predicted by slot P + n - 1.

  chunk (static): 0 scores the decoder's [B, N, V] logits at once; chunk > 0 with N > chunk
  takes the decoder's hidden states and scores `chunk` positions at a time
  (`head_logprobs_and_entropy`: equal values and gradients up to float rounding, memory that
  grows with chunk instead of N). N <= chunk is one chunk anyway: it takes the logits path.
  """
  if not isinstance(chunk, int) or chunk < 0:
    raise ValueError(f"chunk must be an int >= 0 (0 = unchunked), got {chunk!r}")
  p, n = prompt_tokens.shape[1], completion.shape[1]
  if n == 0:
    empty = jnp.zeros(completion.shape, jnp.float32)
    return (empty, empty) if with_entropy else empty
  # The last completion token predicts nothing scored: it is left out of the forward, so the
  # decoder's T - (p - 1) head slots are exactly the N that predict completion tokens.
  tokens = jnp.concatenate([prompt_tokens, completion[:, :-1]], axis=1).astype(jnp.int32)
  mask = jnp.concatenate([prompt_mask, completion_mask[:, :-1]], axis=1).astype(bool)
  args = ({"params": params}, tokens, positions_from_mask(mask), mask)
  if chunk and n > chunk:
    hidden, _ = decoder.apply(*args, logits_from=p - 1, return_hidden=True)
    logp, ent = head_logprobs_and_entropy(hidden, head_matrix(decoder.config, params),
                                          completion, temperature, chunk)
  else:
    logits, _ = decoder.apply(*args, logits_from=p - 1)
    logp, ent = token_logprobs_and_entropy(logits, completion, temperature)
  return (logp, ent) if with_entropy else logp
