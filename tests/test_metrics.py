"""MetricWriter (jsonl + TensorBoard), resume truncation, torn lines, annotations, progress,
the curves PNG."""

import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from rft_jax import metrics
from rft_jax.metrics import METRICS_FILE, MetricWriter, progress, read_metrics


def test_round_trip_scalar_types(tmp_path):
  with MetricWriter(tmp_path) as w:
    w.write(0, {"loss": 1.5, "n": 3, "np_f": np.float32(0.25), "np_i": np.int64(7),
                "jax_f": jnp.float32(0.5), "jax_i": jnp.asarray(2, jnp.int32),
                "jax_1": jnp.ones((1,)), "ok": np.bool_(True), "name": "arith"})
    w.write(np.int32(1), {"nan": float("nan"), "inf": np.float32(np.inf), "ninf": float("-inf")})
  rows = read_metrics(tmp_path)
  assert rows == [
      {"step": 0, "loss": 1.5, "n": 3, "np_f": 0.25, "np_i": 7, "jax_f": 0.5, "jax_i": 2,
       "jax_1": 1.0, "ok": True, "name": "arith"},
      {"step": 1, "nan": None, "inf": None, "ninf": None},
  ]
  assert type(rows[0]["np_i"]) is int and type(rows[0]["jax_f"]) is float
  # Strictly valid JSON (no bare NaN / Infinity tokens), one object per line.
  for line in (tmp_path / METRICS_FILE).read_text().splitlines():
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_rejects_non_scalars_and_reserved_key(tmp_path):
  with MetricWriter(tmp_path) as w:
    with pytest.raises(TypeError, match="'v'"):
      w.write(0, {"v": np.zeros(3)})
    with pytest.raises(ValueError, match="reserved"):
      w.write(0, {"step": 1})
  assert read_metrics(tmp_path) == []


def test_flushed_per_line(tmp_path):
  w = MetricWriter(tmp_path)
  w.write(0, {"a": 1})
  # Read while the writer is still open: a crash now would keep this row.
  assert read_metrics(tmp_path) == [{"step": 0, "a": 1}]
  w.close()


def test_resume_drops_rows_after_checkpoint(tmp_path, tmp_path_factory):
  # Uninterrupted run, for comparison.
  ref = tmp_path_factory.mktemp("ref")
  with MetricWriter(ref) as w:
    for s in range(6):
      w.write(s, {"x": s * 0.5})
  # Interrupted run: checkpoint at step 3, died after writing step 4 and half of step 5.
  with MetricWriter(tmp_path) as w:
    for s in range(5):
      w.write(s, {"x": s * 0.5})
  with open(tmp_path / METRICS_FILE, "a") as f:
    f.write('{"step": 5, "x": 2.')
  with MetricWriter(tmp_path, resume_step=3) as w:
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]
    for s in (4, 5):
      w.write(s, {"x": s * 0.5})
  assert (tmp_path / METRICS_FILE).read_bytes() == (ref / METRICS_FILE).read_bytes()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_a_file_of_its_own_with_lists_and_no_tensorboard(tmp_path):
  """name= / tensorboard=False: rows of lists (rollout texts) in another JSONL file, cut back
  on resume like metrics.jsonl; TensorBoard left out."""
  with MetricWriter(tmp_path, name="rollouts.jsonl", tensorboard=False) as w:
    for s in (1, 3, 4):
      w.write(s, {"text": [f"round {s}", "ü"], "reward": [np.float32(1), 0.0, float("nan")]})
  with MetricWriter(tmp_path, resume_step=3, name="rollouts.jsonl", tensorboard=False) as w:
    w.write(4, {"text": ["again"], "reward": [0.5]})
  assert read_metrics(tmp_path, name="rollouts.jsonl") == [
      {"step": 1, "text": ["round 1", "ü"], "reward": [1.0, 0.0, None]},
      {"step": 3, "text": ["round 3", "ü"], "reward": [1.0, 0.0, None]},
      {"step": 4, "text": ["again"], "reward": [0.5]}]
  assert sorted(os.listdir(tmp_path)) == ["rollouts.jsonl"]  # no tb/, no metrics.jsonl
  with MetricWriter(tmp_path, name="rollouts.jsonl") as w:
    with pytest.raises(TypeError, match="'v'"):
      w.write(5, {"v": [np.zeros(3)]})  # list items are scalars too


def test_torn_last_line_dropped_without_resume(tmp_path):
  path = tmp_path / METRICS_FILE
  path.write_text('{"step": 0, "a": 1}\n{"step": 1, "a"')
  assert read_metrics(tmp_path) == [{"step": 0, "a": 1}]
  with MetricWriter(tmp_path) as w:
    w.write(1, {"a": 2})
  assert path.read_text() == '{"step": 0, "a": 1}\n{"step": 1, "a": 2}\n'


