"""Evaluation through the sampler on GSM8K / MATH test items, and the Wilson interval."""

import json
import pathlib
import re

import jax
import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rft_jax import errors, evaluation, evaluation_math
from rft_jax.data import gsm8k, math as math_data
from rft_jax.models import ModelConfig, Policy, init_params


def char_tokenizer(texts):
  """One token per character of `texts` (+ specials): enough to drive a random model."""
  chars = sorted({c for t in texts for c in t})
  vocab = {s: i for i, s in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *chars])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  tok.decoder = decoders.Fuse()
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                 eos_token="<eos>", unk_token="<unk>")


def tiny_policy(task, n):
  texts = [task.prompt_text(e) for e in task.test[:n]] + [e.solution for e in task.test[:n]]
  tok = char_tokenizer(texts)
  config = ModelConfig(vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                       head_dim=16, d_ff=64, max_position_embeddings=4096)
  return Policy(config=config, params=init_params(config, jax.random.PRNGKey(0)), tokenizer=tok,
                eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)


@pytest.fixture(scope="module")
def tasks():
  data = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
  if not data.is_dir():
    pytest.skip(f"shared data not found at {data} (it sits beside the repository in CI)")
  out = {"gsm8k": gsm8k.gsm8k_task(None, data / "gsm8k" / "test.jsonl"),
         "math": math_data.math_task(None, data / "math" / "test.jsonl")}
  for task in out.values():  # the 8 shortest questions keep the char-level sequences short
    task.test = sorted(task.test, key=lambda e: len(e.question))[:8]
  return out


@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_tiny_model_evaluates_end_to_end(tasks, name):
  task = tasks[name]
  items = list(task.test[:8])
  policy = tiny_policy(task, 8)
  out = evaluation.evaluate(policy, task, items[:2], items, jax.random.PRNGKey(0),
                            train_samples=4, max_new_tokens=4, batch_size=8,
                            prompt_bucket=64, pass_k=(1, 2, 4))
  for key in ("train_pass1", "train_pass1_low", "train_pass1_high", "test_pass1", "test_greedy",
              "train_pass2", "train_pass4"):
    assert 0.0 <= out[key] <= 1.0, key
  assert out["train_pass1_low"] <= out["train_pass1"] <= out["train_pass1_high"]
  # A random 8-token answer is never right; what matters is that the whole path ran.
  assert out["test_pass1"] == 0.0


@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_reference_solutions_score_one_through_evaluate(tasks, name, monkeypatch):
  """With the sampler replaced by the reference solutions, every metric is exactly 1."""
  task = tasks[name]
  items = list(task.test[:8])
  policy = tiny_policy(task, 8)
  by_prompt = {tuple(policy.encode_prompt(task.prompt_text(e))): e.solution for e in items}

  def fake_completions(policy_, prompts, rng, *, num_samples=1, **kwargs):
    return [(i * num_samples + s, by_prompt[tuple(p)]) for i, p in enumerate(prompts)
            for s in range(num_samples)]

  monkeypatch.setattr(evaluation, "local_completions", fake_completions)
  out = evaluation.evaluate(policy, task, items[:3], items, jax.random.PRNGKey(0),
                            train_samples=2, max_new_tokens=8)
  assert out["train_pass1"] == out["test_pass1"] == out["test_greedy"] == 1.0
  if name == "math":
    rewards = evaluation.sample_rewards(policy, task, items, jax.random.PRNGKey(0),
                                        num_samples=1, max_new_tokens=8)
    table = evaluation_math.breakdown(rewards, items, ("subject", "level"))
    assert len(table["subject"]) > 1
    assert all(row["pass@1"] == 1.0 for rows in table.values() for row in rows.values())


def test_test_samples_without_a_final_answer_are_flagged(tasks, monkeypatch):
  """'test_no_answer' / 'test_greedy_no_answer': 1 where the grader found no final answer.
  Completions by hand: the reference solution (correct), '#### 123456789' (a wrong answer) and
  'no idea' (no answer), cycling over 6 GSM8K questions."""
  task = tasks["gsm8k"]
  items = list(task.test[:6])
  policy = tiny_policy(task, 8)
  index = {tuple(policy.encode_prompt(task.prompt_text(e))): i for i, e in enumerate(items)}
  texts = lambda i: (items[i].solution, "#### 123456789", "no idea")[i % 3]

  def fake_completions(policy_, prompts, rng, *, num_samples=1, **kwargs):
    return [(i * num_samples + s, texts(index[tuple(p)])) for i, p in enumerate(prompts)
            for s in range(num_samples)]

  monkeypatch.setattr(evaluation, "local_completions", fake_completions)
  out = evaluation.evaluation_rewards(policy, task, [], items, jax.random.PRNGKey(0),
                                      train_samples=1, max_new_tokens=8)
  assert out["test"].tolist() == out["test_greedy"].tolist() == [1, 0, 0, 1, 0, 0]
  assert (out["test_no_answer"].tolist() == out["test_greedy_no_answer"].tolist()
          == [0, 0, 1, 0, 0, 1])
  assert set(out) == set(evaluation.TEST_KEYS)


