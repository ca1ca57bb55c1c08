"""Adds the no-final-answer flags to the SmolLM2 layers' shared base test evaluations.

The layers share each seed's base test evaluation (experiments/smollm2/tables/base_test/,
`eval.shared_base`); those of seeds 0-2 were sampled before evaluations flagged the samples
without a final answer (`test_no_answer`, `test_greedy_no_answer`), so the layers' base ->
final share of answerless test samples (findings.md, mechanism table) has no base side. For
each seed this samples the base evaluation again the way a layer run does (train.make_loop and
train.evaluate_phase, the same random numbers), requires its rewards to equal the stored ones
sample for sample (else it writes nothing: they would be other samples), and adds the flags to
the stored file (atomically). Seeds whose file has them are skipped.

Only runs that start after it (in a runner process started after commit 98dee4f) read the
flags; run it while the runner is stopped, then commit experiments/smollm2/tables/ (a runner
with --commit would otherwise commit the edited files with its next run's record).

    python experiments/smollm2/base_no_answer.py     # ~15 min per seed on the 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from rft_jax import evaluation, fileio, pipeline, sharding, train  # noqa: E402

LAYERS = os.path.join(HERE, "layers")
TABLES = os.path.join(HERE, "tables")
ROOT = os.path.join(HERE, "..", "..", "runs", "smollm2", "layers")  # run.sh's --root
FLAGS = ("test_no_answer", "test_greedy_no_answer")


def layer_configs(layers: str = LAYERS, tables: str = TABLES, root: str = ROOT) -> list:
  """The configs of one layer per seed, as the layers' runner planned them (pipeline.json;
  root: its --root, where a warm-started base would be): the base test evaluation, and so its
  shared file, is the same for every layer of a seed."""
  with open(os.path.join(layers, pipeline.SETTINGS_FILE)) as f:
    settings = json.load(f)
  planned = pipeline.plan(settings["layers"][:1], settings["seeds"], root,
                          runlocal=settings.get("runlocal", False),
                          quick=settings.get("quick", False), overrides=settings["overrides"],
                          base=settings.get("base", ""), tables=tables)
  return [config for _, config in planned]


class BackfillError(Exception):
  """A seed's file cannot be given the flags (the message says why); nothing was written."""


def add_flags(config, log=print) -> str:
  """Samples seed `config.seed`'s base test evaluation again and adds its flags to the shared
  file; returns what it did."""
  # The layers ran under 'final_answer' revision 1 (its rules are 'final_answer_legacy' now):
  # the files carry that revision's names and grades.
  path = train.base_test_path(config, grader_revision=1)
  if not os.path.exists(path):
    raise BackfillError(f"{path}: no shared base evaluation of seed {config.seed} with these "
                        "settings here (another machine's or runtime's key?)")
  with open(path) as f:
    stored = json.load(f)
  if all(k in stored for k in FLAGS):
    return f"{path}: has the flags"
  if not all(k in stored for k in ("test", "test_greedy")):
    raise BackfillError(f"{path}: holds no greedy evaluation (eval.greedy off)")
  config = config.copy_and_resolve_references()
  config.eval.shared_base = ""  # sample it here, do not read the stored one
  if config.task.get("grader") == "final_answer":
    config.task.grader = "final_answer_legacy"
  with tempfile.TemporaryDirectory() as workdir:
    task = train.build_task(config.task)
    loop = train.make_loop(config, workdir, task, sharding.build_mesh(**config.mesh), log=log)
    train.evaluate_phase(loop, train.initial_state(loop).params, 0)
    again = evaluation.load_rewards(evaluation.rewards_path(
        os.path.join(workdir, train.EVALS_DIR), 0))
  if again["test_ids"] != stored["test_ids"]:
    raise BackfillError(f"{path}: other test questions than the layers' "
                        f"({len(stored['test_ids'])})")
  for key in ("test", "test_greedy"):
    same = np.array_equal(np.asarray(stored[key]), again[key])
    if not same:
      differ = int(np.sum(np.asarray(stored[key]) != again[key]))
      raise BackfillError(f"{path}: the base evaluation sampled again differs from the stored "
                          f"one in {differ} '{key}' samples: not the same samples, nothing "
                          "written")
  fileio.write_json_atomic(path, {**stored, **{k: again[k].tolist() for k in FLAGS}})
  shares = ", ".join(f"{k} {np.mean(again[k]):.3f}" for k in FLAGS)
  return f"{path}: flags added (seed {config.seed}; {shares})"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seeds", default="", help="comma-separated seeds (default: all)")
  p.add_argument("--layers", default=LAYERS, help="the published layers (their pipeline.json)")
  p.add_argument("--tables", default=TABLES, help="the runner's --tables")
  p.add_argument("--root", default=ROOT, help="the runner's --root")
  args = p.parse_args(argv)
  chosen = {int(s) for s in args.seeds.split(",") if s}
  failed = 0
  for config in layer_configs(args.layers, args.tables, args.root):
    if not chosen or config.seed in chosen:
      try:
        print(add_flags(config), flush=True)
      except BackfillError as e:  # the other seeds still go
        print(f"error: {e}", file=sys.stderr, flush=True)
        failed += 1
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
