"""One run on several JAX processes (--multihost): 2 processes x 2 CPU devices on localhost, their
collectives through gloo, against 1 process x 4 devices.

The runs share one base policy, warm-started in the test process (one device), and small
evaluations; the killed-process test makes its own base on both processes (the 2-process warm
start, which deadlocked before it was paced: warm_start.py, issue 14). Compared:
metrics.jsonl row by row and the final checkpoint's params. L0 (one rollout a round: the batch
is replicated) is bit-identical. L2's 8 rollouts are split over the 4 devices: its reductions
over the batch (the advantages' mean, the gradient's all-reduce) add the devices' partial sums
in gloo's order across processes, another than XLA's in-process all-reduce, so it differs by
float32 rounding (measured: 1.5e-8 absolute in adv_mean, 3e-8 in the params), bounded at 1e-6
relative (+ 1e-6 absolute: tests.test_train.assert_same_rows / assert_same_tree).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax.serialization
import jax
import numpy as np
import pytest

from rft_jax import metrics
from tests.test_main import REPO_ROOT, _env
from tests.test_train import assert_same_rows, assert_same_tree, checkpoint_state

# Small evaluations (one compiled sampler shape) keep each launch to seconds of compilation; the
# base (smaller operands, a longer warm start) answers some questions, so that L2's groups carry
# a gradient and the params move. The warm start is evaluated once, after its last step: 300
# steps dispatched without reading anything back, the loop that deadlocked unpaced (issue 14).
SMALL = ("--config.eval.test_size=8", "--config.eval.batch_size=8",
         "--config.eval.train_samples=1", "--config.task.max_operand=5",
         "--config.warm_start.max_steps=300", "--config.warm_start.eval_every=1000",
         "--config.warm_start.learning_rate=1e-2", "--config.warm_start.target_pass1=0.2")
L0 = "--config=configs/l0_minimal.py:runlocal"
L2 = "--config=configs/l2_advantage.py:runlocal"
L2_ROUNDS = 6  # room to kill the run after round 3, between its checkpoints (every 2 rounds)


WAIT_S = 300  # no wait of these tests may hang a test run


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


_LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap():
  """Kills what a test launched and left running (a failed assertion, a hang): no process of
  one test may still hold its coordinator or gloo peers when the next one starts."""
  yield
  while _LAUNCHED:
    p = _LAUNCHED.pop()
    if p.poll() is None:
      p.kill()  # SIGKILL: the runtime's preemption notifier takes SIGTERM
      p.wait(timeout=60)


def launch(workdir, *args, processes: int = 2, devices: int = 4,
           timeout_s: int = 60) -> list[subprocess.Popen]:
  """`python -m rft_jax.main` as `processes` processes of devices // processes CPU devices each
  (--multihost when more than one); output in <workdir>.logs/<process>.{out,err}."""
  env = dict(_env(), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices // processes}")
  logs = f"{workdir}.logs"
  os.makedirs(logs, exist_ok=True)
  port = _free_port()
  procs = []
  for i in range(processes):
    multihost = [] if processes == 1 else [
        "--multihost", f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
        f"--process_id={i}", f"--multihost_timeout={timeout_s}"]
    with open(f"{logs}/{i}.out", "w") as out, open(f"{logs}/{i}.err", "w") as err:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "rft_jax.main", f"--workdir={workdir}", *args, *multihost],
          cwd=REPO_ROOT, env=env, stdout=out, stderr=err))
  _LAUNCHED.extend(procs)
  return procs


def stderr(workdir, process: int = 0) -> str:
  with open(f"{workdir}.logs/{process}.err") as f:
    return f.read()


def finish(workdir, procs, timeout=600) -> None:
  for i, p in enumerate(procs):
    p.wait(timeout=timeout)
    assert p.returncode == 0, f"process {i}:\n{stderr(workdir, i)[-5000:]}"


def run(workdir, *args, processes: int = 2, **kwargs):
  finish(workdir, launch(workdir, *args, processes=processes, **kwargs))
  return metrics.read_metrics(workdir)


def wait_for_row(workdir, step: int, procs) -> None:
  """Until metrics.jsonl holds round `step` (the rounds are under way); fails if a process
  ended first."""
  deadline = time.time() + WAIT_S
  while not any(r["step"] >= step for r in metrics.read_metrics(workdir)):
    assert all(p.poll() is None for p in procs), stderr(workdir)[-5000:]
    if time.time() > deadline:
      for p in procs:
        p.kill()
      pytest.fail(f"no round {step} in {WAIT_S} s (a hang?); process 0 said:\n"
                  f"{stderr(workdir)[-3000:]}")
    time.sleep(0.05)


def final_params(workdir, rounds: int):
  return checkpoint_state(workdir, rounds)["params"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("multihost")


def small_config(*overrides):
  """configs/l0_minimal.py:runlocal with --config.KEY=VALUE overrides (SMALL's)."""
  from configs import l0_minimal

  config = l0_minimal.get_config("runlocal")
  for flag in overrides:
    key, value = flag.removeprefix("--config.").split("=", 1)
    *path, leaf = key.split(".")
    node = config
    for name in path:
      node = node[name]
    node[leaf] = type(node[leaf])(value)
  return config


@pytest.fixture(scope="module")
def base(root):
  """The base policy every run but the killed-process one reuses, warm-started here (one
  device; no launch to wait for). The runs' own settings: its fingerprint is theirs."""
  from rft_jax import train, warm_start

  base_dir = root / "base"
  config = small_config(*SMALL, f"--config.warm_start.dir={base_dir}")
  warm_start.base_policy(config, train.build_task(config.task), str(root / "unused"),
                         log=lambda message: None)
  return base_dir


@pytest.fixture(scope="module")
def l0_single(base, root):
  """One process x 4 devices, L0: the reference of the 2-process L0 run."""
  return root / "l0_single", run(root / "l0_single", L0, *shared(base), processes=1)


def shared(base_dir):
  return (*SMALL, f"--config.warm_start.dir={base_dir}")


@pytest.mark.slow
def test_l0_on_two_processes_equals_one(base, l0_single, root):
  """Bit for bit: the same metrics.jsonl and final params."""
  _, want = l0_single
  rounds = want[-1]["step"]
  workdir = root / "l0_multi"
  got = run(workdir, L0, *shared(base))
  assert got == want
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir, rounds),
               final_params(root / "l0_single", rounds))
  # One log and summary (process 0's); process 1 ran the same rounds silently.
  with open(f"{workdir}.logs/0.out") as f0, open(f"{workdir}.logs/1.out") as f1:
    said, silent = f0.read(), f1.read()
  assert "base: training Pass@1" in said and "final: training Pass@1" in said
  assert "base:" not in silent and "final:" not in silent
  with open(workdir / "summary.json") as f:
    assert json.load(f)["rounds"] == rounds


