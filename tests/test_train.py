"""The training loop in process (train.run on the runlocal config): resume, refusals, warm start.

Every run shares one warm_start.dir, so the base policy is trained once (by the first run, the
uninterrupted reference). The runlocal base is nearly untrained and earns reward 0 everywhere;
the loss chain here shifts the reward by +1 (affine_reward) so that every round carries a real
gradient and the params move, which is what makes "resumed == uninterrupted" mean something.
"""

import errno
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import common, l0_minimal
from rft_jax import (
  checkpoint as checkpoint_lib,
  errors,
  evaluation,
  fileio,
  losses,
  metrics,
  pipeline,
  rewards,
  sharding,
  train,
  warm_start,
  workdir as workdir_lib,
)
from rft_jax.data import selection

ROUNDS = 4  # runlocal: eval_every = checkpoint_every = 2
FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def make_config(base_dir, **overrides):
  """runlocal + the shared base + the shifted reward; overrides as section__key=value."""
  c = common.base_config("runlocal")
  c.warm_start.dir = str(base_dir)
  c.loss.chain = "affine_reward,raw_reward,clipped_ratio,token_mean"
  c.loss.affine_reward.shift = 1.0
  c.optimizer.learning_rate = 1e-3  # steps well above float noise in 4 rounds
  # Small evaluations in few sampler shapes (each new shape is seconds of compilation).
  c.eval.update(test_size=8, batch_size=8, train_samples=1)
  c.train.rounds = ROUNDS
  c.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
  c.lock()
  return c


def run(config, workdir):
  """train.run with its log captured: (summary, log lines)."""
  lines = []
  summary = train.run(config, str(workdir), log=lines.append)
  return summary, lines


def snapshot(directory) -> dict:
  """{relative path: (size, mtime_ns, sha1)} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()
      st = os.stat(path)
      out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns, digest)
  return out


def checkpoint_state(workdir, step: int) -> dict:
  """The saved TrainState of checkpoint `step` as a nested dict of arrays on one device (saved
  on any mesh, by any number of processes)."""
  checkpointer = ocp.StandardCheckpointer()
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  try:
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree)
    return checkpointer.restore(path, target)
  finally:
    checkpointer.close()


def assert_same_rows(got: list[dict], want: list[dict], rel_tol=1e-6):
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    assert g.keys() == w.keys(), (g["step"], g.keys() ^ w.keys())
    for k, v in w.items():
      if isinstance(v, float):
        assert math.isclose(g[k], v, rel_tol=rel_tol, abs_tol=1e-6), (w["step"], k, g[k], v)
      else:
        assert g[k] == v, (w["step"], k, g[k], v)


def assert_finite(tree):
  for leaf in jax.tree.leaves(tree):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64))), "a checkpoint holds non-finite values"


def assert_same_tree(got, want, atol=1e-6):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                                                       atol=atol), got, want)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("shared") / "base"


@pytest.fixture(scope="module")
def reference(base_dir, tmp_path_factory):
  """The uninterrupted run of ROUNDS rounds; being first, it trains the shared base."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  made = {}
  real_base_policy = warm_start.base_policy

  def spy(*args, **kwargs):
    policy, info = real_base_policy(*args, **kwargs)
    made["params"] = jax.device_get(policy.params)
    return policy, info

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(warm_start, "base_policy", spy)
    summary, lines = run(make_config(base_dir), workdir)
  return dict(workdir=workdir, summary=summary, log=lines, base_params=made["params"],
              base_files=snapshot(base_dir), rows=metrics.read_metrics(workdir))


@pytest.fixture
def no_retraining(monkeypatch):
  """Runs after the reference must reuse the shared base, never train it again."""
  def fail(*args, **kwargs):
    raise AssertionError("the base policy was trained again")
  monkeypatch.setattr(warm_start, "_warm_start", fail)


def test_reference_run(reference):
  rows, summary = reference["rows"], reference["summary"]
  assert [r["step"] for r in rows] == list(range(ROUNDS + 1))
  assert len([line for line in reference["log"] if line.startswith("base policy")]) == 1
  assert not (reference["workdir"] / workdir_lib.LOCK_INFO).exists()  # released
  assert all(math.isfinite(r["param_norm"]) and r["param_norm"] > 0 for r in rows[1:])
  assert not any(k.startswith("collapse") for r in rows for k in r)
  assert summary["rounds"] == ROUNDS
  assert all(r["grad_norm"] > 0 and math.isfinite(r["loss"]) for r in rows[1:])
  with checkpoint_lib.Checkpointer(os.path.join(reference["workdir"], "checkpoints"),
                                   fingerprint=train.fingerprint(make_config("x"))) as ckpt:
    assert ckpt.all_steps() == [2, ROUNDS]
  final = checkpoint_state(reference["workdir"], ROUNDS)
  assert int(final["round"]) == ROUNDS
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), final["params"],
                       reference["base_params"])
  assert max(jax.tree.leaves(moved)) > 1e-3  # training really changed the policy


def test_the_phases_alone_make_the_runs_first_round(reference, base_dir, tmp_path, no_retraining):
  """evaluate, then rollout -> grade -> train step, called one by one outside run(): rows 0 and
  1 of the reference run, number for number."""
  config = make_config(base_dir)
  loop = train.make_loop(config, str(tmp_path), train.build_task(config.task),
                         sharding.build_mesh(**config.mesh), log=lambda message: None)
  state = train.initial_state(loop)
  base = train.evaluate_phase(loop, state.params, 0)
  assert base == {k: v for k, v in reference["rows"][0].items() if k != "step"}
  questions, rollout = train.rollout_phase(loop, state.params, 0)
  graded = train.grade_phase(loop, questions, rollout)
  rows = len(questions) * config.rollout.num_samples
  assert graded.rewards.shape == graded.lengths.shape == graded.truncated.shape == (rows,)
  assert sum(graded.outcomes.values()) == rows
  # cut rows used every position; rows that stopped short were not cut
  assert np.all(graded.lengths[graded.truncated == 1] == config.rollout.max_new_tokens)
  assert np.all(graded.truncated[graded.lengths < config.rollout.max_new_tokens] == 0)
  state, row = train.train_phase(loop, state, questions, rollout, graded)
  assert int(state.round) == 1
  want = reference["rows"][1]
  assert {k: want[k] for k in row} == row


