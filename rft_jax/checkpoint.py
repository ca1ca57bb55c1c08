"""Orbax save / restore / resume of the training-loop state.

A checkpoint directory holds orbax step folders (`<step>/state`, `<step>/extra`) and a
`fingerprint.json` that says which runs may resume from them: a run whose fingerprint (model
shape, task, loss chain, ...) differs is refused up front with the differing keys named, rather
than failing deep inside orbax on a shape mismatch or, worse, silently resuming a different run.

Saves are synchronous: the state is small next to a round of sampling and training, a failure
surfaces at the `save` call that caused it, and the metrics / host RNG state written beside the
checkpoint never run ahead of a save still in flight. Atomicity comes from orbax: each step is
written to `<step>.orbax-checkpoint-tmp*` and renamed into place only once complete, and
`latest_step` never returns such a temporary folder.
"""

from __future__ import annotations

import json
import os
from typing import Any, Self

import jax
import orbax.checkpoint as ocp

from rft_jax import errors, fileio

FINGERPRINT_FILE = "fingerprint.json"
_ABSENT = object()


class IncompatibleCheckpointError(errors.RunError, ValueError):
  """The checkpoint directory belongs to a run with a different fingerprint."""


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  """Nested dicts -> {"a.b.c": leaf}; an empty dict is kept as a leaf so it still compares."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def fingerprint_diff(stored: dict, current: dict, defaults: dict | None = None) -> list[str]:
  """One line per differing dotted key: "  key: stored X, now Y".

  `defaults` ({dotted key: value}): settings added to the code after some runs were stored; such a
  key absent on one side and at its default on the other is no difference (either way round:
  a fingerprint from before the key existed, or one that spelled out its default).
  """
  a, b = flatten(stored), flatten(current)
  defaults = defaults or {}
  lines = []
  for k in sorted(a.keys() | b.keys()):
    va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)
    if k in defaults:
      va, vb = (defaults[k] if v is _ABSENT else v for v in (va, vb))
    if va != vb:
      shown = ["<absent>" if v is _ABSENT else json.dumps(v) for v in (va, vb)]
      lines.append(f"  {k}: stored {shown[0]}, now {shown[1]}")
  return lines


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of one run in `directory`.

  Raises IncompatibleCheckpointError on construction if `directory` already holds checkpoints
  stored under a different `fingerprint` (keys absent on one side and at their `defaults` value
  on the other do not count, see fingerprint_diff); the directory is then left untouched.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2, fingerprint: dict,
               defaults: dict | None = None):
    self.directory = os.path.abspath(os.fspath(directory))
    try:
      # The JSON round trip makes tuples lists etc., so it compares equal to the stored copy.
      self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
      raise TypeError(f"checkpoint fingerprint must be JSON-serializable: {e}") from e
    self.defaults = dict(defaults or {})
    self._check_fingerprint()  # before orbax creates or cleans anything in the directory
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
        ),
        item_names=("state", "extra"),
    )
    path = os.path.join(self.directory, FINGERPRINT_FILE)
    if jax.process_index() == 0 and self._read_fingerprint() != self.fingerprint:
      fileio.write_json_atomic(path, self.fingerprint, indent=2, sort_keys=True)

  def _read_fingerprint(self) -> dict | None:
    path = os.path.join(self.directory, FINGERPRINT_FILE)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def _check_fingerprint(self) -> None:
    if not os.path.isdir(self.directory) or not ocp.utils.checkpoint_steps(self.directory):
      return  # nothing to resume: a stale fingerprint alone is simply overwritten
    hint = "Pick a fresh --workdir (or delete this one to start over)."
    stored = self._read_fingerprint()
    if stored is None:
      raise IncompatibleCheckpointError(
          f"{self.directory} holds checkpoints but no {FINGERPRINT_FILE}, so whether they fit "
          f"this run cannot be checked. {hint}"
      )
    diff = fingerprint_diff(stored, self.fingerprint, self.defaults)
    if diff:
      raise IncompatibleCheckpointError(
          f"{self.directory} holds checkpoints of a different run; differing settings:\n"
          + "\n".join(diff)
          + f"\n{hint}"
      )

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete checkpoints kept, ascending."""
    return sorted(self._mgr.all_steps())

  def save(self, step: int, state: Any, *, extra: dict | None = None) -> None:
    """Writes `state` (a pytree of arrays) and `extra` (small JSON) as checkpoint `step`."""
    extra = {} if extra is None else extra
    try:
      json.dumps(extra)  # fail before orbax starts writing, with the culprit named
    except TypeError as e:
      raise TypeError(f"checkpoint extra must be JSON-serializable: {e}") from e
    saved = self._mgr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)),
    )
    if not saved:  # orbax silently skips steps not above the latest one
      raise ValueError(
          f"checkpoint step {step} not saved in {self.directory}: steps must increase "
          f"(latest is {self.latest_step()})"
      )
    self._mgr.wait_until_finished()

  def restore(self, target_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Returns (state, extra) of checkpoint `step` (default: latest).

    `target_state` is a pytree of arrays or jax.ShapeDtypeStruct like the saved one; restored
    arrays take its shapes, dtypes and shardings (so a resumed run lands on the current mesh).
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
    elif step not in self._mgr.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})"
      )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    out = self._mgr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()
        ),
    )
    return out["state"], dict(out["extra"] or {})

  def wait(self) -> None:
    """Blocks until pending writes finish (saves are synchronous; kept for symmetry)."""
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.close()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
