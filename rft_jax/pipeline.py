"""The bottom-up pipeline: run layers x seeds, then write a report (table and plots).

    python -m rft_jax.pipeline --layers=quick --seeds=2 --quick
    python -m rft_jax.pipeline --layers=l0,l1:g=4,l2,l3:neg=m10 --seeds=3 --root=runs/pipeline
    python -m rft_jax.pipeline --report_only --root=runs/pipeline

Layers come from configs/layers.py (a name, `name:arg` with the layer's config argument, or a
preset: quick = l0..l4, paper, beyond). Each run has its own workdir <root>/<layer>/seed<k> with
config.seed = k; every run whose base policy is the embedded warm start shares one base
directory <root>/base/<hash of the base's settings>, made once before the runs, so all layers
and seeds start from one policy (L5's fallback base has other settings, hence its own). The
training question depends on the base and on example.* only, not on the seed.

Resumable: a run whose summary.json exists is skipped; an unfinished one resumes from its last
checkpoint when the pipeline runs again. Each workdir keeps the config it was made with
(config.json); asking for the same run with other settings stops with a message, so one report
never mixes settings. A run that fails writes error.txt and the others go on; it is tried again
the next time, except a run that diverged (train's divergence guard: DivergedError), which is
an outcome of its settings, kept (and published) as such: delete its workdir to run it again.

The report, <root>/report.md: one summary table (a row per layer: base and final training and
test Pass@1 as mean ± std over seeds, rounds to training Pass@1 >= 0.9, stability), then per
layer its lineage, changed fields, a table per seed and plots in <root>/plots/: Pass@1 curves
(mean line, min-max band over seeds, thin seed lines) and bandit diagnostics per round (reward,
signal_frac = fraction of rollouts with a non-zero advantage, policy entropy, response length,
and the share of rollouts cut at the length limit where the runs log it).

--quick (QUICK: 60 rounds, evaluations every 15 rounds on 32 training samples and 200 test
questions) is sized for the issue's budget, L0..L4 x 2 seeds within 30 minutes on a 2-core CPU.
Measured on the 2-core CPU while it was shared with other work (load 6-9), one run after
another in one process: the shared warm start 340 s (525 supervised steps to test Pass@1 0.34),
then the 10 runs in 113 s (6-31 s each: the first run of a shape compiles, later ones reuse
it), under 8 minutes in all. A full-setting run (configs/common.py) took 69 s (l1) to 91 s
(batch) as its own process with the base reused. --parallel=N starts subprocesses, which compile
separately, so on a 2-core CPU one process should be faster (not timed side by side; XLA
already uses both cores): keep --parallel for machines with more cores than one run uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rft_jax import errors, fileio

REPO_ROOT = Path(__file__).resolve().parents[1]

# --quick: fewer rounds, coarser and smaller evaluations; the base (warm start) and the training
# question are those of the full setting, so a quick report previews the full one. Budget on the
# 2-core CPU (measured while shared with other work, load ~8): see the module docstring.
QUICK = {
    "train.rounds": 60,
    "train.eval_every": 15,
    "train.checkpoint_every": 30,
    "eval.test_size": 200,
    "eval.train_samples": 32,
}
# How --parallel starts one run (a test swaps in a stand-in).
RUN_ONE_COMMAND = (sys.executable, "-m", "rft_jax.pipeline", "--run_one")
SETTINGS_FILE = "pipeline.json"
THRESHOLD = 0.9  # training Pass@1 that counts as "learned the optimal arm"


@dataclasses.dataclass(frozen=True)
class Run:
  spec: str     # layer spec, "l3:neg=m10"
  seed: int
  workdir: str

  @property
  def label(self) -> str:
    return f"{spec_dir(self.spec)}/seed{self.seed}"


# -- planning -----------------------------------------------------------------------------------


def _layers_module():
  if str(REPO_ROOT) not in sys.path and (REPO_ROOT / "configs").is_dir():
    sys.path.insert(0, str(REPO_ROOT))
  from configs import layers

  return layers


def parse_layers(text: str) -> list[str]:
  """'quick,l3:neg=m10,g=4,l4' -> ['l0', ..., 'l4', 'l3:neg=m10,g=4', 'l4'] (order kept,
  duplicates dropped). A word that is neither a layer nor a preset continues the previous
  layer's argument, so layer arguments may hold commas."""
  layers = _layers_module()
  specs: list[str] = []
  for word in filter(None, (w.strip() for w in text.split(","))):
    name = word.partition(":")[0]
    if word in layers.PRESETS:
      specs.extend(layers.PRESETS[word])
    elif name in layers.LAYERS:
      specs.append(word)
    elif "=" in word or word == "runlocal":
      if not specs:
        raise errors.ConfigError(f"--layers: argument {word!r} before any layer")
      specs[-1] += ("," if ":" in specs[-1] else ":") + word
    else:
      raise errors.ConfigError(f"--layers: unknown layer or preset {word!r}; layers: "
                       f"{', '.join(layers.LAYERS)}; presets: {', '.join(layers.PRESETS)}")
  out = []
  for s in specs:
    if s not in out:
      out.append(s)
  return out


def spec_dir(spec: str) -> str:
  """'l3:neg=m10,g=4' -> 'l3_neg-m10_g-4' (a directory name)."""
  name, _, arg = spec.partition(":")
  return "_".join([name] + [w.replace("=", "-").replace("/", "-")
                            for w in arg.split(",") if w])


def _cast(old, text: str):
  if isinstance(old, bool):
    word = text.strip().lower()
    if word not in ("1", "true", "yes", "0", "false", "no"):
      raise errors.ConfigError(f"{text!r} is not a boolean: use true or false")
    return word in ("1", "true", "yes")
  return type(old)(text) if old is not None else text