def test_wilson_interval_against_known_values():
  # p = 0.5, n = 100, z = 1.96: centre 0.5, half-width 1.96*sqrt(0.25/100 + 1.96^2/40000)/(1.038416)
  low, high = evaluation.wilson_interval(50, 100)
  half = 1.96 * np.sqrt(0.25 / 100 + 1.96 ** 2 / 40000) / (1 + 1.96 ** 2 / 100)
  np.testing.assert_allclose([low, high], [0.5 - half, 0.5 + half], rtol=1e-12)
  np.testing.assert_allclose([low, high], [0.4038, 0.5962], atol=1e-4)  # textbook value
  low, high = evaluation.wilson_interval(0, 10)
  assert low == 0.0 and 0.27 < high < 0.28  # 3.84 / 13.84 = 0.2775
  assert evaluation.wilson_interval(0, 0) == (0.0, 1.0)


def test_summarize_by_hand(tmp_path):
  rewards = {"train": np.array([[1.0, 0.0], [1.0, 1.0]]), "test": np.array([1.0, 0.0, 0.0, 1.0]),
             "test_greedy": np.array([0.0, 0.0, 0.0, 1.0])}
  out = evaluation.summarize(rewards, pass_k=(2, 4))
  # 3 of 4 training samples; Pass@2 = 1 for both questions (each has a correct one among 2);
  # Pass@4 is skipped (only 2 samples per question).
  assert out["train_pass1"] == 0.75 and out["train_pass2"] == 1.0 and "train_pass4" not in out
  assert (out["train_pass1_low"], out["train_pass1_high"]) == evaluation.wilson_interval(3, 4)
  assert out["test_pass1"] == 0.5 and out["test_greedy"] == 0.25
  assert evaluation.summarize({"test": np.array([0.0, 1.0])}) == {"test_pass1": 0.5}
  path = evaluation.save_rewards(str(tmp_path / "evals"), 25, rewards, ["q7", "q9"],
                                 ["a", "b", "c", "d"])
  assert path.endswith("round_000025.json")
  back = evaluation.load_rewards(path)
  assert back["round"] == 25 and back["train_ids"] == ["q7", "q9"] and back["test_ids"][3] == "d"
  for key, value in rewards.items():
    np.testing.assert_array_equal(back[key], value)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(test=[1.0, 0.0]), "'test' (shape [2]) is not one finite row per "
     "question id (4 ids)"),
    (lambda d: d.update(train=[[1.0, 0.0], [1.0]]), "'train' (ragged)"),
    (lambda d: d.update(test_greedy=[0.0, None, 0.0, 1.0]), "'test_greedy' (shape [4]) is not "
     "one finite row"),
])
def test_load_rewards_refuses_rows_that_do_not_match_their_ids(tmp_path, edit, message):
  """A damaged or hand-edited evaluation file: refused naming the file and the key, not paired
  against other runs' questions out of line (or a bare numpy error)."""
  path = evaluation.save_rewards(str(tmp_path), 0, {
      "train": np.array([[1.0, 0.0], [1.0, 1.0]]), "test": np.array([1.0, 0.0, 0.0, 1.0]),
      "test_greedy": np.zeros(4)}, ["q7", "q9"], ["a", "b", "c", "d"])
  with open(path) as f:
    d = json.load(f)
  edit(d)
  with open(path, "w") as f:
    json.dump(d, f)
  with pytest.raises(errors.CheckpointReadError, match=re.escape(f"{path}: {message}")):
    evaluation.load_rewards(path)
  with open(path, "w") as f:
    f.write('{"round": 0, "test"')
  with pytest.raises(errors.CheckpointReadError, match=re.escape(f"{path}: not an evaluation "
                                                                 "file")):
    evaluation.load_rewards(path)


def test_evaluate_is_summarize_of_the_per_sample_rewards(tasks):
  task = tasks["gsm8k"]
  items = list(task.test[:8])
  policy = tiny_policy(task, 8)
  kwargs = dict(train_samples=2, max_new_tokens=4, batch_size=8, prompt_bucket=64)
  rewards = evaluation.evaluation_rewards(policy, task, items[:2], items, jax.random.PRNGKey(3),
                                          **kwargs)
  assert rewards["train"].shape == (2, 2) and rewards["test"].shape == rewards[
      "test_greedy"].shape == (8,)
  assert evaluation.evaluate(policy, task, items[:2], items, jax.random.PRNGKey(3),
                             **kwargs) == evaluation.summarize(rewards)
