"""One decoder-only transformer for every supported family, used functionally.

    logits, cache = Decoder(config).apply({"params": params}, tokens, positions, kv_valid,
                                          cache=cache, cache_index=i)

Shapes: B batch, T new tokens, S key slots, D model, H query heads, K kv heads, E head dim,
F MLP width, V vocab, L layers.

Variants (switches of `ModelConfig`, set by `models.hf` from a Hugging Face config):
  llama  pre-norm RMSNorm, RoPE (optionally with the llama3 frequency scaling), grouped-query
         attention, SwiGLU MLP; tied or untied embeddings.
  qwen2  llama + bias on the q/k/v projections (`qkv_bias`).
  olmo2  RMSNorm *after* the attention and MLP outputs instead of before (`post_norm`), and
         RMSNorm over the whole q and k projections (`qk_norm`).

Attention masking is the same function for training and decoding. Keys live in S slots: without
a cache the slots are the T tokens themselves; with a cache, the T new tokens are written at
slots [cache_index, cache_index + T) and attend to every valid slot up to their own. A query at
slot q sees slot s iff kv_valid[b, s] and s <= q. Prompts are left-padded, so a batch shares
slot numbers while RoPE positions (`positions`, = number of valid tokens before) stay exact.
Because a full forward over [prompt | completion] and a prefill + token-by-token decode reduce
over the same S slots, the trainer's log-probs equal the sampler's to float rounding.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array

VARIANTS = ("llama", "qwen2", "olmo2")
# The projections a LoRA adapter can sit on (attention q, k, v, o; SwiGLU gate, up, down).
LORA_MODULES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static shape and variant switches of the decoder (hashable: a jit static argument).

  rope_scaling: None, or ("llama3", factor, low_freq_factor, high_freq_factor,
                original_max_position_embeddings).
  dtype:        compute dtype ("float32" or "bfloat16"); params stay `param_dtype` masters and
                logits are always float32.
  remat:        recompute each layer's activations in the backward pass (memory for compute).
  attn_chunk:   > 0: a forward without a cache (the trainer's) computes attention this many
                queries at a time, each chunk recomputed in the backward pass (exact; memory
                of one chunk's scores instead of all T x S).
  lora_rank:    r > 0 adds a low-rank update to each projection named in `lora_modules`
                (models.lora): y = x W + (lora_alpha / r) (x A) B, A [in, r], B [r, out], B
                zero-initialized so the adapted model starts as the base. The adapter params sit
                beside their weight (`q_lora_a`, `q_lora_b`); a params tree without them (the
                base) runs with the adapters off.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  variant: str = "llama"
  rope_theta: float = 10000.0
  rope_scaling: tuple | None = None
  norm_eps: float = 1e-6
  qkv_bias: bool = False
  qk_norm: bool = False
  post_norm: bool = False
  tie_embeddings: bool = False
  max_position_embeddings: int = 2048
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  attn_chunk: int = 0
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_modules: tuple[str, ...] = ()

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown model variant {self.variant!r}; supported: {VARIANTS}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.lora_rank < 0:
      raise ValueError(f"lora_rank={self.lora_rank} must be >= 0 (0 = no adapters)")
    unknown = [m for m in self.lora_modules if m not in LORA_MODULES]
    if unknown:
      raise ValueError(f"lora modules {unknown} are not projections of the decoder; choose "
                       f"among {', '.join(LORA_MODULES)}")
    if self.lora_rank and not self.lora_modules:
      raise ValueError(f"lora_rank={self.lora_rank} with no lora_modules: name the projections "
                       f"to adapt ({', '.join(LORA_MODULES)})")

  @classmethod
  def from_dict(cls, d) -> ModelConfig:
    d = dict(d)
    if d.get("rope_scaling") is not None:
      d["rope_scaling"] = tuple(d["rope_scaling"])
    if "lora_modules" in d:
      d["lora_modules"] = tuple(d["lora_modules"])
    return cls(**d)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    if d["rope_scaling"] is not None:
      d["rope_scaling"] = list(d["rope_scaling"])
    d["lora_modules"] = list(d["lora_modules"])
    return d


@flax.struct.dataclass
class KVCache:
  """Keys and values of S slots, one array per layer: k, v = L-tuples of [B, K, S, E].

  One buffer per layer, not a stacked [L, ...] one: in the decode loop XLA:CPU updated the
  stacked buffer and sliced each layer's keys out of it with copies (a third of a SmolLM2 decode
  step at batch 32); separate buffers are written in place. Heads before slots: the attention
  reads [B, K, S, E] as batched matrices without transposing the cache every step.
  """

  k: tuple[Array, ...]
  v: tuple[Array, ...]

  @classmethod
  def zeros(cls, config: ModelConfig, batch: int, slots: int) -> KVCache:
    shape = (batch, config.n_kv_heads, slots, config.head_dim)
    dtype = jnp.dtype(config.dtype)
    layers = range(config.n_layers)
    return cls(k=tuple(jnp.zeros(shape, dtype) for _ in layers),
               v=tuple(jnp.zeros(shape, dtype) for _ in layers))

  @property
  def slots(self) -> int:
    return self.k[0].shape[2]

  def repeat(self, n: int) -> KVCache:
    """Each row repeated n times along the batch (G rollouts sharing one prefill)."""
    return KVCache(k=tuple(jnp.repeat(x, n, axis=0) for x in self.k),
                   v=tuple(jnp.repeat(x, n, axis=0) for x in self.v))

  def write(self, layer: int, index, k: Array, v: Array) -> KVCache:
    """Layer `layer`'s k, v [B, K, T, E] written at slots index .. index + T - 1."""
    at = (0, 0, index, 0)
    new_k = jax.lax.dynamic_update_slice(self.k[layer], k.astype(self.k[layer].dtype), at)
    new_v = jax.lax.dynamic_update_slice(self.v[layer], v.astype(self.v[layer].dtype), at)
    replace = lambda xs, x: xs[:layer] + (x,) + xs[layer + 1:]
    return KVCache(k=replace(self.k, new_k), v=replace(self.v, new_v))