def apply_overrides(config, overrides: dict) -> None:
  """{'train.rounds': 60, 'eval.test_size': '100'} onto config (strings take the field's type)."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config
    for part in path:
      node = node[part]
    if leaf not in node:
      raise errors.ConfigError(f"override {key}: no such config field")
    node[leaf] = _cast(node[leaf], value) if isinstance(value, str) else value


def layer_config(spec: str, *, runlocal: bool = False, quick: bool = False,
                 overrides: dict | None = None, base: str = ""):
  """The layer's config with the pipeline's settings (not yet the seed or the directories);
  `base` names another base model for it (configs/common.py's base=, e.g. smollm2)."""
  layers = _layers_module()
  name, _, arg = spec.partition(":")
  arg = ",".join(filter(None, [arg, f"base={base}" if base else "", "runlocal" if runlocal
                               else ""]))
  config = layers.get(name).get_config(arg)
  if quick:
    apply_overrides(config, QUICK)
  apply_overrides(config, overrides or {})
  return config


def base_dir(root: str, config) -> str:
  """<root>/base/<hash>: one embedded base per distinct task/model/warm-start settings."""
  from rft_jax import warm_start

  text = json.dumps(warm_start.base_fingerprint(config), sort_keys=True)
  return os.path.join(root, "base", hashlib.sha256(text.encode()).hexdigest()[:10])


def _comparable(config_json: dict) -> dict:
  """A run's config as the pipeline compares it: keys added since at their defaults count as
  absent (train.LATER_KEYS), so records of earlier commits still count as the same run."""
  from rft_jax import train

  d = train.drop_later_defaults(json.loads(json.dumps(config_json)))
  # Paths into the root: the same root may be named by another path, or be another checkout's.
  d.get("warm_start", {}).pop("dir", None)
  d.get("example", {}).pop("table", None)
  d.get("eval", {}).pop("shared_base", None)
  return d


def _comparable_flat(config_json: dict) -> dict:
  """{'section.key': value} of a run's config as runs are compared (_comparable)."""
  return _flat(_comparable(config_json))


def plan(specs: Sequence[str], seeds: int, root: str, *, runlocal: bool = False,
         quick: bool = False, overrides: dict | None = None, base: str = "",
         tables: str = "") -> list[tuple[Run, object]]:
  """[(run, its config)], each config with its seed, the shared base directory, the shared
  difficulty table (unless the overrides name one) and the shared base test evaluations (in
  `tables`, default <root>/difficulty; train.base_test_path) set."""
  from rft_jax.data import selection

  shared = tables or os.path.join(root, "difficulty")
  out = []
  for spec in specs:
    for seed in range(seeds):
      config = layer_config(spec, runlocal=runlocal, quick=quick, overrides=overrides, base=base)
      config.seed = seed
      if not config.model.checkpoint:
        config.warm_start.dir = base_dir(root, config)
      # An example.table of the overrides is kept: a run that must draw its question from a
      # given table (experiments/smollm2/run.sh, l0_medium) names it.
      if config.example.selection in selection.BUCKETS and not config.example.table:
        config.example.table = difficulty_path(shared, config)
      config.eval.shared_base = os.path.join(shared, BASE_TEST_DIR)
      out.append((Run(spec, seed, os.path.join(root, spec_dir(spec), f"seed{seed}")), config))
  return out


def _write_config(run: Run, config) -> None:
  """Records the run's config; stops if the workdir holds a run made with other settings."""
  path = os.path.join(run.workdir, "config.json")
  new = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    a, b = _comparable_flat(old), _comparable_flat(new)
    if a != b:
      diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
      raise errors.ConfigError(
          f"{run.workdir} holds a run made with other settings ({', '.join(diff)}); use another "
          "--root, or delete that directory to redo it")
    if old == new:
      return
  os.makedirs(run.workdir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(new, f, indent=1)
  os.replace(tmp, path)


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# -- running ------------------------------------------------------------------------------------


def is_done(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "summary.json"))


def diverged(workdir: str) -> bool:
  """The run stopped at train's divergence guard and has not finished since: error.txt's last
  line is the DivergedError (a traceback that only mentions it, chained or in source, is another
  failure), and there is no summary.json (a run resumed with --resume_with and finished)."""
  line = last_error(workdir)
  return not is_done(workdir) and line.split(":")[0].strip().endswith("DivergedError")


def last_error(workdir: str) -> str:
  """The last non-empty line of the run's error.txt (the exception), '' without one."""
  path = os.path.join(workdir, "error.txt")
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  return lines[-1] if lines else "unknown error"


def has_ended(workdir: str) -> bool:
  """Finished, or diverged: the runner does not run it again."""
  return is_done(workdir) or diverged(workdir)


def _logger(workdir: str, label: str):
  path = os.path.join(workdir, "log.txt")

  def log(msg: str) -> None:
    with open(path, "a") as f:
      f.write(msg + "\n")
    print(f"[{label}] {msg}", flush=True)

  return log


def run_one(workdir: str, label: str | None = None) -> bool:
  """Runs (or resumes) the run in workdir from its config.json; False (and error.txt) if it
  failed. The subprocess entry point of --parallel, and the in-process one otherwise."""
  import ml_collections

  from rft_jax import train

  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  error = os.path.join(workdir, "error.txt")
  if os.path.exists(error):
    os.remove(error)
  log = _logger(workdir, label or workdir)
  try:
    train.run(config, workdir, log=log)
    return True
  except errors.RunInterrupted:  # Ctrl-C / SIGTERM stop the pipeline, not just this run
    raise
  except Exception as e:  # recorded; the other runs go on
    with open(error, "w") as f:
      f.write(traceback.format_exc())
    log(f"FAILED: {type(e).__name__}: {e}")
    return False


def prepare_bases(planned: Sequence[tuple[Run, object]], log=print) -> None:
  """Makes each shared embedded base once, before runs that would otherwise race to make it."""
  from rft_jax import sharding, train, warm_start

  made = set()
  for run, config in planned:
    directory = config.warm_start.dir
    if config.model.checkpoint or directory in made or is_done(run.workdir):
      continue
    made.add(directory)
    if os.path.exists(os.path.join(directory, warm_start.INFO_FILE)):
      continue
    log(f"warm start of the shared base policy -> {directory}")
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    warm_start.base_policy(config, train.build_task(config.task), directory,
                           sharding.build_mesh(**config.mesh), log=log)


def run_rollouts(config) -> float:
  """The rollouts a run samples over its rounds: what its training part costs grows with.
  (A record written before rollout.prompts_per_round existed had one question a round.)"""
  rollout = config.rollout
  return float(config.train.rounds * rollout.num_samples * rollout.get("prompts_per_round", 1))


def remaining_time(finished: Sequence[tuple[float, float]], left: Sequence[float],
                   parallel: int = 1) -> str:
  """'about 2.5 h left (4 runs, 37 to 70 min each)'; '' before any run has finished.

  finished: (rollouts, wall seconds) of the finished runs; left: the rollouts of each run still
  to go (run_rollouts). A run left costs the line wall = a + b * rollouts fitted to the finished
  runs where they span two or more rollout counts (an evaluation-bound part and a rollout-bound
  part: a G = 16 layer costs more than L0), their mean wall otherwise or where the fit's slope
  is negative (noise). The runs go, in order, to whichever of `parallel` slots frees first."""
  if not finished or not left:
    return ""
  x, y = (np.asarray(v, float) for v in zip(*finished, strict=True))
  slope = 0.0
  if len(set(x.tolist())) > 1:
    slope = float(np.polyfit(x, y, 1)[0])
  slope = max(slope, 0.0)
  # (no run left is taken to be cheaper than the cheapest finished one: the line's intercept
  # can fall below 0 where the fit extrapolates down)
  costs = [max(float(np.mean(y) + slope * (r - np.mean(x))), float(y.min())) for r in left]
  slots = [0.0] * max(1, parallel)
  for cost in costs:
    slots[slots.index(min(slots))] += cost
  total = max(slots)
  when = f"{total / 3600:.1f} h" if total >= 5400 else f"{total / 60:.0f} min"
  low, high = round(min(costs) / 60), round(max(costs) / 60)
  each = f" at {low} min each" if low == high else f", {low} to {high} min each"
  return f"about {when} left ({len(costs)} run{'s' * (len(costs) != 1)}{each})"


def execute(runs: Sequence[Run], parallel: int = 1, log=print,
            finished: Sequence[tuple[float, float]] = (),
            rollouts: dict[str, float] | None = None, after_run=None) -> dict[str, bool]:
  """Runs each run (in-process one after another, or `parallel` subprocesses at once).

  finished: (rollouts, wall seconds) of runs finished before, and rollouts: each run's rollouts
  by label (run_rollouts; 1 each where absent), for the time estimate (remaining_time).
  after_run(run, ok) is called as each run ends (the pipeline publishes it there)."""
  results, finished = {}, list(finished)
  rollouts = rollouts or {}
  cost = lambda run: rollouts.get(run.label, 1.0)
  after_run = after_run or (lambda run, ok: None)
  if parallel <= 1:
    for i, run in enumerate(runs):
      eta = remaining_time(finished, [cost(r) for r in runs[i:]])
      log(f"run {i + 1}/{len(runs)}: {run.label}" + (f"; {eta}" if eta else ""))
      results[run.label] = run_one(run.workdir, run.label)
      if results[run.label] and (wall := _wall(run.workdir)):  # all sittings' time, as below
        finished.append((cost(run), wall))
      after_run(run, results[run.label])
    return results
  pending, active = list(runs), {}
  while pending or active:
    while pending and len(active) < parallel:
      run = pending.pop(0)
      out = open(os.path.join(run.workdir, "log.txt"), "a")
      cmd = [*RUN_ONE_COMMAND, run.workdir]
      log(f"start {run.label}: {shlex.join(cmd)}")
      env = dict(os.environ, PYTHONPATH=os.pathsep.join(
          filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])))
      active[run.label] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env),
                           out, run)
    time.sleep(0.5)
    for label, (proc, out, run) in list(active.items()):
      if proc.poll() is None:
        continue
      out.close()
      del active[label]
      results[label] = proc.returncode == 0 and is_done(run.workdir)
      if results[label] and (wall := _wall(run.workdir)):
        finished.append((cost(run), wall))
      eta = remaining_time(finished, [cost(r) for _, _, r in active.values()] +
                           [cost(r) for r in pending], parallel)
      log(f"{'done' if results[label] else 'FAILED'} {label} (rc {proc.returncode}; "
          f"log {os.path.join(run.workdir, 'log.txt')})" + (f"; {eta}" if eta else ""))
      after_run(run, results[label])
  return results


