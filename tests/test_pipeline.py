"""The pipeline runner and its report: aggregation math on hand-written runs, one tiny real run."""

import json
import os
import subprocess
import time

import ml_collections
import numpy as np
import pytest

from rft_jax import pipeline, train


def write_run(workdir, evals, rounds=(), summary=True, error=None):
  """A fake run: eval rows [(step, train, test)], per-round rows [(step, reward, signal, ent)]."""
  os.makedirs(workdir, exist_ok=True)
  rows = {}
  for step, reward, signal, entropy in rounds:
    rows[step] = {"step": step, "reward": reward, "signal_frac": signal, "entropy": entropy}
  for step, train_pass1, test_pass1 in evals:
    rows.setdefault(step, {"step": step}).update(train_pass1=train_pass1, test_pass1=test_pass1)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(rows[s]) + "\n" for s in sorted(rows))
  if summary:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump({"wall_s": 10.0, "rounds": max(rows), "training_questions": ["q7"]}, f)
  if error:
    with open(os.path.join(workdir, "error.txt"), "w") as f:
      f.write(f"Traceback (most recent call last):\n  ...\n{error}\n")


def test_rounds_to_threshold_and_mean_abs_change():
  rows = [{"step": 0, "train_pass1": 0.5, "test_pass1": 0.3},
          {"step": 1, "reward": 1.0},
          {"step": 10, "train_pass1": 0.85, "test_pass1": 0.5},
          {"step": 20, "train_pass1": 0.92, "test_pass1": 0.4},
          {"step": 30, "train_pass1": 0.8, "test_pass1": 0.4}]
  assert pipeline.rounds_to(rows) == 20  # the first evaluation at >= 0.9, even if it falls later
  assert pipeline.rounds_to(rows, 0.5) == 0  # the base already is
  assert pipeline.rounds_to(rows, 0.95) is None
  # |0.5 - 0.3| + |0.4 - 0.5| + |0.4 - 0.4| over 3 intervals
  assert pipeline.mean_abs_change([v for _, v in pipeline.eval_curve(rows, "test_pass1")]) == (
      pytest.approx(0.1))
  assert pipeline.mean_abs_change([0.3]) is None
  assert pipeline.round_curve(rows, "reward") == [(1, 1.0)]


def test_mean_std_uses_sample_std_and_skips_missing():
  mean, std, n = pipeline.mean_std([0.2, 0.4, None])
  assert (mean, n) == (pytest.approx(0.3), 2)
  assert std == pytest.approx(0.02 ** 0.5)  # sqrt(((0.1)^2 + (0.1)^2) / (2 - 1))
  assert pipeline.mean_std([0.5]) == (0.5, None, 1)
  assert pipeline.mean_std([]) == (None, None, 0)


def test_report_from_hand_written_runs(tmp_path):
  root = str(tmp_path)
  # l0: seed 0 reaches 0.9 at round 20, seed 1 at round 10; final test 0.4 and 0.6.
  write_run(f"{root}/l0/seed0", [(0, 0.5, 0.3), (10, 0.7, 0.5), (20, 0.95, 0.4)],
            rounds=[(r, r % 2, 0.5, 2.0 - r / 20) for r in range(1, 21)])
  write_run(f"{root}/l0/seed1", [(0, 0.5, 0.3), (10, 0.9, 0.3), (20, 1.0, 0.6)],
            rounds=[(r, 1.0, 1.0, 1.0) for r in range(1, 21)])
  # l3:neg=m10: never learns; seed 1 failed after its base evaluation.
  write_run(f"{root}/l3_neg-m10/seed0", [(0, 0.5, 0.3), (10, 0.2, 0.2), (20, 0.0, 0.1)])
  write_run(f"{root}/l3_neg-m10/seed1", [(0, 0.5, 0.3)], summary=False,
            error="NonFiniteLossError: non-finite loss nan at round 3")
  results = [pipeline.seed_result(f"{root}/l0/seed{k}") for k in range(2)]
  agg = pipeline.layer_result(results)
  assert agg["final_test"][:2] == (pytest.approx(0.5), pytest.approx(0.02 ** 0.5))
  assert agg["rounds_to"][:2] == (pytest.approx(15.0), pytest.approx(50 ** 0.5))
  assert agg["reached"] == (2, 2)
  # seed 0: (0.2 + 0.1) / 2, seed 1: (0 + 0.3) / 2 -> mean 0.15
  assert agg["test_change"][0] == pytest.approx(0.15)

  path = pipeline.write_report(root, ["l0", "l3:neg=m10"], seeds=2)
  text = open(path).read()
  l0_row = next(line for line in text.splitlines() if line.startswith("| l0 |"))
  assert "| 0.500 ± 0.000 | 0.975 ± 0.035 | 0.300 ± 0.000 | 0.500 ± 0.141 |" in l0_row
  assert "| 15 ± 7 (2/2) | 0.141 | 0.150 ± 0.000 | 2/2 done |" in l0_row
  l3_row = next(line for line in text.splitlines() if line.startswith("| l3:neg=m10 |"))
  assert "never (0/1)" in l3_row and "1/2 done, 1 failed" in l3_row  # averages: done runs
  assert "NonFiniteLossError: non-finite loss nan at round 3" in text
  assert "`loss.affine_reward.shift`: 0.0 → -1.0" in text  # what the layer changes
  assert "Training question(s): q7." in text
  for name in ("overview", "l0_pass1", "l0_diagnostics", "l3_neg-m10_pass1"):
    assert os.path.getsize(f"{root}/plots/{name}.png") > 1000, name


def test_diagnostics_panel_for_truncation_only_where_a_seed_logs_it():
  """Runs written before the `truncated` metric existed get no empty truncation panel; a layer
  where any seed logs it (even as 0.0 every round) gets one."""
  core = ["reward", "signal_frac", "entropy", "length"]
  old = [{"step": 0, "train_pass1": 0.1}, {"step": 1, "reward": 0.0, "length": 9.0}]
  new = [{"step": 0, "train_pass1": 0.1}, {"step": 1, "reward": 0.0, "truncated": 0.0}]
  assert [key for key, _ in pipeline.diagnostic_panels([old, old])] == core
  assert [key for key, _ in pipeline.diagnostic_panels([old, new])] == core + ["truncated"]
  # the base evaluation row (step 0) is not a round: a `truncated` there adds no panel
  assert [key for key, _ in pipeline.diagnostic_panels([[{"step": 0, "truncated": 0.5}]])] == core


