"""Atomic file writes: a temp file in the same folder, fsync, then os.replace.

Readers (and a run resumed after a crash) see the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_atomic(path: str | os.PathLike, text: str) -> None:
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=suffix)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def write_json_atomic(path: str | os.PathLike, obj: Any, **dump_kwargs) -> None:
  dump_kwargs.setdefault("indent", 1)
  write_atomic(path, json.dumps(obj, **dump_kwargs) + "\n")
