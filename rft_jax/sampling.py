"""Rollouts: one prefill, then a jitted `lax.while_loop` decode over an explicit KV cache.

    rollout = sample(decoder, params, prompt_tokens, prompt_mask, rng,
                     max_new_tokens=N, num_samples=G, temperature=1.0, eos_ids=eos)

Prompts are left-padded to a bucketed length P (`left_pad`), so a new prompt length reuses the
compiled program. The B prompts are prefilled once and their cache repeated for the G rollouts of
each. The cache has S = P + N slots; decode step t writes slot P + t. Sampling settings are array
arguments: changing the temperature does not recompile. The loop exits when every row has emitted
an EOS or after N tokens; there is no host round-trip per token.

Behaviour log-probs are those of the untruncated tempered policy, log softmax(z / tau)[y] (what
the trainer recomputes, `logprobs.completion_logprobs`); `sampler_logp` is the log-prob under the
distribution actually sampled from (after top-k / top-p), for truncated importance weights.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rft_jax.logprobs import scale_logits
from rft_jax.models.decoder import Decoder, KVCache, positions_from_mask

Array = jax.Array


@flax.struct.dataclass
class Rollout:
  """G rollouts of each of B prompts, rows ordered prompt-major (row = b * G + g).

  prompt_tokens, prompt_mask [BG, P]   the left-padded prompt of each row.
  tokens                     [BG, N]   completion tokens (pad after EOS).
  mask                       [BG, N]   1.0 for generated tokens up to and including EOS.
  logp                       [BG, N]   behaviour log-probs, log softmax(z / tau)[token].
  sampler_logp               [BG, N]   log-probs under the truncated (top-k / top-p) distribution.
  """

  prompt_tokens: Array
  prompt_mask: Array
  tokens: Array
  mask: Array
  logp: Array
  sampler_logp: Array

  @property
  def lengths(self) -> Array:
    return jnp.sum(self.mask, axis=-1).astype(jnp.int32)


@flax.struct.dataclass
class _DecodeState:
  step: Array           # [] int32, next completion index to write
  tokens: Array         # [BG, N]
  mask: Array           # [BG, N]
  logp: Array           # [BG, N]
  sampler_logp: Array   # [BG, N]
  done: Array           # [BG] bool
  next_logits: Array    # [BG, V] logits predicting completion token `step`
  cache: KVCache
  rng: Array


def bucket_length(n: int, bucket: int) -> int:
  """n rounded up to a multiple of `bucket` (at least one bucket)."""
  return max(bucket, -(-n // bucket) * bucket)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, bucket: int = 16,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Token lists -> (tokens [B, P] int32, mask [B, P] bool), left-padded to a bucketed P."""
  if not sequences or any(len(s) == 0 for s in sequences):
    raise ValueError("left_pad needs at least one sequence and no empty sequence")
  longest = max(len(s) for s in sequences)
  p = length if length is not None else bucket_length(longest, bucket)
  if longest > p:
    raise ValueError(f"a prompt of {longest} tokens does not fit the prompt length {p}")
  tokens = np.full((len(sequences), p), pad_id, np.int32)
  mask = np.zeros((len(sequences), p), bool)
  for i, s in enumerate(sequences):
    tokens[i, p - len(s):] = s
    mask[i, p - len(s):] = True
  return tokens, mask


