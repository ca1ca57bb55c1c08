"""A process pool with a hard per-job timeout, for graders that call SymPy (math-verify).

Why not concurrent.futures: a job that hangs inside SymPy cannot be cancelled there, and killing
a worker breaks a ProcessPoolExecutor for good. Here each worker owns one pair of pipes; the
parent hands out one job at a time, waits on all pipes with the earliest deadline as the timeout,
and when a job runs past its deadline it kills that worker (SIGKILL), records TIMEOUT and starts a
replacement. A worker that dies (segfault, out of memory) gives ERROR for its job and is replaced
the same way. Training therefore never waits longer than the timeout on any response.

Workers are fresh interpreters (`python -m rft_jax.rewards._worker`, started with subprocess, i.e.
fork+exec), never a bare fork: the parent runs JAX, whose threads make fork unsafe. Unlike
multiprocessing's 'spawn'/'forkserver', this never re-imports the caller's __main__ (so scripts
without an `if __name__ == "__main__"` guard, notebooks and pytest all work) and the workers
import only the job module, not JAX. A worker takes about 1 s to start (SymPy, math-verify).
The shared pool (`shared_pool()`) is created on first use, reused by every call, and shut down at
interpreter exit; a pool inherited through os.fork is never used by the child.
"""

from __future__ import annotations

import atexit
import collections
import enum
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 120.0  # a worker that is not ready by then means the environment is broken


class JobStatus(enum.Enum):
  OK = "ok"            # the job returned; its value is in the result
  TIMEOUT = "timeout"  # killed after running past the timeout
  ERROR = "error"      # the job raised, or its worker died


def _resolve(path: str) -> Callable:
  module, _, name = path.partition(":")
  return getattr(importlib.import_module(module), name)


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
  """End this worker when its parent is gone, even in the middle of a job (a SymPy hang would
  otherwise outlive a parent that was killed). On Linux the kernel sends SIGKILL (prctl
  PR_SET_PDEATHSIG; the pool starts workers from one long-lived thread, since the signal follows
  the creating thread); elsewhere a daemon thread polls the parent id, which works as long as
  the job releases the GIL (a long C-level integer power does not)."""
  if sys.platform.startswith("linux"):
    try:
      import ctypes

      libc = ctypes.CDLL(None, use_errno=True)
      libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
      pass
  if os.getppid() != parent:  # the parent died before the line above
    os._exit(0)

  def watch():
    while os.getppid() == parent:
      time.sleep(poll_s)
    os._exit(0)

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_main(
    recv: Connection, send: Connection, job_fn: str, warm_up_fn: str | None, parent: int
) -> None:
  """Worker loop: receive (job_id, payload), send (job_id, status, value); None means exit."""
  _exit_with_parent(parent)
  fn = _resolve(job_fn)
  if warm_up_fn:
    _resolve(warm_up_fn)()
  send.send(("ready", os.getpid(), None))
  while True:
    try:
      msg = recv.recv()
    except (EOFError, OSError):  # the parent went away
      return
    if msg is None:
      return
    job_id, payload = msg
    try:
      send.send((job_id, JobStatus.OK.value, fn(payload)))
    except Exception as e:
      send.send((job_id, JobStatus.ERROR.value, f"{type(e).__name__}: {e}"[:500]))


_SPAWNER: tuple[int, ThreadPoolExecutor] | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawner() -> ThreadPoolExecutor:
  """One long-lived thread that starts every worker (see _exit_with_parent: on Linux a worker
  is killed when the thread that started it ends, so that must not be a short-lived caller)."""
  global _SPAWNER
  with _SPAWNER_LOCK:
    if _SPAWNER is None or _SPAWNER[0] != os.getpid():
      _SPAWNER = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="grading-spawner"))
    return _SPAWNER[1]


