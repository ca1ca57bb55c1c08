"""Grader 'final_answer': gsm8k's rules plus 'the (final) answer is N' as a final-answer marker."""

import pytest

from rft_jax import rewards
from rft_jax.rewards import extract
from rft_jax.rewards.base import Outcome


@pytest.mark.parametrize("response, gold, want", [
    ("8 - 1 = 7, so the answer is 7.", "7", Outcome.CORRECT),           # SmolLM2's usual ending
    ("So, the answer is 4.", "5", Outcome.WRONG),
    ("The final answer is: $-24$", "-24", Outcome.CORRECT),             # colon, $...$
    ("The answer is 3 apples.", "3", Outcome.CORRECT),                  # unit word after
    ("The answer is 25 - 49 = -24", "-24", Outcome.NO_ANSWER),          # not a number alone
    ("I think it is 4", "4", Outcome.NO_ANSWER),                        # no marker: no reward
    ("The answer is 4. Wait, maybe 5", "4", Outcome.CORRECT),           # the phrase's sentence
    ("the answer is 4.\nActually the answer is 6.", "6", Outcome.CORRECT),  # the last phrase
    ("The answer is 6.\n#### 4", "4", Outcome.CORRECT),                  # the later marker wins
    ("#### 4\nso the answer is 6", "6", Outcome.CORRECT),
    ("answer is \\boxed{12}", "12", Outcome.CORRECT),                   # box after the phrase
    ("ANSWER IS 1,080", "1080", Outcome.CORRECT),                       # case, thousands comma
])
@pytest.mark.parametrize("grader", ["final_answer", "final_answer_legacy"])
def test_final_answer_cases(grader, response, gold, want):
  assert rewards.grade_outcome(grader, response, gold) == want


def test_final_answer_skips_a_hash_without_a_number_and_legacy_does_not():
  """'final_answer' takes gsm8k's strict '####' rule (revision 2): a heading or a quoted marker
  after the answer is no marker. 'final_answer_legacy', the rules issue 13's SmolLM2 layers
  were graded by, takes the last '####' whatever follows it and reads them as no answer."""
  heading = "#### 18\n\n#### Explanation\nShe sells 9 eggs twice."
  quoted = "9 + 28 = 37\n#### 37\nThe number after \"####\" is the answer."
  for grader in ("final_answer", "gsm8k"):
    assert rewards.grade_outcome(grader, heading, "18") == Outcome.CORRECT, grader
    assert rewards.grade_outcome(grader, quoted, "37") == Outcome.CORRECT, grader
  assert rewards.grade_outcome("final_answer_legacy", heading, "18") == Outcome.NO_ANSWER
  assert rewards.grade_outcome("final_answer_legacy", quoted, "37") == Outcome.NO_ANSWER
  # the cleaning of '\ ', '~' and '\textrm{}': gsm8k's since 2026-12-01, not legacy's
  for spaced in ("#### 18\\ eggs", "#### 18~eggs", "\\boxed{18 \\textrm{ eggs}}"):
    assert rewards.grade_outcome("final_answer", spaced, "18") == Outcome.CORRECT, spaced
    assert rewards.grade_outcome("final_answer_legacy", spaced, "18") == Outcome.NO_ANSWER, spaced
  # the phrase marker is the same in both
  assert rewards.grade_outcome("final_answer_legacy", "so the answer is 7.", "7") == Outcome.CORRECT
  assert (rewards.revision("final_answer"), rewards.revision("final_answer_legacy"),
          rewards.revision("gsm8k")) == (2, 1, 1)


def test_gsm8k_grader_ignores_the_phrase():
  assert rewards.grade_outcome("gsm8k", "So, the answer is 4.", "4") == Outcome.NO_ANSWER
  assert rewards.grade_outcome("gsm8k", "#### 4", "4") == Outcome.CORRECT


def test_answer_phrase_marker():
  marker = extract.find_answer_phrase("Step 1.\nThe final answer is 12. Done!\nbye")
  assert (marker.kind, marker.content) == ("phrase", "12.")
  assert marker.start == len("Step 1.\nThe ")  # where "final answer is" begins
  assert extract.find_answer_phrase("no marker here") is None


def test_a_stop_signal_is_not_graded_as_an_error(monkeypatch):
  """train._Signals raises RunInterrupted wherever the main thread is before the rounds; a
  grader's `except Exception` must let it through (else the run goes on, scoring a 0)."""
  from rft_jax import errors
  from rft_jax.rewards import math as math_grader

  def stopped(*args):
    raise errors.RunInterrupted("stopped by SIGTERM before the first round", 15)

  monkeypatch.setitem(rewards.GRADERS, "final_answer", stopped)
  with pytest.raises(errors.RunInterrupted):
    rewards.grade_outcome("final_answer", "the answer is 4", "4")
  monkeypatch.setattr(math_grader, "prepare", stopped)
  with pytest.raises(errors.RunInterrupted):
    math_grader.grade_many(["\\boxed{4}"], ["4"], pool=False)