def truncate_logits(logits: Array, top_k: Array, top_p: Array) -> Array:
  """Sets logits outside the top-k and outside the top-p nucleus to -inf.

  top_k <= 0 keeps every token; top_p >= 1 keeps every token. The nucleus is the smallest prefix
  of tokens sorted by probability whose mass reaches top_p (the first token is always kept).
  """
  v = logits.shape[-1]
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v).astype(jnp.int32)
  kth = jnp.take_along_axis(sorted_logits, jnp.broadcast_to(k - 1, logits.shape[:-1])[..., None],
                            axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  in_nucleus = mass_before < top_p
  nucleus_floor = jnp.min(jnp.where(in_nucleus, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  floor = jnp.maximum(kth, nucleus_floor)
  return jnp.where(logits >= floor, logits, -jnp.inf)


def _argmax(x: Array) -> Array:
  """[B, V] -> [B] int32 index of the first maximum, as jnp.argmax.

  Two plain reductions: XLA:CPU runs argmax's (value, index) pair reduction unvectorized, about
  6x slower on a 32k vocabulary, and that was a fifth of a decode step.
  """
  top = jnp.max(x, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(x == top, iota, x.shape[-1]), axis=-1)


CDF_BLOCK = 128

# On XLA:CPU a tied head is multiplied through a transposed copy of the embedding (see
# `sample`); rft_jax.plan turns it off to plan the program an accelerator runs.
CPU_HEAD_COPY = True


def _last_true(mask: Array) -> Array:
  """[B, M] bool -> [B] index of the last True (0 where none)."""
  return mask.shape[-1] - 1 - jnp.argmax(mask[:, ::-1], axis=-1)


def _inverse_cdf_sample(rng: Array, z: Array) -> Array:
  """[B, V] logits (-inf allowed) -> [B] int32, one draw per row from softmax(z).

  Inverts the CDF at one uniform per row, in two levels: sums of blocks of CDF_BLOCK
  probabilities, then the prefix sums inside the chosen block; two passes over V. The Gumbel-max
  trick (jax.random.categorical) draws a random number per vocabulary entry, and on CPU
  generating those cost more than the rest of choosing a token. A token of probability 0
  (truncated) is never drawn: the chosen entry is the first whose prefix sum exceeds the
  target, and at the top end (rounding) the last entry of positive probability.
  """
  b, v = z.shape
  block = min(CDF_BLOCK, v)
  z = jnp.pad(z, ((0, 0), (0, -v % block)), constant_values=-jnp.inf)
  probs = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True)).reshape(b, -1, block)  # unnormalized
  sums = jnp.sum(probs, axis=-1)  # [B, V / block]
  cdf = jnp.cumsum(sums, axis=-1)
  target = jax.random.uniform(rng, (b,), jnp.float32) * cdf[:, -1]
  rows = jnp.arange(b)
  blk = jnp.minimum(jnp.sum(cdf <= target[:, None], axis=-1), _last_true(sums > 0))
  inside = probs[rows, blk]  # [B, block]
  rest = jnp.maximum(target - (cdf[rows, blk] - sums[rows, blk]), 0.0)
  k = jnp.minimum(jnp.sum(jnp.cumsum(inside, axis=-1) <= rest[:, None], axis=-1),
                  _last_true(inside > 0))
  return (blk * block + k).astype(jnp.int32)


def _token_logp(z: Array, token: Array) -> Array:
  """log softmax(z)[token] [B] without writing the [B, V] log-softmax out (two passes over z).

  Same operations as jax.nn.log_softmax ((z - max) - log sum exp(z - max)), so the value is the
  trainer's to float rounding.
  """
  top = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  log_norm = jnp.log(jnp.sum(jnp.exp(z - top), axis=-1))
  picked = jnp.take_along_axis(z, token[:, None], axis=-1)[:, 0]
  return (picked - top[:, 0]) - log_norm


def _choose(rng, logits, temperature, top_k, top_p):
  """One token per row: sampled from the tempered, truncated softmax, or argmax at tau = 0.

  At tau = 0 the argmax of the truncated logits is the argmax of the logits (truncation keeps
  every maximal entry).
  """
  scaled = scale_logits(logits, temperature)
  truncating = (top_k > 0) | (top_p < 1.0)
  truncated = jax.lax.cond(truncating, lambda z: truncate_logits(z, top_k, top_p), lambda z: z,
                           scaled)
  token = jax.lax.cond(temperature > 0, lambda z: _inverse_cdf_sample(rng, z), _argmax,
                       truncated)
  logp = _token_logp(scaled, token)
  # Without truncation the sampled distribution is the tempered one: no second normalization.
  sampler_logp = jax.lax.cond(truncating, lambda: _token_logp(truncated, token), lambda: logp)
  return token, logp, jnp.where(temperature > 0, sampler_logp, 0.0)


@functools.partial(jax.jit, static_argnames=("decoder", "max_new_tokens", "num_samples"))
def sample(decoder: Decoder, params, prompt_tokens: Array, prompt_mask: Array, rng: Array, *,
           max_new_tokens: int, num_samples: int = 1, temperature: Array | float = 1.0,
           top_k: Array | int = 0, top_p: Array | float = 1.0, eos_ids: Array,
           pad_id: Array | int = 0) -> Rollout:
  """G = num_samples rollouts of N = max_new_tokens tokens for each left-padded prompt.

  prompt_tokens, prompt_mask [B, P]; eos_ids [E] int (entries < 0 ignored); rng a PRNG key.
  """
  b, p = prompt_tokens.shape
  n, g = max_new_tokens, num_samples
  temperature = jnp.asarray(temperature, jnp.float32)
  top_k = jnp.asarray(top_k, jnp.int32)
  top_p = jnp.asarray(top_p, jnp.float32)
  eos_ids = jnp.asarray(eos_ids, jnp.int32).reshape(-1)
  prompt_mask = prompt_mask.astype(bool)

  if decoder.config.tie_embeddings and jax.default_backend() == "cpu" and CPU_HEAD_COPY:
    # XLA:CPU multiplies by the transposed embedding ~25% slower than by a [D, V] matrix, and the
    # head is the largest matmul of a decode step: one transposed copy per call (V x D memory).
    decoder = Decoder(dataclasses.replace(decoder.config, tie_embeddings=False))
    params = {**params, "lm_head": params["embedding"].T}

  # Generated slots are marked valid up front: causality hides each one until it is written.
  kv_valid = jnp.concatenate([prompt_mask, jnp.ones((b, n), bool)], axis=1)
  cache = KVCache.zeros(decoder.config, b, p + n)
  logits, cache = decoder.apply({"params": params}, prompt_tokens.astype(jnp.int32),
                                positions_from_mask(prompt_mask), kv_valid, cache=cache,
                                cache_index=0, logits_from=p - 1)
  if g > 1:
    cache = cache.repeat(g)
    logits = jnp.repeat(logits, g, axis=0)
    kv_valid = jnp.repeat(kv_valid, g, axis=0)
  prompt_tokens = jnp.repeat(prompt_tokens, g, axis=0)
  prompt_mask = jnp.repeat(prompt_mask, g, axis=0)
  next_position = jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32)  # [BG]

  zeros = jnp.zeros((b * g, n), jnp.float32)
  state = _DecodeState(step=jnp.zeros((), jnp.int32),
                       tokens=jnp.full((b * g, n), pad_id, jnp.int32), mask=zeros, logp=zeros,
                       sampler_logp=zeros, done=jnp.zeros((b * g,), bool),
                       next_logits=logits[:, 0], cache=cache, rng=rng)

  def cond(s: _DecodeState):
    return (s.step < n) & ~jnp.all(s.done)

  def body(s: _DecodeState):
    rng, key = jax.random.split(s.rng)
    token, logp, sampler_logp = _choose(key, s.next_logits, temperature, top_k, top_p)
    live = ~s.done
    token = jnp.where(live, token, pad_id)
    write = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(
        buf, x[:, None].astype(buf.dtype), s.step, axis=1)
    done = s.done | jnp.any(token[:, None] == eos_ids[None, :], axis=-1)
    logits, cache = decoder.apply({"params": params}, token[:, None],
                                  (next_position + s.step)[:, None], kv_valid, cache=s.cache,
                                  cache_index=p + s.step)
    return _DecodeState(step=s.step + 1, tokens=write(s.tokens, token),
                        mask=write(s.mask, live), logp=write(s.logp, jnp.where(live, logp, 0.0)),
                        sampler_logp=write(s.sampler_logp, jnp.where(live, sampler_logp, 0.0)),
                        done=done, next_logits=logits[:, 0], cache=cache, rng=rng)

  state = jax.lax.while_loop(cond, body, state)
  return Rollout(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, tokens=state.tokens,
                 mask=state.mask, logp=state.logp, sampler_logp=state.sampler_logp)
