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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rft_jax import sharding
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
  """The decode loop's carry; every array but step and rng (_NOT_PER_ROW) has the batch (BG
  rows) first."""

  step: Array           # [] int32, next completion index to write
  tokens: Array         # [BG, N]
  mask: Array           # [BG, N]
  logp: Array           # [BG, N]
  sampler_logp: Array   # [BG, N]
  done: Array           # [BG] bool
  next_logits: Array    # [BG, V] logits predicting completion token `step`
  cache: KVCache
  kv_valid: Array       # [BG, P + N] key slots holding real tokens (generated ones up front)
  next_position: Array  # [BG] position of completion token 0
  row: Array            # [BG] int32, the row's index in the full batch (its random numbers)
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


def check_left_padded(prompt_mask) -> None:
  """Raises unless each row's valid tokens are one block ending at the last column.

  The sampler reads a row's next-token logits at the last prompt column and places the
  completion after it: a right-padded row would continue from a pad, silently. A mask this
  process cannot read whole (traced, or sharded over processes) is left to its callers.
  """
  if isinstance(prompt_mask, jax.core.Tracer) or (
      isinstance(prompt_mask, jax.Array) and not prompt_mask.is_fully_addressable):
    return
  m = np.asarray(prompt_mask).astype(bool)
  ok = m[:, -1] & np.all(m[:, 1:] >= m[:, :-1], axis=1)
  if not ok.all():
    raise ValueError(f"prompts must be left-padded (each row's valid tokens one block ending at "
                     f"the last column, as left_pad makes them); rows "
                     f"{np.flatnonzero(~ok)[:8].tolist()} are not")


def truncate_logits(logits: Array, top_k: Array, top_p: Array) -> Array:
  """Sets logits outside the top-k and outside the top-p nucleus to -inf.

  top_k <= 0 keeps every token; top_p >= 1 keeps every token. The nucleus is the smallest prefix
  of tokens sorted by probability whose mass reaches top_p (the first token is always kept),
  measured on the whole distribution: HF's and vLLM's samplers renormalize after top-k first,
  so with both set they can keep fewer tokens ([0.5, 0.3, 0.15, 0.05], k = 2, p = 0.6: 2 here,
  1 there). Ties at a cut-off are all kept.
  """
  v = logits.shape[-1]
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v).astype(jnp.int32)
  kth = jnp.take_along_axis(sorted_logits, jnp.broadcast_to(k - 1, logits.shape[:-1])[..., None],
                            axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # The first token explicitly (top_p <= 0 would keep none) and every token at top_p >= 1
  # (float32's running sum reaches 1.0 before the tail: tokens below ~6e-8 were cut).
  first = jnp.arange(v) == 0
  in_nucleus = (mass_before < top_p) | (top_p >= 1.0) | first
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

# How a row's random numbers are made (row_uniforms); stored with results that were sampled
# (train.base_test_key), so that a change of the scheme does not mix streams. Before this name
# existed, the uniforms of a step were one draw of shape [B] (they depended on the batch).
DRAWS = "fold_in(step key, row)"

# On XLA:CPU a tied head is multiplied through a transposed copy of the embedding (see
# `sample`); rft_jax.plan turns it off to plan the program an accelerator runs.
CPU_HEAD_COPY = True


def _last_true(mask: Array) -> Array:
  """[B, M] bool -> [B] index of the last True (0 where none)."""
  return mask.shape[-1] - 1 - jnp.argmax(mask[:, ::-1], axis=-1)


def row_uniforms(rng: Array, row_ids: Array) -> Array:
  """[R] uniforms in [0, 1), row r's from fold_in(rng, row_ids[r]): a row draws the same number
  whichever rows share its batch (sample_compacting drops finished rows mid-decode)."""
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, row_ids.astype(jnp.uint32))
  return jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)