def test_truncated_rows_are_those_the_length_limit_cut():
  """Cut = all N positions generated and the last one not an end token (hand-made rows)."""
  tokens = np.array([[5, 7, 2], [5, 2, 0], [5, 7, 9], [3, 4, 8], [6, 6, 6]])
  mask = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]], np.float32)
  # row 0 ends on its last position (EOS 2), row 1 before it, row 3 on end-of-turn 8
  np.testing.assert_array_equal(train.truncated_rows(tokens, mask, (2, 8)), [0, 0, 1, 0, 0])
  np.testing.assert_array_equal(train.truncated_rows(tokens, mask, (2,)), [0, 0, 1, 1, 0])


def test_every_evaluation_sample_is_kept(reference):
  """evals/round_<r>.json holds the rewards behind each evaluation row of metrics.jsonl."""
  rows = {r["step"]: r for r in reference["rows"]}
  files = sorted((reference["workdir"] / train.EVALS_DIR).iterdir())
  assert [f.name for f in files] == ["round_000000.json", "round_000002.json", "round_000004.json"]
  for f in files:
    saved = evaluation.load_rewards(str(f))
    row = rows[saved["round"]]
    assert len(saved["test_ids"]) == len(saved["test"]) == 8
    assert row["test_pass1"] == float(np.mean(saved["test"]))
    assert row["test_greedy"] == float(np.mean(saved["test_greedy"]))
    assert row["train_pass1"] == float(np.mean(saved["train"]))


def test_cost_options_leave_the_run_as_it_was(reference, base_dir, tmp_path, no_retraining,
                                              monkeypatch):
  """The options that cut a run's cost change what it measures only as documented:
  eval.curve_test_size: the base and last evaluations see all test_size questions, those in
  between the first curve_test_size; eval.curve_greedy off: no greedy accuracy in between;
  train.completion_bucket: each train step scores the round's longest completion rounded up
  to the bucket (fewer than max_new_tokens positions here), the same step to float rounding;
  train.texts_every: the texts of rounds 1, 3 (every third) and 4 (the last) in
  rollouts.jsonl. Otherwise the run is the reference run."""
  widths = []
  trim = train._trim_completions
  monkeypatch.setattr(train, "_trim_completions",
                      lambda rollout, width: widths.append(width) or trim(rollout, width))
  config = make_config(base_dir, eval__curve_test_size=3, eval__curve_greedy=False,
                       train__completion_bucket=4, train__texts_every=3)
  summary, _ = run(config, tmp_path)
  texts = metrics.read_metrics(tmp_path, name=train.ROLLOUTS_FILE)
  assert [row["step"] for row in texts] == [1, 3, ROUNDS]
  g, rows = config.rollout.num_samples, metrics.read_metrics(tmp_path)
  for row in texts:
    assert row["row"] == list(range(g)) and len(row["text"]) == g
    assert all(isinstance(t, str) for t in row["text"]) and len(set(row["question"])) == 1
    metric_row = next(r for r in rows if r["step"] == row["step"] and "reward" in r)
    assert np.mean(row["reward"]) == pytest.approx(metric_row["reward"])
  assert len(widths) == ROUNDS and all(w % 4 == 0 for w in widths)
  assert min(widths) < config.rollout.max_new_tokens, widths
  evals = tmp_path / train.EVALS_DIR
  saved = {f.name: evaluation.load_rewards(str(f)) for f in evals.iterdir()}
  assert {name: len(r["test_ids"]) for name, r in saved.items()} == {
      "round_000000.json": 8, "round_000002.json": 3, "round_000004.json": 8}
  assert ["test_greedy" in r for _, r in sorted(saved.items())] == [True, False, True]
  full = evaluation.load_rewards(str(reference["workdir"] / train.EVALS_DIR / "round_000002.json"))
  assert saved["round_000002.json"]["test_ids"] == full["test_ids"][:3]
  for key in ("final_test_pass1", "final_test_greedy"):
    assert summary[key] == reference["summary"][key]
  assert_same_rows([{k: v for k, v in r.items() if not k.startswith("test_")}
                    for r in metrics.read_metrics(tmp_path)],
                   [{k: v for k, v in r.items() if not k.startswith("test_")}
                    for r in reference["rows"]], rel_tol=1e-5)


def test_base_test_key_leaves_out_what_only_training_changes(base_dir):
  """Every layer of one seed shares the base's test rewards; the sampling settings, the seed
  and the model do not."""
  shared = "/shared/base_eval"
  path = train.base_test_path(make_config(base_dir, eval__shared_base=shared))
  assert os.path.dirname(path) == shared and path.endswith(".json")
  assert train.base_test_path(make_config(base_dir)) == ""  # off by default
  same = [dict(optimizer__learning_rate=1e-6), dict(loss__chain="raw_reward,token_mean"),
          dict(rollout__num_samples=4), dict(example__selection="hard"),
          dict(train__rounds=9), dict(eval__curve_test_size=3), dict(eval__train_samples=5),
          dict(warm_start__dir="/elsewhere")]
  for change in same:
    assert train.base_test_path(make_config(base_dir, eval__shared_base=shared, **change)) == path
  other = [dict(seed=1), dict(eval__temperature=0.5), dict(eval__greedy=False),
           dict(eval__test_size=4), dict(rollout__max_new_tokens=8), dict(rollout__top_p=0.9),
           dict(model__dtype="bfloat16"), dict(task__seed=3), dict(warm_start__seed=1),
           dict(model__lora__rank=2)]
  for change in other:
    assert train.base_test_path(make_config(base_dir, eval__shared_base=shared, **change)) \
        != path, change


