"""The exact optimal-arm probability (rft_jax.bandit) against independent computations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rft_jax import bandit, logprobs, sampling
from rft_jax.data.base import Example, Task
from rft_jax.models import ModelConfig, Policy, init_params
from tests.test_evaluation import char_tokenizer

QUESTION = Example(id="q/0", question="a+b", answer="7", solution="7")


@dataclasses.dataclass
class DigitTask(Task):
  """Correct iff the completion contains a '7': many arms, a probability far from 0 and 1."""

  def grade_batch(self, responses, examples):
    rewards = np.asarray([float("7" in r) for r in responses], np.float32)
    return rewards, {}


def setup(seed=0):
  task = DigitTask(name="digits", grader="arithmetic", train=[QUESTION], test=[],
                   template="{question}=")
  tok = char_tokenizer(["a+b=", "0123456789 x"])
  config = ModelConfig(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                       head_dim=16, d_ff=64)
  params = init_params(config, jax.random.PRNGKey(seed))
  # Embeddings of std 0.3: a spread-out but not uniform next-token distribution.
  params["embedding"] = params["embedding"] * 0.3
  policy = Policy(config=config, params=params, tokenizer=tok, eos_ids=(tok.eos_token_id,),
                  pad_id=tok.pad_token_id)
  return task, policy


@pytest.mark.parametrize("n", [1, 2])
def test_arms_cover_the_whole_sample_space(n):
  task, policy = setup()
  arms = bandit.ArmSet.build(policy, task, QUESTION, max_new_tokens=n)
  v = policy.decoder.config.vocab_size
  assert arms.num_arms == (v if n == 1 else 1 + (v - 1) * v)  # 1 EOS arm, then every pair
  for tau in (1.0, 0.5):
    out = arms.probability(policy.decoder, policy.params, tau)
    assert out["total"] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < out["p_optimal"] < 1.0


def test_one_token_arms_are_the_softmax_of_the_prompt_logits():
  task, policy = setup()
  arms = bandit.ArmSet.build(policy, task, QUESTION, max_new_tokens=1)
  prompt = policy.encode_prompt(task.prompt_text(QUESTION))
  logits = np.asarray(policy.logits(np.asarray([prompt]))[0, -1], np.float64)
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  seven = policy.tokenizer.convert_tokens_to_ids("7")
  got = arms.probability(policy.decoder, policy.params)["p_optimal"]
  assert arms.num_optimal == 1
  assert got == pytest.approx(probs[seven], rel=1e-5)


def test_two_token_arm_probability_is_the_teacher_forced_sequence_probability():
  task, policy = setup()
  arms = bandit.ArmSet.build(policy, task, QUESTION, max_new_tokens=2)
  prompt = jnp.asarray([policy.encode_prompt(task.prompt_text(QUESTION))])
  seven = policy.tokenizer.convert_tokens_to_ids("7")
  eos = policy.tokenizer.eos_token_id
  # The optimal arms: '7' then anything, and anything (not EOS) then '7'; their probability
  # summed from teacher-forced log-probs of each whole completion, independently of bandit.py.
  v = policy.decoder.config.vocab_size
  pairs = {(a, b) for a in range(v) if a != eos for b in range(v) if seven in (a, b)}
  completions = jnp.asarray(sorted(pairs), jnp.int32)
  logp = logprobs.completion_logprobs(
      policy.decoder, policy.params, jnp.repeat(prompt, len(pairs), axis=0),
      jnp.ones((len(pairs), prompt.shape[1]), bool), completions,
      jnp.ones(completions.shape, jnp.float32))
  want = float(np.exp(np.asarray(logp, np.float64).sum(-1)).sum())
  assert arms.num_optimal == len(pairs)
  got = arms.probability(policy.decoder, policy.params)["p_optimal"]
  assert got == pytest.approx(want, rel=1e-5)


def test_sampled_success_rate_agrees_with_the_exact_probability():
  task, policy = setup(seed=1)
  arms = bandit.ArmSet.build(policy, task, QUESTION, max_new_tokens=2)
  exact = arms.probability(policy.decoder, policy.params)["p_optimal"]
  n = 4000
  prompt = np.asarray([policy.encode_prompt(task.prompt_text(QUESTION))], np.int32)
  out = sampling.sample(policy.decoder, policy.params, jnp.asarray(prompt),
                        jnp.ones(prompt.shape, bool), jax.random.PRNGKey(3), max_new_tokens=2,
                        num_samples=n, temperature=np.float32(1.0), top_k=np.int32(0),
                        top_p=np.float32(1.0), eos_ids=np.asarray(policy.eos_ids, np.int32),
                        pad_id=policy.pad_id)
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  texts = [policy.decode_completion(t, m) for t, m in zip(tokens, mask)]
  rate = float(task.grade_batch(texts, [QUESTION] * n)[0].mean())
  sigma = np.sqrt(exact * (1 - exact) / n)
  assert 0.05 < exact < 0.95
  assert abs(rate - exact) < 4 * sigma, (rate, exact, sigma)


def test_too_many_arms_is_a_clear_error():
  task, policy = setup()
  with pytest.raises(ValueError, match="exceed max_arms"):
    bandit.ArmSet.build(policy, task, QUESTION, max_new_tokens=3, max_arms=1_000)
  arms = bandit.ArmSet.build(policy, task, QUESTION, max_new_tokens=1)
  with pytest.raises(ValueError, match="greedy"):
    arms.probability(policy.decoder, policy.params, 0.0)


def test_training_logs_bandit_diagnostics_every_round(tmp_path):
  from configs import bandit_exact
  from rft_jax import metrics, train

  config = bandit_exact.get_config("runlocal")
  config.eval.update(test_size=8, batch_size=8)
  config.lock()
  train.run(config, str(tmp_path), log=lambda *_: None)
  rows = metrics.read_metrics(str(tmp_path))
  by_step = {r["step"]: r for r in rows}
  assert sorted(by_step) == list(range(config.train.rounds + 1))
  for step, row in by_step.items():
    assert row["arm_mass"] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= row["p_optimal_arms"] <= 1.0
    if step:  # rounds: the sampled estimate and its Wilson intervals
      assert row["p_correct_low"] <= row["p_correct"] <= row["p_correct_high"]
      assert row["p_correct_window_low"] <= row["p_correct_window"] <= row["p_correct_window_high"]
      assert row["p_correct"] == row["reward"]  # one {0, 1}-graded rollout per round in L0


def test_correct_rate_round_and_window_hand_computed():
  # Wilson at z = 1.96: 0 of 1 -> [0, z^2 / (1 + z^2)] = [0, 0.793457]; 1 of 1 -> [0.206543, 1].
  rate = bandit.CorrectRate(window=2)
  first = rate.update([1.0])
  assert first["p_correct"] == 1.0 and first["p_correct_low"] == pytest.approx(0.206543, abs=1e-6)
  second = rate.update([0.0])
  assert second["p_correct_high"] == pytest.approx(0.793457, abs=1e-6)
  assert second["p_correct_window"] == 0.5
  third = rate.update([0.0, 0.0, 1.0])  # the window of 2 drops round 1: 1 of 4
  assert third["p_correct"] == pytest.approx(1 / 3)
  assert third["p_correct_window"] == 0.25
  assert (third["rollouts"], third["correct_rollouts"]) == (3, 1)
  # Resuming after round 2 from the logged rows gives the same window as never stopping.
  rows = [{"step": 1, **first}, {"step": 2, **second}, {"step": 0, "train_pass1": 0.5}]
  resumed = bandit.CorrectRate(window=2)
  resumed.resume(rows, 2)
  assert resumed.update([0.0, 0.0, 1.0]) == third