def test_what_a_layer_changes_is_read_on_its_base_model(tmp_path):
  """L4's medium bucket is L1's own on the embedded default (the same config) but not on
  SmolLM2, whose L1 trains on a hard question (configs/smollm2.py): the report's 'changes over'
  line compares the two layers' configs on the report's base."""
  assert pipeline.parent_spec("l0") == ""
  assert pipeline.parent_spec("l1:g=4") == "l0"
  assert pipeline.parent_spec("l4:bucket=medium") == "l1"
  assert pipeline._changes("l4:bucket=medium") == ("l1", [])
  assert pipeline._changes("l4:bucket=medium", {"base": "smollm2"}) == (
      "l1", ["`example.selection`: 'hard' → 'medium'"])
  specs = ["l4:bucket=medium"]
  toy = open(pipeline.write_report(str(tmp_path / "toy"), specs, 1)).read()
  assert "changes over l1: none, the same config." in toy
  smollm2 = open(pipeline.write_report(str(tmp_path / "smollm2"), specs, 1,
                                       settings={"base": "smollm2"})).read()
  assert "changes over l1: `example.selection`: 'hard' → 'medium'." in smollm2
  # the sampling temperature the Pass@1 columns were measured at: the base's (configs/smollm2.py)
  assert "Pass@1 = mean reward of samples at temperature 1 (eval.temperature)" in toy
  assert "Pass@1 = mean reward of samples at temperature 0.6 (eval.temperature)" in smollm2


def test_what_a_layer_changes_is_read_with_the_runs_overrides(tmp_path):
  """A --set override applies to the parent's config as to the layer's: one that fixes the field
  a layer changes leaves the layer nothing to change, and the report says so."""
  assert pipeline._changes("l1") == ("l0", ["`rollout.num_samples`: 1 → 8"])
  settings = {"overrides": {"rollout.num_samples": "4"}, "quick": True}
  assert pipeline._changes("l1", settings) == ("l0", [])
  text = open(pipeline.write_report(str(tmp_path), ["l1"], 1, settings=settings)).read()
  assert "changes over l0: none, the same config." in text


def test_layer_specs_and_directories():
  assert pipeline.parse_layers("quick") == ["l0", "l1", "l2", "l3", "l4"]
  assert pipeline.parse_layers("l0,l3:neg=m10,g=4,l1,g=16,l0") == [
      "l0", "l3:neg=m10,g=4", "l1:g=16"]
  assert pipeline.spec_dir("l3:neg=m10,g=4") == "l3_neg-m10_g-4"
  with pytest.raises(ValueError, match="unknown layer"):
    pipeline.parse_layers("l9")
  with pytest.raises(ValueError, match="before any layer"):
    pipeline.parse_layers("g=4,l1")


def test_unknown_layer_is_one_line(tmp_path, capsys):
  assert pipeline.main(["--layers=l0,l9", f"--root={tmp_path}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --layers: unknown layer or preset 'l9'; layers: l0, ")
  assert len(err.splitlines()) == 1


def test_plan_shares_one_base_and_fixes_seeds(tmp_path):
  planned = pipeline.plan(["l0", "l2", "l5"], 2, str(tmp_path), quick=True,
                          overrides={"train.rounds": "40"})
  assert [(r.spec, r.seed) for r, _ in planned] == [
      (s, k) for s in ("l0", "l2", "l5") for k in range(2)]
  bases = {c.warm_start.dir for r, c in planned if r.spec != "l5"}
  assert len(bases) == 1 and bases.pop().startswith(f"{tmp_path}/base/")
  assert planned[-1][1].warm_start.dir not in {c.warm_start.dir for _, c in planned[:4]}
  assert [c.seed for _, c in planned[:2]] == [0, 1]
  assert all(c.train.rounds == 40 and c.eval.test_size == pipeline.QUICK["eval.test_size"]
             for _, c in planned)
  with pytest.raises(ValueError, match="no such config field"):
    pipeline.plan(["l0"], 1, str(tmp_path), overrides={"train.roundz": "4"})
  with pytest.raises(ValueError, match="'flase' is not a boolean"):  # not silently False
    pipeline.plan(["l0"], 1, str(tmp_path), overrides={"eval.greedy": "flase"})
  for word, value in (("No", False), ("1", True)):
    (_, config), = pipeline.plan(["l0"], 1, str(tmp_path), overrides={"eval.greedy": word})
    assert config.eval.greedy is value
  # The base's test rewards: one file per seed for L0 and L2 (same base), L5's base its own.
  shared = [train.base_test_path(c) for _, c in planned]
  assert all(p.startswith(f"{tmp_path}/difficulty/{pipeline.BASE_TEST_DIR}/") for p in shared)
  assert shared[0] == shared[2] != shared[1] == shared[3]
  assert not set(shared[4:]) & set(shared[:4])
  # A workdir remembers its settings: the same run with others stops. A key added since
  # (train.LATER_KEYS) at its default is not another setting: the record predates the key.
  run, config = planned[0]
  pipeline._write_config(run, config)
  with open(os.path.join(run.workdir, "config.json")) as f:
    older = json.load(f)
  del older["train"]["logprob_chunk"]
  del older["eval"]["shared_base"]  # and a folder of the machine, not a setting
  with open(os.path.join(run.workdir, "config.json"), "w") as f:
    json.dump(older, f)
  pipeline._write_config(run, config)
  config.train.epochs = 3
  with pytest.raises(ValueError, match="train.epochs"):
    pipeline._write_config(run, config)


def git(repo, *args) -> str:
  return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                        text=True).stdout


