"""The task interface: examples, prompt templates and the grader that scores responses."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rft_jax import rewards


@dataclasses.dataclass(frozen=True)
class Example:
  """One question.

  id:       stable identifier (e.g. 'train/algebra/152.json' or 'gsm8k/train/17').
  question: the problem text, without any instruction.
  answer:   the gold final answer, in the form the task's grader takes.
  solution: a reference worked solution ending in the task's answer format ('' if none).
  meta:     anything else (subject, level, ...).
  """

  id: str
  question: str
  answer: str
  solution: str = ""
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Task:
  """A grader name, a training pool, a test set and the prompt template.

  `grader` names an entry of rft_jax.rewards.GRADERS. `template` is formatted with
  `question=`; whether it is then wrapped in a chat template is the tokenizer's business
  (rft_jax.data.prompts).
  """

  name: str
  grader: str
  train: Sequence[Example]
  test: Sequence[Example]
  template: str = "{question}"

  def prompt_text(self, example: Example) -> str:
    return self.template.format(question=example.question)

  def grade(self, response: str, example: Example) -> float:
    return rewards.grade(self.grader, response, example.answer)

  def grade_batch(self, responses: Sequence[str], examples: Sequence[Example]):
    """(rewards [N] float32, Counter of outcome names)."""
    return rewards.grade_batch(self.grader, responses, [e.answer for e in examples])

  def grade_outcomes(self, responses: Sequence[str], examples: Sequence[Example]):
    """Each response's Outcome (its reward is `.reward`)."""
    return rewards.grade_outcomes(self.grader, responses, [e.answer for e in examples])

  def example(self, split: str, index: int) -> Example:
    pool = self.train if split == "train" else self.test
    if not 0 <= index < len(pool):
      raise ValueError(f"{self.name}: {split} example index {index} out of range [0, {len(pool)})")
    return pool[index]