def test_a_revised_grader_renames_the_stored_base_test_and_difficulty_table(base_dir, tmp_path,
                                                                             monkeypatch):
  """Results graded by a grader's older rules are not reused once its rules change
  (rewards.REVISIONS): the shared base test file and the difficulty table get new names. A
  grader never revised adds nothing to the keys, so files stored before revisions existed keep
  theirs."""
  config = make_config(base_dir, eval__shared_base="/shared/base_eval")
  assert train.grader_name(config.task) == train.build_task(config.task).grader == "arithmetic"
  assert "grader_revision" not in train.base_test_key(config)
  path, table = train.base_test_path(config), pipeline.difficulty_path(str(tmp_path), config)
  monkeypatch.setitem(rewards.REVISIONS, "arithmetic", 2)
  assert train.base_test_key(config)["grader_revision"] == 2
  assert train.base_test_path(config) != path
  assert pipeline.difficulty_path(str(tmp_path), config) != table
  # task.grader names the grader whose revision counts
  smollm2 = make_config(base_dir, task__grader="final_answer")
  assert train.grader_name(smollm2.task) == train.build_task(smollm2.task).grader == "final_answer"
  assert train.base_test_key(smollm2)["grader_revision"] == rewards.revision("final_answer") == 2
  legacy = make_config(base_dir, task__grader="final_answer_legacy")
  assert "grader_revision" not in train.base_test_key(legacy)
  # a file stored under an earlier revision is found by naming it (base_no_answer.py)
  assert "grader_revision" not in train.base_test_key(smollm2, grader_revision=1)


def test_shared_base_test_rewards_are_sampled_once(reference, base_dir, tmp_path, no_retraining):
  """The first run with eval.shared_base stores its base test rewards; a run of another layer
  (here another learning rate) samples only the training question at round 0 and takes the
  test rewards from the file; a file of other settings stops the run."""
  shared = tmp_path / "shared"
  first, _ = run(make_config(base_dir, eval__shared_base=str(shared), train__rounds=2),
                 tmp_path / "first")
  [stored_path] = shared.iterdir()
  stored = json.loads(stored_path.read_text())
  ref0 = evaluation.load_rewards(str(reference["workdir"] / train.EVALS_DIR / "round_000000.json"))
  assert stored["test_ids"] == ref0["test_ids"]
  assert stored["test"] == ref0["test"].tolist()
  assert stored["test_greedy"] == ref0["test_greedy"].tolist()
  assert metrics.read_metrics(tmp_path / "first")[0] == reference["rows"][0]

  # Marked rewards prove the second run reads them rather than sampling the test set again.
  marked = {**stored, "test": [1.0] * len(stored["test"]), "test_greedy": [0.0, 1.0] * 4}
  fileio.write_json_atomic(stored_path, marked)
  config = make_config(base_dir, eval__shared_base=str(shared), train__rounds=2,
                       optimizer__learning_rate=1e-4)
  assert train.base_test_path(config) == str(stored_path)
  second, lines = run(config, tmp_path / "second")
  assert any(line.startswith(f"base test rewards from {stored_path}") for line in lines)
  row0 = metrics.read_metrics(tmp_path / "second")[0]
  assert row0["test_pass1"] == 1.0 and row0["test_greedy"] == 0.5
  assert row0["train_pass1"] == reference["rows"][0]["train_pass1"]
  saved = evaluation.load_rewards(str(tmp_path / "second" / train.EVALS_DIR / "round_000000.json"))
  assert saved["test"].tolist() == marked["test"] and saved["test_ids"] == stored["test_ids"]
  assert second["base_test_pass1"] == 1.0

  fileio.write_json_atomic(stored_path, {**stored, "test_ids": stored["test_ids"][::-1]})
  with pytest.raises(errors.CheckpointReadError, match="other settings or test questions"):
    run(config, tmp_path / "third")


def test_a_resume_without_base_eval_json_rebuilds_it_from_the_base_samples(reference, base_dir,
                                                                            tmp_path,
                                                                            no_retraining):
  """Never from the restored (trained) params: from evals/round_000000.json, or a clear stop."""
  run(make_config(base_dir, train__rounds=2), tmp_path)
  (tmp_path / "base_eval.json").unlink()
  summary, lines = run(make_config(base_dir), tmp_path)
  assert any(line.startswith("base evaluation rebuilt from") for line in lines)
  for key in ("base_train_pass1", "base_test_pass1", "final_test_pass1"):
    assert summary[key] == reference["summary"][key], key
  (tmp_path / "base_eval.json").unlink()
  (tmp_path / train.EVALS_DIR / "round_000000.json").unlink()
  with pytest.raises(errors.CheckpointReadError, match="cannot be remade"):
    run(make_config(base_dir, train__rounds=6), tmp_path)


def test_resume_with_more_rounds_equals_uninterrupted(reference, base_dir, tmp_path,
                                                      no_retraining):
  """2 rounds, then the same workdir with rounds=4 (a resumable key): same as 4 in one go."""
  first, _ = run(make_config(base_dir, train__rounds=2), tmp_path)
  assert first["rounds"] == 2
  summary, lines = run(make_config(base_dir), tmp_path)
  assert any(f"resumed from round 2 in {tmp_path}" in line for line in lines)
  assert_same_rows(metrics.read_metrics(tmp_path), reference["rows"])
  assert_same_tree(checkpoint_state(tmp_path, ROUNDS), checkpoint_state(reference["workdir"],
                                                                        ROUNDS))
  for key in ("base_train_pass1", "base_test_pass1", "final_train_pass1", "final_test_pass1",
              "rounds"):
    assert summary[key] == reference["summary"][key], key