def test_git_commit_of_a_path_relative_to_the_working_directory(tmp_path, monkeypatch):
  """run.sh passes --publish=experiments/...: relative to where the command runs."""
  repo = tmp_path / "repo"
  (repo / "experiments" / "sweep").mkdir(parents=True)
  git(repo, "init", "-q")
  git(repo, "config", "user.email", "t@example.com")
  git(repo, "config", "user.name", "t")
  (repo / "experiments" / "sweep" / "summary.json").write_text("{}")
  (repo / "other.txt").write_text("not this one")
  monkeypatch.chdir(repo)
  assert pipeline.git_commit(["experiments/sweep"], "experiments: sweep", log=print)
  assert git(repo, "log", "--format=%s").splitlines() == ["experiments: sweep"]
  assert git(repo, "ls-files").splitlines() == ["experiments/sweep/summary.json"]


def test_shared_tables_are_committed_only_from_inside_the_repository(tmp_path):
  repo = tmp_path / "repo"
  (repo / "experiments" / "tables").mkdir(parents=True)
  (repo / "experiments" / "published").mkdir()
  git(repo, "init", "-q")
  published = str(repo / "experiments" / "published")
  assert pipeline._same_repository(str(repo / "experiments" / "tables"), published)
  assert not pipeline._same_repository(str(tmp_path / "runs" / "difficulty"), published)
  assert not pipeline._same_repository(str(tmp_path / "repo2"), published)  # a name's prefix


def init_repo(repo, monkeypatch) -> None:
  """An empty git repository with a committer (the runner commits published records)."""
  repo.mkdir()
  git(repo, "init", "-q")
  for who in ("AUTHOR", "COMMITTER"):
    monkeypatch.setenv(f"GIT_{who}_NAME", "test")
    monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")


def test_pipeline_runs_skips_done_runs_and_reports(tmp_path, monkeypatch, capsys):
  """Two tiny layers x 1 seed, one after another in-process, published and committed as each
  finishes; then again: nothing reruns, also in a fresh root that has only the published
  records (another checkout)."""
  root = str(tmp_path / "pipe")
  repo = tmp_path / "repo"
  init_repo(repo, monkeypatch)
  published = repo / "published"
  # The runlocal base is barely trained: every question is extremely hard.
  argv = ["--layers=l1,l2", "--seeds=1", "--runlocal", f"--root={root}",
          "--set", "train.rounds=2", "--set", "eval.greedy=false",
          "--set", "example.selection=extremely_hard"]
  assert pipeline.main(argv + [f"--publish={published}", "--commit", "--drop_checkpoints"]) == 0
  assert not os.path.exists(f"{root}/l1/seed0/checkpoints")
  for layer in ("l1", "l2"):
    with open(f"{root}/{layer}/seed0/summary.json") as f:
      assert json.load(f)["rounds"] == 2
  report = open(f"{root}/report.md").read()
  assert "| l1 |" in report and "| l2 |" in report and "1/1 done" in report
  assert "python -m rft_jax.pipeline --layers=l1,l2" in report
  # One difficulty table and one base test evaluation, sampled by the first run and handed to
  # the second.
  shared = sorted(os.listdir(f"{root}/difficulty"), key=lambda name: name.endswith(".json"))
  assert len(shared) == 2 and shared[0] == pipeline.BASE_TEST_DIR
  shared = shared[::-1]  # the table first
  tables = [open(f"{root}/{layer}/seed0/difficulty.json").read() for layer in ("l1", "l2")]
  assert tables[0] == tables[1] == open(f"{root}/difficulty/{shared[0]}").read()
  logs = [open(f"{root}/{layer}/seed0/log.txt").read() for layer in ("l1", "l2")]
  assert "difficulty table from " in logs[1] and "difficulty table from " not in logs[0]
  assert "base test rewards from " in logs[1] and "base test rewards from " not in logs[0]
  base_evals = [open(f"{root}/{layer}/seed0/evals/round_000000.json").read()
                for layer in ("l1", "l2")]
  assert base_evals[0] == base_evals[1]
  # One commit per finished run, holding its record (no checkpoints) and the report so far.
  log = git(repo, "log", "--format=%s").splitlines()
  assert len(log) == 2 and log[1].startswith("experiments: l1/seed0 finished in ")
  files = set(git(repo, "ls-files").splitlines())
  for layer in ("l1", "l2"):
    assert {f"published/{layer}/seed0/{name}" for name in (
        "config.json", "summary.json", "metrics.jsonl", "log.txt",
        "evals/round_000000.json", "evals/round_000002.json")} <= files
  assert not any("checkpoints" in f for f in files)
  assert {"published/report.md", "published/pipeline.json",
          "published/plots/overview.png"} <= files
  # The paired table: l2 against its parent l1 and against its own base, with intervals.
  l2_row = next(line for line in report.splitlines()
                if line.startswith("| l2 | 1 |"))
  assert "(l1)" in l2_row and l2_row.count("[") == 5  # greedy is off: '–' in its 3 columns
  assert l2_row.count(" – ") == 3
  # A fresh root: the published records count as done, the report is made from them.
  fresh = str(tmp_path / "fresh")
  monkeypatch.setattr(pipeline, "execute", lambda *a, **k: pytest.fail("a run was redone"))
  fresh_argv = [a.replace(root, fresh) for a in argv] + [f"--publish={published}"]
  assert pipeline.main(fresh_argv) == 0
  assert open(f"{fresh}/report.md").read().count("1/1 done") == 2
  monkeypatch.undo()
  for name in ("overview", "l1_pass1", "l2_diagnostics"):
    assert os.path.exists(f"{root}/plots/{name}.png")
  stamp = os.path.getmtime(f"{root}/l1/seed0/summary.json")

  def must_not_run(*args, **kwargs):
    raise AssertionError("a complete run was started again")

  monkeypatch.setattr(pipeline, "execute", must_not_run)
  monkeypatch.setattr(pipeline, "prepare_bases", must_not_run)
  assert pipeline.main(argv + ["--parallel=2"]) == 0
  assert os.path.getmtime(f"{root}/l1/seed0/summary.json") == stamp
  # --report_only takes the root's layers and seeds (pipeline.json), not the defaults.
  os.remove(f"{root}/report.md")
  assert pipeline.main(["--report_only", f"--root={root}"]) == 0
  report = open(f"{root}/report.md").read()
  assert "| l1 |" in report and "| l2 |" in report and "| l0 |" not in report
  assert "1/1 done" in report
  # Other settings in the same root stop with a message instead of mixing reports.
  capsys.readouterr()
  assert pipeline.main([a.replace("rounds=2", "rounds=3") for a in argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "made with other settings (train.rounds)" in err
  assert "Traceback" not in err


def write_finished_run(workdir) -> bool:
  """What a finished run leaves behind (metrics and summary): a stand-in for run_one."""
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 0, "train_pass1": 0.5, "test_pass1": 0.25}) + "\n")
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"base_test_pass1": 0.25, "final_test_pass1": 0.25, "base_train_pass1": 0.5,
               "final_train_pass1": 1.0, "wall_s": 60.0, "rounds": 2}, f)
  return True


