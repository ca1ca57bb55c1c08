"""Training metrics to `<workdir>/metrics.jsonl` and TensorBoard, progress, the run's curves.

metrics.jsonl holds one JSON object per line, `{"step": step, name: value, ...}`. JSON has no
NaN or infinity, so non-finite values are written as `null` (what JavaScript's JSON.stringify
does, and what pandas reads back as NaN); TensorBoard still gets the raw non-finite value.

Each line goes out in one write and is flushed at once, so a crashed run loses nothing it had
already reported. On resume, rows past the checkpoint's step are dropped (and TensorBoard is
told to purge them), so a resumed run's metrics equal those of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Self

import jax
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from rft_jax import fileio

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def _to_python(key: str, value: Any) -> Any:
  """Python / numpy / jax scalars -> bool, int, float or str (NaN and inf stay floats here); a
  list of them -> a list (metrics.jsonl only, not TensorBoard)."""
  if value is None or isinstance(value, bool | int | float | str):
    return value
  if isinstance(value, list | tuple):
    return [_to_python(key, v) for v in value]
  arr = np.asarray(value)  # numpy scalars, 0-d / size-1 numpy and jax arrays
  if arr.size != 1 or arr.dtype.kind not in "biuf":
    raise TypeError(f"metric {key!r} must be a scalar number, got {type(value).__name__} "
                    f"with shape {arr.shape} and dtype {arr.dtype}")
  return arr.reshape(()).item()


def _json_value(v: Any) -> Any:
  if isinstance(v, list):
    return [_json_value(x) for x in v]
  return None if isinstance(v, float) and not math.isfinite(v) else v


def _read_lines(path: str) -> list[tuple[str, dict]]:
  """(raw line, row) pairs; a torn last line (the run died mid-write) is left out."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")
  out = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      out.append((line, json.loads(line)))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:  # no newline after it: torn by a crash
        break
      raise ValueError(f"{path}:{i + 1}: malformed metrics line ({e}): {line[:200]!r}") from e
  return out


def read_metrics(workdir: str | os.PathLike, name: str = METRICS_FILE) -> list[dict]:
  """Rows of `<workdir>/metrics.jsonl` (or of `name`) in file order (non-finite values read
  back as None)."""
  return [row for _, row in _read_lines(os.path.join(workdir, name))]


def _rewrite(path: str, lines: list[str]) -> None:
  fileio.write_atomic(path, "".join(line + "\n" for line in lines))


class MetricWriter:
  """Appends metric rows to `<workdir>/metrics.jsonl` and scalars to `<workdir>/tb`.

  `resume_step`: the step of the checkpoint being resumed; rows with a larger step (written
  after that checkpoint by the run that died) are dropped. Pass -1 when starting from scratch
  in a workdir that may hold rows of a run that never saved a checkpoint; None keeps all rows.
  Only process 0 writes (one file per run, not per host). `name`: another JSONL file of rows
  per step (e.g. rollout texts), `tensorboard=False` to leave TensorBoard out.
  """

  def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None,
               name: str = METRICS_FILE, tensorboard: bool = True):
    self.path = os.path.join(os.fspath(workdir), name)
    self._file = self._tb = None
    if jax.process_index() != 0:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      with open(self.path) as f:
        raw = f.read()
      kept = [line for line, row in _read_lines(self.path)
              if resume_step is None or row.get("step", -math.inf) <= resume_step]
      if raw != "".join(line + "\n" for line in kept):  # torn tail or rows to drop
        _rewrite(self.path, kept)
    self._file = open(self.path, "a")
    if not tensorboard:
      return
    # purge_step makes TensorBoard discard the dead run's events from that step on.
    purge = None if resume_step is None else resume_step + 1
    # tensorboardX names event files by the second and opens them "wb": a writer reopened within
    # the same second would wipe the earlier file. The ns suffix keeps them apart, in order.
    self._tb = SummaryWriter(os.path.join(workdir, TB_DIR), purge_step=purge,
                             filename_suffix=f".{time.time_ns()}")

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """One row: JSON line (flushed) + one TensorBoard scalar per numeric metric."""
    if self._file is None:
      return
    if "step" in metrics:
      raise ValueError("'step' is reserved for the row's step; rename the metric")
    step = int(step)
    values = {k: _to_python(k, v) for k, v in metrics.items()}
    row = {"step": step} | {k: _json_value(v) for k, v in values.items()}
    self._file.write(json.dumps(row, allow_nan=False) + "\n")
    self._file.flush()
    self._scalars(step, values)

  def _scalars(self, step: int, values: dict[str, Any]) -> None:
    if self._tb is None:
      return
    for k, v in values.items():
      if isinstance(v, int | float):  # bools included; strings, lists and None are jsonl-only
        self._tb.add_scalar(k, v, global_step=step)
    self._tb.flush()

  def annotate(self, step: int, metrics: dict[str, Any]) -> None:
    """Adds `metrics` to the last row of `step` (a row of its own if there is none): a note on
    a round already written, e.g. the settings a resumed run changed from it on."""
    if self._file is None:
      return
    self._file.close()
    lines = _read_lines(self.path)
    hits = [i for i, (_, row) in enumerate(lines) if row.get("step") == step]
    if not hits:
      self._file = open(self.path, "a")
      self.write(step, metrics)
      return
    values = {k: _to_python(k, v) for k, v in metrics.items()}
    row = {**lines[hits[-1]][1], **{k: _json_value(v) for k, v in values.items()}}
    raw = [line for line, _ in lines]
    raw[hits[-1]] = json.dumps(row, allow_nan=False)
    _rewrite(self.path, raw)
    self._file = open(self.path, "a")
    self._scalars(int(step), values)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      if self._tb is not None:
        self._tb.close()
      self._file = self._tb = None

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


