"""MetricWriter (jsonl + TensorBoard), resume truncation, torn lines, progress bar."""

import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

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


def test_progress_hidden_without_tty_unless_forced(monkeypatch, capsys):
  monkeypatch.delenv("RFT_PROGRESS", raising=False)
  with progress(10, desc="rounds") as bar:  # pytest's stderr is not a TTY
    bar.update(3)
    bar.set_postfix(loss=0.5)
  assert capsys.readouterr().err == ""
  monkeypatch.setenv("RFT_PROGRESS", "1")
  with progress(10, initial=2, desc="rounds") as bar:
    bar.update(3)
    bar.set_postfix(loss=0.5)
  err = capsys.readouterr().err
  assert "rounds" in err and "5/10" in err and "loss=0.5" in err
