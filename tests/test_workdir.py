"""One run per workdir (lock, fingerprint claim), one-line errors, file modes: no training here."""

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

from rft_jax import checkpoint as checkpoint_lib, errors, evaluation_math, fileio, workdir
from rft_jax.data.jsonl import DataError
from tests.test_checkpoint import snapshot

FP = {"model": {"d_model": 16}, "optimizer": {"learning_rate": 0.001}, "seed": 0}


# -- the lock -----------------------------------------------------------------------------------


def test_second_lock_is_refused_naming_the_holder(tmp_path):
  with workdir.Lock(tmp_path / "run") as lock:
    lock.record()
    with pytest.raises(errors.WorkdirInUseError) as info:
      workdir.Lock(tmp_path / "run").acquire()
  msg = str(info.value)
  assert f"pid {os.getpid()} on {socket.gethostname()}" in msg
  assert "in use by another run" in msg and "--workdir" in msg and "\n" not in msg
  assert not (tmp_path / "run" / workdir.LOCK_INFO).exists()  # released: the record goes too
  with workdir.Lock(tmp_path / "run"):  # and the lock is free again
    pass


@pytest.mark.parametrize("holder", ["", "[1, 2]", "{not json"])
def test_lock_is_released_whatever_its_holder_file_holds(tmp_path, holder):
  """An empty or garbled holder record (a crash while it was written) neither keeps the flock
  nor replaces the caller's own error."""
  with pytest.raises(RuntimeError, match="the run's own error"):
    with workdir.Lock(tmp_path / "run"):
      (tmp_path / "run" / workdir.LOCK_INFO).write_text(holder)
      raise RuntimeError("the run's own error")
  with workdir.Lock(tmp_path / "run"):  # free again
    pass


def test_lock_held_by_another_process_is_refused(tmp_path):
  """Two processes: a child takes the lock and waits; this one is refused until it exits."""
  code = ("import sys; from rft_jax import workdir; lock = workdir.Lock(sys.argv[1]); "
          "lock.acquire(); lock.record(); print('held', flush=True); sys.stdin.read()")
  child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(errors.WorkdirInUseError, match=f"pid {child.pid} on "):
      workdir.Lock(tmp_path).acquire()
  finally:
    child.stdin.close()
    child.wait(timeout=60)
  with workdir.Lock(tmp_path):
    pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  # A holder killed with -9 leaves its record; the kernel dropped its flock with it.
  proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  dead = int(proc.stdout)
  (tmp_path / workdir.LOCK_INFO).write_text(json.dumps(
      {"pid": dead, "host": socket.gethostname(), "started": "yesterday"}))
  with workdir.Lock(tmp_path) as lock:
    lock.record()
    assert json.loads((tmp_path / workdir.LOCK_INFO).read_text())["pid"] == os.getpid()


# -- the fingerprint ----------------------------------------------------------------------------


def test_claim_writes_the_fingerprint_of_an_empty_workdir(tmp_path):
  assert workdir.claim(str(tmp_path), FP) == {}
  stored = json.loads(open(workdir.fingerprint_path(str(tmp_path))).read())
  assert stored == FP
  # No artifacts yet (a run that died in its warm start): other settings simply take over.
  other = dict(FP, seed=1)
  assert workdir.claim(str(tmp_path), other) == {}
  assert json.loads(open(workdir.fingerprint_path(str(tmp_path))).read()) == other


@pytest.mark.parametrize("artifact", ["difficulty.json", "base_eval.json", "metrics.jsonl",
                                      "summary.json"])
def test_claim_refuses_other_settings_once_a_run_wrote_anything(tmp_path, artifact):
  workdir.claim(str(tmp_path), FP)
  (tmp_path / artifact).write_text("{}\n")
  before = snapshot(tmp_path)
  other = {**FP, "model": {"d_model": 32}, "seed": 3}
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError) as info:
    workdir.claim(str(tmp_path), other)
  msg = str(info.value)
  assert f"holds a run ({artifact}) made with other settings" in msg
  assert "model.d_model: stored 16, now 32" in msg and "seed: stored 0, now 3" in msg
  assert "--resume_with" not in msg  # neither key may change on a resume
  assert snapshot(tmp_path) == before  # nothing written


def test_claim_resume_with_lets_the_named_keys_change(tmp_path):
  workdir.claim(str(tmp_path), FP)
  (tmp_path / "metrics.jsonl").write_text("")
  lower = {**FP, "optimizer": {"learning_rate": 1e-4}}
  keys = ("optimizer.learning_rate",)
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                     match=r"learning_rate: stored 0.001, now 0.0001(?s:.*)add "
                           r"--resume_with=optimizer.learning_rate\."):
    workdir.claim(str(tmp_path), lower, resumable=keys)
  changes = workdir.claim(str(tmp_path), lower, resume_with=keys, resumable=keys)
  assert changes == {"optimizer.learning_rate": (0.001, 1e-4)}
  # The stored run is now the new one: the same command (new value) goes on without the flag.
  assert workdir.claim(str(tmp_path), lower) == {}
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError, match="stored 0.0001, now 0.001"):
    workdir.claim(str(tmp_path), FP)


def test_claim_refuses_artifacts_without_a_fingerprint(tmp_path):
  (tmp_path / "difficulty.json").write_text("{}")
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                     match="holds difficulty.json but no .*fingerprint.json"):
    workdir.claim(str(tmp_path), FP)
  assert sorted(os.listdir(tmp_path)) == ["difficulty.json"]


