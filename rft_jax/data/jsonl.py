"""Reading JSON-lines files with errors that name the file and line.

A data problem (a truncated line, a missing field, a wrong type) stops the run with one message
that says where it is: `DataError: /path/train.jsonl:17: field 'answer' is missing (has: ...)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any


class DataError(ValueError):
  """A malformed data file; the message starts with 'path:line:'."""


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, record) for each non-blank line of `path` (1-based line numbers).

  Raises FileNotFoundError naming the path, and DataError for a line that is not a JSON object.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data file not found: {path}")
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line_no}: not UTF-8 ({e.reason} at byte {e.start} of the "
                        "line)") from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
      yield line_no, record


def field(
    record: dict[str, Any], names: str | Sequence[str], where: str, *, types=(str,), default=...
) -> Any:
  """The first present field among `names` (alternative spellings of one field), type-checked.

  `where` is 'path:line' for the error. Without a default, a missing field raises DataError
  naming the field (and its alternatives) and listing the fields the record has.
  """
  names = (names,) if isinstance(names, str) else tuple(names)
  for name in names:
    if name in record:
      value = record[name]
      if types and not isinstance(value, types):
        want = " or ".join(t.__name__ for t in types)
        raise DataError(f"{where}: field {name!r} should be {want}, got {type(value).__name__}")
      return value
  if default is not ...:
    return default
  alts = " / ".join(repr(n) for n in names)
  raise DataError(f"{where}: field {alts} is missing (has: {', '.join(sorted(record)) or 'nothing'})")