def _inverse_cdf_sample(rng: Array, z: Array, row_ids: Array | None = None) -> Array:
  """[B, V] logits (-inf allowed) -> [B] int32, one draw per row from softmax(z); the uniform of
  row r comes from row_ids[r] (default r) alone (row_uniforms).

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
  target = row_uniforms(rng, jnp.arange(b) if row_ids is None else row_ids) * cdf[:, -1]
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


def _choose(rng, logits, temperature, top_k, top_p, row_ids):
  """One token per row: sampled from the tempered, truncated softmax, or argmax at tau = 0.

  At tau = 0 the argmax of the truncated logits is the argmax of the logits (truncation keeps
  every maximal entry).
  """
  scaled = scale_logits(logits, temperature)
  truncating = (top_k > 0) | (top_p < 1.0)
  truncated = jax.lax.cond(truncating, lambda z: truncate_logits(z, top_k, top_p), lambda z: z,
                           scaled)
  token = jax.lax.cond(temperature > 0, lambda z: _inverse_cdf_sample(rng, z, row_ids), _argmax,
                       truncated)
  logp = _token_logp(scaled, token)
  # Without truncation the sampled distribution is the tempered one: no second normalization.
  sampler_logp = jax.lax.cond(truncating, lambda: _token_logp(truncated, token), lambda: logp)
  return token, logp, jnp.where(temperature > 0, sampler_logp, 0.0)


def _decoding_head(decoder: Decoder, params):
  """On XLA:CPU a tied head is multiplied through a transposed copy of the embedding: XLA:CPU
  multiplies by the transposed embedding ~25% slower than by a [D, V] matrix, and the head is
  the largest matmul of a decode step (one copy per call, V x D memory)."""
  if decoder.config.tie_embeddings and jax.default_backend() == "cpu" and CPU_HEAD_COPY:
    decoder = Decoder(dataclasses.replace(decoder.config, tie_embeddings=False))
    params = {**params, "lm_head": params["embedding"].T}
  return decoder, params


def _split_rows(tree, mesh: Mesh | None):
  """Each array of `tree` split along its rows (leading axis) over the mesh's batch axes, as far
  as they divide it, its other axes left to XLA. Why: one prompt's G rollouts are repeats of a
  replicated row (a batch of 1 cannot split), and without this constraint every device would
  decode all G of them."""
  if mesh is None:
    return tree

  def split(x):
    rows = sharding.batch_sharding(mesh, x.shape[:1]).spec[0]
    spec = PartitionSpec(rows, *[PartitionSpec.UNCONSTRAINED] * (x.ndim - 1))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
  return jax.tree.map(split, tree)


def _prefill(decoder: Decoder, params, prompt_tokens: Array, prompt_mask: Array, rng: Array,
             max_new_tokens: int, num_samples: int, pad_id,
             mesh: Mesh | None = None) -> tuple[_DecodeState, Array, Array]:
  """The prompts through the decoder once, their cache repeated for the G rollouts of each:
  (the loop's first state, prompt tokens [BG, P], prompt mask [BG, P]); with a mesh, the
  BG rows split over its batch axes (_split_rows)."""
  b, p = prompt_tokens.shape
  n, g = max_new_tokens, num_samples
  prompt_mask = prompt_mask.astype(bool)
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
  zeros = jnp.zeros((b * g, n), jnp.float32)
  state = _DecodeState(step=jnp.zeros((), jnp.int32),
                       tokens=jnp.full((b * g, n), pad_id, jnp.int32), mask=zeros, logp=zeros,
                       sampler_logp=zeros, done=jnp.zeros((b * g,), bool),
                       next_logits=logits[:, 0], cache=cache, kv_valid=kv_valid,
                       next_position=jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32),
                       row=jnp.arange(b * g, dtype=jnp.int32), rng=rng)
  if mesh is not None:
    state = state.replace(**_split_rows(_per_row(state), mesh))
    prompt_tokens, prompt_mask = _split_rows((prompt_tokens, prompt_mask), mesh)
  return state, prompt_tokens, prompt_mask


def _decode(decoder: Decoder, params, state: _DecodeState, stop_at: Array, temperature: Array,
            top_k: Array, top_p: Array, eos_ids: Array, pad_id) -> _DecodeState:
  """Decode steps until step == stop_at or every row has ended (the while loop)."""
  n = state.tokens.shape[1]
  p = state.kv_valid.shape[1] - n

  def cond(s: _DecodeState):
    return (s.step < stop_at) & ~jnp.all(s.done)

  def body(s: _DecodeState):
    rng, key = jax.random.split(s.rng)
    token, logp, sampler_logp = _choose(key, s.next_logits, temperature, top_k, top_p, s.row)
    live = ~s.done
    token = jnp.where(live, token, pad_id)
    write = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(
        buf, x[:, None].astype(buf.dtype), s.step, axis=1)
    done = s.done | jnp.any(token[:, None] == eos_ids[None, :], axis=-1)
    logits, cache = decoder.apply({"params": params}, token[:, None],
                                  (s.next_position + s.step)[:, None], s.kv_valid,
                                  cache=s.cache, cache_index=p + s.step)
    return s.replace(step=s.step + 1, tokens=write(s.tokens, token), mask=write(s.mask, live),
                     logp=write(s.logp, jnp.where(live, logp, 0.0)),
                     sampler_logp=write(s.sampler_logp, jnp.where(live, sampler_logp, 0.0)),
                     done=done, next_logits=logits[:, 0], cache=cache, rng=rng)

  return jax.lax.while_loop(cond, body, state)


def _settings(temperature, top_k, top_p, eos_ids):
  return (jnp.asarray(temperature, jnp.float32), jnp.asarray(top_k, jnp.int32),
          jnp.asarray(top_p, jnp.float32), jnp.asarray(eos_ids, jnp.int32).reshape(-1))


@functools.partial(jax.jit, static_argnames=("decoder", "max_new_tokens", "num_samples", "mesh"))
def sample(decoder: Decoder, params, prompt_tokens: Array, prompt_mask: Array, rng: Array, *,
           max_new_tokens: int, num_samples: int = 1, temperature: Array | float = 1.0,
           top_k: Array | int = 0, top_p: Array | float = 1.0, eos_ids: Array,
           pad_id: Array | int = 0, mesh: Mesh | None = None) -> Rollout:
  """G = num_samples rollouts of N = max_new_tokens tokens for each left-padded prompt.

  prompt_tokens, prompt_mask [B, P]; eos_ids [E] int (entries < 0 ignored); rng a PRNG key.
  Left padding is not checked inside the jit (check_left_padded does it on the host).
  mesh: the B x G rows split over its batch axes (as far as they divide), whatever the prompts'
  sharding; the draws do not depend on it (each row's come from its index: row_uniforms).
  """
  temperature, top_k, top_p, eos_ids = _settings(temperature, top_k, top_p, eos_ids)
  decoder, params = _decoding_head(decoder, params)
  state, prompt_tokens, prompt_mask = _prefill(decoder, params, prompt_tokens, prompt_mask, rng,
                                               max_new_tokens, num_samples, pad_id, mesh)
  state = _decode(decoder, params, state, jnp.int32(max_new_tokens), temperature, top_k, top_p,
                  eos_ids, pad_id)
  return Rollout(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, tokens=state.tokens,
                 mask=state.mask, logp=state.logp, sampler_logp=state.sampler_logp)


_prefill_jit = jax.jit(_prefill,
                       static_argnames=("decoder", "max_new_tokens", "num_samples", "mesh"))
_decode_jit = jax.jit(_decode, static_argnames=("decoder",))


_NOT_PER_ROW = ("step", "rng")  # the _DecodeState fields without the batch first


def _per_row(state: _DecodeState) -> dict:
  """The fields of `state` with the batch first, by name (the cache a pytree of them)."""
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
          if f.name not in _NOT_PER_ROW}


@functools.partial(jax.jit, static_argnames=("mesh",))
def _take_rows(state: _DecodeState, index: Array, mesh: Mesh | None = None) -> _DecodeState:
  take = lambda x: jnp.take(x, index, axis=0)
  return state.replace(**_split_rows(jax.tree.map(take, _per_row(state)), mesh))


_RESULTS = ("tokens", "mask", "logp", "sampler_logp")


def _compacted_size(rows: int, live: int, min_rows: int, multiple: int) -> int:
  """The smallest of rows / 2, rows / 4, ... that holds `live` rows, is >= min_rows and a
  multiple of `multiple` (the mesh's batch split); `rows` when there is none."""
  size = rows
  while (size % 2 == 0 and size // 2 >= max(live, min_rows, 1)
         and (size // 2) % multiple == 0):
    size //= 2
  return size


def sample_compacting(decoder: Decoder, params, prompt_tokens: Array, prompt_mask: Array,
                      rng: Array, *, max_new_tokens: int, num_samples: int = 1,
                      temperature: Array | float = 1.0, top_k: Array | int = 0,
                      top_p: Array | float = 1.0, eos_ids: Array, pad_id: Array | int = 0,
                      stage_tokens: int = 32, min_rows: int = 16, row_multiple: int = 1,
                      mesh: Mesh | None = None, on_stage=None) -> Rollout:
  """`sample`, with the rows that have ended dropped from the decode batch as it goes.

  The loop runs stage_tokens steps at a time; after a stage in which at least half of the rows
  have ended, the unfinished ones move to a batch half as large (or a quarter, ...: at least
  min_rows, a multiple of row_multiple), their KV cache with them. Why: a batch decodes until
  its longest row ends, and SmolLM2's evaluation rows end after ~110 tokens on average while
  one in sixteen runs to 256, so most of a large batch's late steps computed finished rows;
  on CPU a decode step's cost grows with its rows down to ~16 (below that, reading the weights
  dominates). Each row draws sample's random numbers (they depend on its own index:
  row_uniforms), so the tokens are sample's except where a matmul over fewer rows rounds a
  logit across a draw's boundary (XLA:CPU's results differ by ~1e-6 relative between batch
  sizes; such a flip changes that row's rest, rarely); log-probs agree to float rounding. One
  process only: the host reads which rows have ended. mesh: as in `sample`, the rows split over
  its batch axes after the prefill and after each compaction (row_multiple: their split).
  on_stage(step, rows, live): called after each stage (tests, progress).
  """
  if stage_tokens < 1 or min_rows < 1 or row_multiple < 1:
    raise ValueError(f"stage_tokens={stage_tokens}, min_rows={min_rows}, "
                     f"row_multiple={row_multiple}: each must be >= 1")
  check_left_padded(prompt_mask)
  n = max_new_tokens
  settings = _settings(temperature, top_k, top_p, eos_ids)
  decoder, params = _decoding_head(decoder, params)
  state, prompt_tokens, prompt_mask = _prefill_jit(decoder, params, prompt_tokens, prompt_mask,
                                                   rng, n, num_samples, pad_id, mesh)
  total = state.tokens.shape[0]
  out = {name: np.empty((total, n), getattr(state, name).dtype) for name in _RESULTS}

  def store(rows):  # results of state rows `rows` into their places in the full batch
    where = np.asarray(state.row)[rows]
    for name in _RESULTS:
      out[name][where] = np.asarray(getattr(state, name))[rows]

  rows = total
  while True:
    state = _decode_jit(decoder, params, state, jnp.int32(min(int(state.step) + stage_tokens, n)),
                        *settings, pad_id)
    done = np.asarray(state.done)
    live = int(rows - done.sum())
    if on_stage is not None:
      on_stage(int(state.step), rows, live)
    if live == 0 or int(state.step) >= n:
      break
    size = _compacted_size(rows, live, min_rows, row_multiple)
    if size < rows:
      ended = np.flatnonzero(done)
      store(ended)
      # Ended rows fill the batch up to its size: they stay ended and write nothing new.
      keep = np.concatenate([np.flatnonzero(~done), ended[:size - live]])
      state = _take_rows(state, jnp.asarray(keep, jnp.int32), mesh)
      rows = size
  store(np.arange(rows))
  return Rollout(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                 tokens=jnp.asarray(out["tokens"]), mask=jnp.asarray(out["mask"]),
                 logp=jnp.asarray(out["logp"]), sampler_logp=jnp.asarray(out["sampler_logp"]))
