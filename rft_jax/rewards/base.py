"""Grading outcomes shared by every grader."""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
  """Why a response got its reward; counted separately in metrics."""

  CORRECT = "correct"
  WRONG = "wrong"
  NO_ANSWER = "no_answer"  # no extractable final answer (no '#### N', no \boxed{})
  TIMEOUT = "timeout"      # the equivalence check ran past its time limit
  ERROR = "error"          # the grader raised; never a crash of the training loop

  @property
  def reward(self) -> float:
    return 1.0 if self is Outcome.CORRECT else 0.0
