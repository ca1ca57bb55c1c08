"""The entry point end to end: `python -m rft_jax.main` on the tiny runlocal config.

One finished workdir (module fixture, about a minute on 2 CPU cores, warm start included) is
shared by the assertions; a misspelled config key must fail before anything is written.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import l0_minimal
from rft_jax import metrics

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SUMMARY_KEYS = ("base_train_pass1", "base_test_pass1", "final_train_pass1", "final_test_pass1",
                "rounds", "wall_s")


def _main(*args, timeout=300) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", RFT_PROGRESS="0")
  env.pop("XLA_FLAGS", None)  # the job as a user runs it: one CPU device, not the tests' 8
  return subprocess.run([sys.executable, "-m", "rft_jax.main", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("main") / "run"
  proc = _main("--config=configs/l0_minimal.py:runlocal", f"--workdir={workdir}")
  assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
  return workdir, proc


def test_prints_the_summary(finished):
  _, proc = finished
  assert "base:  training Pass@1" in proc.stdout and "final: training Pass@1" in proc.stdout
  assert "wall time" in proc.stdout
  printed = json.loads(proc.stdout.strip().splitlines()[-1])  # last line: the summary as JSON
  assert set(printed) == set(SUMMARY_KEYS)


def test_summary_json(finished):
  workdir, proc = finished
  rounds = l0_minimal.get_config("runlocal").train.rounds
  with open(workdir / "summary.json") as f:
    summary = json.load(f)
  assert set(SUMMARY_KEYS) <= set(summary)
  for key in SUMMARY_KEYS[:4]:
    assert isinstance(summary[key], float) and 0.0 <= summary[key] <= 1.0, key
  assert summary["rounds"] == rounds
  assert 0 < summary["wall_s"] < 600
  printed = json.loads(proc.stdout.strip().splitlines()[-1])
  assert printed == {k: summary[k] for k in SUMMARY_KEYS}


def test_metrics_tensorboard_and_tokenizer(finished):
  workdir, _ = finished
  rounds = l0_minimal.get_config("runlocal").train.rounds
  rows = metrics.read_metrics(workdir)
  assert [r["step"] for r in rows] == list(range(rounds + 1))
  assert {"train_pass1", "test_pass1"} <= set(rows[0])  # the base policy's evaluation
  assert {"loss", "reward", "train_pass1"} <= set(rows[-1])  # the last round is evaluated
  events = [f for f in os.listdir(workdir / "tb") if f.startswith("events.out.tfevents")]
  assert events and all(os.path.getsize(workdir / "tb" / f) > 0 for f in events)
  assert (workdir / "base" / "tokenizer" / "tokenizer.json").is_file()
  assert (workdir / "checkpoints" / str(rounds)).is_dir()


@pytest.mark.parametrize("override,key,hint", [
    ("--config.train.roundz=3", "roundz", 'Did you mean "rounds"'),
    ("--config.trian.rounds=3", "trian", 'Did you mean "train"'),
])
def test_misspelled_config_key_fails_naming_it(tmp_path, override, key, hint):
  workdir = tmp_path / "typo"
  proc = _main("--config=configs/l0_minimal.py:runlocal", f"--workdir={workdir}", override,
               timeout=120)
  assert proc.returncode != 0
  assert f"{override.split('=')[0]}: the config has no key '{key}'" in proc.stderr, proc.stderr
  assert hint in proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr  # a message, not a stack dump
  assert not workdir.exists() or not any(workdir.iterdir())