def test_a_diverged_run_is_published_and_not_run_again(tmp_path, monkeypatch, capsys):
  """Divergence is an outcome of a run's settings: its record (error.txt with it) is published
  and committed like a finished run's, and neither this root nor a fresh one runs it again."""
  root, repo = str(tmp_path / "pipe"), tmp_path / "repo"
  init_repo(repo, monkeypatch)
  published = repo / "published"

  def stand_in(workdir, label=None):  # l1 finishes, l2 diverges at round 3
    if not label.startswith("l2"):
      return write_finished_run(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 0, "train_pass1": 0.5, "test_pass1": 0.25}) + "\n")
    with open(os.path.join(workdir, "error.txt"), "w") as f:
      f.write("Traceback (most recent call last):\nrft_jax.errors.DivergedError: diverged at "
              "round 3: non-finite loss; stopped without saving.\n")
    return False

  monkeypatch.setattr(pipeline, "run_one", stand_in)
  monkeypatch.setattr(pipeline, "prepare_bases", lambda *a, **k: None)
  argv = ["--layers=l1,l2", "--seeds=1", "--runlocal", f"--root={root}",
          f"--publish={published}"]
  assert pipeline.main(argv + ["--commit"]) == 0
  log = git(repo, "log", "--format=%s").splitlines()
  assert log[0] == (f"experiments: l2/seed0 diverged in {root}: rft_jax.errors.DivergedError: "
                    "diverged at round 3: non-finite loss; stopped without saving.")
  assert "published/l2/seed0/error.txt" in git(repo, "ls-files").splitlines()
  assert "| 0/1 done, 1 diverged |" in open(f"{root}/report.md").read()

  monkeypatch.setattr(pipeline, "run_one", lambda *a: pytest.fail("a run was started again"))
  capsys.readouterr()
  assert pipeline.main(argv) == 0  # the same root
  assert "l2/seed0 diverged in an earlier sitting" in capsys.readouterr().out
  fresh = str(tmp_path / "fresh")  # another checkout: the published records only
  assert pipeline.main([a.replace(root, fresh) for a in argv]) == 0
  assert pipeline.diverged(f"{fresh}/l2/seed0") and pipeline.is_done(f"{fresh}/l1/seed0")
  assert "| 0/1 done, 1 diverged |" in open(f"{fresh}/report.md").read()


def test_a_sitting_killed_after_a_run_ended_is_caught_up(tmp_path, monkeypatch, capsys):
  """A kill after a run's summary.json but before its record was published (or committed)
  leaves it ended here and missing there; the next sitting publishes it (and only then drops
  its checkpoints), clears the half-copied folder and commits what was left uncommitted,
  without running anything again."""
  root, repo = str(tmp_path / "pipe"), tmp_path / "repo"
  init_repo(repo, monkeypatch)
  published = repo / "published"

  def stand_in(workdir, label=None):
    os.makedirs(os.path.join(workdir, "checkpoints", "2"))
    return write_finished_run(workdir)

  monkeypatch.setattr(pipeline, "run_one", stand_in)
  monkeypatch.setattr(pipeline, "prepare_bases", lambda *a, **k: None)
  argv = ["--layers=l1,l2", "--seeds=1", "--runlocal", f"--root={root}"]
  # The killed sitting: both runs ended; l2 was never published, l1's copy was cut short
  # (its .tmp folder) after an earlier record of it, and the report was not committed.
  assert pipeline.main(argv) == 0
  monkeypatch.undo()
  monkeypatch.setattr(pipeline, "run_one", lambda *a: pytest.fail("a run was started again"))
  monkeypatch.setattr(pipeline, "prepare_bases", lambda *a, **k: None)
  # l1's published record is of an earlier outcome (diverged, since resumed and finished).
  (published / "l1" / "seed0").mkdir(parents=True)
  (published / "l1" / "seed0" / "error.txt").write_text("rft_jax.errors.DivergedError: round 1")
  (published / "l1" / "seed0.tmp").mkdir()
  (published / "report.md").write_text("the report of the killed sitting")
  assert pipeline.is_done(f"{root}/l1/seed0") and os.path.isdir(f"{root}/l1/seed0/checkpoints")
  capsys.readouterr()
  assert pipeline.main(argv + [f"--publish={published}", "--commit", "--drop_checkpoints"]) == 0
  assert "published 2 run(s) that ended in an earlier sitting: l1/seed0, l2/seed0" in (
      capsys.readouterr().out)
  for layer in ("l1", "l2"):
    run = pipeline.Run(layer, 0, f"{root}/{layer}/seed0")
    assert pipeline.is_published(run, str(published))
    assert not os.path.exists(f"{root}/{layer}/seed0/checkpoints")
  assert not (published / "l1" / "seed0.tmp").exists()
  assert git(repo, "log", "--format=%s").splitlines() == [
      f"experiments: records an earlier sitting left uncommitted in {published}"]
  assert not pipeline.uncommitted([str(published)])
  assert "| l2 |" in (published / "report.md").read_text()
  # A sitting with nothing to do (the same command) leaves the published folder and git as
  # they were.
  argv += [f"--publish={published}", "--commit", "--drop_checkpoints"]
  assert pipeline.main(argv) == 0
  assert not pipeline.uncommitted([str(published)])
  assert len(git(repo, "log", "--format=%s").splitlines()) == 1
  # Another machine's finished record of a run counts as published: not replaced by this one.
  other = published / "l2" / "seed0" / "summary.json"
  other.write_text(other.read_text().replace("60.0", "61.0"))
  git(repo, "commit", "-qam", "the other machine's l2")
  assert pipeline.main(argv) == 0
  assert "61.0" in other.read_text() and not pipeline.uncommitted([str(published)])
  # A sitting killed after a run's publish but before its report: the next one rewrites it.
  (published / "report.md").write_text("the report before l2 ended")
  git(repo, "commit", "-qam", "killed before the report")
  assert pipeline.main(argv) == 0
  assert "| l2 |" in (published / "report.md").read_text()
  assert git(repo, "log", "-1", "--format=%s").strip() == f"experiments: the report of {root}"