def test_non_finite_loss_stops_and_the_last_good_checkpoint_resumes(reference, base_dir, tmp_path,
                                                                     monkeypatch, no_retraining):
  """A NaN loss in round 3 stops the run before saving; checkpoint 2 stays and resumes."""
  config = make_config(base_dir)
  real_step = train.train_step

  def nan_in_round_3(state, *args, **kwargs):
    bad = int(state.round) == 2  # read before the real step donates `state`
    state, step_metrics = real_step(state, *args, **kwargs)
    if bad:
      step_metrics = {**step_metrics, "loss": jnp.float32(jnp.nan)}
    return state, step_metrics

  monkeypatch.setattr(train, "train_step", nan_in_round_3)
  with pytest.raises(errors.DivergedError) as info:
    run(config, tmp_path)
  ckpt_dir = os.path.join(tmp_path, "checkpoints")
  assert str(info.value) == (
      "diverged at round 3: non-finite loss nan; stopped without saving. The last good "
      f"checkpoint is round 2 ({ckpt_dir}/2); to go on from it, rerun the same command with a "
      "lower --config.optimizer.learning_rate (now 0.001) and "
      "--resume_with=optimizer.learning_rate")
  assert_finite(checkpoint_state(tmp_path, 2))
  with checkpoint_lib.Checkpointer(ckpt_dir, fingerprint=train.fingerprint(config)) as ckpt:
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [2]
  assert sorted(os.listdir(ckpt_dir)) == ["2", checkpoint_lib.FINGERPRINT_FILE]
  assert not os.path.exists(os.path.join(tmp_path, "summary.json"))
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[3]["loss"] is None
  assert_same_tree(checkpoint_state(tmp_path, 2), checkpoint_state(reference["workdir"], 2))

  # The good checkpoint is intact: resuming from it ends exactly like the uninterrupted run.
  monkeypatch.setattr(train, "train_step", real_step)
  summary, lines = run(config, tmp_path)
  assert any("resumed from round 2" in line for line in lines)
  assert summary["rounds"] == ROUNDS
  assert_same_rows(metrics.read_metrics(tmp_path), reference["rows"])
  assert_same_tree(checkpoint_state(tmp_path, ROUNDS), checkpoint_state(reference["workdir"],
                                                                        ROUNDS))


@pytest.mark.parametrize("override,key", [
    (dict(loss__chain="raw_reward,clipped_ratio,token_mean"), "loss.chain"),
    (dict(model__d_model=48), "model.d_model"),
])
def test_incompatible_checkpoint_is_refused_untouched(reference, base_dir, no_retraining,
                                                      override, key):
  workdir = reference["workdir"]
  before = snapshot(workdir)
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError, match=rf"(?s)differing.*{key}"):
    run(make_config(base_dir, **override), workdir)
  assert snapshot(workdir) == before


def test_warm_start_is_reused(reference, base_dir, no_retraining):
  config = make_config(base_dir)
  task = train.build_task(config.task)
  lines = []
  policy, info = warm_start.base_policy(config, task, "unused-workdir", log=lines.append)
  assert any(line.startswith(f"base policy: reused {base_dir}") for line in lines)
  assert {k: v for k, v in info.items() if k != "fingerprint"} == reference["summary"][
      "base_policy"]
  assert_same_tree(jax.device_get(policy.params), reference["base_params"], atol=0)
  assert snapshot(base_dir) == reference["base_files"]  # base.json, params, tokenizer as made


def test_every_process_waits_for_the_claim_before_reading_checkpoints(tmp_path, monkeypatch):
  """--multihost --resume_with: process 0's claim rewrites fingerprint.json, which the other
  processes' checkpoint check reads in _run; a barrier between them (else a legal resume was
  refused on a race)."""
  calls = []
  real_claim = train.workdir_lib.claim
  monkeypatch.setattr(train.workdir_lib, "claim",
                      lambda *a, **k: calls.append("claim") or real_claim(*a, **k))
  monkeypatch.setattr(train.distributed, "barrier", lambda name: calls.append(f"barrier {name}"))
  monkeypatch.setattr(train, "_run", lambda *a: calls.append("_run"))
  train.run(common.base_config("runlocal"), str(tmp_path / "w"))
  assert calls == ["claim", "barrier claim", "_run"]


def test_a_shared_difficulty_table_of_other_questions_is_refused(tmp_path):
  """--config.example.table made for other candidates: a ConfigError before anything is
  sampled, never a question drawn by other questions' difficulty."""
  config = common.base_config("runlocal")
  task = train.build_task(config.task)
  others = list(task.train)[1:config.example.candidates + 1]
  table = tmp_path / "table.json"
  selection.save_table(table, selection.difficulty_table(
      others, np.zeros((len(others), config.example.samples))))
  config.example.update(selection="hard", table=str(table))
  with pytest.raises(errors.ConfigError, match=re.escape(f"--config.example.table: {table}: the "
                                                         "difficulty table scores")):
    train.training_examples(config, task, None, str(tmp_path / "w"), None, log=lambda m: None)


def test_warm_start_never_replaces_a_folder_that_is_not_a_base(base_dir, tmp_path):
  """--config.warm_start.dir naming a folder with other things in it (a run's workdir, by
  mistake): refused before any training, the folder untouched (the base replaces its folder
  when made). An unreadable base.json: a CheckpointReadError naming it, not a JSON traceback."""
  mine = tmp_path / "my_results"
  (mine / "l0_seed0").mkdir(parents=True)
  (mine / "notes.txt").write_text("precious\n")
  config = make_config(base_dir, warm_start__dir=str(mine))
  task = train.build_task(config.task)
  with pytest.raises(errors.ConfigError, match=re.escape(f"{mine} exists and is not a base "
                                                         "policy (no base.json)")):
    warm_start.base_policy(config, task, str(tmp_path / "workdir"), log=lambda m: None)
  assert sorted(os.listdir(mine)) == ["l0_seed0", "notes.txt"]
  (mine / "base.json").write_text("")
  with pytest.raises(errors.CheckpointReadError, match=re.escape(f"{mine / 'base.json'} cannot "
                                                                 "be read")):
    warm_start.base_policy(config, task, str(tmp_path / "workdir"), log=lambda m: None)


def test_warm_start_makes_its_folder_under_a_new_parent(tmp_path):
  """A base folder whose parent does not exist yet (one supervised step: the path, not the
  training, is under test)."""
  config = common.base_config("runlocal")
  config.warm_start.update(dir=str(tmp_path / "new" / "base"), max_steps=1, eval_every=1,
                           probe_size=2)
  _, info = warm_start.base_policy(config, train.build_task(config.task), str(tmp_path / "w"),
                                   log=lambda m: None)
  assert info["steps"] == 1 and (tmp_path / "new" / "base" / "base.json").is_file()
  assert sorted(os.listdir(tmp_path / "new")) == ["base"]  # no temporary folder left