def test_malformed_middle_line_named(tmp_path):
  (tmp_path / METRICS_FILE).write_text('{"step": 0}\ngarbage\n{"step": 1}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
    read_metrics(tmp_path)


def test_resume_minus_one_starts_over(tmp_path):
  with MetricWriter(tmp_path) as w:
    w.write(0, {"a": 1})
  with MetricWriter(tmp_path, resume_step=-1) as w:
    assert read_metrics(tmp_path) == []
    w.write(0, {"a": 2})
  assert read_metrics(tmp_path) == [{"step": 0, "a": 2}]


def read_events(tb_dir):
  """All Event protos of the TFRecord event files in tb_dir (framing: u64 len, u32 crc, data,
  u32 crc), in file-name (creation) order."""
  events = []
  for name in sorted(os.listdir(tb_dir)):
    data = (tb_dir / name).read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
      i += 12 + n + 4
  return events


def test_tensorboard_events(tmp_path):
  with MetricWriter(tmp_path) as w:
    w.write(0, {"loss": 1.0, "name": "x"})
    w.write(1, {"loss": 0.5})
  assert all(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tb"))
  scalars = [(e.step, v.tag, v.simple_value)
             for e in read_events(tmp_path / "tb") for v in e.summary.value]
  assert scalars == [(0, "loss", 1.0), (1, "loss", 0.5)]
  # Resuming from step 0 tells TensorBoard to purge the dead run's events from step 1 on.
  MetricWriter(tmp_path, resume_step=0).close()
  starts = [e.step for e in read_events(tmp_path / "tb")
            if e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [1]
  assert scalars == [(e.step, v.tag, v.simple_value)  # the first file is still intact
                     for e in read_events(tmp_path / "tb") for v in e.summary.value]


def test_progress_without_tty_is_plain_lines(monkeypatch, capsys):
  """Output to a file or pipe (pytest's stderr is not a TTY): plain lines every PLAIN_EVERY_S
  seconds and one at the end; transient (evaluation) bars only past PLAIN_EVERY_S;
  RFT_PROGRESS=0 hides all, RFT_PROGRESS=1 forces bars."""
  monkeypatch.delenv("RFT_PROGRESS", raising=False)
  monkeypatch.setattr(metrics, "PLAIN_EVERY_S", 0.0)  # a line at every update
  with progress(10, desc="rounds") as bar:
    assert isinstance(bar, metrics.PlainProgress)
    bar.update(3)
    bar.set_postfix(loss=0.5)
    bar.update(2)
  lines = capsys.readouterr().err.splitlines()
  assert [line.split(" ", 2)[:2] for line in lines] == [["rounds:", "3/10"], ["rounds:", "5/10"],
                                                        ["rounds:", "5/10"]]
  assert lines[1].startswith("rounds: 5/10 (50%) ") and lines[1].endswith(", loss=0.5")
  monkeypatch.setattr(metrics, "PLAIN_EVERY_S", 3600.0)
  with progress(1500, desc="warm start") as bar:  # quiet between lines, one at the end
    bar.update(520)
    bar.total = 520  # stopped early on purpose: the end says so, not 35%
  assert capsys.readouterr().err.startswith("warm start: 520/520 (100%) ")
  with progress(4, desc="test", leave=False) as bar:
    bar.update(4)
  assert capsys.readouterr().err == ""
  # A transient bar that lasts past PLAIN_EVERY_S (a real model's evaluation) speaks.
  monkeypatch.setattr(metrics, "PLAIN_EVERY_S", 0.0)
  with progress(4, desc="test", leave=False) as bar:
    bar.update(1)
  assert [line.split(" ")[:2] for line in capsys.readouterr().err.splitlines()] == [
      ["test:", "1/4"], ["test:", "1/4"]]
  monkeypatch.setenv("RFT_PROGRESS", "0")
  with progress(10, desc="rounds") as bar:
    bar.update(3)
  assert capsys.readouterr().err == ""
  monkeypatch.setenv("RFT_PROGRESS", "1")
  with progress(10, initial=2, desc="rounds") as bar:
    bar.update(3)
    bar.set_postfix(loss=0.5)
  err = capsys.readouterr().err
  assert "rounds" in err and "5/10" in err and "loss=0.5" in err


def test_annotate_adds_to_a_written_row(tmp_path):
  with MetricWriter(tmp_path) as w:
    for step in range(3):
      w.write(step, {"loss": float(step)})
    w.annotate(1, {"resumed_with": "optimizer.learning_rate: 0.001 -> 0.0001",
                   "optimizer.learning_rate": 1e-4})
    w.write(3, {"loss": 3.0})
    w.annotate(7, {"note": 1.0})  # no row of that step: a row of its own
  assert read_metrics(tmp_path) == [
      {"step": 0, "loss": 0.0},
      {"step": 1, "loss": 1.0, "resumed_with": "optimizer.learning_rate: 0.001 -> 0.0001",
       "optimizer.learning_rate": 1e-4},
      {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0}, {"step": 7, "note": 1.0}]


def test_plot_curves(tmp_path):
  with MetricWriter(tmp_path) as w:
    w.write(0, {"train_pass1": 0.2, "test_pass1": 0.3})
    for step in range(1, 5):
      w.write(step, {"reward": step / 4, "entropy": 1.0 / step, "loss": None,
                     **({"train_pass1": step / 4, "test_pass1": 0.3} if step % 2 == 0 else {})})
  path = metrics.plot_curves(tmp_path)
  assert path == str(tmp_path / "curves.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(tmp_path)) == ["curves.png", METRICS_FILE, "tb"]