def _wall(workdir: str) -> float | None:
  """The wall seconds summary.json records for a finished run (None if it does not)."""
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f).get("wall_s")


# A finished (or diverged) run's record, as --publish copies it (everything but checkpoints and
# TensorBoard).
PUBLISHED = ("config.json", "summary.json", "metrics.jsonl", "difficulty.json", "base_eval.json",
             "evals", "log.txt", "curves.png", "error.txt", "rollouts.jsonl")


def _replace_dir(src: str, dst: str) -> None:
  """Moves folder src to dst, replacing what is there, never leaving dst half-written."""
  old = dst + ".old"
  if os.path.exists(old):
    shutil.rmtree(old)
  if os.path.exists(dst):
    os.replace(dst, old)
  os.replace(src, dst)
  if os.path.exists(old):
    shutil.rmtree(old)


def _copy_dir(src: str, dst: str) -> None:
  """Copies folder src to dst through dst.tmp, replacing what is there (_replace_dir)."""
  tmp = dst + ".tmp"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  shutil.copytree(src, tmp)
  _replace_dir(tmp, dst)


def publish(run: Run, dest: str) -> str:
  """Copies an ended run's record (PUBLISHED) to dest/<layer>/seed<k>; returns that folder."""
  target = os.path.join(dest, run.label)
  tmp = target + ".tmp"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  for name in PUBLISHED:
    if name == "error.txt" and is_done(run.workdir):
      continue  # a failure the run has since recovered from
    src = os.path.join(run.workdir, name)
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(tmp, name))
    elif os.path.exists(src):
      shutil.copy2(src, os.path.join(tmp, name))
  _replace_dir(tmp, target)
  return target


def _same_config(record: str, workdir: str) -> bool:
  """Both folders hold a config.json of the same run (as _write_config compares them)."""
  configs = []
  for folder in (record, workdir):
    try:
      with open(os.path.join(folder, "config.json")) as f:
        configs.append(_comparable_flat(json.load(f)))
    except (OSError, ValueError):
      return False
  return configs[0] == configs[1]


def is_published(run: Run, dest: str) -> bool:
  """dest holds a record of the run, made with its settings, that ended as it did here:
  finished, or diverged (not necessarily this root's copy: another machine's finished record
  of the same run counts; an earlier record made with other settings does not)."""
  record = os.path.join(dest, run.label)
  return (has_ended(record) and is_done(record) == is_done(run.workdir)
          and _same_config(record, run.workdir))


def recover_staging(dest: str) -> list[str]:
  """Puts right what a kill inside _copy_dir / _replace_dir / publish left in dest (its
  folders and their subfolders): 'X.old' without 'X' (killed between the two renames: the old
  copy is the last whole one) becomes X again; any other 'X.old' and every 'X.tmp' (a copy
  that may be half-made) is deleted, so that nothing half-written is committed. Returns what
  it changed."""
  changed = []
  if not os.path.isdir(dest):
    return changed
  folders = [dest] + [os.path.join(dest, d) for d in sorted(os.listdir(dest))
                      if os.path.isdir(os.path.join(dest, d))
                      and not d.endswith((".tmp", ".old"))]
  for folder in folders:
    for name in sorted(os.listdir(folder)):
      path = os.path.join(folder, name)
      if not os.path.isdir(path) or not name.endswith((".tmp", ".old")):
        continue
      target = path[:-len(".old")]
      if name.endswith(".old") and not os.path.exists(target):
        os.replace(path, target)
        changed.append(f"{path} -> {target}")
      else:
        shutil.rmtree(path)
        changed.append(f"{path} deleted")
  return changed


def restore_published(run: Run, config, dest: str) -> bool:
  """A run that ended in an earlier sitting (maybe on another machine) counts as ended: when
  dest holds its record (finished or diverged) made with the same config and the root does not,
  the record is copied into the run's workdir (the report reads it there). True if it was."""
  record = os.path.join(dest, run.label)
  if has_ended(run.workdir) or not has_ended(record):
    return False
  with open(os.path.join(record, "config.json")) as f:
    if _comparable_flat(json.load(f)) != _comparable_flat(json.loads(config.to_json())):
      return False  # made with other settings: run it again (_write_config keeps the new one)
  if os.path.exists(os.path.join(run.workdir, "checkpoints")):
    return False  # an unfinished run of its own is here: let it resume instead
  os.makedirs(os.path.dirname(run.workdir), exist_ok=True)
  _copy_dir(record, run.workdir)
  return True


# In the tables folder: the base's test rewards, sampled once per seed (train.base_test_path).
BASE_TEST_DIR = "base_test"

# Config sections and keys that do not change a run's difficulty table (train.training_examples:
# the base policy's samples of example.candidates questions); all others key the shared table.
_NOT_IN_DIFFICULTY = ("seed", "loss", "optimizer", "train", "diagnostics", "example.selection",
                      "example.num_examples", "example.example_id", "example.index",
                      "rollout.num_samples", "rollout.prompts_per_round", "eval.test_size",
                      "eval.train_samples", "eval.greedy", "eval.curve_test_size",
                      "eval.curve_greedy", "eval.temperature", "eval.shared_base",
                      "warm_start.dir", "example.table")


def difficulty_path(directory: str, config) -> str:
  """<directory>/<hash>.json: the difficulty table every run with these settings shares (L0
  and L4's buckets draw from one table; config example.table), so it is sampled once, not once
  per run."""
  from rft_jax import sampling, train, warm_start

  # Config keys added since at their defaults count as absent, so a table keeps its name across
  # commits; the draw scheme (added 2026-12-07) renamed the tables then (bottom_up's by git mv).
  d = _flat(train.drop_later_defaults(json.loads(config.to_json())))
  key = {k: v for k, v in d.items()
         if not any(k == n or k.startswith(n + ".") for n in _NOT_IN_DIFFICULTY)}
  if not config.model.checkpoint:
    key["base"] = warm_start.base_fingerprint(config)
  key.update(train.grader_revision_key(config.task))  # a table graded by older rules is stale
  key["draws"] = sampling.DRAWS  # the random numbers it was sampled with (as train.base_test_key)
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join(directory, f"{digest}.json")


def _existing_parent(path: str) -> str:
  """path, or its nearest folder that exists (git needs a working directory that does)."""
  path = os.path.abspath(path)
  while not os.path.isdir(path):
    path = os.path.dirname(path)
  return path


def _same_repository(path: str, other: str) -> bool:
  """Whether `path` lies inside the git work tree that holds `other` (either may not exist
  yet)."""
  top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=_existing_parent(other),
                       capture_output=True, text=True)
  root = top.stdout.strip()
  return top.returncode == 0 and os.path.abspath(path).startswith(root + os.sep)


# A git index.lock older than this is left by a killed git, not held by a live one.
STALE_GIT_LOCK_S = 600


def _remove_stale_git_lock(cwd: str, output: str, log=print) -> None:
  """A git command killed mid-way (SIGKILL at the end of a sitting) leaves .git/index.lock
  behind, and every later commit fails on it: removed once older than STALE_GIT_LOCK_S."""
  if "index.lock" not in output:
    return
  top = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=cwd, capture_output=True,
                       text=True)
  lock = os.path.join(cwd, top.stdout.strip(), "index.lock")
  try:
    age = time.time() - os.path.getmtime(lock)
  except OSError:
    return
  if top.returncode == 0 and age > STALE_GIT_LOCK_S:
    os.remove(lock)
    log(f"removed {lock}, left {age / 60:.0f} min ago by a git command that did not finish")


def uncommitted(paths: Sequence[str]) -> bool:
  """Whether git sees changes (or untracked files) under paths; False outside a repository."""
  paths = [os.path.abspath(p) for p in paths]
  status = subprocess.run(["git", "status", "--porcelain", "--", *paths],
                          cwd=_existing_parent(paths[0]), capture_output=True, text=True)
  return status.returncode == 0 and bool(status.stdout.strip())


