"""String normalization of MATH answers (the grader's fast path) and the false-positive guards.

`normalize(s)` applies Hendrycks-style rules plus the prm800k ones listed in shared/GRADING.md
(section 2 and recommendation 3); written from that description, no grader code copied. Two
answers whose normalized strings are equal are graded correct without SymPy. The rules only
remove presentation (spacing, \\left/\\right, \\dfrac, degrees, \\$, \\%, \\text wrappers, trailing
unit words, well-formed thousands separators, a short variable name before '=') or rewrite a
number into a canonical spelling ('.5' -> '0.5', '18.0' -> '18', '3/4' -> '\\frac{3}{4}'), so equal
normalized strings mean equal answers; anything else goes on to math-verify.

The guards catch math-verify's known false positives before it runs (GRADING.md sections 5, 7):
base subscripts must match (math-verify drops '_8', so '52_8' would accept '52'), and interval
bracket types must match ('(3,4]' is not '(3,4)').
"""

from __future__ import annotations

import re

# '\text{X}' and friends, innermost first (no braces inside).
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|mathit|operatorname)\s*\{([^{}]*)\}")
# A whole-answer box inside a box: '\boxed{\boxed{5}}'.
_WHOLE_BOX = re.compile(r"^\\(?:boxed|fbox)\s*\{(.*)\}$", re.DOTALL)
# Trailing '\text{ feet}' / '\mbox{ inches}^2' after something: unit words (letters, spaces, dots).
_TRAILING_UNIT = re.compile(r"(?<=\S)\s*\\(?:text|mbox|textrm|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?\s*$")
# '2, 3, \text{ and } 4' is a list, not a unit; '9\text{ a.m.}' is not 9 p.m.: kept, compared
_UNIT_WORDS_SKIP = {"and", "or", "to", "a.m.", "p.m.", "am", "pm", "a.m", "p.m"}
_SPACING = re.compile(r"(?<!\\)\\[!,;: ]|~|\\quad|\\qquad|\\displaystyle")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
# A brace group holding one well-formed thousands number: '\frac{2469}{20,\!000}' (never a
# tuple); the separator ',' or ',\!' or '{,}'.
_BRACED_THOUSANDS = re.compile(
    r"(?<!\\)\{(-?\d{1,3}(?:(?:,\\!|\{,\}|,)\d{3})+(?:\.\d+)?)\}")
_INT_FLOAT = re.compile(r"^(-?\d+)\.0*$")
_TRAILING_DEC_ZEROS = re.compile(r"^(-?\d+\.\d*?[1-9])0+$")
_SIMPLE_FRACTION = re.compile(r"^(-?)(\d+)/(\d+)$")
_SHORT_VAR_EQ = re.compile(r"^[A-Za-z](?:_?[A-Za-z0-9])?=")
_CHOICE = re.compile(r"^\(([a-e])\)$")

# Base-n numbers: digits (and letters for bases > 10), an optional point, then '_8' or '_{12}'.
_BASE_N = re.compile(r"^(-?)([0-9a-z]+(?:\.[0-9a-z]+)?)_\{?(\d+)\}?$")
_PLAIN_INT = re.compile(r"^(-?)(\d+)$")
# A time of day's 'a.m.' / 'p.m.' / 'am' / 'pm' at the end of a normalized answer ('9a.m',
# '8:34p.m', '9pm').
_MERIDIEM = re.compile(r"\d([ap])\.?m\.?$")


def strip_braced_thousands(s: str) -> str:
  """'\\frac{2469}{20,\\!000}' -> '\\frac{2469}{20000}': thousands separators inside a brace group
  that holds one number (normalize's rule; math-verify reads '20,000' as a tuple)."""
  return _BRACED_THOUSANDS.sub(
      lambda m: "{" + re.sub(r",\\!|\{,\}|,", "", m.group(1)) + "}", s)


def _unwrap_text(s: str) -> str:
  prev = None
  while prev != s:
    prev, s = s, _TEXT_WRAP.sub(r"\1", s)
  return s


def _strip_trailing_units(s: str) -> str:
  m = _TRAILING_UNIT.search(s)
  if m is None:
    return s
  words = re.sub(r"^.*\{|\}.*$", "", m.group()).strip().lower()
  if words in _UNIT_WORDS_SKIP or words.split(" ")[0] in _UNIT_WORDS_SKIP:
    return s
  return s[: m.start()]


def _fix_shorthand(s: str) -> str:
  """'\\frac12' / '\\frac 12' -> '\\frac{1}{2}', '\\frac1{b}', '\\frac{a}2', '\\sqrt3' -> '\\sqrt{3}'."""
  s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac\s*(\d)\s*(?=\{)", r"\\frac{\1}", s)
  s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)
  s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)
  return s


def repair_latex(s: str) -> str:
  """The light repairs that are also applied before math-verify: shorthand \\frac/\\sqrt, \\dfrac."""
  s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
  return _fix_shorthand(s)