def test_half_made_copies_and_records_of_other_settings_are_put_right(tmp_path, monkeypatch,
                                                                     capsys):
  """What a kill inside a copy leaves in the publish folder is never committed: a half-copied
  'plots.tmp' is deleted (and the plots copied again), a record caught between its two renames
  ('seed0.old' without 'seed0') is put back; a published record made with other settings (an
  earlier run of the label) does not count as this run's: it is replaced."""
  root, repo = str(tmp_path / "pipe"), tmp_path / "repo"
  init_repo(repo, monkeypatch)
  published = repo / "published"
  monkeypatch.setattr(pipeline, "run_one", lambda workdir, label=None: write_finished_run(workdir))
  monkeypatch.setattr(pipeline, "prepare_bases", lambda *a, **k: None)
  argv = ["--layers=l1,l2", "--seeds=1", "--runlocal", f"--root={root}",
          f"--publish={published}", "--commit"]
  assert pipeline.main(argv) == 0
  monkeypatch.setattr(pipeline, "run_one", lambda *a, **k: pytest.fail("a run was started again"))
  (published / "plots.tmp").mkdir()
  (published / "plots.tmp" / "overview.png").write_bytes(b"\x89PNG half")
  os.replace(published / "l2" / "seed0", published / "l2" / "seed0.old")
  stale = published / "l1" / "seed0" / "config.json"
  config = json.loads(stale.read_text())
  config["optimizer"]["learning_rate"] *= 10
  stale.write_text(json.dumps(config))
  assert not pipeline.is_published(pipeline.Run("l1", 0, f"{root}/l1/seed0"), str(published))
  capsys.readouterr()
  assert pipeline.main(argv) == 0
  out = capsys.readouterr().out
  assert f"{published}/plots.tmp deleted" in out
  assert f"{published}/l2/seed0.old -> {published}/l2/seed0" in out
  assert "published 1 run(s) that ended in an earlier sitting: l1/seed0" in out
  assert json.loads(stale.read_text()) == json.load(open(f"{root}/l1/seed0/config.json"))
  for layer in ("l1", "l2"):
    assert pipeline.is_published(pipeline.Run(layer, 0, f"{root}/{layer}/seed0"), str(published))
  files = git(repo, "ls-files").splitlines()
  assert not [f for f in files if ".tmp" in f or ".old" in f], files
  assert "published/plots/overview.png" in files and not pipeline.uncommitted([str(published)])


def test_a_failed_run_and_a_new_publish_folder(tmp_path, monkeypatch):
  """A run that fails (not by divergence) is in the published report; --tables inside the
  repository with a publish folder that does not exist yet (the first sitting of run.sh's
  layers) publishes and commits both."""
  root, repo = str(tmp_path / "pipe"), tmp_path / "repo"
  init_repo(repo, monkeypatch)
  (repo / "tables").mkdir()
  (repo / "tables" / "table.json").write_text("{}")
  published = repo / "experiments" / "layers"

  def stand_in(workdir, label=None):  # l1 finishes, l2 fails
    if label.startswith("l1"):
      return write_finished_run(workdir)
    with open(os.path.join(workdir, "error.txt"), "w") as f:
      f.write("Traceback (most recent call last):\nValueError: a bug\n")
    return False

  monkeypatch.setattr(pipeline, "run_one", stand_in)
  monkeypatch.setattr(pipeline, "prepare_bases", lambda *a, **k: None)
  assert pipeline.main(["--layers=l1,l2", "--seeds=1", "--runlocal", f"--root={root}",
                        f"--publish={published}", f"--tables={repo / 'tables'}",
                        "--commit"]) == 0
  files = git(repo, "ls-files").splitlines()
  assert "tables/table.json" in files and "experiments/layers/l1/seed0/summary.json" in files
  assert "0/1 done, 1 failed" in (published / "report.md").read_text()
  assert not pipeline.uncommitted([str(published), str(repo / "tables")])


def test_git_commit_removes_an_index_lock_left_by_a_killed_git(tmp_path, monkeypatch):
  repo = tmp_path / "repo"
  init_repo(repo, monkeypatch)
  (repo / "records").mkdir()
  (repo / "records" / "summary.json").write_text("{}")
  lock = repo / ".git" / "index.lock"
  lock.write_text("")
  monkeypatch.setattr(pipeline.time, "sleep", lambda s: None)
  lines = []
  assert not pipeline.git_commit([str(repo / "records")], "records", log=lines.append,
                                 attempts=2)  # a fresh lock: a live git may hold it
  assert lock.exists() and lines[-1].startswith("could not commit")
  old = time.time() - pipeline.STALE_GIT_LOCK_S - 60
  os.utime(lock, (old, old))
  assert pipeline.git_commit([str(repo / "records")], "records", log=lines.append, attempts=2)
  assert not lock.exists() and "removed " in lines[-1] and "index.lock" in lines[-1]
  assert git(repo, "log", "--format=%s").splitlines() == ["records"]


@pytest.mark.parametrize("error, finished, want", [
    ("rft_jax.errors.DivergedError: diverged at round 3", False, True),
    ("rft_jax.errors.DivergedError: diverged at round 3", True, False),  # resumed, finished
    # Another failure while the divergence was handled: the traceback names it, the run failed.
    ("rft_jax.errors.DivergedError: x\n\nDuring handling...\nOSError: disk full", False, False),
    ("ValueError: bad", False, False)])