def git_commit(paths: Sequence[str], message: str, log=print, attempts: int = 5) -> bool:
  """`git add` + `git commit` of exactly `paths` (other staged changes stay staged); retried
  while another git command holds the index (a lock left by a killed one is removed). False
  (and a log line) if it could not."""
  paths = [os.path.abspath(p) for p in paths if os.path.exists(p)]
  if not paths:
    return True
  cwd = _existing_parent(os.path.dirname(paths[0]))  # git runs in the first path's folder
  for attempt in range(attempts):
    add = subprocess.run(["git", "add", "--", *paths], cwd=cwd, capture_output=True, text=True)
    commit = add if add.returncode else subprocess.run(
        ["git", "commit", "-q", "-m", message, "--", *paths], cwd=cwd, capture_output=True,
        text=True)
    if commit.returncode == 0 or "nothing to commit" in commit.stdout + commit.stderr:
      return True
    _remove_stale_git_lock(cwd, commit.stdout + commit.stderr, log=log)
    time.sleep(2 ** attempt)
  log(f"could not commit {', '.join(paths)}: {(commit.stderr or commit.stdout).strip()}")
  return False


def run_pipeline(specs: Sequence[str], seeds: int = 3, root: str = "runs/pipeline", *,
                 quick: bool = False, runlocal: bool = False, parallel: int = 1,
                 overrides: dict | None = None, command: str | None = None, base: str = "",
                 publish_dir: str = "", commit: bool = False, drop_checkpoints: bool = False,
                 tables: str = "", log=print) -> str:
  """Plans, runs what is not done yet, writes the report; returns the report's path.

  publish_dir: each finished or diverged run's record (PUBLISHED) is copied to
  publish_dir/<layer>/seed<k> as it ends, with the report, and (commit) committed to git; runs
  recorded there with the same config count as ended, so the pipeline continues in a fresh
  checkout.
  drop_checkpoints: a finished run's checkpoints are deleted (a SmolLM2 run's are 1.6 GB each).
  tables: where difficulty tables and the base's test rewards (per seed) are shared (default
  <root>/difficulty; one folder for several roots, e.g. a learning-rate sweep, samples each
  once)."""
  specs = parse_layers(specs if isinstance(specs, str) else ",".join(specs))
  planned = plan(specs, seeds, root, runlocal=runlocal, quick=quick, overrides=overrides,
                 base=base, tables=tables)
  for run, config in planned:
    _write_config(run, config)
  # First what a kill inside a copy left in publish_dir: a record there may be mid-rename.
  staged = recover_staging(publish_dir) if publish_dir else []
  if staged:
    log(f"half-made copies an earlier sitting left in {publish_dir}: {'; '.join(staged)}")
  if publish_dir:
    restored = [run.label for run, config in planned
                if restore_published(run, config, publish_dir)]
    if restored:
      log(f"{len(restored)} finished run(s) taken from {publish_dir}: {', '.join(restored)}")
  for run, _ in planned:
    if diverged(run.workdir):
      record = f" and {os.path.join(publish_dir, run.label)}" if publish_dir else ""
      log(f"{run.label} diverged in an earlier sitting ({os.path.join(run.workdir, 'error.txt')}):"
          f" not run again; delete {run.workdir}{record} to redo it")
  todo = [run for run, _ in planned if not has_ended(run.workdir)]
  log(f"{len(planned)} runs, {len(planned) - len(todo)} already complete, {len(todo)} to run")
  # The report covers every layer this root has run, also those of earlier invocations.
  before = read_settings(root)
  all_specs = list(dict.fromkeys([*before.get("layers", []), *specs]))
  all_seeds = max(seeds, before.get("seeds", 0))
  commands = list(dict.fromkeys(c for c in [*before.get("commands", []), command] if c))
  settings = {"layers": all_specs, "seeds": all_seeds, "quick": quick, "runlocal": runlocal,
              "overrides": overrides or {}, "base": base, "parallel": parallel,
              "commands": commands}

  def report(publish_it: bool = True) -> str:
    """Writes the root's report; copies it to publish_dir if publish_it or if what it says
    there differs (a run failed, or a sitting was killed before the report of a run it had
    published)."""
    fileio.write_json_atomic(os.path.join(root, SETTINGS_FILE), settings)
    path = write_report(root, all_specs, all_seeds, settings=settings)
    published = os.path.join(publish_dir, "report.md") if publish_dir else ""
    if publish_dir and (publish_it or _report_body(path) != _report_body(published)):
      os.makedirs(publish_dir, exist_ok=True)
      shutil.copy2(path, published)
      shutil.copy2(os.path.join(root, SETTINGS_FILE), os.path.join(publish_dir, SETTINGS_FILE))
      _copy_dir(os.path.join(root, "plots"), os.path.join(publish_dir, "plots"))
    return path

  # Shared tables kept in the same repository go in with the records (a fresh clone then
  # samples none).
  shared = [tables] if publish_dir and tables and os.path.isdir(tables) and _same_repository(
      tables, publish_dir) else []

  def record(run: Run, ok: bool) -> bool:
    """Publishes an ended run's record, then drops a finished run's checkpoints (in this order:
    a kill in between leaves both, and the next sitting publishes again); True if published."""
    published = bool(publish_dir and (ok or diverged(run.workdir)))
    if published:
      publish(run, publish_dir)
    if ok and drop_checkpoints:  # a finished run is never resumed; its summary marks it done
      shutil.rmtree(os.path.join(run.workdir, "checkpoints"), ignore_errors=True)
    # A diverged run is a result (its checkpoints stay, for a --resume_with at a lower rate).
    return published

  def commit_leftovers(message: str) -> None:
    """With --commit: whatever is uncommitted in publish_dir and the shared tables."""
    if commit and publish_dir and uncommitted([publish_dir, *shared]):
      git_commit([publish_dir, *shared], message, log=log)

  def after_run(run: Run, ok: bool) -> None:
    if not record(run, ok):
      return
    report()
    if commit:
      if ok:
        with open(os.path.join(run.workdir, "summary.json")) as f:
          s = json.load(f)
        what = (f"finished in {root} (test Pass@1 {s['base_test_pass1']:.3f} -> "
                f"{s['final_test_pass1']:.3f}, training {s['base_train_pass1']:.3f} -> "
                f"{s['final_train_pass1']:.3f}, {s['wall_s'] / 60:.0f} min)")
      else:
        what = f"diverged in {root}: {seed_result(run.workdir).get('error', '')}"
      git_commit([publish_dir, *shared], f"experiments: {run.label} {what}", log=log)

  # What a sitting killed after a run ended (in the publish, the report or the commit) left
  # undone: the record published again, then committed with whatever else is uncommitted there.
  if publish_dir:
    behind = [run for run, _ in planned
              if has_ended(run.workdir) and not is_published(run, publish_dir)]
    for run in behind:
      record(run, is_done(run.workdir))
    if behind:
      log(f"published {len(behind)} run(s) that ended in an earlier sitting: "
          f"{', '.join(run.label for run in behind)}")
    if behind or staged:
      report()  # its plots too: a kill while copying them left the report newer than they
    commit_leftovers(f"experiments: records an earlier sitting left uncommitted in "
                     f"{publish_dir}")

  t0 = time.time()
  if todo:
    prepare_bases([(r, c) for r, c in planned if r in todo], log=log)
    rollouts = {r.label: run_rollouts(c) for r, c in planned}
    done_before = [(rollouts[r.label], w) for r, _ in planned
                   if is_done(r.workdir) and (w := _wall(r.workdir))]
    execute(todo, parallel=parallel, log=log, finished=done_before, rollouts=rollouts,
            after_run=after_run)
  settings["wall_s_last_invocation"] = time.time() - t0
  # Published after each run already: copied there again only where it says something else (a
  # sitting with nothing to run leaves the published folder, and git, as they were).
  path = report(publish_it=False)
  commit_leftovers(f"experiments: the report of {root}")
  return path