def normalize(s: str) -> str:
  """Canonical string form of a MATH answer (the content of a \\boxed{}); see the module doc."""
  s = s.strip().replace("\n", " ")
  while True:
    m = _WHOLE_BOX.match(s.strip())
    if not m:
      break
    s = m.group(1)
  s = s.strip().rstrip(".,").strip()
  s = _SPACING.sub("", s)
  s = _LEFT_RIGHT.sub("", s)
  s = repair_latex(s)
  s = _DEGREES.sub("", s)
  s = s.replace("\\$", "").replace("$", "")
  s = s.replace("\\%", "").replace("%", "")
  s = _strip_trailing_units(s)
  s = _unwrap_text(s)
  s = s.replace("{,}", ",")
  s = re.sub(r"\s+", "", s)
  s = s.rstrip(".,")
  s = re.sub(r"\\leq?(?![A-Za-z])", r"\\le", s)
  s = re.sub(r"\\geq?(?![A-Za-z])", r"\\ge", s)
  s = re.sub(r"\\neq?(?![A-Za-z])", r"\\ne", s)
  # Single-token sub/superscripts lose their braces: '_{8}' -> '_8', '^{2}' -> '^2'.
  s = re.sub(r"([_^])\{(\w)\}", r"\1\2", s)
  if s.count("=") == 1 and _SHORT_VAR_EQ.match(s):
    s = s.split("=", 1)[1]
  if _THOUSANDS.match(s):
    s = s.replace(",", "")
  s = strip_braced_thousands(s)
  s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)  # '.5' -> '0.5', '-.5' -> '-0.5'
  m = _INT_FLOAT.match(s)
  if m:
    s = m.group(1)
  s = _TRAILING_DEC_ZEROS.sub(r"\1", s)
  m = _SIMPLE_FRACTION.match(s)
  if m:
    s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
  s = s.lower()
  m = _CHOICE.match(s)
  if m:
    s = m.group(1)
  if s in ("-0",):
    s = "0"
  return s


def base_n(norm: str) -> tuple[str, str, int] | None:
  """(sign, digits, base) of a normalized base-n number like '52_8' or '-37_8'; a plain integer
  counts as base 10. None for anything else."""
  m = _BASE_N.match(norm)
  if m:
    sign, digits, base = m.group(1), m.group(2), int(m.group(3))
  else:
    m = _PLAIN_INT.match(norm)
    if not m:
      return None
    sign, digits, base = m.group(1), m.group(2), 10
  if "." not in digits:
    digits = digits.lstrip("0") or "0"
  return sign, digits, base


def has_base_subscript(norm: str) -> bool:
  return _BASE_N.match(norm) is not None


def _split_top_level(s: str, sep: str) -> list[str]:
  """Split on `sep` where no (), [], {} is open."""
  parts, depth, start, i = [], 0, 0, 0
  while i < len(s):
    c = s[i]
    if c in "([{":
      depth += 1
    elif c in ")]}":
      depth -= 1
    elif depth == 0 and s.startswith(sep, i):
      parts.append(s[start:i])
      i += len(sep)
      start = i
      continue
    i += 1
  parts.append(s[start:])
  return parts


def interval_parts(norm: str) -> tuple[tuple[str, str, str], ...] | None:
  """(open, inside, close) of each interval of a normalized interval or union of intervals
  ('(-\\infty,3]\\cup[4,\\infty)' -> (('(', '-\\infty,3', ']'), ('[', '4,\\infty', ')')));
  None when `norm` is not one."""
  parts = []
  for part in norm.split("\\cup"):
    if len(part) < 5 or part[0] not in "([" or part[-1] not in ")]":
      return None
    inner = part[1:-1]
    # One interval: exactly two top-level components, and the outer brackets enclose everything.
    depth = 0
    for c in inner:
      depth += c in "([{"
      depth -= c in ")]}"
      if depth < 0:
        return None
    if depth != 0 or len(_split_top_level(inner, ",")) != 2:
      return None
    parts.append((part[0], inner, part[-1]))
  return tuple(parts)


def interval_brackets(norm: str) -> tuple[tuple[str, str], ...] | None:
  """The (open, close) bracket pair of each interval, in order (see interval_parts)."""
  parts = interval_parts(norm)
  return None if parts is None else tuple((o, c) for o, _, c in parts)


def guard_verdict(gold_norm: str, pred_norm: str) -> bool | None:
  """False when a guard rejects `pred` outright, True when the guard alone decides it is correct,
  None when the guards have nothing to say (math-verify decides)."""
  if has_base_subscript(gold_norm) or has_base_subscript(pred_norm):
    g, p = base_n(gold_norm), base_n(pred_norm)
    if g is None or p is None:
      return False
    return g == p
  g_time, p_time = _MERIDIEM.search(gold_norm), _MERIDIEM.search(pred_norm)
  if (g_time or p_time) and (g_time and g_time.group(1)) != (p_time and p_time.group(1)):
    # math-verify reads '9 p.m.' as 9 (a unit) and would accept it for 9 a.m.; a bare 9 is not
    # '9 a.m.' either (the half of the day is part of the answer)
    return False
  g_iv, p_iv = interval_parts(gold_norm), interval_parts(pred_norm)
  if g_iv is not None and p_iv is not None:
    # A union written in another order pairs its intervals by what they hold (a union is a set:
    # '[4,\infty)\cup(-\infty,3]' is '(-\infty,3]\cup[4,\infty)'); else position by position.
    inside = lambda parts: sorted(i for _, i, _ in parts)
    if inside(g_iv) == inside(p_iv):
      g_iv, p_iv = (sorted(parts, key=lambda part: part[1]) for parts in (g_iv, p_iv))
    if [(o, c) for o, _, c in g_iv] != [(o, c) for o, _, c in p_iv]:
      return False
  return None