class _Worker:
  """One worker interpreter and its two pipes (jobs in, results out; stdout is left alone so a
  stray print in a library cannot corrupt the protocol)."""

  def __init__(self, job_fn: str, warm_up_fn: str | None):
    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    cmd = [sys.executable, "-m", "rft_jax.rewards._worker", "--recv-fd", str(job_r),
           "--send-fd", str(res_w), "--job", job_fn, "--parent", str(os.getpid())]
    if warm_up_fn:
      cmd += ["--warm-up", warm_up_fn]
    env = dict(os.environ)
    # The child sees the parent's import path (a checkout on sys.path via pytest's rootdir, say).
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    try:
      self.proc = _spawner().submit(
          subprocess.Popen, cmd, pass_fds=(job_r, res_w), env=env, stdin=subprocess.DEVNULL
      ).result()
    finally:
      os.close(job_r)
      os.close(res_w)
    self.send_conn = Connection(job_w, readable=False)
    self.conn = Connection(res_r, writable=False)
    self.ready = False       # sent its 'ready' message
    self.broken = False      # a send failed: it is dead, its EOF is pending
    self.started = time.monotonic()
    self.inflight: collections.deque[int] = collections.deque()  # sent, not yet answered
    self.deadline = 0.0

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
    try:
      self.proc.wait(5)
    except subprocess.TimeoutExpired:
      pass
    self.send_conn.close()
    self.conn.close()

  def stop(self) -> None:
    try:
      if self.proc.poll() is None:
        self.send_conn.send(None)
        self.proc.wait(1)
    except (OSError, ValueError, subprocess.TimeoutExpired):
      pass
    self.kill()


