"""Outcome graders: `grade(task, response, gold) -> float` in {0, 1}, and a batched form.

Each grader module exposes `grade(response, gold) -> Outcome`. Graders never raise on a model's
response: anything unexpected is Outcome.ERROR (reward 0) so training goes on.

Graders: 'arithmetic' (the embedded task), 'gsm8k' ('#### N' or \\boxed{N}, exact number),
'final_answer' (gsm8k's, and 'the answer is N' as a third marker; 'final_answer_legacy' its
rules before 2026-12-07),
'math' (\\boxed{} by normalized string, guards, then math-verify in a process pool with a hard
timeout). A grader with a batched form (BATCH_GRADERS) grades a whole batch at once, so the
math-verify work of a batch runs in parallel across the pool. docs/tasks.md has the rules.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Sequence

import numpy as np

from rft_jax import errors
from rft_jax.rewards import arithmetic, gsm8k, math
from rft_jax.rewards.base import Outcome

GRADERS: dict[str, Callable[[str, str], Outcome]] = {
    "arithmetic": arithmetic.grade,
    "gsm8k": gsm8k.grade,
    # gsm8k's rules plus 'the (final) answer is N' as a marker (small models; configs/smollm2.py).
    "final_answer": functools.partial(gsm8k.grade, phrase=True),
    # final_answer before 2026-12-07 (revision 1), which graded issue 13's SmolLM2 layers: the
    # last '####' counts whatever follows it, so a quoted '"####"' or a '#### Heading' after the
    # answer reads as no answer, and '\ ', '~', '\textrm{}' are not cleaned. Kept so the
    # published layers can be run again as they were (experiments/smollm2/README.md).
    "final_answer_legacy": functools.partial(gsm8k.grade, phrase=True, strict=False),
    "math": math.grade,
}

# A grader's revision goes up when its rules change what it returns for some response, so that
# base evaluations and difficulty tables graded by the old rules are not reused under its name
# (train.base_test_key, pipeline.difficulty_path). Graders not listed are at revision 1.
REVISIONS: dict[str, int] = {
    "final_answer": 2,  # 2026-12-07: gsm8k's strict '####' rule and its newer cleaning
}


def revision(grader: str) -> int:
  """The revision of the rules of grader `grader` (REVISIONS; 1 when unlisted)."""
  return REVISIONS.get(grader, 1)


# Graders with a batched form `(responses, golds) -> list[Outcome]` that never raises.
BATCH_GRADERS: dict[str, Callable[[Sequence[str], Sequence[str]], list[Outcome]]] = {
    "math": math.grade_many,
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
  except errors.RunInterrupted:  # a SIGTERM before the rounds (train._Signals), not a bad answer
    raise
  except Exception:
    return Outcome.ERROR


def grade(task: str, response: str, gold: str) -> float:
  return grade_outcome(task, response, gold).reward


def outcome_counts(outcomes: Sequence[Outcome]) -> collections.Counter:
  """Counter of outcome names with every outcome present (zeros included), for metrics."""
  counts = collections.Counter({o.value: 0 for o in Outcome})
  counts.update(o.value for o in outcomes)
  return counts


def grade_outcomes(task: str, responses: Sequence[str], golds: Sequence[str]) -> list[Outcome]:
  """The Outcome of each (response, gold) pair; batched graders run the whole batch at once."""
  if len(responses) != len(golds):
    raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
  batch_fn = BATCH_GRADERS.get(task)
  if batch_fn is None:
    return [grade_outcome(task, r, g) for r, g in zip(responses, golds)]
  _grader(task)
  return batch_fn(responses, golds)


def grade_batch(
    task: str, responses: Sequence[str], golds: Sequence[str]
) -> tuple[np.ndarray, collections.Counter]:
  """Rewards [N] float32 and a Counter of outcome names (all five present, zeros included)."""
  outcomes = grade_outcomes(task, responses, golds)
  rewards = np.array([o.reward for o in outcomes], np.float32)
  return rewards, outcome_counts(outcomes)
