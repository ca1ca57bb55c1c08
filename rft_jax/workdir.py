"""One run per workdir: a lock held for the whole run, and the config's fingerprint checked before
anything else is written there.

    with workdir.Lock(path):                          # WorkdirInUseError if another run holds it
      changes = workdir.claim(path, fp, defaults)     # IncompatibleCheckpointError on a mismatch

The lock is flock(2) on the workdir itself: the kernel drops it when its holder exits in any way
(kill -9 included), so a dead run never leaves a stale lock; `.lock` beside it names the holder
(pid, host, start) for the refusal message and is overwritten by the next holder. The fingerprint
(checkpoints/fingerprint.json, train.fingerprint of the config) covers every artifact of a run:
the base policy's evaluation, the difficulty table, metrics, checkpoints and the summary.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterable

import orbax.checkpoint as ocp

from rft_jax import checkpoint as checkpoint_lib, errors, fileio

LOCK_INFO = ".lock"
# What a run leaves in its workdir besides checkpoints/ (base/: the default warm_start.dir).
RUN_FILES = ("base", "difficulty.json", "base_eval.json", "evals", "metrics.jsonl", "tb",
             "summary.json")


class Lock:
  """An exclusive lock on `workdir` (created if missing) for one run; a context manager."""

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = os.path.abspath(os.fspath(workdir))
    self._fd: int | None = None
    self._info = os.path.join(self.workdir, LOCK_INFO)

  def acquire(self) -> None:
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.workdir, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
        return  # a file system without flock (some network mounts): run unlocked, as before
      raise errors.WorkdirInUseError(
          f"{self.workdir} is in use by another run ({self.holder()}); wait for it to end or "
          "pick another --workdir") from None
    self._fd = fd

  def holder(self) -> str:
    try:
      with open(self._info) as f:
        info = json.load(f)
      return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
      return "holder not yet recorded"

  def record(self) -> None:
    """Names this process as the holder (after the fingerprint check: a refused run writes
    nothing)."""
    if self._fd is None:
      return
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    fileio.write_json_atomic(self._info, {"pid": os.getpid(), "host": socket.gethostname(),
                                          "started": started})

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      # an empty or garbled holder file (a crash while it was written) is not ours to remove,
      # and must neither keep the lock nor hide the caller's own error
      with contextlib.suppress(OSError, ValueError, AttributeError):
        with open(self._info) as f:
          mine = json.load(f).get("pid") == os.getpid()
        if mine:
          os.remove(self._info)
    finally:
      os.close(self._fd)  # drops the flock
      self._fd = None

  def __enter__(self) -> Lock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def run_files(workdir: str) -> list[str]:
  """The artifacts of a run present in `workdir` (checkpoints/ counts once it holds a step)."""
  held = [name for name in RUN_FILES if os.path.exists(os.path.join(workdir, name))]
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt_dir) and ocp.utils.checkpoint_steps(ckpt_dir):
    held.append("checkpoints")
  return held


def fingerprint_path(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints", checkpoint_lib.FINGERPRINT_FILE)


def claim(workdir: str, fingerprint: dict, defaults: dict | None = None,
          resume_with: Iterable[str] = (), resumable: Iterable[str] = (),
          write: bool = True) -> dict[str, tuple]:
  """Checks `fingerprint` against the one stored in `workdir` and writes it there.

  When the workdir holds artifacts of a run (run_files), the stored fingerprint must equal this
  one but for the `resume_with` keys (dotted) and keys absent on one side and at their `defaults`
  value on the other; else IncompatibleCheckpointError names each differing key with its stored
  and new value, and nothing is written. A workdir with no artifacts takes the new fingerprint.
  Returns {key: (stored, new)} of the resume_with keys that changed. `resumable`: the keys
  --resume_with accepts, for the message's hint.
  """
  fp = json.loads(json.dumps(fingerprint, sort_keys=True, allow_nan=False))
  path = fingerprint_path(workdir)
  stored = None
  if os.path.exists(path):
    try:
      with open(path) as f:
        stored = json.load(f)
    except ValueError as e:
      raise checkpoint_lib.IncompatibleCheckpointError(
          f"{path} is not valid JSON ({e}); restore it, or delete the workdir to start over"
      ) from None
  held = run_files(workdir)
  changes: dict[str, tuple] = {}
  hint = "Pick a fresh --workdir (or delete this one to start over)."
  if held and stored is None:
    raise checkpoint_lib.IncompatibleCheckpointError(
        f"{workdir} holds {', '.join(held)} but no {path}, so whether they fit this run cannot "
        f"be checked. {hint}")
  if held:
    resume_with = set(resume_with)
    diff = checkpoint_lib.fingerprint_diff(stored, fp, defaults)
    keys = [line.strip().split(": ", 1)[0] for line in diff]
    bad = [line for line, key in zip(diff, keys) if key not in resume_with]
    if bad:
      bad_keys = [k for k in keys if k not in resume_with]
      if set(bad_keys) <= set(resumable):
        hint += (" To go on from its last checkpoint with the new value, add "
                 f"--resume_with={','.join(bad_keys)}.")
      raise checkpoint_lib.IncompatibleCheckpointError(
          f"{workdir} holds a run ({', '.join(held)}) made with other settings; differing "
          "settings:\n" + "\n".join(bad) + f"\n{hint}")
    flat_old, flat_new = checkpoint_lib.flatten(stored), checkpoint_lib.flatten(fp)
    changes = {k: (flat_old.get(k), flat_new.get(k)) for k in keys if k in resume_with}
  if write and stored != fp:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fileio.write_json_atomic(path, fp, indent=2, sort_keys=True)
  return changes