PLAIN_EVERY_S = 10.0


class PlainProgress:
  """A bar's progress as plain lines on stderr, for output that is not a terminal (a log file, a
  pipe, a scheduler's capture): `desc: n/total (p%) elapsed, postfix` every PLAIN_EVERY_S
  seconds and once at the end. The tqdm calls the loops use (update, set_postfix, close, total).
  """

  def __init__(self, total: int, initial: int = 0, desc: str | None = None,
               every_s: float | None = None, file=None, final_line: bool = True):
    self.total, self.n, self.desc = total, initial, desc or "progress"
    self.final_line = final_line  # False: a transient bar's, silent unless it lasts
    self.every_s = PLAIN_EVERY_S if every_s is None else every_s
    self.file = file or sys.stderr
    self.postfix: dict[str, Any] = {}
    self._t0 = self._last = time.time()
    self._closed = self._spoke = False

  def update(self, n: int = 1) -> None:
    self.n += n
    if time.time() - self._last >= self.every_s:
      self._say()

  def set_postfix(self, **kwargs) -> None:
    self.postfix = kwargs

  def refresh(self) -> None:
    pass

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      if self.final_line or self._spoke:  # a transient bar that spoke ends its lines
        self._say()

  def _say(self) -> None:
    self._last, self._spoke = time.time(), True
    pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
    extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
    self.file.write(f"{self.desc}: {self.n}/{self.total}{pct} {self._last - self._t0:.0f}s"
                    f"{extra}\n")
    self.file.flush()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress(total: int, initial: int = 0, desc: str | None = None, leave: bool = True,
             **kwargs) -> tqdm.tqdm | PlainProgress:
  """Progress on stderr: a tqdm bar on a terminal, plain lines (PlainProgress) otherwise.

  RFT_PROGRESS=1 forces bars, RFT_PROGRESS=0 hides all progress. leave=False: a transient bar
  (an evaluation's), cleared when it closes; when the output is not a terminal it prints only
  if it lasts longer than PLAIN_EVERY_S (a real model's 20-minute evaluation in a log file).
  Use `bar.update(n)` and `bar.set_postfix(loss=..., pass1=...)`; they work the same on all of
  them, so callers need no branches.
  """
  env = os.environ.get("RFT_PROGRESS", "")
  tty = sys.stderr.isatty()
  if env == "" and not tty:
    return PlainProgress(total, initial=initial, desc=desc, final_line=leave)
  show = tty if env == "" else env != "0"
  return tqdm.tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, disable=not show,
                   dynamic_ncols=True, leave=leave, **kwargs)


def plot_curves(workdir: str | os.PathLike, path: str | os.PathLike | None = None) -> str:
  """The run's curves from metrics.jsonl as a PNG (default <workdir>/curves.png): training and
  test Pass@1 at the evaluations, reward and policy entropy per round. Returns the path."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  workdir = os.fspath(workdir)
  path = os.fspath(path) if path is not None else os.path.join(workdir, "curves.png")
  rows = read_metrics(workdir)

  def series(key):
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in pts], [p[1] for p in pts]

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for key, label in (("train_pass1", "training Pass@1"), ("test_pass1", "test Pass@1")):
    axes[0].plot(*series(key), marker="o", ms=3, label=label)
  axes[0].set(title="Pass@1", xlabel="round", ylim=(-0.02, 1.02))
  axes[0].legend(loc="best", fontsize=8)
  for ax, key, title in ((axes[1], "reward", "reward (round mean)"),
                         (axes[2], "entropy", "policy entropy (nats per token)")):
    ax.plot(*series(key), lw=1)
    ax.set(title=title, xlabel="round")
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.suptitle(os.path.basename(os.path.abspath(workdir)), fontsize=10)
  fig.tight_layout()
  tmp = os.path.join(os.path.dirname(path) or ".", f".tmp-{os.getpid()}-curves.png")
  try:
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compile_log():
  """Yields a list receiving the name of each function XLA compiles meanwhile ("jit(f)"), in
  order: a recompilation check for loops that should compile once per shape bucket."""
  names = []

  def listener(event, duration, **kwargs):
    del duration
    if event == COMPILE_EVENT:
      names.append(kwargs.get("fun_name"))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
