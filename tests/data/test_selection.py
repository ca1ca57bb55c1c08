"""Difficulty buckets, the table, and deterministic choice of the training example."""

import numpy as np
import pytest

from rft_jax.data import selection
from rft_jax.data.base import Example


def make_examples(n):
  return [Example(f"q{i}", f"question {i}", str(i), meta={"subject": "Algebra", "level": 1 + i % 5})
          for i in range(n)]


@pytest.mark.parametrize("p,bucket", [
    (1.0, "easy"), (0.7, "easy"), (0.69, "medium"), (0.3, "medium"), (0.29, "hard"),
    (1 / 16, "hard"), (0.0, "extremely_hard"),
])
def test_bucket_thresholds(p, bucket):
  assert selection.bucket_of(p) == bucket


def test_bucket_rejects_out_of_range():
  with pytest.raises(ValueError, match="pass rate must be in"):
    selection.bucket_of(1.5)


def fake_sampler(correct_counts):
  """sample_rewards returning exactly c_i correct samples (first c_i columns) per example."""
  calls = []

  def sample_rewards(examples, n):
    calls.append(len(examples))
    out = np.zeros((len(examples), n))
    for row, ex in enumerate(examples):
      out[row, :correct_counts[ex.id]] = 1
    return out

  return sample_rewards, calls


def test_estimate_difficulty_table_and_save(tmp_path):
  exs = make_examples(6)
  counts = {"q0": 10, "q1": 7, "q2": 5, "q3": 3, "q4": 1, "q5": 0}
  sampler, calls = fake_sampler(counts)
  table = selection.estimate_difficulty(exs, sampler, n=10, chunk_size=4)
  assert calls == [4, 2]
  assert [row["bucket"] for row in table["rows"]] == [
      "easy", "easy", "medium", "medium", "hard", "extremely_hard"]
  assert [row["pass_rate"] for row in table["rows"]] == [1.0, 0.7, 0.5, 0.3, 0.1, 0.0]
  assert table["counts"] == {"easy": 2, "medium": 2, "hard": 1, "extremely_hard": 1}
  assert table["thresholds"] == {"easy_min": 0.7, "medium_min": 0.3}
  path = tmp_path / "difficulty.json"
  selection.save_table(path, table)
  assert selection.load_table(path) == table


def test_a_table_of_other_candidates_or_samples_is_refused():
  """A shared table is reused only for the candidates and sample count it scored."""
  exs = make_examples(6)
  table = selection.difficulty_table(exs, np.zeros((6, 4)))
  selection.check_table(table, list(reversed(exs)), 4, "t.json")  # order does not matter
  with pytest.raises(ValueError, match=r"t.json: the difficulty table scores 6 questions, not "
                     r"this run's 5 candidates \(e.g. q5 is not among them\)"):
    selection.check_table(table, exs[:5], 4, "t.json")
  other = make_examples(7)[1:]  # q1..q6: one unknown id, one missing
  with pytest.raises(ValueError, match="e.g. q0 is not among them"):
    selection.check_table(table, other, 4, "t.json")
  with pytest.raises(ValueError, match="t.json: the difficulty table has 4 samples per "
                     "question, not example.samples=8"):
    selection.check_table(table, exs, 8, "t.json")


def test_sampler_shape_is_checked():
  with pytest.raises(ValueError, match=r"returned shape \(2, 3\), expected \(2, 4\)"):
    selection.estimate_difficulty(make_examples(2), lambda exs, n: np.zeros((2, 3)), n=4)


def test_select_is_deterministic_and_seeded():
  exs = make_examples(40)
  rewards = np.zeros((40, 4))
  rewards[::2, :3] = 1  # even ids: pass rate 0.75 (easy); odd: 0 (extremely hard)
  table = selection.difficulty_table(exs, rewards)
  picks = {seed: selection.select(table, bucket="easy", seed=seed)["id"] for seed in range(10)}
  assert all(int(i[1:]) % 2 == 0 for i in picks.values())
  assert len(set(picks.values())) > 1  # the seed matters
  # Same seed, shuffled row order: same choice.
  shuffled = dict(table, rows=list(reversed(table["rows"])))
  assert selection.select(shuffled, bucket="easy", seed=3)["id"] == picks[3]
  ex = selection.select_example(exs, table, bucket="extremely_hard", seed=1)
  assert int(ex.id[1:]) % 2 == 1 and ex in exs


def test_select_by_id_and_errors():
  exs = make_examples(3)
  table = selection.difficulty_table(exs, np.ones((3, 2)))
  assert selection.select(table, example_id="q2")["pass_rate"] == 1.0
  assert selection.select_example(exs, example_id="q1") is exs[1]  # no table needed
  with pytest.raises(ValueError, match="no example in bucket 'hard'"):
    selection.select(table, bucket="hard")
  with pytest.raises(KeyError, match="'q9'"):
    selection.select(table, example_id="q9")
  with pytest.raises(ValueError, match="exactly one of"):
    selection.select(table, bucket="easy", example_id="q1")
  with pytest.raises(ValueError, match="unknown bucket"):
    selection.select(table, bucket="trivial")


def test_buckets_from_pass_counts_at_the_boundaries():
  """The table divides integer counts (7 / 10 is the double 0.7, easy), not a float32 mean
  (0.69999999, which would be medium)."""
  counts = {"q0": 7, "q1": 3, "q2": 1, "q3": 0, "q4": 6}
  rewards = np.zeros((5, 10), np.float32)
  for row, c in enumerate(counts.values()):
    rewards[row, :c] = 1
  table = selection.difficulty_table(make_examples(5), rewards)
  assert [r["bucket"] for r in table["rows"]] == ["easy", "medium", "hard", "extremely_hard",
                                                 "medium"]
  assert table["counts"] == {"easy": 1, "medium": 2, "hard": 1, "extremely_hard": 1}