def _report_body(path: str) -> list[str] | None:
  """A report's lines but the one saying when it was written (None if there is none)."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return [line for line in f.read().splitlines() if not line.startswith("Written ")]


def read_settings(root: str) -> dict:
  """<root>/pipeline.json: the layers, seeds and settings of the runs in root ({} if none)."""
  path = os.path.join(root, SETTINGS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


# -- aggregation --------------------------------------------------------------------------------


def _dedupe(rows: Sequence[dict]) -> list[dict]:
  by_step = {}
  for row in rows:
    by_step[row["step"]] = {**by_step.get(row["step"], {}), **row}
  return [by_step[s] for s in sorted(by_step)]


def eval_curve(rows: Sequence[dict], key: str) -> list[tuple[int, float]]:
  """[(step, value)] of the evaluation rows holding `key` (step 0 = the base policy)."""
  return [(r["step"], r[key]) for r in _dedupe(rows) if r.get(key) is not None]


def round_curve(rows: Sequence[dict], key: str) -> list[tuple[int, float]]:
  """[(round, value)] of a per-round metric (rows with step >= 1)."""
  return [(r["step"], r[key]) for r in _dedupe(rows) if r["step"] >= 1 and r.get(key) is not None]


def rounds_to(rows: Sequence[dict], threshold: float = THRESHOLD) -> int | None:
  """The first evaluated round with training Pass@1 >= threshold (0: the base already is);
  None if no evaluation reached it. Resolution: train.eval_every."""
  for step, value in eval_curve(rows, "train_pass1"):
    if value >= threshold:
      return step
  return None


def mean_abs_change(values: Sequence[float]) -> float | None:
  """Mean |v_i - v_{i-1}| over consecutive evaluations; None with fewer than two."""
  v = np.asarray(values, float)
  return float(np.mean(np.abs(np.diff(v)))) if v.size > 1 else None


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
  """(mean, sample std (ddof 1; None for one value), n) of the values that are not None."""
  v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
  if v.size == 0:
    return None, None, 0
  return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None), int(v.size)


def seed_result(workdir: str) -> dict:
  """One run's numbers from summary.json and metrics.jsonl (partial runs: what exists)."""
  from rft_jax.metrics import read_metrics

  out = {"workdir": workdir, "status": "missing"}
  rows = read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
  train, test = eval_curve(rows, "train_pass1"), eval_curve(rows, "test_pass1")
  if rows:
    out["status"] = "partial"
  if os.path.exists(os.path.join(workdir, "error.txt")) and not is_done(workdir):
    out["status"] = "diverged" if diverged(workdir) else "failed"
    out["error"] = last_error(workdir)
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    out.update(status="done", wall_s=summary.get("wall_s"), rounds=summary.get("rounds"),
               questions=summary.get("training_questions"))
  out["evals"] = (_base_and_final_evals(workdir, out["rounds"]) if out["status"] == "done"
                 else {})
  out.update(
      base_train=train[0][1] if train and train[0][0] == 0 else None,
      base_test=test[0][1] if test and test[0][0] == 0 else None,
      final_train=train[-1][1] if train else None, final_test=test[-1][1] if test else None,
      last_round=train[-1][0] if train else None,
      rounds_to=rounds_to(rows), test_change=mean_abs_change([v for _, v in test]),
      rows=rows)
  return out


def _base_and_final_evals(workdir: str, rounds: int | None) -> dict:
  """{'base': ..., 'final': ...}: the per-sample rewards of round 0 and of round `rounds` (the
  run's last, from its summary; rft_jax.evaluation.save_rewards), for the runs that kept both.
  {} where either is missing, or where the last one scored fewer test questions than the base
  (a curve evaluation): a final Pass@1 from another question set is not comparable."""
  from rft_jax import evaluation, train

  folder = os.path.join(workdir, train.EVALS_DIR)
  paths = [evaluation.rewards_path(folder, r) for r in (0, rounds)] if rounds else []
  if not paths or not all(os.path.exists(p) for p in paths):
    return {}
  base, final = (evaluation.load_rewards(p) for p in paths)
  if len(final.get("test_ids", ())) < len(base.get("test_ids", ())):
    return {}
  return {"base": base, "final": final}


def pairable(a: dict, b: dict, key: str) -> bool:
  """Whether two evaluations' `key` rewards ('test', 'test_greedy', 'train') can be paired
  sample by sample: the same question ids in the same order, and the same shape."""
  ids = "train_ids" if key == "train" else "test_ids"
  return (a.get(ids) is not None and list(a[ids]) == list(b.get(ids) or [])
          and np.shape(a[key]) == np.shape(b[key]))


def bootstrap(a: Sequence, b: Sequence | None = None, *, paired: bool = True, boots: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
  """(estimate, low, high): a 95% percentile bootstrap interval of

      mean over seeds s of mean a[s]    (minus the same of b, when given)

  a, b: per seed (index = seed), the 0/1 rewards of one evaluation: [questions] (one sample
  each), or [questions, samples]. Two levels, since both vary: seeds are resampled with
  replacement (training randomness), then each chosen seed's questions (evaluation randomness);
  a [questions, samples] array is resampled by question (its samples are one cluster), or by
  sample where it holds one question. Paired (the same questions in the same order on both
  sides, `pairable`; across layers at one seed and round also the same random numbers) resamples
  the same questions of a[s] and b[s], so the difference's interval is as narrow as the pairing
  allows. Few seeds: the seed level's percentiles come from at most n^n resamples of n values
  (3 seeds: about the range of the 3 per-seed values), so its width is a lower bound; findings
  that rest on it say so.

  0/1 rewards get a floor from the pooled samples (score_interval), where the percentiles fail:
  a Pass@1's interval spans at least its Wilson interval (0 of 32 samples: [0, 0.107], where
  every resample is 0), and a difference whose resamples all agree (every sample equal on both
  sides) gets Newcombe's interval instead of a zero width."""
  a = [clusters(x) for x in a]
  b = None if b is None else [clusters(x) for x in b]
  if not a or (b is not None and len(b) != len(a)):
    raise ValueError(f"need the same number of seeds on both sides, got {len(a)} and "
                     f"{None if b is None else len(b)}")
  if any(x.size == 0 for x in a + (b or [])):
    raise ValueError("a seed without samples")
  if paired and b is not None and any(x.shape != y.shape for x, y in zip(a, b)):
    raise ValueError("paired samples need the same number of samples per seed")
  estimate = float(np.mean([x.mean() for x in a]))
  if b is not None:
    estimate -= float(np.mean([y.mean() for y in b]))
  rng = np.random.default_rng(seed)
  stats = np.empty(boots)
  for t in range(boots):
    total = 0.0
    for s in rng.integers(0, len(a), len(a)):
      i = rng.integers(0, len(a[s]), len(a[s]))
      total += a[s][i].mean()
      if b is not None:
        j = i if paired else rng.integers(0, len(b[s]), len(b[s]))
        total -= b[s][j].mean()
    stats[t] = total / len(a)
  low, high = np.percentile(stats, [2.5, 97.5])
  floor = score_interval(a, b)
  if floor is not None and (b is None or high == low):
    low, high = min(low, floor[0]), max(high, floor[1])
  return estimate, float(low), float(high)


def score_interval(a: Sequence, b: Sequence | None = None) -> tuple[float, float] | None:
  """The 95% score interval of the pooled 0/1 samples of a (Wilson), or of pooled a minus
  pooled b (Newcombe's hybrid score interval, method 10 of Newcombe 1998: each side's Wilson
  limits combined in quadrature). Samples counted as independent: sampling noise only, the
  floor under an interval that also has seeds' spread. None unless every sample is 0 or 1."""
  from rft_jax import evaluation

  sides = (a,) if b is None else (a, b)
  pooled = [np.concatenate([np.ravel(x) for x in side]) for side in sides]
  if not all(x.size and np.isin(x, (0.0, 1.0)).all() for x in pooled):
    return None
  (p1, (l1, u1)), *other = [(x.mean(), evaluation.wilson_interval(x.sum(), x.size))
                             for x in pooled]
  if not other:
    return l1, u1
  p2, (l2, u2) = other[0]
  return p1 - p2 - math.hypot(p1 - l1, u2 - p2), p1 - p2 + math.hypot(u1 - p1, p2 - l2)


def clusters(x) -> np.ndarray:
  """Rewards as [units, samples per unit]: the units a bootstrap draws (bootstrap): a
  [questions, samples] evaluation's questions, a single question's samples, a flat array's
  entries."""
  x = np.asarray(x, float)
  if x.ndim <= 1 or x.shape[0] == 1:
    return x.reshape(-1, 1)
  return x.reshape(x.shape[0], -1)


def seed_interval(values, others=None, sampling=None, others_sampling=None,
                  bounds: tuple[float, float] = (-math.inf, math.inf)
                  ) -> tuple[float, float, float]:
  """(mean, low, high): a 95% t-interval over seeds, of the mean of `values` (one per seed;
  t with n - 1 df), or with `others`, of mean(values) - mean(others) (unpaired, Welch's df).
  sampling, others_sampling: each seed's sampling variance of its value (from its evaluation
  samples, `sampling_variance`), a floor under the seeds' variance: their spread includes that
  noise, so three seeds that happen to agree exactly do not make a zero-width interval.
  bounds: the range the quantity can take (a difference of Pass@1s: [-1, 1]); the interval is
  cut to it. (mean, nan, nan) with fewer than 2 values on a side: no interval (untestable)."""
  import scipy.stats  # here: the pipeline's other users need no scipy import

  x = np.asarray(values, float)
  y = None if others is None else np.asarray(others, float)
  est = float(x.mean() - (0.0 if y is None else y.mean()))
  if x.size < 2 or (y is not None and y.size < 2):
    return est, float("nan"), float("nan")
  floor = lambda v, s: max(v.var(ddof=1), float(np.mean(s)) if s is not None else 0.0) / v.size
  vx = floor(x, sampling)
  if y is None:
    se, df = np.sqrt(vx), x.size - 1
  else:
    vy = floor(y, others_sampling)
    se = np.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (x.size - 1) + vy ** 2 / (y.size - 1)) if se else 1.0
  half = float(scipy.stats.t.ppf(0.975, df) * se)
  return est, max(est - half, bounds[0]), min(est + half, bounds[1])