def rope_inv_freq(config: ModelConfig) -> Array:
  """[E/2] inverse frequencies theta^(-2i/E), with the llama3 scaling when configured.

  llama3 (Meta, Llama 3.1): wavelengths longer than original_max / low_freq_factor are divided
  by `factor`, shorter than original_max / high_freq_factor are kept, and the band between is
  interpolated linearly in original_max / wavelength.
  """
  e = config.head_dim
  inv = 1.0 / (config.rope_theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
  if config.rope_scaling is None:
    return inv
  kind, factor, low, high, original = config.rope_scaling
  if kind != "llama3":
    raise ValueError(f"unsupported rope scaling {kind!r}; supported: llama3")
  wavelen = 2 * math.pi / inv
  low_wavelen, high_wavelen = original / low, original / high
  scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (original / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotates x [B, T, N, E] by angle position * inv_freq, halves layout (x1, x2) -> rotate."""
  angles = positions[:, :, None].astype(jnp.float32) * inv_freq  # [B, T, E/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# Every matmul at full precision for its operands: XLA's default on GPUs (TF32) and TPUs
# (bfloat16 passes) rounds float32 operands, which on an H200 put the sampler's and the train
# step's log-probs of the same SmolLM2-shaped rollout up to 3.7e-3 apart (the PPO ratio off 1
# before any update) and 6e-3 from the CPU's (benchmarks/README.md, "On an H200"). The same
# numbers on CPU, where float32 is always full; no change for bfloat16 operands.
PRECISION = jax.lax.Precision.HIGHEST


def _dense(x: Array, w: Array) -> Array:
  """x [B, T, D] times w [D, ...] as one 2-D matmul: XLA:CPU runs a rank-2 dot (and its
  gradients) about twice as fast as the same contraction with batch dimensions."""
  out = jnp.matmul(x.reshape(-1, x.shape[-1]), w.reshape(w.shape[0], -1), precision=PRECISION)
  return out.reshape(*x.shape[:-1], out.shape[-1])


def _attention(qg: Array, keys: Array, values: Array, visible: Array) -> Array:
  """softmax(q k^T / sqrt(E)) v over the visible slots.

  qg [B, T, K, G, E] (query heads grouped by kv head), keys, values [B, K, S, E],
  visible [B, T, S] -> [B, K, G, T, E]. Scores and softmax in float32.
  """
  e = qg.shape[-1]
  scores = jnp.einsum("btkge,bkse->bkgts", qg, keys, precision=PRECISION).astype(jnp.float32)
  scores = scores * (e ** -0.5)
  # A finite floor, not -inf: a padding query with no visible key gives a harmless uniform row.
  scores = jnp.where(visible[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
  # [B, K, G*T, S] x [B, K, S, E] as batched matmuls; only the small result is transposed.
  return jnp.einsum("bkgts,bkse->bkgte", probs, values, precision=PRECISION)


def _chunked_attention(qg: Array, keys: Array, values: Array, visible: Array,
                       chunk: int) -> Array:
  """_attention computed `chunk` queries at a time, each chunk recomputed in the backward pass.

  Exact, not an approximation: each query's softmax runs over all S slots, so chunking the
  queries only changes which rows are computed together. A lax.scan over the chunks with a
  checkpointed body keeps one chunk's scores [B, K, G, chunk, S] alive, in the forward and in
  the backward pass, instead of [B, K, G, T, S] per layer (at T = S = 1536 tokens the full
  scores of a micro-batch of 4 are half a gigabyte per layer). T is padded to a multiple of
  chunk with rows that see no slot (uniform, sliced off).
  """
  b, t = qg.shape[:2]
  n = -(-t // chunk)
  pad = n * chunk - t
  qc = jnp.pad(qg, [(0, 0), (0, pad)] + [(0, 0)] * 3)
  vc = jnp.pad(visible, [(0, 0), (0, pad), (0, 0)])
  qc = jnp.moveaxis(qc.reshape(b, n, chunk, *qg.shape[2:]), 1, 0)  # [C, B, chunk, K, G, E]
  vc = jnp.moveaxis(vc.reshape(b, n, chunk, vc.shape[-1]), 1, 0)  # [C, B, chunk, S]

  @jax.checkpoint
  def one(q, vis):
    return _attention(q, keys, values, vis)

  _, out = jax.lax.scan(lambda _, xs: (None, one(*xs)), None, (qc, vc))  # [C, B, K, G, c, E]
  out = jnp.moveaxis(out, 0, 3)  # [B, K, G, C, chunk, E]
  return out.reshape(*out.shape[:3], n * chunk, out.shape[-1])[:, :, :, :t]


def _param(module, name, init, shape, axes, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _project(module, name: str, x: Array, w: Array, config: ModelConfig) -> Array:
  """x [B, T, I] times the weight w [..., O] (I inputs) -> [B, T, O], in compute dtype,
  plus the LoRA update (lora_alpha / r) (x A) B when `name` is adapted and the params hold
  its adapter (a params tree without adapters, the base, runs with them off).

  Adapter params: A [I, r] ~ N(0, 1 / I), B [r, O] = 0, in param dtype;
  replicated (no logical axes): they are small next to w.
  """
  dt = jnp.dtype(config.dtype)
  w = w.reshape(x.shape[-1], -1)  # o [H, E, D] -> [H E, D]; q [D, H, E] -> [D, H E]
  out = _dense(x, w.astype(dt))
  r = config.lora_rank
  if not r or name not in config.lora_modules:
    return out
  a_name, b_name = f"{name}_lora_a", f"{name}_lora_b"
  if not (module.is_initializing() or module.has_variable("params", a_name)):
    return out
  a = _param(module, a_name, nn.initializers.normal(stddev=w.shape[0] ** -0.5),
             (w.shape[0], r), (None, None), config.param_dtype)
  b = _param(module, b_name, nn.initializers.zeros, (r, w.shape[1]), (None, None),
             config.param_dtype)
  return out + (config.lora_alpha / r) * _dense(_dense(x, a.astype(dt)), b.astype(dt))


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2) + eps) * w, computed in float32."""

  eps: float
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    w = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * w.astype(jnp.float32)).astype(x.dtype)


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, kv_valid, inv_freq, cache, layer, cache_index):
    c = self.config
    dt, pdt = jnp.dtype(c.dtype), c.param_dtype
    init = nn.initializers.normal(stddev=c.d_model ** -0.5)
    h, k_heads, e = c.n_heads, c.n_kv_heads, c.head_dim
    wq = _param(self, "q", init, (c.d_model, h, e), ("embed", "heads", "head_dim"), pdt)
    wk = _param(self, "k", init, (c.d_model, k_heads, e), ("embed", "kv_heads", "head_dim"), pdt)
    wv = _param(self, "v", init, (c.d_model, k_heads, e), ("embed", "kv_heads", "head_dim"), pdt)
    wo = _param(self, "o", nn.initializers.normal(stddev=(h * e) ** -0.5), (h, e, c.d_model),
                ("heads", "head_dim", "embed"), pdt)
    q = _project(self, "q", x, wq, c).reshape(*x.shape[:2], h, e)
    k = _project(self, "k", x, wk, c).reshape(*x.shape[:2], k_heads, e)
    v = _project(self, "v", x, wv, c).reshape(*x.shape[:2], k_heads, e)
    if c.qkv_bias:
      zeros = nn.initializers.zeros
      q = q + _param(self, "q_bias", zeros, (h, e), ("heads", "head_dim"), pdt).astype(dt)
      k = k + _param(self, "k_bias", zeros, (k_heads, e), ("kv_heads", "head_dim"), pdt).astype(dt)
      v = v + _param(self, "v_bias", zeros, (k_heads, e), ("kv_heads", "head_dim"), pdt).astype(dt)
    if c.qk_norm:  # OLMo 2 normalizes the whole projection, across heads
      b, t = q.shape[:2]
      q = RMSNorm(c.norm_eps, pdt, name="q_norm")(q.reshape(b, t, h * e)).reshape(q.shape)
      k = RMSNorm(c.norm_eps, pdt, name="k_norm")(k.reshape(b, t, k_heads * e)).reshape(k.shape)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)

    t = x.shape[1]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, E]: the cache layout
    if cache is None:
      keys, values, q_slots = k, v, jnp.arange(t)
    else:
      cache = cache.write(layer, cache_index, k, v)
      keys, values = cache.k[layer], cache.v[layer]
      q_slots = cache_index + jnp.arange(t)
    s = keys.shape[2]
    visible = kv_valid[:, None, :].astype(bool) & (jnp.arange(s)[None, None, :]
                                                   <= q_slots[None, :, None])  # [B, T, S]

    qg = q.reshape(q.shape[0], t, k_heads, h // k_heads, e)  # query heads grouped by kv head
    keys, values = keys.astype(dt), values.astype(dt)
    if cache is None and c.attn_chunk and t > c.attn_chunk:
      out = _chunked_attention(qg, keys, values, visible, c.attn_chunk)
    else:
      out = _attention(qg, keys, values, visible)
    out = out.transpose(0, 3, 1, 2, 4).reshape(q.shape)
    out = _project(self, "o", out.reshape(*out.shape[:2], h * e), wo, c)
    return out, cache


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    pdt = c.param_dtype
    init = nn.initializers.normal(stddev=c.d_model ** -0.5)
    gate = _param(self, "gate", init, (c.d_model, c.d_ff), ("embed", "mlp"), pdt)
    up = _param(self, "up", init, (c.d_model, c.d_ff), ("embed", "mlp"), pdt)
    down = _param(self, "down", nn.initializers.normal(stddev=c.d_ff ** -0.5),
                  (c.d_ff, c.d_model), ("mlp", "embed"), pdt)
    hidden = nn.silu(_project(self, "gate", x, gate, c)) * _project(self, "up", x, up, c)
    return _project(self, "down", hidden, down, c)


class Block(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, kv_valid, inv_freq, cache, layer, cache_index):
    c = self.config
    norm = lambda name: RMSNorm(c.norm_eps, c.param_dtype, name=name)
    attn = Attention(c, name="attn")
    if c.post_norm:  # OLMo 2: x + norm(f(x))
      a, cache = attn(x, positions, kv_valid, inv_freq, cache, layer, cache_index)
      x = x + norm("post_attn_norm")(a)
      return x + norm("post_mlp_norm")(MLP(c, name="mlp")(x)), cache
    a, cache = attn(norm("attn_norm")(x), positions, kv_valid, inv_freq, cache, layer,
                    cache_index)
    x = x + a
    return x + MLP(c, name="mlp")(norm("mlp_norm")(x)), cache


class Decoder(nn.Module):
  """tokens [B, T], positions [B, T], kv_valid [B, S] -> (logits [B, T', V] float32, cache).

  T' = T - logits_from (a static int): logits of the last T' positions only.
  return_hidden (static): return the final-normed hidden states h [B, T', D] (compute dtype)
  instead, for a caller that applies the head itself; logits = (h @ head_matrix(config,
  params)).astype(float32), the same operations as here (the trainer's chunked log-probs).

  kv_valid marks the key slots holding real tokens: [B, T] without a cache (the attention mask of
  the batch), [B, S] with one (slots beyond cache_index + T are ignored by causality).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions, kv_valid, cache: KVCache | None = None,
               cache_index: Array | int = 0, logits_from: int = 0, return_hidden: bool = False):
    c = self.config
    dt = jnp.dtype(c.dtype)
    embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                       (c.vocab_size, c.d_model), ("vocab", "embed"), c.param_dtype)
    x = jnp.take(embedding, tokens, axis=0).astype(dt)
    inv_freq = rope_inv_freq(c)
    # `layer` (argument 6, counting self) is a Python int: static under remat.
    block_cls = nn.remat(Block, static_argnums=(6,)) if c.remat else Block
    for i in range(c.n_layers):
      x, cache = block_cls(c, name=f"layer_{i}")(x, positions, kv_valid, inv_freq, cache, i,
                                                 cache_index)
    # Only the positions whose logits are wanted go through the (large) head: the trainer asks
    # for the completion slots alone, which keeps [B, T, V] float32 off real vocabularies.
    x = RMSNorm(c.norm_eps, c.param_dtype, name="final_norm")(x[:, logits_from:])
    lm_head = None
    if not c.tie_embeddings:
      lm_head = _param(self, "lm_head", nn.initializers.normal(stddev=c.d_model ** -0.5),
                       (c.d_model, c.vocab_size), ("embed", "vocab"), c.param_dtype)
    if return_hidden:
      return x, cache
    return _dense(x, _head(c, embedding, lm_head)).astype(jnp.float32), cache


def _head(config: ModelConfig, embedding: Array, lm_head: Array | None) -> Array:
  dt = jnp.dtype(config.dtype)
  return embedding.astype(dt).T if config.tie_embeddings else lm_head.astype(dt)


def head_matrix(config: ModelConfig, params) -> Array:
  """The output head W [D, V] in the compute dtype: logits = h @ W, h the final-normed hidden.

  Tied embeddings: the embedding [V, D] transposed; else the `lm_head` param. A function of the
  params, so gradients through it reach the embedding (or lm_head) as through the decoder.
  """
  return _head(config, params["embedding"], params.get("lm_head"))


def positions_from_mask(mask: Array) -> Array:
  """[B, T] RoPE positions of left-padded rows: the count of valid tokens before each one."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def init_params(config: ModelConfig, rng: Array) -> dict:
  """Random params (boxed with logical axis names stripped)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  variables = Decoder(config).init(rng, tokens, tokens, jnp.ones((1, 1), bool))
  return nn.unbox(variables["params"])


def abstract_params(config: ModelConfig):
  """Boxed ShapeDtypeStructs (nn.LogicallyPartitioned leaves) for building shardings."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(
      lambda: Decoder(config).init(jax.random.key(0), tokens, tokens, jnp.ones((1, 1), bool))
  )["params"]


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
