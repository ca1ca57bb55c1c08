"""The training loop in process (train.run on the runlocal config): resume, refusals, warm start.

Every run shares one warm_start.dir, so the base policy is trained once (by the first run, the
uninterrupted reference). The runlocal base is nearly untrained and earns reward 0 everywhere;
the loss chain here shifts the reward by +1 (affine_reward) so that every round carries a real
gradient and the params move, which is what makes "resumed == uninterrupted" mean something.
"""

import hashlib
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import common, l0_minimal
from rft_jax import checkpoint as checkpoint_lib, losses, metrics, train, warm_start
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
  """The saved TrainState of checkpoint `step` as a nested dict of arrays."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore(os.path.join(os.path.abspath(workdir), "checkpoints", str(step),
                                             "state"))
  finally:
    checkpointer.close()


def assert_same_rows(got: list[dict], want: list[dict]):
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    assert g.keys() == w.keys(), (g["step"], g.keys() ^ w.keys())
    for k, v in w.items():
      if isinstance(v, float):
        assert math.isclose(g[k], v, rel_tol=1e-6, abs_tol=1e-6), (w["step"], k, g[k], v)
      else:
        assert g[k] == v, (w["step"], k, g[k], v)


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
  with pytest.raises(train.NonFiniteLossError, match=r"at round 3.*checkpoint \(round 2\)"):
    run(config, tmp_path)
  ckpt_dir = os.path.join(tmp_path, "checkpoints")
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