def mean_variance(v: np.ndarray) -> float:
  """The sampling variance of v's mean, var(v) / n with ddof 1; 0 for a single value (nothing
  to measure it from)."""
  return float(np.var(v, ddof=1) / v.size) if v.size > 1 else 0.0


def sampling_variance(mine: dict, theirs: dict, key: str) -> float:
  """The sampling variance of mean(mine[key]) - mean(theirs[key]) for one seed: of the mean
  per-question difference where the two are pairable, else the two means' variances summed
  (questions as units, or a single question's samples: clusters)."""
  a, b = (clusters(e[key]).mean(axis=1) for e in (mine, theirs))
  if pairable(mine, theirs, key):
    return mean_variance(a - b)
  return mean_variance(a) + mean_variance(b)


def seed_difference(mine: Sequence[dict], theirs: Sequence[dict], key: str) -> tuple:
  """seed_interval of mine[s][key] - theirs[s][key] (evaluations of the same seeds, in order),
  each seed's sampling variance (sampling_variance) its floor, cut to [-1, 1]. Where that
  leaves no width (every seed's samples equal on both sides, e.g. 0 of 32 before and after),
  Newcombe's interval of the pooled samples (score_interval), as the bootstrap does."""
  est, low, high = seed_interval(
      [np.mean(m[key]) - np.mean(t[key]) for m, t in zip(mine, theirs)],
      sampling=[sampling_variance(m, t, key) for m, t in zip(mine, theirs)], bounds=(-1.0, 1.0))
  floor = score_interval([m[key] for m in mine], [t[key] for t in theirs])
  if low == high and floor is not None:
    low, high = floor
  return est, low, high


def _interval(x: tuple | None, signed: bool = False) -> str:
  if x is None:
    return "–"
  if np.isnan(x[0]):
    return "– (no estimate)"
  if np.isnan(x[1]):
    return f"{x[0]:{'+' if signed else ''}.3f} (no interval: one seed)"
  sign = "+" if signed else ""
  unpaired = " (unpaired)" if x[3:] == ("unpaired",) else ""
  return f"{x[0]:{sign}.3f} [{x[1]:{sign}.3f}, {x[2]:{sign}.3f}]{unpaired}"


def paired_rows(per_layer: dict[str, list[dict]]) -> list[dict]:
  """Per layer: final test / greedy / training Pass@1 with intervals, and the differences from
  its parent layer (when in the report) and from its own base policy, paired by seed (and by
  question where both sides evaluated the same ones). Complete runs that kept their evaluation
  samples only; a difference uses the seeds both sides have."""
  out = []
  for spec, results in per_layer.items():
    runs = {k: r["evals"] for k, r in enumerate(results) if r.get("evals")}
    parent_name = parent_spec(spec)
    parent = {k: r["evals"] for k, r in enumerate(per_layer.get(parent_name, [])) if r.get("evals")}
    row = {"spec": spec, "parent": parent_name if parent_name in per_layer else "",
           "seeds": len(runs)}
    for key, name in (("test", "test"), ("test_greedy", "greedy"), ("train", "train")):
      have = [k for k in runs if key in runs[k]["final"]]
      if not have:
        continue
      final = [runs[k]["final"][key] for k in have]
      row[name] = bootstrap(final)
      finals, bases = [runs[k]["final"] for k in have], [runs[k]["base"] for k in have]
      row[f"{name}_vs_base"] = paired_difference(finals, bases, key)
      row[f"{name}_vs_base_t"] = seed_difference(finals, bases, key)
      both = [k for k in have if key in parent.get(k, {}).get("final", {})]
      if row["parent"] and both:
        mine, theirs = [runs[k]["final"] for k in both], [parent[k]["final"] for k in both]
        row[f"{name}_vs_parent"] = paired_difference(mine, theirs, key)
        row[f"{name}_vs_parent_t"] = seed_difference(mine, theirs, key)
        row[f"{name}_vs_parent_seeds"] = len(both)
    out.append(row)
  return out


def paired_difference(mine: Sequence[dict], theirs: Sequence[dict], key: str,
                      boots: int = 2000) -> tuple:
  """bootstrap of mine[s][key] - theirs[s][key] (evaluations of the same seeds, in order):
  paired where every seed's two sides are `pairable`, else unpaired; a fourth element
  'unpaired' says so (the report marks it)."""
  paired = all(pairable(m, t, key) for m, t in zip(mine, theirs, strict=True))
  iv = bootstrap([m[key] for m in mine], [t[key] for t in theirs], paired=paired, boots=boots)
  return iv if paired else (*iv, "unpaired")


def layer_result(results: Sequence[dict]) -> dict:
  """Mean ± std over seeds and the stability measures of one layer. Base values come from every
  run that evaluated its base; the rest from complete runs only (a failed or unfinished run is
  counted in the report's runs column, not averaged in with a shorter curve)."""
  done = [r for r in results if r["status"] == "done"]
  agg = {key: mean_std([r.get(key) for r in results]) for key in ("base_train", "base_test")}
  agg.update({key: mean_std([r.get(key) for r in done])
              for key in ("final_train", "final_test", "test_change")})
  reached = [r["rounds_to"] for r in done if r.get("rounds_to") is not None]
  agg["rounds_to"] = mean_std(reached)
  agg["reached"] = (len(reached), len(done))
  return agg


def _fmt(ms: tuple, digits: int = 3) -> str:
  mean, std, n = ms
  if mean is None:
    return "–"
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _fmt_rounds(agg: dict) -> str:
  k, n = agg["reached"]
  if not k:
    return f"never (0/{n})"
  mean, std, _ = agg["rounds_to"]
  return f"{mean:.0f}" + (f" ± {std:.0f}" if std is not None else "") + f" ({k}/{n})"


def _num(x, digits: int = 3) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


# -- plots --------------------------------------------------------------------------------------