# -- one-line errors ----------------------------------------------------------------------------


def test_actionable_errors_have_their_line():
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/l0/metrics.jsonl")
  assert errors.actionable(full) == "No space left on device: /runs/l0/metrics.jsonl"
  ro = OSError(errno.EROFS, os.strerror(errno.EROFS), "/runs/l0")
  assert errors.actionable(ro) == "Read-only file system: /runs/l0"
  try:  # orbax / tensorstore re-raise a disk error as another type
    try:
      raise full
    except OSError as e:
      raise ValueError("tensorstore write failed") from e
  except ValueError as wrapped:
    assert errors.actionable(wrapped) == "No space left on device: /runs/l0/metrics.jsonl"
  quoted = RuntimeError("Error writing chunk: No space left on device [os_error=28] "
                        '[tensorstore_spec=\'{"driver": "zarr", ...}\']\nmore')
  assert errors.actionable(quoted) == ("RuntimeError: Error writing chunk: No space left on "
                                       "device [os_error=28]")
  assert errors.actionable(FileNotFoundError("data file not found: x.jsonl")) == (
      "data file not found: x.jsonl")
  assert errors.actionable(DataError("t.jsonl:3: not valid JSON")) == "t.jsonl:3: not valid JSON"
  assert errors.actionable(errors.ConfigError("--config.a=1: must be >= 2")) == (
      "--config.a=1: must be >= 2")
  stop = errors.RunInterrupted("stopped at round 3; run the same command to resume", 15)
  assert stop.exit_code == 143
  assert errors.actionable(KeyError("train_pass1")) is None  # a bug keeps its traceback
  assert errors.actionable(ValueError("shapes (3,) and (4,) do not match")) is None


# -- file modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_files_take_the_umask_not_0600(tmp_path, mask):
  old = os.umask(mask)
  try:
    fileio.write_json_atomic(tmp_path / "a.json", {"x": 1})
    (tmp_path / "plain.txt").write_text("x")  # what open() gives, for comparison
    fileio.chmod_as_created(tmp_path, directory=True)
  finally:
    os.umask(old)
  assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o666 & ~mask
  plain = os.stat(tmp_path / "plain.txt").st_mode & 0o777
  assert os.stat(tmp_path / "a.json").st_mode & 0o777 == plain
  assert os.stat(tmp_path).st_mode & 0o777 == 0o777 & ~mask
  assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []


def test_results_files_take_the_umask_too(tmp_path):
  """evaluation_math.save_results (the difficulty tables) writes through fileio."""
  old = os.umask(0o022)
  try:
    evaluation_math.save_results(tmp_path / "t" / "difficulty.json", {"x": np.float32(0.5)})
  finally:
    os.umask(old)
  assert os.stat(tmp_path / "t" / "difficulty.json").st_mode & 0o777 == 0o644
  assert evaluation_math.load_results(tmp_path / "t" / "difficulty.json") == {"x": 0.5}


def test_a_signal_right_after_the_rename_keeps_its_own_error(tmp_path, monkeypatch):
  """An interrupt landing between os.replace and the return: the caller sees the interrupt,
  not a FileNotFoundError from removing the already renamed temporary file."""
  real_replace = os.replace

  def replace_then_interrupt(src, dst):
    real_replace(src, dst)
    raise KeyboardInterrupt

  monkeypatch.setattr(os, "replace", replace_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    fileio.write_json_atomic(tmp_path / "a.json", {"x": 1})
  assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_closed_loop_noise_is_dropped_and_nothing_else(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: seen.append(value))
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
  monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
  errors.quiet_closed_loop_noise()
  errors.quiet_closed_loop_noise()  # once is enough: not wrapped twice
  noise, real = RuntimeError("Event loop is closed"), RuntimeError("a real one")
  for exc in (noise, real):
    sys.excepthook(type(exc), exc, None)
    sys.unraisablehook(types.SimpleNamespace(exc_value=exc))
    threading.excepthook(types.SimpleNamespace(exc_value=exc))
  assert seen == [real, real, real]


def test_unretrieved_orbax_read_logs_are_dropped_and_nothing_else(monkeypatch):
  """asyncio's log of a failed orbax read nobody awaited (seen once in 30 corrupt-checkpoint
  runs under load) is dropped; any other asyncio error log still passes."""
  for module, hook in ((sys, "excepthook"), (sys, "unraisablehook"), (threading, "excepthook")):
    monkeypatch.setattr(module, hook, getattr(module, hook))  # restored after the test
  errors.quiet_closed_loop_noise()
  logger = logging.getLogger("asyncio")
  records = []

  class Keep(logging.Handler):
    def emit(self, record):
      records.append(record.getMessage())

  handler = Keep()
  logger.addHandler(handler)
  try:
    logger.error("Task exception was never retrieved\nfuture: <Task finished name='Task-88' "
                 "coro=<async_deserialize() done, defined at serialization.py:394> exception="
                 "ValueError('OUT_OF_RANGE')>")
    logger.error("Task exception was never retrieved\nfuture: <Task finished coro=<mine()>>")
    logger.error("Exception in callback something")
  finally:
    logger.removeHandler(handler)
    logger.removeFilter(errors._unretrieved_restore_reads)
  assert [r.split("\n")[0] for r in records] == ["Task exception was never retrieved",
                                                  "Exception in callback something"]
  assert "mine()" in records[0]
