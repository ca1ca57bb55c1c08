"""LoRA: rank-r adapters on the decoder's projections, trained while the base stays frozen.

    config = lora.configure(policy.config, rank=8, alpha=16.0, modules=("q", "v"))
    adapters = lora.init_adapters(config, rng)          # {layer_i: {attn: {q_lora_a: ...}}}
    params = lora.combine(base_params, adapters)         # the adapted model's params tree
    base, adapters = lora.split(params)                  # and back
    merged = lora.merge(config, params)                  # W + (alpha / r) A B, no adapters

The adapted projection (models.decoder._project) is y = x W + s (x A) B with s = alpha / r,
A [I, r], B [r, O] (O the weight's flattened output axes). With B = 0 at initialization the
adapted model equals the base. Only A and B are trained: the optimizer state and the checkpoints
hold r (I + O) numbers per adapted weight instead of I O. The base tree, without the adapter
leaves, is the model with the adapters off: the KL reference costs no second copy of the params.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rft_jax.models.decoder import LORA_MODULES, PRECISION, ModelConfig, abstract_params

_SUFFIXES = ("_lora_a", "_lora_b")


def configure(config: ModelConfig, rank: int, alpha: float,
              modules: str | tuple[str, ...]) -> ModelConfig:
  """`config` with adapters of rank `rank` on `modules` ("q,v" or a tuple; rank 0 = none).

  Raises ValueError naming the unknown modules and the ones the decoder has.
  """
  if isinstance(modules, str):
    modules = tuple(m.strip() for m in modules.split(",") if m.strip())
  if not rank:
    return dataclasses.replace(config, lora_rank=0, lora_modules=())
  return dataclasses.replace(config, lora_rank=int(rank), lora_alpha=float(alpha),
                             lora_modules=tuple(modules))


def is_adapter(name: str) -> bool:
  return name.endswith(_SUFFIXES)


def split(params: dict) -> tuple[dict, dict]:
  """params -> (base, adapters): two trees of dicts, each with only its own leaves."""
  base, adapters = {}, {}
  for k, v in params.items():
    if isinstance(v, dict):
      b, a = split(v)
      if b:
        base[k] = b
      if a:
        adapters[k] = a
    elif is_adapter(k):
      adapters[k] = v
    else:
      base[k] = v
  return base, adapters


def combine(base: dict, adapters: dict) -> dict:
  """The union of two trees from `split` (shares every leaf: nothing is copied)."""
  out = dict(base)
  for k, v in adapters.items():
    out[k] = combine(out.get(k, {}), v) if isinstance(v, dict) else v
  return out


def init_adapters(config: ModelConfig, rng: jax.Array) -> dict:
  """Fresh adapters for `config` (A ~ N(0, 1 / I), B = 0), without building the base params.

  The same initializers as the decoder's, drawn per adapter from fold_in(rng, index).
  """
  if not config.lora_rank:
    return {}
  _, shapes = split(jax.tree.map(lambda x: x.value, abstract_params(config),
                                 is_leaf=lambda x: hasattr(x, "names")))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for i, (path, s) in enumerate(leaves):
    if path[-1].key.endswith("_lora_a"):
      x = jax.random.normal(jax.random.fold_in(rng, i), s.shape, jnp.float32) * s.shape[0] ** -0.5
      out.append(x.astype(s.dtype))
    else:
      out.append(jnp.zeros(s.shape, s.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def merge(config: ModelConfig, params: dict) -> dict:
  """Base params with each adapted weight replaced by W + (alpha / r) A B (in W's dtype, the
  product in float32); the adapters are dropped. The result runs under `configure(config, 0)`
  (or any config: without adapter leaves the adapters are off) and exports to Hugging Face."""
  base, adapters = split(params)
  if not adapters:
    return base
  scale = config.lora_alpha / config.lora_rank

  def walk(b: dict, a: dict) -> dict:
    out = dict(b)
    for k, v in a.items():
      if isinstance(v, dict):
        out[k] = walk(b[k], v)
    for name in LORA_MODULES:
      if f"{name}_lora_a" in a:
        w = b[name]
        delta = jnp.matmul(a[f"{name}_lora_a"].astype(jnp.float32),
                           a[f"{name}_lora_b"].astype(jnp.float32), precision=PRECISION)
        # A [I, r] B [r, O]: I is the weight's leading axes (o: [H, E, D] has I = H E).
        delta = delta.reshape(w.shape)
        out[name] = (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
    return out

  return walk(base, adapters)