def test_diverged_means_the_last_error_is_the_divergence(tmp_path, error, finished, want):
  (tmp_path / "error.txt").write_text("Traceback (most recent call last):\n" + error + "\n")
  if finished:
    (tmp_path / "summary.json").write_text("{}")
  assert pipeline.diverged(str(tmp_path)) is want
  assert pipeline.has_ended(str(tmp_path)) is (want or finished)


STAND_IN = """
import json, os, sys, time
workdir = sys.argv[1]
stamp = lambda name: open(os.path.join(workdir, name), "w").write(repr(time.time()))
stamp("started")
if workdir.endswith("seed0"):  # runs beside seed1: waits until seed1 has started
  other = os.path.join(os.path.dirname(workdir), "seed1", "started")
  deadline = time.time() + 60
  while not os.path.exists(other) and time.time() < deadline:
    time.sleep(0.05)
  assert os.path.exists(other), "seed1 never ran beside seed0"
stamp("ended")
if workdir.endswith("seed1"):
  sys.exit(3)
json.dump({"rounds": 1}, open(os.path.join(workdir, "summary.json"), "w"))
print("stand-in done")
"""


def test_parallel_runs_as_subprocesses(tmp_path, monkeypatch):
  """--parallel=N keeps N subprocesses going, logs each, and reports failures by exit code."""
  script = tmp_path / "stand_in.py"
  script.write_text(STAND_IN)
  monkeypatch.setattr(pipeline, "RUN_ONE_COMMAND", (pipeline.sys.executable, str(script)))
  runs = [pipeline.Run("l0", k, str(tmp_path / f"seed{k}")) for k in range(3)]
  for run in runs:
    os.makedirs(run.workdir)
  results = pipeline.execute(runs, parallel=2, log=lambda msg: None)
  # seed0 finished only because seed1 ran at the same time; seed1 exited 3.
  assert results == {"l0/seed0": True, "l0/seed1": False, "l0/seed2": True}
  stamp = lambda k, name: float(open(f"{runs[k].workdir}/{name}").read())
  assert stamp(2, "started") >= min(stamp(0, "ended"), stamp(1, "ended"))  # never 3 at once
  assert "stand-in done" in open(f"{runs[0].workdir}/log.txt").read()


@pytest.mark.slow
def test_every_layer_runs(tmp_path):
  """Each registered layer (but l5, l1 with another warm-start seed) trains 2 tiny rounds."""
  from configs import layers

  specs = [name for name in layers.LAYERS if name != "l5"] + ["l3:neg=m10"]
  root = str(tmp_path)
  pipeline.run_pipeline(specs, 1, root, runlocal=True, log=lambda msg: None,
                        overrides={"train.rounds": 2, "eval.greedy": False})
  failed = {s: open(f"{root}/{pipeline.spec_dir(s)}/seed0/error.txt").read().splitlines()[-1]
            for s in specs if not pipeline.is_done(f"{root}/{pipeline.spec_dir(s)}/seed0")}
  assert not failed, failed


def test_layers_share_one_difficulty_table_unless_it_would_differ(tmp_path):
  path = lambda spec, **overrides: pipeline.difficulty_path(
      str(tmp_path), pipeline.layer_config(spec, overrides=overrides))
  one = path("l0")
  assert one.startswith(f"{tmp_path}/") and one.endswith(".json")
  assert pipeline.plan(["l0"], 1, "r", tables="t")[0][1].example.table.startswith("t/")
  # Seeds, rollouts per round, the loss, the bucket drawn from: the same table.
  assert {path(s) for s in ("l1", "l1:g=16", "l2", "l3", "l4:bucket=hard", "l4:bucket=easy")} == {
      one}
  assert path("l0", **{"train.rounds": 7, "optimizer.learning_rate": 0.1}) == one
  # What the base samples, how many, and from which base: another table.
  for key, value in [("example.candidates", 9), ("example.samples", 3), ("example.seed", 5),
                     ("rollout.max_new_tokens", 5), ("rollout.temperature", 0.5),
                     ("task.max_operand", 11), ("warm_start.max_steps", 3), ("eval.batch_size", 8)]:
    assert path("l0", **{key: value}) != one, key
  assert path("l5") != one  # another embedded base (warm_start.seed)
  # A config written before a key of train.LATER_KEYS existed: the same table.
  older = json.loads(pipeline.layer_config("l0").to_json())
  del older["model"]["lora"], older["train"]["micro_batch_size"]
  assert pipeline.difficulty_path(str(tmp_path), ml_collections.ConfigDict(older)) == one
  assert path("l0", **{"model.lora.rank": 2}) != one  # not at its default: another setting


def test_the_difficulty_table_names_its_draws_and_an_override_names_the_table(tmp_path,
                                                                             monkeypatch):
  """A table sampled with another draw scheme (sampling.DRAWS) is another table; an
  example.table among the overrides is the table the runs read, whatever the settings' hash."""
  from rft_jax import sampling

  one = pipeline.difficulty_path(str(tmp_path), pipeline.layer_config("l0"))
  monkeypatch.setattr(sampling, "DRAWS", "one draw of shape [B]")
  assert pipeline.difficulty_path(str(tmp_path), pipeline.layer_config("l0")) != one
  given = str(tmp_path / "given.json")
  planned = pipeline.plan(["l0", "l4:bucket=medium"], 2, "r", tables="t",
                          overrides={"example.table": given})
  assert {config.example.table for _, config in planned} == {given}
  assert pipeline.plan(["l0"], 1, "r", tables="t")[0][1].example.table.startswith("t/")