class Pool:
  """`num_workers` processes running `job_fn` ('module:function', a picklable payload -> value).
  Each worker has up to `prefetch` jobs queued in its pipe; the timeout applies to each job.

  `map(payloads, timeout_s)` returns one (JobStatus, value) per payload, in order; value is the
  job's return value for OK, else a short reason. Thread-safe (calls are serialized).
  """

  def __init__(
      self,
      job_fn: str,
      num_workers: int | None = None,
      timeout_s: float = DEFAULT_TIMEOUT_S,
      warm_up_fn: str | None = None,
      prefetch: int = 2,
  ):
    if num_workers is None:
      num_workers = max(1, min(os.cpu_count() or 1, 8))
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    self.job_fn = job_fn
    self.warm_up_fn = warm_up_fn
    self.num_workers = num_workers
    self.timeout_s = timeout_s
    self.prefetch = max(1, prefetch)
    self._workers: list[_Worker] = []
    self._lock = threading.Lock()
    self._pid = os.getpid()
    self.stats = collections.Counter()  # jobs, timeouts, errors, restarts
    self._startup_failures = 0

  @property
  def closed(self) -> bool:
    return not self._workers

  def _start(self) -> None:
    self._workers = [self._spawn() for _ in range(self.num_workers)]

  def _spawn(self) -> _Worker:
    return _Worker(self.job_fn, self.warm_up_fn)

  def _replace(self, i: int) -> None:
    self._workers[i].kill()
    self._workers[i] = self._spawn()
    self.stats["restarts"] += 1

  def map(self, payloads: Sequence[Any], timeout_s: float | None = None) -> list[tuple[JobStatus, Any]]:
    if os.getpid() != self._pid:
      raise RuntimeError("this grading pool belongs to the parent process; create a new one after fork")
    timeout_s = self.timeout_s if timeout_s is None else timeout_s
    with self._lock:
      if not self._workers:
        self._start()
      return self._run(list(payloads), timeout_s)

  def _run(self, payloads: list, timeout_s: float) -> list[tuple[JobStatus, Any]]:
    """Hand out jobs (up to `prefetch` queued per worker, so a worker never waits for the parent
    between two jobs); the deadline of a worker is `timeout_s` after it started its current job,
    i.e. after its previous answer. A killed or dead worker's current job gets TIMEOUT / ERROR
    and the jobs queued behind it go back to the queue."""
    results: list[tuple[JobStatus, Any] | None] = [None] * len(payloads)
    todo = collections.deque(range(len(payloads)))
    remaining = len(payloads)

    def fail_current(i: int, status: JobStatus, reason: str) -> None:
      nonlocal remaining
      w = self._workers[i]
      results[w.inflight.popleft()] = (status, reason)
      remaining -= 1
      todo.extendleft(reversed(w.inflight))  # not started: retried on another worker
      w.inflight.clear()
      self._replace(i)

    while remaining:
      now = time.monotonic()
      for w in self._workers:  # hand out work
        while w.ready and not w.broken and len(w.inflight) < self.prefetch and todo:
          job = todo.popleft()
          try:
            w.send_conn.send((job, payloads[job]))
          except (OSError, ValueError):  # the worker died while idle: its pipe reports EOF below
            todo.appendleft(job)
            w.broken = True
            w.proc.kill()
            break
          if not w.inflight:
            w.deadline = now + timeout_s
          w.inflight.append(job)
      deadlines = [w.deadline for w in self._workers if w.inflight]
      deadlines += [w.started + STARTUP_TIMEOUT_S for w in self._workers if not w.ready]
      wait_s = max(0.0, min(deadlines) - now) if deadlines else None
      ready = wait([w.conn for w in self._workers], timeout=wait_s)
      for i, w in enumerate(self._workers):
        if w.conn not in ready:
          continue
        try:
          msg = w.conn.recv()
        except (EOFError, OSError):
          msg = None
        if msg is None:  # the worker died
          if w.inflight:
            self.stats["errors"] += 1
            fail_current(i, JobStatus.ERROR, "grading worker died")
            continue
          if not w.ready and not w.broken:
            self._startup_failures += 1
            if self._startup_failures >= 3:
              self._replace(i)
              raise RuntimeError(
                  f"grading workers for {self.job_fn} exit before they are ready (3 in a row); "
                  "their traceback is on stderr"
              )
          self._replace(i)
          continue
        job_id, status, value = msg
        if job_id == "ready":
          w.ready = True
          self._startup_failures = 0
          continue
        assert w.inflight and w.inflight[0] == job_id, (job_id, list(w.inflight))
        w.inflight.popleft()
        results[job_id] = (JobStatus(status), value)
        remaining -= 1
        self.stats["jobs"] += 1
        self.stats["errors"] += status == JobStatus.ERROR.value
        if w.inflight:
          w.deadline = time.monotonic() + timeout_s  # the next queued job starts now
      now = time.monotonic()
      for i, w in enumerate(self._workers):
        if w.inflight and now >= w.deadline:
          self.stats["timeouts"] += 1
          logger.warning("grading job timed out after %g s; restarting its worker", timeout_s)
          fail_current(i, JobStatus.TIMEOUT, f"no result within {timeout_s:g} s")
        elif not w.ready and now - w.started > STARTUP_TIMEOUT_S:
          raise RuntimeError(
              f"a grading worker ({self.job_fn}) was not ready within {STARTUP_TIMEOUT_S:g} s"
          )
    return results  # type: ignore[return-value]

  def close(self) -> None:
    """Stop every worker (asks first, then kills). The pool restarts on the next `map`.

    Waits at most 5 s for a `map` running in another thread (at interpreter exit that thread
    may never return); after that the workers are killed regardless.
    """
    locked = self._lock.acquire(timeout=5)
    try:
      if os.getpid() == self._pid:
        for w in list(self._workers):
          w.stop()
      self._workers = []
    finally:
      if locked:
        self._lock.release()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


_SHARED: dict[str, Pool] = {}
_SHARED_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def shared_pool(job_fn: str, warm_up_fn: str | None = None, **kwargs) -> Pool:
  """The process-wide pool for `job_fn`, created on first use and closed at exit."""
  global _ATEXIT_REGISTERED
  with _SHARED_LOCK:
    pool = _SHARED.get(job_fn)
    if pool is None or pool._pid != os.getpid():
      pool = _SHARED[job_fn] = Pool(job_fn, warm_up_fn=warm_up_fn, **kwargs)
      if not _ATEXIT_REGISTERED:
        atexit.register(shutdown_shared)
        _ATEXIT_REGISTERED = True
    return pool


def shutdown_shared() -> None:
  """Close every shared pool (registered with atexit; safe to call more than once)."""
  with _SHARED_LOCK:
    pools = list(_SHARED.values())
    _SHARED.clear()
  for pool in pools:
    pool.close()

