"""Grader of the embedded arithmetic task: the last '#### <integer>' must equal the gold."""

from __future__ import annotations

import re

from rft_jax.rewards.base import Outcome

# '####' then an optionally signed integer, and nothing but whitespace after it: the task's
# solutions end with the answer, so trailing text means the model never finished.
_FINAL = re.compile(r"####\s*(-?\d+)\s*$")


def extract(response: str) -> str | None:
  match = _FINAL.search(response)
  return match.group(1) if match else None


def grade(response: str, gold: str) -> Outcome:
  pred = extract(response)
  if pred is None:
    return Outcome.NO_ANSWER
  return Outcome.CORRECT if int(pred) == int(gold) else Outcome.WRONG
