"""Checkpointer: round trips, sharded restore, retention, fingerprints, atomicity."""

import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from rft_jax.checkpoint import FINGERPRINT_FILE, Checkpointer, IncompatibleCheckpointError

FP = {"model": {"d_model": 16, "layers": 2}, "task": "arith", "loss": ["minimal", "token_mean"]}


def make_state(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {
      "embed": jax.random.normal(k1, (16, 8)),
      "layer": {"w": jax.random.normal(k2, (8, 8)), "b": jnp.zeros((8,), jnp.bfloat16)},
  }
  opt = optax.adamw(1e-3)
  opt_state = opt.init(params)
  # One update so mu / nu / count are not trivially zero.
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = opt.update(grads, opt_state, params)
  return {
      "params": params,
      "opt_state": opt_state,
      "loss_state": {"history": jnp.arange(4, dtype=jnp.float32)},
      "rng": jax.random.key_data(jax.random.key(seed + 7)),
      "round": jnp.asarray(3, jnp.int32),
  }


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def snapshot(directory):
  """Every path under `directory` with its size and mtime: detects any change."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      p = os.path.join(root, name)
      st = os.stat(p)
      out[os.path.relpath(p, directory)] = (st.st_size, st.st_mtime_ns)
  return out


def test_round_trip(tmp_path):
  state = make_state()
  with Checkpointer(tmp_path / "ckpt", fingerprint=FP) as ck:
    assert ck.latest_step() is None
    ck.save(5, state, extra={"host_rng": [1, 2, 3], "metrics": {"pass@1": 0.5}})
    assert ck.latest_step() == 5
    restored, extra = ck.restore(state)
  assert_trees_equal(restored, state)
  assert extra == {"host_rng": [1, 2, 3], "metrics": {"pass@1": 0.5}}
  assert restored["rng"].dtype == jnp.uint32
  assert restored["params"]["layer"]["b"].dtype == jnp.bfloat16


def test_restore_onto_mesh_sharding(tmp_path):
  state = make_state()
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(8), ("data",))
  P = jax.sharding.PartitionSpec

  def target(x):
    spec = P("data") if x.ndim and x.shape[0] % 8 == 0 else P()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(mesh, spec))

  with Checkpointer(tmp_path, fingerprint=FP) as ck:
    ck.save(1, state)
    abstract = jax.tree.map(target, state)
    restored, extra = ck.restore(abstract, step=1)
  assert extra == {}
  assert_trees_equal(restored, state)
  for r, a in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
    assert r.sharding == a.sharding
  assert restored["params"]["embed"].sharding.spec == P("data")


def test_max_to_keep_and_resume(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=2, fingerprint=FP) as ck:
    for step in (1, 2, 3):
      ck.save(step, make_state(step), extra={"step": step})
    assert ck.all_steps() == [2, 3]
    with pytest.raises(ValueError, match="steps must increase"):
      ck.save(3, make_state())
  # Same fingerprint (given with a tuple instead of a list: JSON-equal) resumes.
  fp = dict(FP, loss=tuple(FP["loss"]))
  with Checkpointer(tmp_path, max_to_keep=2, fingerprint=fp) as ck:
    assert ck.latest_step() == 3
    restored, extra = ck.restore(make_state())
    assert extra == {"step": 3}
    assert_trees_equal(restored, make_state(3))
    restored, extra = ck.restore(make_state(), step=2)
    assert extra == {"step": 2}
    with pytest.raises(FileNotFoundError, match="step 1"):
      ck.restore(make_state(), step=1)


def test_incompatible_fingerprint_refused_untouched(tmp_path):
  with Checkpointer(tmp_path, fingerprint=FP) as ck:
    ck.save(1, make_state())
  before = snapshot(tmp_path)
  other = {"model": {"d_model": 32, "layers": 2}, "task": "arith", "seed": 1, "loss": FP["loss"]}
  with pytest.raises(IncompatibleCheckpointError) as info:
    Checkpointer(tmp_path, fingerprint=other)
  msg = str(info.value)
  assert str(tmp_path) in msg
  assert "model.d_model: stored 16, now 32" in msg
  assert "seed: stored <absent>, now 1" in msg
  assert "layers" not in msg and "task" not in msg
  assert "--workdir" in msg
  assert snapshot(tmp_path) == before
  assert isinstance(info.value, ValueError)


def test_checkpoints_without_fingerprint_refused(tmp_path):
  with Checkpointer(tmp_path, fingerprint=FP) as ck:
    ck.save(1, make_state())
  os.remove(tmp_path / FINGERPRINT_FILE)
  with pytest.raises(IncompatibleCheckpointError, match="no fingerprint.json"):
    Checkpointer(tmp_path, fingerprint=FP)


def test_fingerprint_without_checkpoints_is_replaced(tmp_path):
  # A run that died before its first save leaves only a fingerprint: nothing to protect.
  Checkpointer(tmp_path, fingerprint=FP).close()
  with Checkpointer(tmp_path, fingerprint={"task": "gsm8k"}) as ck:
    assert ck.latest_step() is None
  assert json.loads((tmp_path / FINGERPRINT_FILE).read_text()) == {"task": "gsm8k"}
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_empty_and_missing_directory(tmp_path):
  with Checkpointer(tmp_path / "new" / "ckpt", fingerprint=FP) as ck:
    assert ck.latest_step() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
      ck.restore(make_state())


def _wait_until_quiet(path, quiet_s=0.5, limit_s=20.0):
  """Waits until no file under `path` changes for quiet_s: the failed save's other half (the
  array writes, on orbax's threads) may still be landing in its temporary folder, and removing
  that folder under a live writer fails. A crashed run has no live writers; this test does."""
  def listing():
    return sorted((str(p), p.stat().st_size) for p in pathlib.Path(path).rglob("*") if p.is_file())
  deadline, last = time.time() + limit_s, None
  while time.time() < deadline:
    now = listing()
    if now == last:
      return
    last = now
    time.sleep(quiet_s)


def test_half_written_checkpoint_ignored(tmp_path):
  state = make_state()
  with Checkpointer(tmp_path, fingerprint=FP) as ck:
    ck.save(1, state, extra={"ok": True})
    # A save that fails mid-way (after orbax created its temporary folder) ...
    with pytest.raises(TypeError):
      ck._mgr.save(  # bypasses save()'s up-front JSON check to fail inside orbax
          2,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave({"x": object()})
          ),
      )
    assert any(".orbax-checkpoint-tmp" in p for p in os.listdir(tmp_path))
    assert ck.latest_step() == 1
    _wait_until_quiet(tmp_path)
  # ... and a crash's leftover temporary folder of a later step.
  os.makedirs(tmp_path / "7.orbax-checkpoint-tmp-1700000000" / "state")
  with Checkpointer(tmp_path, fingerprint=FP) as ck:
    assert ck.latest_step() == 1
    _, extra = ck.restore(state)
    assert extra == {"ok": True}
    ck.save(2, state)  # the failed step can be saved again
    assert ck.all_steps() == [1, 2]


def test_extra_must_be_json(tmp_path):
  with Checkpointer(tmp_path, fingerprint=FP) as ck:
    with pytest.raises(TypeError, match="JSON-serializable"):
      ck.save(1, make_state(), extra={"x": object()})
    assert ck.latest_step() is None