def _stack(curves: Sequence[list[tuple[int, float]]]):
  """Curves on the union of their steps -> (steps [S], values [n, S] with NaN where missing)."""
  steps = sorted({s for c in curves for s, _ in c})
  index = {s: i for i, s in enumerate(steps)}
  values = np.full((len(curves), len(steps)), np.nan)
  for i, c in enumerate(curves):
    for s, v in c:
      values[i, index[s]] = v
  return np.asarray(steps), values


def _smooth(curve: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
  if window <= 1 or len(curve) < window:
    return curve
  v = np.convolve([x for _, x in curve], np.ones(window) / window, mode="valid")
  return [(s, float(x)) for (s, _), x in zip(curve[window - 1:], v)]


def _band(ax, curves, label=None, color=None, seeds=True, marker=None):
  curves = [c for c in curves if c]
  if not curves:
    return
  steps, values = _stack(curves)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of partial runs
    mean, lo, hi = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
  (line,) = ax.plot(steps, mean, label=label, color=color, lw=1.8, marker=marker, ms=3)
  ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
  if seeds and len(curves) > 1:
    for row in values:
      ok = ~np.isnan(row)
      ax.plot(steps[ok], row[ok], color=line.get_color(), lw=0.6, alpha=0.5)


_DIAGNOSTICS = (("reward", "mean reward of the round's rollouts"),
                ("signal_frac", "signal_frac (non-zero advantage)"),
                ("entropy", "policy entropy (nats/token)"),
                ("length", "response length (tokens)"))
# Metrics added after some published runs were written: a panel only where a seed logs them.
_LATER_DIAGNOSTICS = (("truncated", "share cut at the length limit"),)


def diagnostic_panels(rows: Sequence[Sequence[dict]]) -> list[tuple[str, str]]:
  """The (metric, title) panels of the diagnostics figure, given each seed's metric rows."""
  return list(_DIAGNOSTICS) + [(key, name) for key, name in _LATER_DIAGNOSTICS
                               if any(round_curve(seed_rows, key) for seed_rows in rows)]


def plot_layer(results: Sequence[dict], title: str, path_prefix: str) -> list[str]:
  """<prefix>_pass1.png (training and test Pass@1) and <prefix>_diagnostics.png."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r["rows"] for r in results if r["rows"]]
  paths = []
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
  for ax, key, name in ((axes[0], "train_pass1", "training Pass@1"),
                        (axes[1], "test_pass1", "test Pass@1")):
    _band(ax, [eval_curve(r, key) for r in rows], marker="o")
    ax.set(title=name, xlabel="round", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
  axes[0].axhline(THRESHOLD, color="gray", ls=":", lw=1)
  fig.suptitle(f"{title} (mean, min-max over {len(rows)} seeds)", fontsize=9)
  fig.tight_layout()
  paths.append(f"{path_prefix}_pass1.png")
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)

  window = 5
  panels = diagnostic_panels(rows)
  fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 3), squeeze=False)
  for ax, (key, name) in zip(axes[0], panels):
    _band(ax, [_smooth(round_curve(r, key), window) for r in rows], seeds=False)
    ax.set(title=name, xlabel="round")
    ax.grid(alpha=0.3)
  fig.suptitle(f"{title}: bandit diagnostics per round ({window}-round moving average)",
               fontsize=9)
  fig.tight_layout()
  paths.append(f"{path_prefix}_diagnostics.png")
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  return paths


def plot_overview(per_layer: dict[str, list[dict]], path: str) -> str:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
  for spec, results in per_layer.items():
    rows = [r["rows"] for r in results if r["rows"]]
    for ax, key in ((axes[0], "train_pass1"), (axes[1], "test_pass1")):
      _band(ax, [eval_curve(r, key) for r in rows], label=spec, seeds=False, marker="o")
  for ax, name in ((axes[0], "training Pass@1"), (axes[1], "test Pass@1")):
    ax.set(title=f"{name} (mean, min-max over seeds)", xlabel="round", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# -- the report ---------------------------------------------------------------------------------


def parent_spec(spec: str) -> str:
  """The spec of the layer `spec` adds its design choice to ('' for the first layer), e.g.
  'l1:g=4' -> 'l0'."""
  layers = _layers_module()
  name, _, arg = spec.partition(":")
  layer = layers.get(name)
  if layer.parent is None:
    return ""
  parent_arg = layers.parent_arg(name, arg)
  return layer.parent + (f":{parent_arg}" if parent_arg else "")


def _report_config(spec: str, settings: dict | None = None):
  """The layer config of `spec` built as the report's runs were (`settings`: base model, quick,
  runlocal, --set overrides; layer_config)."""
  settings = settings or {}
  return layer_config(spec, base=settings.get("base", ""), quick=settings.get("quick", False),
                      runlocal=settings.get("runlocal", False),
                      overrides=settings.get("overrides"))


def _changes(spec: str, settings: dict | None = None) -> tuple[str, list[str]]:
  """(parent spec, ['field: parent value -> value', ...]) of a layer spec, both configs built as
  the report's runs were (`settings`: base model, quick, runlocal, --set overrides; layer_config).
  A base may set what a layer changes (smollm2 trains L1 on a hard question, so its L4 medium
  changes the bucket where the toy's does not), and an override of a field the layer changes
  applies to the parent too, so it is no change of the layer's."""
  parent = parent_spec(spec)
  if not parent:
    return "", []
  a, b = (_flat(json.loads(_report_config(s, settings).to_json())) for s in (parent, spec))
  lines = [f"`{k}`: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
           if a.get(k) != b.get(k)]
  return parent, lines


def write_report(root: str, specs: Sequence[str], seeds: int, *,
                 settings: dict | None = None) -> str:
  """<root>/report.md and <root>/plots/*.png from whatever runs exist; returns the path."""
  layers = _layers_module()
  plots = os.path.join(root, "plots")
  os.makedirs(plots, exist_ok=True)
  per_layer = {spec: [seed_result(os.path.join(root, spec_dir(spec), f"seed{k}"))
                      for k in range(seeds)] for spec in specs}
  settings = settings or {}
  out = ["# Pipeline report", ""]
  if settings.get("commands"):
    out += ["Command(s):", ""] + [f"    {c}" for c in settings["commands"]] + [""]
  walls = [r.get("wall_s") for rs in per_layer.values() for r in rs if r.get("wall_s")]
  out += [f"Written {datetime.datetime.now().isoformat(timespec='seconds')}; "
          f"{seeds} seed(s) per layer; quick={settings.get('quick', False)}, "
          f"runlocal={settings.get('runlocal', False)}"
          + (f", overrides {settings['overrides']}" if settings.get("overrides") else "")
          + f"; total run time {sum(walls) / 60:.1f} min.", ""]
  temperatures = sorted({float(_report_config(spec, settings).eval.temperature)
                         for spec in specs})
  out += [
      f"Pass@1 = mean reward of samples at temperature {' / '.join(f'{t:g}' for t in temperatures)}"
      " (eval.temperature): training Pass@1 on the training "
      "question(s), test Pass@1 one sample per test question. Values are mean ± std over seeds "
      "(std with ddof 1). *rounds to 0.9*: first evaluated round with training Pass@1 >= 0.9, "
      "mean over the seeds that reached it (k/n). *seed spread*: std over seeds of the final "
      "test Pass@1. *mean |Δ test|*: mean absolute change of test Pass@1 between consecutive "
      "evaluations (base included), averaged over seeds.", "",
      "| layer | base train | final train | base test | final test | rounds to 0.9 "
      "| seed spread | mean \\|Δ test\\| | runs |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for spec, results in per_layer.items():
    agg = layer_result(results)
    done = sum(r["status"] == "done" for r in results)
    ended = {state: sum(r["status"] == state for r in results) for state in ("diverged", "failed")}
    spread = agg["final_test"][1]
    out.append(f"| {spec} | {_fmt(agg['base_train'])} | {_fmt(agg['final_train'])} "
               f"| {_fmt(agg['base_test'])} | {_fmt(agg['final_test'])} | {_fmt_rounds(agg)} "
               f"| {_num(spread)} | {_fmt(agg['test_change'])} | {done}/{len(results)} done"
               + "".join(f", {n} {state}" for state, n in ended.items() if n) + " |")
  paired = [row for row in paired_rows(per_layer) if row["seeds"]]
  if paired:
    out += ["", "With intervals (95% two-level bootstrap over seeds and evaluation samples, "
            "rft_jax.pipeline.bootstrap): final Pass@1 of the complete runs, its difference from "
            "the parent layer (paired by seed and question, unless marked unpaired) and from the "
            "run's own base policy. An interval that holds 0 is a difference not shown.", "",
            "| layer | seeds | test Pass@1 | Δ vs parent | Δ vs base | greedy | Δ greedy vs "
            "parent | Δ greedy vs base | training Pass@1 | Δ training vs base |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in paired:
      vs = f" ({row['parent']})" if row.get("test_vs_parent") else ""
      out.append(f"| {row['spec']} | {row['seeds']} | {_interval(row.get('test'))} "
                 f"| {_interval(row.get('test_vs_parent'), True)}{vs} "
                 f"| {_interval(row.get('test_vs_base'), True)} | {_interval(row.get('greedy'))} "
                 f"| {_interval(row.get('greedy_vs_parent'), True)} "
                 f"| {_interval(row.get('greedy_vs_base'), True)} "
                 f"| {_interval(row.get('train'))} | {_interval(row.get('train_vs_base'), True)} |")
    out += ["", "The same differences with a t-interval over the seeds' own differences instead "
            "(rft_jax.pipeline.seed_difference: n - 1 df, each seed's sampling variance a "
            "floor; 2 seeds: 1 df, t = 12.7): with 3 seeds the bootstrap's seed level resamples 3 "
            "values; a difference is firmly shown where both intervals exclude 0.", "",
            "| layer | seeds | Δ test vs parent | Δ test vs base | Δ greedy vs parent | Δ greedy "
            "vs base | Δ training vs base |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in paired:
      n = row.get("test_vs_parent_seeds")
      vs = f" ({row['parent']}, {n} seed{'s' * (n != 1)})" if row.get("test_vs_parent_t") else ""
      out.append(f"| {row['spec']} | {row['seeds']} "
                 f"| {_interval(row.get('test_vs_parent_t'), True)}{vs} "
                 + "".join(f"| {_interval(row.get(k), True)} " for k in (
                     "test_vs_base_t", "greedy_vs_parent_t", "greedy_vs_base_t",
                     "train_vs_base_t")) + "|")
  if any(r["rows"] for rs in per_layer.values() for r in rs):
    overview = plot_overview(per_layer, os.path.join(plots, "overview.png"))
    out += ["", f"![overview]({os.path.relpath(overview, root)})"]

  for spec, results in per_layer.items():
    name = spec.partition(":")[0]
    parent, changes = _changes(spec, settings)
    out += ["", f"## {spec}: {layers.get(name).title}", ""]
    out.append(f"Lineage: {' → '.join(layers.lineage(name))}" + (
        f"; changes over {parent}: " + ("; ".join(changes) or "none, the same config")
        if parent else "") + ".")
    questions = list(dict.fromkeys(q for r in results for q in (r.get("questions") or [])))
    if questions:
      out.append(f"Training question(s): {', '.join(questions)}.")
    out += ["", "| seed | base train | final train | base test | final test | rounds to 0.9 "
            "| mean \\|Δ test\\| | rounds | wall s | status |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in enumerate(results):
      status = r["status"] + (f": {r['error']}" if r.get("error") else "")
      rt = r["rounds_to"]
      out.append(f"| {k} | {_num(r['base_train'])} | {_num(r['final_train'])} "
                 f"| {_num(r['base_test'])} | {_num(r['final_test'])} "
                 f"| {'never' if rt is None else rt} | {_num(r['test_change'])} "
                 f"| {_num(r['last_round'], 0)} | {_num(r.get('wall_s'), 0)} "
                 f"| {status.replace('|', '/')} |")
    if any(r["rows"] for r in results):
      for path in plot_layer(results, spec, os.path.join(plots, spec_dir(spec))):
        out += ["", f"![{os.path.basename(path)}]({os.path.relpath(path, root)})"]
  path = os.path.join(root, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(out) + "\n")
  return path


# -- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m rft_jax.pipeline", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", default=None, help="layers, name[:arg] or presets (quick, paper, "
                 "beyond), comma-separated; default quick (--report_only: those of the root)")
  p.add_argument("--seeds", type=int, default=None,
                 help="seeds per layer (0 .. seeds-1); default 3 (--report_only: the root's)")
  p.add_argument("--root", default=None,
                 help="output root (default runs/pipeline, runs/pipeline_quick with --quick)")
  p.add_argument("--quick", action="store_true", help=f"short setting: {QUICK}")
  p.add_argument("--runlocal", action="store_true", help="tiny configs (tests, smoke runs)")
  p.add_argument("--parallel", type=int, default=1, help="runs at once (subprocesses)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for every run, e.g. --set train.rounds=100")
  p.add_argument("--base", default="", help="another base model for every layer (configs/"
                 "common.py's base=NAME, e.g. smollm2)")
  p.add_argument("--publish", default="", metavar="DIR", help="copy each finished run's record "
                 "(config, summary, metrics, per-sample evaluations, log; no checkpoints) and the "
                 "report to DIR as it finishes; runs recorded there count as done")
  p.add_argument("--commit", action="store_true", help="with --publish: git-commit DIR after "
                 "each finished run")
  p.add_argument("--tables", default="", metavar="DIR", help="folder of shared difficulty "
                 "tables and base test evaluations (default ROOT/difficulty)")
  p.add_argument("--drop_checkpoints", action="store_true", help="delete a run's checkpoints "
                 "once it has finished (its record stays)")
  p.add_argument("--report_only", action="store_true", help="only (re)write the report")
  p.add_argument("--dry_run", action="store_true", help="print the plan and stop")
  p.add_argument("--run_one", metavar="WORKDIR", help=argparse.SUPPRESS)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; errors a person can act on (an unknown layer, a bad --set, ...) print
  their message in one line and return 2, a stopped run (Ctrl-C, SIGTERM) 128 + the signal."""
  try:
    return _main(argv)
  except errors.RunInterrupted as e:
    print(e, file=sys.stderr)
    return e.exit_code
  except (errors.RunError, OSError) as e:
    print(f"error: {errors.actionable(e)}", file=sys.stderr)
    return 2


def _main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  if args.run_one:
    return 0 if run_one(args.run_one, os.path.relpath(args.run_one)) else 1
  root = args.root or ("runs/pipeline_quick" if args.quick else "runs/pipeline")
  overrides = dict(kv.split("=", 1) for kv in args.set)
  os.makedirs(root, exist_ok=True)
  if args.report_only:
    settings = read_settings(root)
    specs = parse_layers(args.layers or ",".join(settings.get("layers", ["quick"])))
    print(write_report(root, specs, args.seeds or settings.get("seeds", 3), settings=settings))
    return 0
  specs, args.seeds = parse_layers(args.layers or "quick"), args.seeds or 3
  if args.dry_run:
    for run, config in plan(specs, args.seeds, root, runlocal=args.runlocal, quick=args.quick,
                            overrides=overrides, base=args.base, tables=args.tables):
      state = ("done" if is_done(run.workdir) else "diverged" if diverged(run.workdir)
               else "to run")
      print(f"{run.workdir}: {run.spec} seed {run.seed}, {config.train.rounds} rounds, "
            f"base {config.warm_start.dir or config.model.checkpoint} ({state})")
    return 0
  command = "python -m rft_jax.pipeline " + shlex.join(
      list(argv) if argv is not None else sys.argv[1:])
  if args.commit and not args.publish:
    raise errors.ConfigError("--commit needs --publish=DIR (the folder to commit)")
  path = run_pipeline(specs, args.seeds, root, quick=args.quick, runlocal=args.runlocal,
                      parallel=args.parallel, overrides=overrides, command=command,
                      base=args.base, publish_dir=args.publish, commit=args.commit,
                      drop_checkpoints=args.drop_checkpoints, tables=args.tables)
  print(f"report: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