def test_difficulty_selection_picks_from_the_bucket(reference, base_dir, tmp_path,
                                                    no_retraining):
  """The untrained-ish base scores 0 on its candidates: 'extremely_hard' has them all."""
  config = make_config(base_dir, example__selection="extremely_hard", example__samples=1,
                       train__rounds=1)  # samples=1: the sampler shape the evaluations compiled
  summary, lines = run(config, tmp_path)
  table = selection.load_table(os.path.join(tmp_path, "difficulty.json"))
  assert len(table["rows"]) == config.example.candidates
  assert all(row["n"] == config.example.samples for row in table["rows"])
  buckets = {row["id"]: row["bucket"] for row in table["rows"]}
  (chosen,) = summary["training_questions"]
  assert buckets[chosen] == "extremely_hard"
  assert any(line.startswith(f"difficulty of {config.example.candidates} candidate")
             for line in lines)
  assert any(chosen in line for line in lines if line.startswith("training question(s)"))
  assert snapshot(base_dir) == reference["base_files"]


def test_diagnostics_settings_do_not_block_a_resume():
  # Logging-only settings are resumable, and a run from before the diagnostics section existed
  # has the same fingerprint as one that leaves them at their defaults.
  c = common.base_config()
  changed = common.base_config()
  changed.diagnostics.update(p_correct_window=3, exact_arms=True, max_arms=7)
  assert train.fingerprint(changed) == train.fingerprint(c)
  older = common.base_config()
  del older["diagnostics"]
  assert train.fingerprint(older) == train.fingerprint(c)
  changed.rollout.num_samples = 2  # a setting that changes training still counts
  assert train.fingerprint(changed) != train.fingerprint(c)


def test_logprob_chunk_at_its_default_resumes_runs_from_before_it():
  # train.logprob_chunk (added later) is left out of the fingerprint at its default, so a
  # checkpoint written before the key existed resumes; another value is a different run.
  c = common.base_config()
  assert c.train.logprob_chunk == train.LATER_KEYS["train.logprob_chunk"]
  older = common.base_config()
  del older.train["logprob_chunk"]
  assert train.fingerprint(older) == train.fingerprint(c)
  changed = common.base_config()
  changed.train.logprob_chunk = 0
  assert train.fingerprint(changed)["train"]["logprob_chunk"] == 0
  assert train.fingerprint(changed) != train.fingerprint(c)


# The loss options 1781af7 added, as the fingerprint of a run stored before them lacks them.
LOSS_KEYS_OF_1781AF7 = [k for k in train.LATER_KEYS if k.startswith("loss.")]


def _without(config, dotted_keys):
  """A copy of `config` without the given dotted keys (and sections left empty): a config of
  the code from before those keys existed."""
  d = config.to_dict()
  for key in dotted_keys:
    *parents, name = key.split(".")
    node = d
    for part in parents:
      node = node[part]
    del node[name]
    if not node:  # e.g. loss.group_mean: no settings, hence no section, before 1781af7
      parent = d
      for part in parents[:-1]:
        parent = parent[part]
      del parent[parents[-1]]
  return ml_collections.ConfigDict(d)


def test_later_loss_keys_are_the_factory_defaults():
  # LATER_KEYS holds the defaults the code has; a changed default must not pass for absent.
  defaults = losses.default_settings()
  for key in LOSS_KEYS_OF_1781AF7:
    _, name, kwarg = key.split(".")
    assert defaults[name][kwarg] == train.LATER_KEYS[key], key


def test_loss_options_at_their_default_resume_runs_from_before_them():
  c = common.base_config()
  older = _without(c, LOSS_KEYS_OF_1781AF7)
  assert "group_mean" not in older.loss
  assert train.fingerprint(older) == train.fingerprint(c)
  changed = common.base_config()
  changed.loss.kl_loss.ratio_weight = True  # another value is another run
  assert train.fingerprint(changed)["loss"]["kl_loss"]["ratio_weight"] is True
  assert train.fingerprint(changed) != train.fingerprint(c)


def test_fingerprint_stored_before_1781af7_matches(tmp_path):
  """l0_minimal's fingerprint.json as e275d95 (the commit before 1781af7) wrote it resumes now,
  and so does one that spells the new options out (written between 1781af7 and this fix)."""
  stored = json.loads((FIXTURES / "fingerprint_l0_before_1781af7.json").read_text())
  now = train.fingerprint(l0_minimal.get_config(""))
  defaults = train.fingerprint_defaults()
  assert checkpoint_lib.fingerprint_diff(stored, now, defaults) == []
  spelled_out = json.loads(l0_minimal.get_config("").to_json())
  for key in train.RESUMABLE_KEYS:
    section, name = key.split(".")
    spelled_out.get(section, {}).pop(name, None)
  del spelled_out["diagnostics"]
  assert checkpoint_lib.fingerprint_diff(spelled_out, now, defaults) == []
  # Through the Checkpointer, as a resume does: a checkpoint under the old fingerprint.
  directory = tmp_path / "checkpoints"
  with checkpoint_lib.Checkpointer(directory, fingerprint=stored) as ckpt:
    ckpt.save(1, {"x": jnp.zeros(2)})
  with checkpoint_lib.Checkpointer(directory, fingerprint=now, defaults=defaults) as ckpt:
    assert ckpt.latest_step() == 1
  changed = l0_minimal.get_config("")
  changed.loss.clipped_ratio.log_ratio_clamp = 20.0
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                     match="loss.clipped_ratio.log_ratio_clamp: stored -1.0, now 20.0"):
    checkpoint_lib.Checkpointer(directory, fingerprint=train.fingerprint(changed),
                                defaults=defaults)


# -- divergence, --resume_with, the collapse guard -----------------------------------------------


