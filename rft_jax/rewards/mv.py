"""The math-verify step of the MATH grader: runs inside a grading worker process (rewards/pool.py).

`equivalent(gold, preds)` parses the gold as `\\boxed{gold}` with the default LaTeX extraction and
each predicted box with the stricter prediction settings GRADING.md recommends (the model must
write valid LaTeX: no malformed-operator or 'nits' repairs), then calls `verify(gold, pred)`. All
of math-verify's own timeouts are off (they use signal.alarm, which works only in the main
thread); the caller bounds the time from outside: the pool kills a worker that runs too long.

One guard on top of math-verify: it compares numbers after rounding to 6 decimal places, so tiny
values such as 1/2004! and 1/2006! compare equal (Math-Verify issue #14). When both sides are
plain numbers we also require a relative difference of at most 1e-5 (which keeps every match
math-verify accepts for ordinary-sized numbers, e.g. 0.333333 for 1/3).
"""

from __future__ import annotations

import functools
import logging

import sympy
from math_verify import LatexExtractionConfig, parse, verify
from math_verify.parser import NormalizationConfig

from rft_jax.rewards.normalize import repair_latex

# math-verify warns once per process that its timeouts are off: that is deliberate here.
logging.getLogger("math_verify").setLevel(logging.ERROR)

REL_TOL = 1e-5

_GOLD_CONFIG = [LatexExtractionConfig()]
_PRED_CONFIG = [
    LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=True, malformed_operators=False, nits=False, boxed="all"
        ),
    )
]


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
  return parse("\\boxed{" + gold + "}", _GOLD_CONFIG, parsing_timeout=None, raise_on_error=True)


def _parse_pred(pred: str):
  return parse(
      "\\boxed{" + repair_latex(pred) + "}", _PRED_CONFIG, parsing_timeout=None, raise_on_error=True
  )


def _as_number(x):
  """A finite complex/real sympy number, or None (sets, symbols, relations, strings...)."""
  if not isinstance(x, sympy.Expr) or not x.is_number:
    return None
  value = sympy.N(x, 30)
  if not value.is_finite:
    return None
  return value


def _tiny_value_guard(gold_parsed, pred_parsed) -> bool:
  """False when both parse to numbers whose relative difference exceeds REL_TOL."""
  if not gold_parsed or not pred_parsed:
    return True
  g, p = _as_number(gold_parsed[0]), _as_number(pred_parsed[0])
  if g is None or p is None:
    return True
  scale = max(abs(g), abs(p))
  if scale == 0:
    return True
  return bool(abs(g - p) <= REL_TOL * scale)


def equivalent(gold: str, preds: tuple[str, ...]) -> bool:
  """True when every predicted answer in `preds` is equivalent to `gold` (see the module doc)."""
  gold_parsed = _parse_gold(gold)
  if not gold_parsed:
    return False
  for pred in preds:
    pred_parsed = _parse_pred(pred)
    if not pred_parsed:
      return False
    if not verify(gold_parsed, pred_parsed, timeout_seconds=None):
      return False
    if not _tiny_value_guard(gold_parsed, pred_parsed):
      return False
  return True


def job(payload: tuple[str, tuple[str, ...]]) -> bool:
  """The pool's job function: payload = (gold, predicted boxes)."""
  gold, preds = payload
  return equivalent(gold, tuple(preds))


def warm_up() -> None:
  """Parse and verify once so that a fresh worker has its lazy imports and caches loaded."""
  equivalent("\\frac{1}{2}", ("0.5",))