def test_remaining_time_by_hand():
  assert pipeline.remaining_time([], [100.0] * 5) == ""
  assert pipeline.remaining_time([(100.0, 600.0), (100.0, 1200.0)], []) == ""
  # One rollout count timed: its mean, 15 min, for every run left whatever its rollouts;
  # 2 at once: runs 1 and 2 in parallel, then run 3 = 30 min.
  same = [(100.0, 600.0), (100.0, 1200.0)]
  assert (pipeline.remaining_time(same, [100.0, 800.0, 1600.0]) ==
          "about 45 min left (3 runs at 15 min each)")
  assert pipeline.remaining_time(same, [100.0] * 3, parallel=2).startswith("about 30 min left")
  assert pipeline.remaining_time([(100.0, 3600.0)], [100.0] * 4) == (
      "about 4.0 h left (4 runs at 60 min each)")
  # Two counts timed: wall = 500 s + 1 s per rollout (through (100, 600) and (800, 1300)), so
  # runs of 100 and 1600 rollouts cost 600 + 2100 s = 45 min; at once: the longer one, 35 min.
  line = [(100.0, 600.0), (800.0, 1300.0)]
  assert (pipeline.remaining_time(line, [100.0, 1600.0]) ==
          "about 45 min left (2 runs, 10 to 35 min each)")
  assert pipeline.remaining_time(line, [100.0, 1600.0], parallel=2).startswith(
      "about 35 min left")
  # Extrapolated below the cheapest finished run (the line through (800, 600) and
  # (1600, 2000) is at -625 s at 100 rollouts): that run's 600 s instead.
  assert (pipeline.remaining_time([(800.0, 600.0), (1600.0, 2000.0)], [100.0]) ==
          "about 10 min left (1 run at 10 min each)")
  # A negative fitted slope (noise) falls back to the mean, 950 s.
  assert (pipeline.remaining_time([(100.0, 1300.0), (800.0, 600.0)], [100.0, 1600.0]) ==
          "about 32 min left (2 runs at 16 min each)")


def test_run_rollouts_counts_every_round_s_samples():
  config = ml_collections.ConfigDict({"train": {"rounds": 100},
                                      "rollout": {"num_samples": 8, "prompts_per_round": 2}})
  assert pipeline.run_rollouts(config) == 1600.0
  del config.rollout["prompts_per_round"]
  assert pipeline.run_rollouts(config) == 800.0


def test_bootstrap_intervals():
  rng = np.random.default_rng(0)
  a = [rng.integers(0, 2, 400).astype(float) for _ in range(3)]
  # A run against itself, paired: every resample differs by exactly 0, so the interval is
  # Newcombe's of the pooled samples (score_interval), not a zero width.
  est, low, high = pipeline.bootstrap(a, a)
  assert est == 0.0 and (low, high) == pytest.approx(pipeline.score_interval(a, a))
  assert -0.06 < low < -0.03 and 0.03 < high < 0.06
  # Paired, one side shifted by a constant: the difference is that constant, without spread.
  est, low, high = pipeline.bootstrap([x + 0.25 for x in a], a)
  assert est == pytest.approx(0.25) and low == pytest.approx(0.25) and high == pytest.approx(0.25)
  # One seed, 2,500 coin flips at p = 0.3: the percentile interval is the normal one,
  # p +- 1.96 sqrt(p (1 - p) / n) = 0.3 +- 0.018, to bootstrap noise.
  one = [np.r_[np.ones(750), np.zeros(1750)]]
  est, low, high = pipeline.bootstrap(one, boots=4000)
  assert est == 0.3
  assert low == pytest.approx(0.3 - 0.018, abs=0.003) and high == pytest.approx(0.3 + 0.018,
                                                                                abs=0.003)
  # Seeds that disagree widen the interval beyond the within-seed noise: seeds at 0.1 / 0.5 /
  # 0.9 (400 samples each) give a mean of 0.5 whose interval spans most of [0.1, 0.9].
  spread = [np.r_[np.ones(k), np.zeros(400 - k)] for k in (40, 200, 360)]
  est, low, high = pipeline.bootstrap(spread)
  assert est == pytest.approx(0.5) and low < 0.25 and high > 0.75
  # Unpaired differences of correlated samples are wider than paired ones.
  b = [np.where(rng.random(400) < 0.1, 1 - x, x) for x in a]  # 10% of answers flipped
  _, pl, ph = pipeline.bootstrap(a, b)
  _, ul, uh = pipeline.bootstrap(a, b, paired=False)
  assert ph - pl < 0.6 * (uh - ul)
  with pytest.raises(ValueError, match="same number of seeds"):
    pipeline.bootstrap(a, a[:2])
  with pytest.raises(ValueError, match="same number of samples"):
    pipeline.bootstrap(a, [x[:10] for x in a])
  with pytest.raises(ValueError, match="without samples"):
    pipeline.bootstrap([np.zeros(0)])


def test_score_interval_by_hand():
  """Newcombe (1998), Table II, method 10: 56/70 - 48/80 = 0.2000, [0.0524, 0.3339]. Wilson
  of 0 of 32: [0, z^2 / (n + z^2)] = [0, 3.8415 / 35.8415] = [0, 0.1072]."""
  a, b = np.r_[np.ones(56), np.zeros(14)], np.r_[np.ones(48), np.zeros(32)]
  low, high = pipeline.score_interval([a], [b])
  assert low == pytest.approx(0.0524, abs=1e-4) and high == pytest.approx(0.3339, abs=1e-4)
  assert pipeline.score_interval([np.zeros(32)]) == pytest.approx((0.0, 0.1072), abs=1e-4)
  assert pipeline.score_interval([np.full(4, 0.5)]) is None  # not 0/1 rewards: no floor


def test_bootstrap_never_gives_zero_width_to_sampled_rewards():
  """A training question answered 0 of 32 times, at the base and after training, three seeds:
  the percentile bootstrap resamples only zeros; the interval is the pooled samples' score
  interval instead: Wilson of 0 of 96 for the Pass@1, Newcombe of 0/96 - 0/96 for the
  difference (seed_difference falls back to the same). Rewards with spread keep the bootstrap's
  own interval where it is the wider one."""
  zeros = [np.zeros(32)] * 3
  wilson_high = 3.8415 / (96 + 3.8415)
  assert pipeline.bootstrap(zeros) == pytest.approx((0.0, 0.0, wilson_high), abs=1e-4)
  assert pipeline.bootstrap(zeros, zeros) == pytest.approx((0.0, -wilson_high, wilson_high),
                                                            abs=1e-4)
  evals = [{"train": z} for z in zeros]
  assert pipeline.seed_difference(evals, evals, "train") == pytest.approx(
      (0.0, -wilson_high, wilson_high), abs=1e-4)
  spread = [np.r_[np.ones(k), np.zeros(400 - k)] for k in (40, 200, 360)]
  assert pipeline.bootstrap(spread, boots=500)[1] < pipeline.score_interval(spread)[0]