def test_exploded_params_stop_with_no_checkpoint_then_a_lower_lr_goes_on(reference, base_dir,
                                                                         tmp_path, no_retraining):
  """lr 1e30: round 1's params blow up; nothing is saved and the message says there is no
  checkpoint. The same workdir with the usual lr and --resume_with then runs as a fresh run
  would (the base evaluation and the change recorded on row 0)."""
  with pytest.raises(errors.DivergedError) as info:
    run(make_config(base_dir, optimizer__learning_rate=1e30), tmp_path)
  msg = str(info.value)
  assert msg.startswith("diverged at round 1: ")
  assert ("parameters" in msg and "There is no checkpoint to go back to (none was saved "
          "before round 1)" in msg and "--resume_with=optimizer.learning_rate" in msg), msg
  assert os.listdir(tmp_path / "checkpoints") == [checkpoint_lib.FINGERPRINT_FILE]
  assert not (tmp_path / "summary.json").exists()

  config = make_config(base_dir)  # the reference's learning rate, 1e-3
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError,
                     match=r"optimizer.learning_rate: stored 1e\+30, now 0.001"):
    run(config, tmp_path)  # without the flag: a different run
  lines = []
  summary = train.run(config, str(tmp_path), log=lines.append,
                      resume_with=["optimizer.learning_rate"])
  assert "resumed with optimizer.learning_rate: 1e+30 -> 0.001" in lines
  rows = metrics.read_metrics(tmp_path)
  assert rows[0]["resumed_with"] == "optimizer.learning_rate: 1e+30 -> 0.001"
  assert rows[0]["optimizer.learning_rate"] == 0.001
  for row in rows:
    row.pop("resumed_with", None), row.pop("optimizer.learning_rate", None)
  assert_same_rows(rows, reference["rows"])
  assert summary["rounds"] == ROUNDS
  run(config, tmp_path)  # the stored run is now the lr-1e-3 one: the plain command resumes


def test_resume_with_a_lower_lr_from_the_last_good_checkpoint(reference, base_dir, tmp_path,
                                                              no_retraining):
  run(make_config(base_dir, train__rounds=2), tmp_path)
  lower = make_config(base_dir, optimizer__learning_rate=5e-4)
  lines = []
  train.run(lower, str(tmp_path), log=lines.append, resume_with=("optimizer.learning_rate",))
  assert "resumed from round 2 in " + str(tmp_path) in lines
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == list(range(ROUNDS + 1))
  assert rows[2]["resumed_with"] == "optimizer.learning_rate: 0.001 -> 0.0005"
  assert_same_rows(rows[:2], reference["rows"][:2])
  assert rows[3]["param_norm"] != reference["rows"][3]["param_norm"]  # round 3 at the new rate
  with open(workdir_lib.fingerprint_path(str(tmp_path))) as f:
    assert json.load(f)["optimizer"]["learning_rate"] == 5e-4


def test_resume_with_only_takes_state_independent_keys(base_dir, tmp_path):
  with pytest.raises(errors.ConfigError, match=r"^--resume_with=model.d_model: must be one of "
                     r"optimizer.learning_rate, "):
    train.run(make_config(base_dir), str(tmp_path / "w"), resume_with=["model.d_model"])
  assert not (tmp_path / "w").exists()


def test_collapse_guard_warns_once_and_flags_the_rows(reference, base_dir, tmp_path, monkeypatch,
                                                      no_retraining):
  real_step = train.train_step
  vocab = []

  def uniform_from_round_2(state, batch, *args, decoder, **kwargs):
    late = int(state.round) >= 1
    state, step_metrics = real_step(state, batch, *args, decoder=decoder, **kwargs)
    vocab.append(decoder.config.vocab_size)
    if late:  # as if the policy had turned to noise: entropy ln V
      step_metrics = {**step_metrics, "entropy": jnp.float32(math.log(vocab[-1]))}
    return state, step_metrics

  monkeypatch.setattr(train, "train_step", uniform_from_round_2)
  _, lines = run(make_config(base_dir, train__rounds=3), tmp_path)
  warnings = [line for line in lines if line.startswith("warning:")]
  assert len(warnings) == 1 and warnings[0].startswith("warning: round 2: policy entropy")
  assert f"uniform value ln V = {math.log(vocab[0]):.3f}" in warnings[0]
  rows = metrics.read_metrics(tmp_path)
  assert [r.get("collapse_uniform") for r in rows] == [None, None, 1.0, 1.0]


def test_collapse_stuck_needs_a_full_window_of_wrong_identical_rollouts():
  row = {"entropy": 1e-5, "p_correct_window": 0.0}
  assert train._collapse(row, 4.9, window=10, done=10) == {"collapse_stuck": 1.0}
  assert train._collapse(row, 4.9, window=10, done=9) == {}  # window not yet full
  assert train._collapse({**row, "p_correct_window": 1.0}, 4.9, 10, 10) == {}  # converged
  assert train._collapse({**row, "entropy": 0.5}, 4.9, 10, 10) == {}  # still varying
  assert train._collapse({"entropy": 4.8}, 4.9, 10, 10) == {"collapse_uniform": 1.0}


# -- interrupts ----------------------------------------------------------------------------------


def test_sigterm_saves_the_round_and_the_resume_equals_uninterrupted(reference, base_dir,
                                                                     tmp_path, monkeypatch,
                                                                     no_retraining):
  """SIGTERM during round 3 (no checkpoint due): the round finishes, is saved as checkpoint 3,
  and the run stops; the same command then ends exactly like the uninterrupted run."""
  real_step = train.train_step

  def sigterm_in_round_3(state, *args, **kwargs):
    if int(state.round) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_step(state, *args, **kwargs)

  monkeypatch.setattr(train, "train_step", sigterm_in_round_3)
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(errors.RunInterrupted) as info:
    run(make_config(base_dir), tmp_path)
  assert str(info.value) == "stopped at round 3; run the same command to resume"
  assert info.value.exit_code == 128 + signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == handler  # restored
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3",
                                                          checkpoint_lib.FINGERPRINT_FILE]
  assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [0, 1, 2, 3]
  assert_finite(checkpoint_state(tmp_path, 3))
  assert not (tmp_path / workdir_lib.LOCK_INFO).exists()

  monkeypatch.setattr(train, "train_step", real_step)
  summary, lines = run(make_config(base_dir), tmp_path)
  assert f"resumed from round 3 in {tmp_path}" in lines
  assert_same_rows(metrics.read_metrics(tmp_path), reference["rows"])
  assert_same_tree(checkpoint_state(tmp_path, ROUNDS), checkpoint_state(reference["workdir"],
                                                                        ROUNDS))
  # wall_s adds the stopped process's time (kept in checkpoint 3) to this one's.
  with checkpoint_lib.Checkpointer(tmp_path / "checkpoints", fingerprint=train.fingerprint(
      make_config(base_dir))) as ckpt:
    _, extra = ckpt.restore(checkpoint_state(tmp_path, ROUNDS))
  assert summary["wall_s"] >= extra["wall_s"] > 0


