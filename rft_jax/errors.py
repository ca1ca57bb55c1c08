"""Errors a person can act on: `python -m rft_jax.main` prints their message, no traceback.

Each message names the file, key or value at fault and what to do; main exits with `exit_code`
(a traceback only with --debug). Anything else that escapes a run is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import signal


class RunError(Exception):
  """Base of the errors that stop a run with their message alone."""

  exit_code = 1


class ConfigError(RunError, ValueError):
  """Config values out of range or inconsistent: one line per bad key, found before any work."""


class WorkdirInUseError(RunError):
  """Another live process holds the workdir's lock."""


class DivergedError(RunError, RuntimeError):
  """A non-finite loss or non-finite / exploded parameters: the run stopped before saving."""


class CheckpointReadError(RunError):
  """A checkpoint that exists but cannot be restored (corrupt, truncated, files missing)."""


class RunInterrupted(RunError):
  """SIGINT / SIGTERM: the run saved what it had and stopped; exit status 128 + signal."""

  def __init__(self, message: str, signum: int = signal.SIGINT):
    super().__init__(message)
    self.signum = signum
    self.exit_code = 128 + signum


# OS errors about the disk or its permissions are the user's to fix, wherever they surface (orbax
# and tensorstore re-raise them as other types, with the errno's text kept in the message).
_OS_TEXTS = ("No space left on device", "Read-only file system", "Permission denied",
             "Disk quota exceeded")
_OS_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT)


def actionable(exc: BaseException) -> str | None:
  """The one-line (or few-line) message for an error a person can act on, else None (a bug).

  RunError and the data / fetch errors (rft_jax.data.jsonl.DataError, models.fetch.FetchError)
  by type; OSErrors (a missing file, a read-only or full disk) also when another error wraps
  them (its __cause__ / __context__ chain) or quotes their text.
  """
  from rft_jax.data.jsonl import DataError

  seen = set()
  e: BaseException | None = exc
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, RunError | DataError) or type(e).__name__ == "FetchError":
      return str(e)
    if isinstance(e, OSError):
      return _os_message(e)
    e = e.__cause__ or e.__context__
  text = str(exc)
  if any(t in text for t in _OS_TEXTS):
    return f"{type(exc).__name__}: {short_reason(text)}"
  return None


def short_reason(text: str, limit: int = 300) -> str:
  """The first line of an error's text, without the spec tensorstore appends (kilobytes of
  JSON), at most `limit` characters."""
  line = (text.strip().splitlines() or [""])[0].split(" [tensorstore_spec")[0]
  return line if len(line) <= limit else line[:limit] + " ..."


def _os_message(e: OSError) -> str:
  if e.errno in _OS_ERRNOS or isinstance(e, FileNotFoundError | IsADirectoryError |
                                         NotADirectoryError | FileExistsError):
    where = f": {e.filename}" if e.filename else ""
    if e.strerror:
      return f"{e.strerror}{where}"
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _unretrieved_restore_reads(record) -> bool:
  """False (drop) for asyncio's log of an orbax array read whose failure nobody awaited."""
  text = record.getMessage()
  return not (text.startswith("Task exception was never retrieved") and
              "async_deserialize" in text)


def quiet_closed_loop_noise() -> None:
  """Drops the "RuntimeError: Event loop is closed" tracebacks a failed orbax restore leaves:
  its reads still in flight call back into the event loop orbax closed when the error surfaced,
  printing a traceback per array around the one-line message; and asyncio's "Task exception
  was never retrieved" log of those reads, when the loop collects them after the restore has
  raised the first read's error (same cause, already reported). Every other error still
  prints."""
  import logging
  import sys
  import threading

  def closed_loop(exc) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

  if getattr(sys.excepthook, "_quiet_closed_loop", False):
    return
  logging.getLogger("asyncio").addFilter(_unretrieved_restore_reads)
  previous = (sys.excepthook, sys.unraisablehook, threading.excepthook)

  def excepthook(kind, value, tb):
    if not closed_loop(value):
      previous[0](kind, value, tb)

  def unraisablehook(unraisable):
    if not closed_loop(unraisable.exc_value):
      previous[1](unraisable)

  def thread_excepthook(args):
    if not closed_loop(args.exc_value):
      previous[2](args)

  excepthook._quiet_closed_loop = True
  sys.excepthook, sys.unraisablehook, threading.excepthook = (excepthook, unraisablehook,
                                                              thread_excepthook)