@pytest.fixture(scope="module")
def l2_single(base, root):
  """L2 (8 rollouts a round, split over the 4 devices) on 1 process x 4 devices; the rounds
  carry a gradient (signal_frac > 0), so equal params mean something."""
  rows = run(root / "l2_single", L2, *shared(base), f"--config.train.rounds={L2_ROUNDS}",
             processes=1)
  assert any(r.get("signal_frac", 0) > 0 for r in rows)
  return root / "l2_single", rows


@pytest.mark.slow
def test_l2_killed_on_both_processes_resumes_to_the_one_process_numbers(base, l2_single, root):
  """Both processes killed after round 3 (checkpoint 2 saved), then SIGTERM to one of them: the
  same command resumes each time and ends where 1 process x 4 devices does, row by row and in
  the final params."""
  want_dir, want = l2_single
  args = (L2, *shared(base), f"--config.train.rounds={L2_ROUNDS}")
  workdir = root / "l2_multi"
  procs = launch(workdir, *args)
  wait_for_row(workdir, 3, procs)
  for p in procs:
    p.send_signal(signal.SIGSTOP)  # both frozen at once, then killed
  for p in procs:
    p.kill()
    p.wait(timeout=60)
  assert not (workdir / "summary.json").exists()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "fingerprint.json"]
  # Resumed; then SIGTERM to process 1 alone: both finish the round, save it and stop.
  procs = launch(workdir, *args)
  wait_for_row(workdir, 4, procs)
  procs[1].send_signal(signal.SIGTERM)
  for i, p in enumerate(procs):
    assert p.wait(timeout=600) == 143, stderr(workdir, i)[-5000:]
  assert "resumed from round 2" in open(f"{workdir}.logs/0.out").read()
  said = stderr(workdir, 0).strip().splitlines()[-1]
  assert said.startswith("stopped at round ") and said == stderr(workdir, 1).strip().splitlines(
      )[-1], said
  stopped = int(said.split()[3].rstrip(";"))
  assert str(stopped) in os.listdir(workdir / "checkpoints") and stopped < L2_ROUNDS
  finish(workdir, launch(workdir, *args))
  assert f"resumed from round {stopped}" in open(f"{workdir}.logs/0.out").read()
  assert_same_rows(metrics.read_metrics(workdir), want)
  assert_same_tree(final_params(workdir, L2_ROUNDS), final_params(want_dir, L2_ROUNDS))


