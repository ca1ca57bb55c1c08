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

from rft_jax.models.decoder import Decoder, positions_from_mask

Array = jax.Array


def scale_logits(logits: Array, temperature: Array | float) -> Array:
  """logits / tau, with tau = 1 where tau <= 0 (greedy decoding is scored at tau = 1)."""
  temperature = jnp.asarray(temperature, jnp.float32)
  tau = jnp.where(temperature > 0, temperature, 1.0)
  return logits.astype(jnp.float32) / tau


def token_logprobs(logits: Array, targets: Array, temperature: Array | float = 1.0) -> Array:
  """logits [..., V], targets [...] int -> log p(targets) [...] under softmax(logits / tau)."""
  logp = jax.nn.log_softmax(scale_logits(logits, temperature), axis=-1)
  return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(logits: Array, temperature: Array | float = 1.0) -> Array:
  """logits [..., V] -> entropy [...] of softmax(logits / tau), in nats."""
  logp = jax.nn.log_softmax(scale_logits(logits, temperature), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def completion_logprobs(decoder: Decoder, params, prompt_tokens: Array, prompt_mask: Array,
                        completion: Array, completion_mask: Array,
                        temperature: Array | float = 1.0, with_entropy: bool = False):
  """Log-probs of completions given left-padded prompts, in one forward pass.

  prompt_tokens, prompt_mask [B, P]; completion, completion_mask [B, N].
  Returns logp [B, N] (and entropy [B, N] when asked); token n is predicted by slot P + n - 1.
  """
  p = prompt_tokens.shape[1]
  tokens = jnp.concatenate([prompt_tokens, completion], axis=1).astype(jnp.int32)
  mask = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(bool)
  logits, _ = decoder.apply({"params": params}, tokens, positions_from_mask(mask), mask,
                            logits_from=p - 1)
  logits = logits[:, :-1]  # [B, N, V]: the last slot predicts nothing we scored
  logp = token_logprobs(logits, completion, temperature)
  if with_entropy:
    return logp, entropy(logits, temperature)
  return logp