class _Killed(BaseException):
  """A kill no handler sees (not an Exception, not a signal the run catches)."""


def test_a_kill_between_a_rounds_row_and_its_checkpoint_resumes_bit_for_bit(
    reference, base_dir, tmp_path, monkeypatch, no_retraining):
  """Killed after round 3's metrics row and texts were written but before anything was saved
  (runlocal saves every 2 rounds): the resume starts from checkpoint 2, drops round 3's row and
  texts, and ends byte for byte as the uninterrupted run (rows, texts, evaluations) with a
  bitwise equal final state: every random draw is keyed by (seed, round), none by history."""
  config = make_config(base_dir, train__texts_every=1)
  uninterrupted = tmp_path / "uninterrupted"
  run(config, uninterrupted)
  real_phase = train.checkpoint_phase

  def killed_after_round_3(loop, ckpt, state, done, *args, **kwargs):
    if done == 3:
      raise _Killed
    return real_phase(loop, ckpt, state, done, *args, **kwargs)

  monkeypatch.setattr(train, "checkpoint_phase", killed_after_round_3)
  killed = tmp_path / "killed"
  with pytest.raises(_Killed):
    run(config, killed)
  assert [r["step"] for r in metrics.read_metrics(killed)] == [0, 1, 2, 3]
  assert sorted(os.listdir(killed / "checkpoints")) == ["2", checkpoint_lib.FINGERPRINT_FILE]
  monkeypatch.setattr(train, "checkpoint_phase", real_phase)
  _, lines = run(config, killed)
  assert f"resumed from round 2 in {killed}" in lines
  records = ["metrics.jsonl", "rollouts.jsonl", "base_eval.json",
             *(f"evals/{name}" for name in sorted(os.listdir(uninterrupted / "evals")))]
  assert len(records) > 4
  for name in records:
    assert (killed / name).read_bytes() == (uninterrupted / name).read_bytes(), name
  final = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                       checkpoint_state(killed, ROUNDS), checkpoint_state(uninterrupted, ROUNDS))
  assert all(jax.tree.leaves(final))


def test_signal_before_the_rounds_stops_at_once(reference, base_dir, tmp_path, monkeypatch,
                                                no_retraining):
  def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    raise AssertionError("not reached: the handler raises")

  monkeypatch.setattr(train, "training_examples", interrupted)
  with pytest.raises(errors.RunInterrupted, match="^stopped by SIGINT before the first round"):
    run(make_config(base_dir), tmp_path)
  assert sorted(os.listdir(tmp_path)) == ["checkpoints"]  # the fingerprint only


def test_a_signal_swallowed_in_the_base_evaluation_stops_before_it_is_written(
    reference, base_dir, tmp_path, monkeypatch, no_retraining):
  """A SIGTERM whose RunInterrupted some library's `except Exception` swallowed (math-verify's
  graders do) still stops the run before the base evaluation's rewards are written: they would
  hold a sample graded as an error."""
  real = evaluation.evaluation_rewards

  def swallowing(*args, **kwargs):
    rewards = real(*args, **kwargs)
    try:
      os.kill(os.getpid(), signal.SIGTERM)
    except Exception:  # the library's own handler
      pass
    return rewards

  monkeypatch.setattr(evaluation, "evaluation_rewards", swallowing)
  with pytest.raises(errors.RunInterrupted, match="^stopped by SIGTERM before the first round"):
    run(make_config(base_dir), tmp_path)
  assert not (tmp_path / train.EVALS_DIR).exists()
  assert not (tmp_path / "base_eval.json").exists()
  assert train._Signals.active is None


def test_a_stop_signal_during_a_restore_is_not_a_bad_checkpoint():
  """RunInterrupted raised inside a restore (a SIGTERM then) stops the run; it is not turned
  into a CheckpointReadError that asks to delete a good checkpoint."""

  class Stopped:
    directory = "/nowhere/checkpoints"

    def latest_step(self):
      return 3

    def all_steps(self):
      return [3]

    def restore(self, target, step):
      raise errors.RunInterrupted("stopped by SIGTERM before the first round", 15)

  with pytest.raises(errors.RunInterrupted):
    train.restore_phase(None, Stopped(), {})

  class Wrapped(Stopped):  # the signal's exception came back as another one
    def restore(self, target, step):
      raise RuntimeError("restore failed")

  with train._Signals() as stop:
    stop.signum = signal.SIGTERM
    with pytest.raises(errors.RunInterrupted, match="^stopped by SIGTERM before the first"):
      train.restore_phase(None, Wrapped(), {})
  with pytest.raises(errors.CheckpointReadError):  # no signal: a bad checkpoint
    train.restore_phase(None, Wrapped(), {})


# -- one run per workdir, up-front refusals -------------------------------------------------------


def test_workdir_in_use_is_refused_untouched(reference, base_dir, no_retraining):
  workdir = reference["workdir"]
  with workdir_lib.Lock(workdir) as lock:
    lock.record()
    before = snapshot(workdir)
    with pytest.raises(errors.WorkdirInUseError, match=f"pid {os.getpid()} on "):
      run(make_config(base_dir), workdir)
    assert snapshot(workdir) == before


def test_stale_difficulty_table_is_refused(reference, base_dir, tmp_path, monkeypatch,
                                           no_retraining):
  """A run that dies before its first checkpoint leaves difficulty.json; a rerun with other
  example.* settings must not train on a question of that table."""
  def killed(*args, **kwargs):
    raise RuntimeError("killed in round 1")

  monkeypatch.setattr(train, "train_step", killed)
  config = make_config(base_dir, example__selection="extremely_hard", example__samples=1)
  with pytest.raises(RuntimeError, match="killed"):
    run(config, tmp_path)
  assert (tmp_path / "difficulty.json").exists()
  assert not checkpoint_lib.ocp.utils.checkpoint_steps(tmp_path / "checkpoints")
  before = snapshot(tmp_path)
  other = make_config(base_dir, example__selection="extremely_hard", example__samples=1,
                      example__candidates=4)
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError) as info:
    run(other, tmp_path)
  assert "difficulty.json" in str(info.value)
  assert "example.candidates: stored 8, now 4" in str(info.value)
  assert snapshot(tmp_path) == before