def test_seed_interval_is_cut_to_the_possible_range():
  """Differences of Pass@1 lie in [-1, 1]: seeds at +0.9, +1.0, +0.95 give a t-interval of
  0.95 +- 4.3027 * 0.05 / sqrt(3) = [0.826, 1.074], reported as [0.826, 1.0]."""
  est, low, high = pipeline.seed_interval([0.9, 1.0, 0.95], bounds=(-1.0, 1.0))
  assert est == pytest.approx(0.95) and low == pytest.approx(0.95 - 4.3027 * 0.05 / np.sqrt(3),
                                                             abs=1e-4) and high == 1.0
  assert pipeline.seed_interval([0.9, 1.0, 0.95])[2] > 1.0  # unbounded by default


def test_bootstrap_resamples_questions_not_their_samples():
  """[questions, samples] rewards: each question's samples are one cluster. 20 questions, 50
  samples each, every sample of a question equal (10 questions all 1, 10 all 0): resampling
  questions gives the interval of 20 coin flips, 0.5 +- 1.96 sqrt(0.25 / 20) = +- 0.22;
  resampling the 1,000 samples alone would claim +- 0.03. One question: its samples are drawn."""
  clustered = [np.repeat(np.r_[np.ones(10), np.zeros(10)][:, None], 50, axis=1)]
  est, low, high = pipeline.bootstrap(clustered, boots=4000)
  assert est == 0.5 and low == pytest.approx(0.28, abs=0.04) and high == pytest.approx(
      0.72, abs=0.04)
  one = [np.r_[np.ones(750), np.zeros(1750)][None, :]]
  est, low, high = pipeline.bootstrap(one, boots=4000)
  assert est == 0.3 and low == pytest.approx(0.3 - 0.018, abs=0.003)


def test_seed_interval_by_hand():
  # [1, 2, 3]: mean 2, sd 1, se 1 / sqrt 3; t(0.975, 2 df) = 4.3027.
  est, low, high = pipeline.seed_interval([1.0, 2.0, 3.0])
  assert est == 2.0 and high - est == pytest.approx(4.3027 / np.sqrt(3), abs=1e-4)
  assert low == pytest.approx(2 * est - high)
  # Welch: [1, 2, 3] - [0, 0, 1]: se^2 = 1/3 + (1/3)/3 = 4/9; df = (4/9)^2 / ((1/3)^2 / 2 +
  # (1/9)^2 / 2) = 3.2; t(0.975, 3.2) = 3.0718 (table value by interpolation: scipy).
  est, low, high = pipeline.seed_interval([1.0, 2.0, 3.0], [0.0, 0.0, 1.0])
  assert est == pytest.approx(5 / 3)
  assert high - est == pytest.approx(2 / 3 * 3.0718, abs=2e-3)
  assert np.isnan(pipeline.seed_interval([0.5])[1])  # one seed: no interval
  assert pipeline._interval(pipeline.seed_interval([0.5]), True) == "+0.500 (no interval: one seed)"


def test_sampling_variance_by_hand():
  """Paired: the per-question differences [1, 0, 0, 1] have variance 1/3 (ddof 1), their mean
  1/12; unpaired (other question ids): 1/16 + 1/16 (each side 3 of 4 or 1 of 4: variance
  3/16 * 4/3 = 1/4 with ddof 1, over 4 questions)."""
  a = {"test_ids": ["q0", "q1", "q2", "q3"], "test": np.array([1.0, 0.0, 1.0, 1.0])}
  b = {"test_ids": ["q0", "q1", "q2", "q3"], "test": np.array([0.0, 0.0, 1.0, 0.0])}
  assert pipeline.sampling_variance(a, b, "test") == pytest.approx(1 / 12)
  other = dict(b, test_ids=["x0", "x1", "x2", "x3"])
  assert pipeline.sampling_variance(a, other, "test") == pytest.approx(1 / 8)


def test_paired_differences_pair_only_the_same_questions_in_order():
  a = {"test_ids": ["q0", "q1", "q2"], "test": np.array([1.0, 0.0, 1.0])}
  same = {"test_ids": ["q0", "q1", "q2"], "test": np.array([1.0, 0.0, 0.0])}
  reordered = {"test_ids": ["q2", "q1", "q0"], "test": np.array([0.0, 0.0, 1.0])}
  assert pipeline.pairable(a, same, "test") and not pipeline.pairable(a, reordered, "test")
  assert len(pipeline.paired_difference([a], [same], "test")) == 3
  iv = pipeline.paired_difference([a], [reordered], "test")
  assert iv[3] == "unpaired" and iv[0] == pytest.approx(1 / 3)
  assert pipeline._interval(iv, True).endswith(" (unpaired)")


def test_the_final_evaluation_is_the_last_round_s_not_the_last_file(tmp_path):
  """A run's 'final' rewards are those of round `rounds` (its summary); a curve evaluation on
  fewer test questions than the base is not a final one."""
  from rft_jax import evaluation

  folder = str(tmp_path / "evals")
  ids = [f"t{i}" for i in range(4)]
  for r, n in ((0, 4), (50, 2), (100, 4), (150, 2)):
    evaluation.save_rewards(folder, r, {"train": np.ones((1, 2)), "test": np.full(n, r)},
                            ["q"], ids[:n])
  evals = pipeline._base_and_final_evals(str(tmp_path), 100)
  assert evals["base"]["test"].tolist() == [0] * 4 and evals["final"]["test"].tolist() == [100] * 4
  assert pipeline._base_and_final_evals(str(tmp_path), 150) == {}  # 2 of the base's 4 questions
  assert pipeline._base_and_final_evals(str(tmp_path), 200) == {}  # no such round
  assert pipeline._base_and_final_evals(str(tmp_path), None) == {}
