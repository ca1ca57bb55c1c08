"""Outcome graders: `grade(task, response, gold) -> float` in {0, 1}, and a batched form.

Each grader module exposes `grade(response, gold) -> Outcome`. Graders never raise on a model's
response: anything unexpected is Outcome.ERROR (reward 0) so training goes on.
"""

from __future__ import annotations

import collections
from typing import Callable, Sequence

import numpy as np

from rft_jax.rewards import arithmetic
from rft_jax.rewards.base import Outcome

GRADERS: dict[str, Callable[[str, str], Outcome]] = {
    "arithmetic": arithmetic.grade,
}


def _grader(task: str) -> Callable[[str, str], Outcome]:
  try:
    return GRADERS[task]
  except KeyError:
    raise ValueError(f"no grader for task {task!r}; known: {sorted(GRADERS)}") from None


def grade_outcome(task: str, response: str, gold: str) -> Outcome:
  fn = _grader(task)
  try:
    return fn(response, gold)
  except Exception:  # a malformed response must never stop training
    return Outcome.ERROR


def grade(task: str, response: str, gold: str) -> float:
  return grade_outcome(task, response, gold).reward


def grade_batch(
    task: str, responses: Sequence[str], golds: Sequence[str]
) -> tuple[np.ndarray, collections.Counter]:
  """Rewards [N] float32 and a Counter of outcome names."""
  if len(responses) != len(golds):
    raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
  outcomes = [grade_outcome(task, r, g) for r, g in zip(responses, golds)]
  rewards = np.array([o.reward for o in outcomes], np.float32)
  return rewards, collections.Counter(o.value for o in outcomes)