BAD_VALUES = [
    (dict(example__selection="medum"), "--config.example.selection='medum': must be one of id, "
     "index, easy, medium, hard, extremely_hard"),
    (dict(train__mini_batches=3), "--config.train.mini_batches=3: must divide the 1 rollouts of "
     "a round (1 question(s) x rollout.num_samples=1)"),
    (dict(train__checkpoint_every=0), "--config.train.checkpoint_every=0: must be an integer >= 1"),
    (dict(train__eval_every=0), "--config.train.eval_every=0: must be an integer >= 1"),
    (dict(rollout__num_samples=0), "--config.rollout.num_samples=0: must be an integer >= 1"),
    (dict(rollout__temperature=-1.0), "--config.rollout.temperature=-1.0: must be a number >= 0"),
    (dict(rollout__top_p=0.0), "--config.rollout.top_p=0.0: must be a number in (0, 1]"),
    (dict(rollout__max_new_tokens=0), "--config.rollout.max_new_tokens=0: must be an integer >= 1"),
    (dict(optimizer__b2=1.0), "--config.optimizer.b2=1.0: must be a number in [0, 1)"),
    (dict(optimizer__learning_rate=-1e-3),
     "--config.optimizer.learning_rate=-0.001: must be a number >= 0"),
    (dict(eval__train_samples=0), "--config.eval.train_samples=0: must be an integer >= 1"),
    (dict(example__selection="id"), "--config.example.example_id='': must name a training "
     "problem (example.selection=id)"),
    (dict(task__name="gsm9k"), "--config.task.name='gsm9k': must be one of arithmetic, gsm8k, "
     "math"),
    (dict(model__checkpoint="/no/such/model"), "--config.model.checkpoint='/no/such/model': no "
     "such directory"),
    (dict(loss__clipped_ratio__eps_low=-0.1), "--config.loss: bad settings for loss transform "
     "'clipped_ratio'"),
]


@pytest.mark.parametrize("override,line", BAD_VALUES, ids=[line.split("=")[0].split(":")[0][9:]
                                                           for _, line in BAD_VALUES])
def test_each_bad_value_is_one_line_before_any_work(base_dir, tmp_path, monkeypatch, override,
                                                    line):
  monkeypatch.setattr(warm_start, "base_policy", lambda *a, **k: pytest.fail("work started"))
  with pytest.raises(errors.ConfigError) as info:
    run(make_config(base_dir, **override), tmp_path / "w")
  (got,) = str(info.value).splitlines()
  assert got.startswith(line), got
  assert not (tmp_path / "w").exists()


def test_bad_values_are_all_named():
  c = common.base_config("runlocal")
  c.update_from_flattened_dict({"train.checkpoint_every": 0, "rollout.num_samples": 0,
                                "example.selection": "medum"})
  with pytest.raises(errors.ConfigError) as info:
    train.validate_config(c)
  assert [line.split("=")[0] for line in str(info.value).splitlines()] == [
      "--config.rollout.num_samples", "--config.train.checkpoint_every",
      "--config.example.selection"]
  train.validate_config(common.base_config())  # the shipped configs pass
  train.validate_config(l0_minimal.get_config("runlocal"))


@pytest.mark.parametrize("empty", ["train", "test"])
def test_empty_data_file_is_one_line_before_anything_is_written(tmp_path, empty):
  good = tmp_path / "good.jsonl"
  good.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
  blank = tmp_path / "empty.jsonl"
  blank.write_text("")
  c = common.base_config("runlocal")
  c.task.update(name="gsm8k", template="gsm8k", train_path=str(good), test_path=str(good))
  c.task[f"{empty}_path"] = str(blank)
  c.model.checkpoint = str(tmp_path)  # exists; never loaded, the data fails first
  with pytest.raises(errors.ConfigError) as info:
    train.run(c, str(tmp_path / "w"))
  assert str(info.value) == (f"{blank}: no {empty} problems in it (task gsm8k); give a file "
                             f"with at least one, --config.task.{empty}_path=PATH")
  assert not (tmp_path / "w").exists()


def test_read_only_workdir_is_one_line_and_leaves_nothing(base_dir, tmp_path, monkeypatch):
  """The first write (the fingerprint) fails; nothing else is attempted. Root ignores file
  modes, so the read-only file system is simulated at the one place every write starts."""
  workdir = tmp_path / "ro"
  workdir.mkdir()
  if os.geteuid() != 0:
    workdir.chmod(0o555)
  else:
    def read_only(*args, dir=None, **kwargs):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(os, "makedirs", lambda path, exist_ok=False: None if os.path.isdir(
        path) else read_only(dir=path))
  try:
    with pytest.raises(OSError) as info:
      run(make_config(base_dir), workdir)
    message = errors.actionable(info.value)
    assert message.startswith(("Read-only file system: ", "Permission denied: ")), message
    assert str(workdir) in message and "\n" not in message
    assert os.listdir(workdir) == []
  finally:
    workdir.chmod(0o755)


# orbax's reads left in flight call back into its closed event loop (main hides those).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_unreadable_checkpoint_is_one_line(reference, base_dir, tmp_path, no_retraining, damage):
  """The newest checkpoint's array files overwritten or deleted: the message names the step and
  the way back (the one before it), and nothing is written."""
  workdir = tmp_path / "copy"
  shutil.copytree(reference["workdir"], workdir)
  data = [p for p in (workdir / "checkpoints" / str(ROUNDS) / "state").rglob("*")
          if p.is_file() and "/d/" in str(p)]
  assert data
  for path in data:
    if damage == "garbage":
      path.write_bytes(b"\0garbage" * 4)
    else:
      path.unlink()
  before = snapshot(workdir)
  with pytest.raises(errors.CheckpointReadError) as info:
    run(make_config(base_dir), workdir)
  msg = str(info.value)
  assert msg.startswith(f"checkpoint round {ROUNDS} in {workdir / 'checkpoints'} cannot be read ")
  assert msg.endswith(f"delete {workdir / 'checkpoints'}/{ROUNDS} to resume from the one before "
                      "it ([2]), or start over in a fresh --workdir")
  assert "\n" not in msg
  assert snapshot(workdir) == before
