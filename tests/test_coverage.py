"""experiments/smollm2/coverage.py: the seed-spread estimate by hand, the simulation's truth."""

import importlib.util
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("coverage",
                                              ROOT / "experiments" / "smollm2" / "coverage.py")
coverage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(coverage)


def test_tau_estimate_by_hand():
  # Seeds of 10 questions with 2, 5, 8 right: means 0.2, 0.5, 0.8 (variance 0.09); sampling
  # variances var(ddof=1) / 10 = (16/90, 25/90, 16/90) / 10, mean 57/2700; between
  # 0.09 - 57/2700; p = 0.5: tau = sqrt(between) / 0.25.
  finals = [np.array([1] * k + [0] * (10 - k), float) for k in (2, 5, 8)]
  p, tau = coverage.tau_estimate(finals)
  assert p == pytest.approx(0.5) and tau == pytest.approx(np.sqrt(0.09 - 57 / 2700) / 0.25)
  # seeds as alike as their sampling noise allows: no spread left (not negative)
  assert coverage.tau_estimate([finals[1], finals[1]])[1] == 0.0
  # every seed at 0: no slope to convert by, no estimate
  zeros = np.zeros(10)
  assert coverage.tau_estimate([zeros, zeros])[0] == 0.0
  assert np.isnan(coverage.tau_estimate([zeros, zeros])[1])


def test_without_a_seed_effect_or_a_difference_both_intervals_cover():
  """tau = 0, delta = 0: both layers sample the same distribution with the same uniforms, so
  each seed's difference is exactly 0, the truth is 0 and every interval holds it. Every
  resample agrees, so both intervals are the pooled samples' Newcombe interval (score_interval),
  not a zero width."""
  c = coverage.coverage(0.0, delta=0.0, reps=3, boots=50, questions=40)
  assert c["bootstrap"][0] == 1.0 and c["t"][0] == 1.0
  assert c["bootstrap"][1] == pytest.approx(c["t"][1]) and 0.1 < c["t"][1] < 0.5
