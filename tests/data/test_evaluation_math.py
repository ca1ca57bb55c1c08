"""Pass@k against brute-force subset enumeration, Pass@1, greedy accuracy, breakdowns, saving."""

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from rft_jax import evaluation_math as ev
from rft_jax.data.base import Example


def brute_force_pass_at_k(correct: list[int], k: int) -> Fraction:
  """Exact fraction of the k-subsets of the samples that hold at least one correct sample."""
  subsets = list(itertools.combinations(range(len(correct)), k))
  hits = sum(any(correct[i] for i in s) for s in subsets)
  return Fraction(hits, len(subsets))


def test_pass_at_k_equals_subset_enumeration():
  rng = np.random.default_rng(0)
  checked = 0
  for n in range(1, 9):
    for c in range(n + 1):
      row = [1] * c + [0] * (n - c)
      rng.shuffle(row)
      for k in range(1, n + 1):
        got = ev.pass_at_k_per_question(np.array([row]), k)[0]
        assert got == pytest.approx(float(brute_force_pass_at_k(row, k)), abs=1e-12)
        checked += 1
  assert checked == sum((n + 1) * n for n in range(1, 9))


def test_pass_at_k_stable_for_large_n():
  # C(200, 100) ~ 9e58: the product form stays exact to float precision; compare with exact ints.
  n, c, k = 200, 3, 100
  exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
  assert ev.pass_at_k_from_counts(n, c, k)[0] == pytest.approx(float(exact), rel=1e-12)
  assert ev.pass_at_k_from_counts(1000, 0, 500)[0] == 0.0
  assert ev.pass_at_k_from_counts(1000, 501, 500)[0] == 1.0  # n - c < k


def test_pass_at_1_and_mean_over_questions():
  r = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
  assert ev.pass_rate(r).tolist() == [0.5, 0.25, 0.0]
  assert ev.pass_at_1(r) == pytest.approx(0.25)
  assert ev.pass_at_k(r, 1) == pytest.approx(0.25)  # pass@1 from the estimator is c/n
  # pass@2: q0 1 - C(2,2)/C(4,2) = 5/6; q1 1 - C(3,2)/C(4,2) = 1/2; q2 0.
  assert ev.pass_at_k(r, 2) == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)
  m = ev.metrics(r, ks=(1, 2, 8))
  assert m["pass@1"] == pytest.approx(0.25) and "pass@2" in m and "pass@8" not in m
  assert (m["num_questions"], m["num_samples"]) == (3, 4)


def test_input_checks():
  with pytest.raises(ValueError, match="needs at least k=5 samples"):
    ev.pass_at_k(np.ones((2, 4)), 5)
  with pytest.raises(ValueError, match="0/1 correctness"):
    ev.pass_at_1(np.array([[0.5, 1.0]]))
  with pytest.raises(ValueError, match="2-D"):
    ev.pass_at_1(np.ones(3))
  with pytest.raises(ValueError, match="k must be >= 1"):
    ev.pass_at_k(np.ones((1, 2)), 0)


def test_greedy_accuracy():
  assert ev.greedy_accuracy([1, 0, 1, 1]) == 0.75
  assert ev.greedy_accuracy(np.array([[True], [False]])) == 0.5


def test_breakdown_and_save(tmp_path):
  exs = [Example("a", "q", "1", meta={"subject": "Algebra", "level": 1}),
         Example("b", "q", "1", meta={"subject": "Algebra", "level": 3}),
         Example("c", "q", "1", meta={"subject": "Geometry", "level": None})]
  r = np.array([[1, 1], [0, 1], [0, 0]])
  b = ev.breakdown(r, exs)
  assert b["subject"]["Algebra"]["pass@1"] == pytest.approx(0.75)
  assert b["subject"]["Geometry"]["pass@1"] == 0.0
  assert sorted(b["level"]) == ["1", "3", "unknown"]
  assert b["level"]["3"]["num_questions"] == 1
  summary = ev.summarize(r, exs, ks=(1, 2), greedy=[1, 0, 0])
  assert summary["overall"]["pass@1"] == pytest.approx(0.75 * 2 / 3)
  assert summary["overall"]["pass@2"] == pytest.approx((1 + 1 + 0) / 3)
  assert summary["overall"]["greedy_accuracy"] == pytest.approx(1 / 3)
  assert summary["per_question"] == {"a": 1.0, "b": 0.5, "c": 0.0}
  path = tmp_path / "out" / "results.json"
  ev.save_results(path, dict(summary, nan=float("nan"), arr=np.arange(2)))
  loaded = json.loads(path.read_text())
  assert loaded["breakdown"]["subject"]["Algebra"]["pass@1"] == pytest.approx(0.75)
  assert loaded["nan"] is None and loaded["arr"] == [0, 1]
  assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary left over
