"""GSM8K grader: the final '#### N' or \\boxed{N} must equal the gold number exactly.

Rules (shared/GRADING.md, recommendation 2):
  * The final answer is the last marker in the response (after '</think>' if present): the rest
    of the line after the last '####', or the content of the last \\boxed{}, whichever comes later.
    No marker -> NO_ANSWER. There is no "last number in the text" fallback (it rewards answers
    the model never committed to).
  * Cleaning: '$' / '\\$', thousands commas, spaces ('\\ ', '~' too), '\\!' and '\\text{}'
    ('\\textrm{}', ...) wrappers are removed;
    after the number only unit words, '%' and punctuation may follow ('18 eggs.', '$1,080',
    '1080.00', '50%'). A marker whose content does not start with a number -> NO_ANSWER.
  * Comparison: exact rational equality with the gold ('18.0' == 18; '18.5' != 18); no tolerance
    and no percent rescaling (50 is not 0.5).
  * '####' followed by anything but a number ('#### Verification', a markdown heading after the
    answer; 'the answer after "####" is 37', the marker quoted) is not a marker: the last '####'
    holding a number counts (verl's strict match, shared/GRADING.md section 1).
  * Hedging: if the response has several \\boxed{} and they do not all hold that same number,
    the answer is WRONG.
  * Grader 'final_answer' (`grade(..., phrase=True)`): 'the (final) answer is N' is a third
    marker (the Qwen grader chain's phrase step, GRADING.md section 1), for small instruct models
    that state an answer that way and never write '####' (SmolLM2-135M: 0 of 112 base responses
    held a '####' or \\boxed{} marker, experiments/smollm2/base_rates). Still no bare
    "last number" fallback: the model has to say which number is its answer.
"""

from __future__ import annotations

import fractions
import re

from rft_jax.rewards.base import Outcome
from rft_jax.rewards.extract import (
  final_part,
  find_answer_phrase,
  find_boxes,
  find_hash_answer,
)

_WRAPPERS = r"\\(?:text|textbf|textrm|mbox|mathrm)\s*\{"
_TEXT_WRAP = re.compile(_WRAPPERS + r"([^{}]*)\}")
_LEGACY_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}")  # strict=False
_NUMBER = re.compile(r"^([-+\u2212]?)(\d+(?:\.\d*)?|\.\d+)")
# A '####' line that starts with a number (after '$', '**' or a '\text{'-like wrapper): an
# answer marker.
_HASH_NUMBER = re.compile(r"^(?:\\\$|\$|\*|" + _WRAPPERS + r"|\s)*[-+\u2212]?\.?\d")
# What may follow the number: unit words, percent, punctuation ('18 eggs.', '50%', '12 per hour').
_UNITS_TAIL = re.compile(r"^[A-Za-z%.!'\s]*$")


def parse_number(text: str, *, strict: bool = True) -> fractions.Fraction | None:
  """The number a final-answer marker holds, or None (see the module doc for the cleaning;
  strict=False: without the '\\ ', '~' and '\\textrm{}' cleaning, see grade)."""
  s = text.strip()
  wrap = _TEXT_WRAP if strict else _LEGACY_TEXT_WRAP
  prev = None
  while prev != s:
    prev, s = s, wrap.sub(r"\1", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("{,}", ",")
  s = s.replace("\\,", "").replace("*", "").replace("\\%", "%")
  if strict:
    s = s.replace("\\ ", " ").replace("~", " ")
  s = re.sub(r"(?<=\d),(?=\d)", "", s)
  s = s.strip()
  m = _NUMBER.match(s)
  if m is None:
    return None
  if not _UNITS_TAIL.match(s[m.end():]):
    return None
  value = fractions.Fraction(m.group(2))
  return -value if m.group(1) in ("-", "\u2212") else value


def extract(response: str, *, strict: bool = True) -> str | None:
  """The content of the final marker (see the module doc), or None."""
  text = final_part(response)
  markers = find_boxes(text)
  hashes = find_hash_answer(text, accept=_HASH_NUMBER.match if strict else None)
  if hashes is not None:
    markers.append(hashes)
  if not markers:
    return None
  return max(markers, key=lambda m: m.start).content


def grade(response: str, gold: str, *, phrase: bool = False, strict: bool = True) -> Outcome:
  """phrase: 'the (final) answer is N' counts as a final marker too (grader 'final_answer').
  strict=False: the rules before 2026-12-01, with which issue 13's SmolLM2 layers were graded
  (grader 'final_answer_legacy'): the last '####' is the marker whatever follows it, and '\\ ', '~',
  '\\textrm{}' are not cleaned."""
  gold_value = parse_number(gold)
  if gold_value is None:
    raise ValueError(f"GSM8K gold answer is not a number: {gold!r}")
  text = final_part(response)
  boxes = find_boxes(text)
  hashes = find_hash_answer(text, accept=_HASH_NUMBER.match if strict else None)
  said = find_answer_phrase(text) if phrase else None
  markers = boxes + [m for m in (hashes, said) if m is not None]
  if not markers:
    return Outcome.NO_ANSWER
  final = max(markers, key=lambda m: m.start)
  value = parse_number(final.content, strict=strict)
  if value is None:
    return Outcome.NO_ANSWER
  if any(parse_number(b.content, strict=strict) != value for b in boxes):
    return Outcome.WRONG  # several boxes holding different things: a hedge
  return Outcome.CORRECT if value == gold_value else Outcome.WRONG
