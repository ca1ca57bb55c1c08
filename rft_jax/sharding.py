"""The device mesh and the one rule list mapping logical axis names to mesh axes.

Mesh axes: `data` (batch), `fsdp` (batch, and params split along their `embed` axis), `tensor`
(heads, kv heads, MLP width, vocab). Params carry logical names (models.decoder); batches are
split along their leading axis over data x fsdp. A mesh axis that does not divide a dimension is
dropped for that array (replicated along it) rather than failing: the same code runs on 1 CPU,
8 forced CPU devices, one GPU or a pod slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axes (a tuple splits over several; None replicates).
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
)


def build_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
               devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all); one size may be -1 (the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
    raise ValueError(f"mesh data={data} fsdp={fsdp} tensor={tensor} does not fit "
                     f"{len(devices)} devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh data x fsdp x tensor = {sizes} uses {math.prod(sizes)} devices, "
                     f"but {len(devices)} are present; set one axis to -1")
  return Mesh(np.asarray(devices).reshape(sizes), AXES)


def _fit(spec: Sequence, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes that do not divide their dimension or are already used by another one."""
  used, out = set(), []
  for dim, axes in zip(shape, spec, strict=True):
    if axes is None:
      out.append(None)
      continue
    kept = []
    for a in (axes,) if isinstance(axes, str) else axes:
      size = math.prod(mesh.shape[x] for x in kept) * mesh.shape[a]
      if a not in used and dim % size == 0:
        kept.append(a)
    used.update(kept)
    out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return PartitionSpec(*out)


def logical_sharding(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                     rules=RULES) -> NamedSharding:
  """NamedSharding of an array with logical axis `names` and `shape`."""
  table = dict(rules)
  spec = [table.get(n) if n is not None else None for n in names]
  return NamedSharding(mesh, _fit(spec, shape, mesh))


def param_shardings(abstract_boxed, mesh: Mesh, rules=RULES):
  """Boxed abstract params (models.abstract_params) -> unboxed tree of NamedShardings."""
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return logical_sharding(leaf.names, leaf.value.shape, mesh, rules)
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(one, abstract_boxed,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """Leading axis over data x fsdp (as far as it divides), the rest replicated."""
  names = ("batch",) + (None,) * (len(shape) - 1)
  return logical_sharding(names, shape, mesh)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def process_rows(sharding: NamedSharding, shape: Sequence[int]) -> np.ndarray:
  """Rows (leading-axis indices, ascending) of an array of `shape` under `sharding` that this
  process's devices hold: its share of a batch (all rows where the batch is replicated)."""
  rows = set()
  for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
    rows.update(range(*(index[0] if index else slice(None)).indices(shape[0])))
  return np.asarray(sorted(rows), np.int64)


def shard_batch(tree, mesh: Mesh):
  """Every array of `tree` split along its leading axis over the mesh (scalars replicated).

  The host arrays are the whole batch, equal on every process. Over several processes each one
  builds the global array from the rows its devices hold
  (jax.make_array_from_process_local_data); in one process it is a device_put.
  """
  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if x.ndim == 0:
      return jax.device_put(x, replicated(mesh))
    target = batch_sharding(mesh, x.shape)
    if jax.process_count() == 1:
      return jax.device_put(x, target)
    local = np.asarray(x)[process_rows(target, x.shape)]
    return jax.make_array_from_process_local_data(target, local, x.shape)
  return jax.tree.map(put, tree)


def on_mesh(tree, mesh: Mesh):
  """Every array of `tree` on a NamedSharding of `mesh` (replicated unless it already is one).

  A jitted step returns NamedShardings; feeding it state that is still on a single device the
  first time would compile it twice (the input shardings are part of the cache key).
  """
  def put(x):
    if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and \
        x.sharding.mesh == mesh:
      return x
    if jax.process_count() > 1:  # no cross-host device transfers: the host copy goes out
      x = np.asarray(x)
    return jax.device_put(x, replicated(mesh))
  return jax.tree.map(put, tree)