@pytest.mark.slow
def test_fsdp_across_processes_gives_the_data_mesh_numbers(base, l2_single, root):
  """L2 with params split along `embed` over an fsdp axis of 4 devices, 2 on each process (the
  batch too): the data mesh's losses and params, up to float rounding: the contractions over
  the split embed axis add partial sums in an all-reduce (measured: 1.3e-6 relative in a
  gradient norm, 3e-8 in the params), bounded at 1e-5."""
  want_dir, want = l2_single
  workdir = root / "l2_fsdp"
  got = run(workdir, L2, *shared(base), f"--config.train.rounds={L2_ROUNDS}",
            "--config.mesh.data=1", "--config.mesh.fsdp=4")
  assert_same_rows(got, want, rel_tol=1e-5)
  assert_same_tree(final_params(workdir, L2_ROUNDS), final_params(want_dir, L2_ROUNDS))


@pytest.mark.slow
def test_a_killed_process_ends_the_other_with_a_message(base, root):
  """This run makes its own base on both processes (process 0 writes it, the other cleans up
  after itself): 300 steps dispatched with no read in between, which deadlocked the two
  processes before the warm start was paced (a wait here fails after WAIT_S). Then process 1
  is killed during the rounds: process 0 does not hang; within the --multihost_timeout (the
  runtime's heartbeat timeout) it exits, naming the task that stopped."""
  base_dir = base
  workdir = root / "killed"
  procs = launch(workdir, L0, *SMALL, "--config.train.rounds=100000",
                 "--config.train.checkpoint_every=100000", timeout_s=10)
  wait_for_row(workdir, 1, procs)
  procs[1].kill()
  procs[0].wait(timeout=300)  # a hang fails here
  assert procs[0].returncode != 0
  said = stderr(workdir, 0)
  assert "The following tasks are unhealthy (stopped sending heartbeats):\n1\n" in said, said
  # The base of 2 processes: the shared base's steps (one device), and its params up to the
  # rounding of the warm start's gradient all-reduce (its batches are split over the 4
  # devices), which 300 AdamW steps carry to about 1e-5 (measured 2.8e-6 against one device,
  # 9e-6 against one process x 4 devices), bounded at 5e-5.
  assert sorted(os.listdir(workdir / "base")) == sorted(os.listdir(base_dir))
  assert not [name for name in os.listdir(root / "killed") if name.startswith(".base-")]
  with open(workdir / "base" / "base.json") as f, open(base_dir / "base.json") as g:
    assert json.load(f)["steps"] == json.load(g)["steps"]
  params = []
  for directory in (workdir / "base", base_dir):
    with open(directory / "params.msgpack", "rb") as f:
      params.append(flax.serialization.msgpack_restore(f.read()))
  assert_same_tree(*params, atol=5e-5)


def test_a_peer_that_never_joins_is_one_line_within_the_timeout(tmp_path):
  """Process 0 of 2 alone: after --multihost_timeout it ends with one line saying what to do,
  not the runtime's abort, and writes nothing."""
  workdir = tmp_path / "alone"
  port = _free_port()
  env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=2")
  done = subprocess.run(
      [sys.executable, "-m", "rft_jax.main", L0, f"--workdir={workdir}", "--multihost",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", "--process_id=0",
       "--multihost_timeout=3"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
      timeout=120)
  assert done.returncode == 1
  last = done.stderr.strip().splitlines()[-1]
  assert last == (f"error: process 0 of 2 (coordinator localhost:{port}): not every process "
                  "joined within 3 s; start the same command on every host (each with its own "
                  "--process_id), with the coordinator's address reachable from all of them"), \
      done.stderr
  assert not workdir.exists()


def test_multihost_flags_go_together(tmp_path):
  env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=2")
  done = subprocess.run(
      [sys.executable, "-m", "rft_jax.main", L0, f"--workdir={tmp_path / 'w'}", "--multihost",
       "--num_processes=2"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
      timeout=120)
  assert done.returncode == 1
  assert done.stderr.splitlines() == [
      "error: --coordinator_address, --num_processes and --process_id go together (or none of "
      "them, where JAX detects the cluster)"], done.stderr
  assert not (tmp_path / "w").exists()
