"""Atomic file writes: a temp file in the same folder, fsync, then os.replace.

Readers (and a run resumed after a crash) see the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any


def umask() -> int:
  """The process's umask: from /proc on Linux, else by setting and restoring it (no getter)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def chmod_as_created(path: str | os.PathLike, directory: bool = False) -> None:
  """The mode open() / mkdir() would have given `path` (0666 / 0777 less the umask): mkstemp and
  mkdtemp make 0600 / 0700 files, which the atomic rename would otherwise publish."""
  os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def write_atomic(path: str | os.PathLike, text: str) -> None:
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=suffix)
  try:
    os.fchmod(fd, 0o666 & ~umask())
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):  # a signal right after the rename
      os.unlink(tmp)
    raise


def write_json_atomic(path: str | os.PathLike, obj: Any, **dump_kwargs) -> None:
  dump_kwargs.setdefault("indent", 1)
  write_atomic(path, json.dumps(obj, **dump_kwargs) + "\n")


def sha256_of(path: str | os.PathLike) -> str:
  """Hex sha256 of a file, read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
