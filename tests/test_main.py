"""The entry point end to end: `python -m rft_jax.main` on the tiny runlocal config.

One finished workdir (module fixture, about a minute on 2 CPU cores, warm start included) is
shared by the assertions; errors a person can act on (a misspelled key, a bad value, a missing
config file, a workdir in use) end in one line with nothing written; SIGTERM saves and stops.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

from configs import l0_minimal
from rft_jax import fileio, metrics, workdir as workdir_lib
from tests.test_checkpoint import snapshot

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SUMMARY_KEYS = ("base_train_pass1", "base_test_pass1", "final_train_pass1", "final_test_pass1",
                "rounds", "wall_s")


def _env() -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", RFT_PROGRESS="0", PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)  # the job as a user runs it: one CPU device, not the tests' 8
  return env


def _main(*args, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "rft_jax.main", *args], cwd=REPO_ROOT, env=_env(),
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
  proc = _main("--config=configs/l0_minimal.py:runlocal", f"--workdir={workdir}", override)
  assert proc.returncode != 0
  assert f"{override.split('=')[0]}: the config has no key '{key}'" in proc.stderr, proc.stderr
  assert hint in proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr  # a message, not a stack dump
  assert not workdir.exists() or not any(workdir.iterdir())


def test_the_override_that_fails_is_the_one_named(tmp_path):
  """Two overrides ending in the same key, the valid one first: the one the config cannot
  resolve is named (the first match was, though it is valid)."""
  proc = _main("--config=configs/l0_minimal.py:runlocal", f"--workdir={tmp_path / 'w'}",
               "--config.train.rounds=3", "--config.rollout.rounds=5")
  assert proc.returncode != 0
  assert "--config.rollout.rounds: the config has no key 'rounds'" in proc.stderr, proc.stderr


def test_multihost_flags_without_multihost_are_refused(tmp_path):
  """--process_id and friends without --multihost would start a one-process run."""
  proc = _main("--config=configs/l0_minimal.py:runlocal", f"--workdir={tmp_path / 'w'}",
               "--process_id=1", "--num_processes=2")
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: --num_processes, --process_id given without --multihost"
  assert not (tmp_path / "w").exists()


def test_curves_png_and_file_modes(finished):
  """The curves next to summary.json; files written atomically get the umask's mode, as any
  other output (not mkstemp's 0600), and so do the warm start's folders (not mkdtemp's 0700)."""
  workdir, proc = finished
  with open(workdir / "curves.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert f"curves: {workdir / 'curves.png'}" in proc.stderr
  mask = fileio.umask()  # the subprocess inherited this one
  for name in ("summary.json", "base_eval.json", "checkpoints/fingerprint.json",
               "base/base.json", "metrics.jsonl"):
    assert os.stat(workdir / name).st_mode & 0o777 == 0o666 & ~mask, name
  for name in ("base", "base/tokenizer"):
    assert os.stat(workdir / name).st_mode & 0o777 == 0o777 & ~mask, name
  assert not (workdir / workdir_lib.LOCK_INFO).exists()
  assert proc.stderr.count("base policy") == 0 and proc.stdout.count("base policy") == 1


def test_bad_values_one_line_each_before_any_work(tmp_path):
  workdir = tmp_path / "bad"
  proc = _main("--config=configs/l0_minimal.py:runlocal", f"--workdir={workdir}",
               "--config.example.selection=medum", "--config.train.checkpoint_every=0",
               "--config.rollout.num_samples=0", "--config.rollout.temperature=-1")
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == [
      "error: --config.rollout.num_samples=0: must be an integer >= 1",
      "error: --config.train.checkpoint_every=0: must be an integer >= 1",
      "error: --config.rollout.temperature=-1.0: must be a number >= 0",
      "error: --config.example.selection='medum': must be one of id, index, easy, medium, hard, "
      "extremely_hard"], proc.stderr
  assert not workdir.exists()
  # --debug: the same error with its traceback.
  proc = _main("--config=configs/l0_minimal.py:runlocal", f"--workdir={workdir}",
               "--config.train.mini_batches=3", "--debug")
  assert proc.returncode == 1 and "Traceback" in proc.stderr
  assert "ConfigError: --config.train.mini_batches=3: must divide the 1 rollouts" in proc.stderr


@pytest.mark.parametrize("config,line", [
    ("configs/no_such_layer.py", "error: --config=configs/no_such_layer.py: cannot load it "
     "([Errno 2] No such file or directory: 'configs/no_such_layer.py')"),
    ("configs/l0_minimal.py:runlocal,gg=4", "FATAL Flags parsing error: flag "
     "--config=configs/l0_minimal.py:runlocal,gg=4: ValueError: unknown config argument 'gg'"),
])
def test_config_file_errors_are_one_line(tmp_path, config, line):
  proc = _main(f"--config={config}", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 1
  assert proc.stderr.splitlines()[0].startswith(line), proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


def test_second_process_on_a_workdir_is_refused(finished):
  """This process holds the finished run's workdir, as a run in progress would; the same
  command in another process stops at once, naming the holder, and writes nothing."""
  workdir, _ = finished
  with workdir_lib.Lock(workdir) as lock:
    lock.record()
    before = snapshot(workdir)
    proc = _main("--config=configs/l0_minimal.py:runlocal", f"--workdir={workdir}")
    assert snapshot(workdir) == before
  assert proc.returncode == 1
  (line,) = proc.stderr.splitlines()
  assert line.startswith(f"error: {workdir} is in use by another run (pid {os.getpid()} on "), line


@pytest.mark.slow
def test_sigterm_saves_the_round_and_exits_143(finished, tmp_path):
  """SIGTERM in the rounds: the round finishes, is saved, one line says how to go on, exit 143;
  a second SIGTERM right after the first exits at once. (Reuses the finished run's base.)"""
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "rft_jax.main", "--config=configs/l0_minimal.py:runlocal",
          f"--workdir={workdir}", f"--config.warm_start.dir={finished[0] / 'base'}",
          "--config.train.rounds=100000", "--config.train.checkpoint_every=100000"]

  def start_and_signal(times: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the rounds start right after the base's line
      if line.startswith("base:"):
        break
    proc.send_signal(signal.SIGTERM)
    said = ""
    if times == 2:  # once the first is being handled (two pending signals would merge)
      said = proc.stderr.readline()
      assert said.startswith("SIGTERM: finishing the current round"), said
      proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, out, said + err)

  first = start_and_signal(1)
  assert first.returncode == 143, first.stderr
  last = first.stderr.strip().splitlines()[-1]
  assert last.startswith("stopped at round ") and last.endswith(
      "; run the same command to resume"), first.stderr
  assert "Traceback" not in first.stderr
  k = int(last.split()[3].rstrip(";"))
  assert str(k) in os.listdir(workdir / "checkpoints")
  assert [r["step"] for r in metrics.read_metrics(workdir)] == list(range(k + 1))

  second = start_and_signal(2)
  assert second.returncode == 143, second.stderr
  assert "SIGTERM again: exiting at once, without saving" in second.stderr
  assert "Traceback" not in second.stderr


def test_corrupt_checkpoint_is_one_line(finished, tmp_path):
  """Garbage in the newest checkpoint's arrays: one line (not orbax's tracebacks, nor those of
  its reads left in flight), naming the step and the way back; nothing is written."""
  workdir = tmp_path / "copy"
  shutil.copytree(finished[0], workdir)
  rounds = l0_minimal.get_config("runlocal").train.rounds
  for path in (workdir / "checkpoints" / str(rounds) / "state").rglob("*"):
    if path.is_file() and "/d/" in str(path):
      path.write_bytes(b"\0garbage" * 4)
  before = snapshot(workdir)
  proc = _main("--config=configs/l0_minimal.py:runlocal", f"--workdir={workdir}")
  assert proc.returncode == 1, proc.stderr[-5000:]
  lines = proc.stderr.splitlines()
  assert len(lines) == 1, proc.stderr[-5000:]  # show what else came out
  (line,) = lines
  assert line.startswith(f"error: checkpoint round {rounds} in {workdir / 'checkpoints'} cannot "
                         "be read (ValueError: "), line
  assert line.endswith(f"delete {workdir / 'checkpoints'}/{rounds} to resume from the one before "
                       "it ([2]), or start over in a fresh --workdir")
  assert snapshot(workdir) == before
