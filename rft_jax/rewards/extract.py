"""Final-answer extraction shared by the GSM8K and MATH graders: \\boxed{} and '#### N'.

Everything here is linear in the response length (one pass to match braces), so a 100k-character
or deeply nested response costs milliseconds in the parent process and can never hang it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

# A response that reasons inside <think>...</think> is graded on what follows the last '</think>'.
THINK_END = "</think>"

# '\boxed' or '\fbox' not followed by a letter (so '\boxedfoo' is some other command).
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Structural braces; escaped '\{' and '\}' are literal set braces and are matched as tokens first
# so that they do not count.
_BRACE = re.compile(r"\\[{}]|[{}]")
_HASHES = re.compile(r"####")
# 'The answer is 4.', 'the final answer is: $-24$' (the Qwen grader chain's phrase step).
_ANSWER_PHRASE = re.compile(r"\b(?:final\s+)?answer\s+is\s*:?", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Marker:
  """One final-answer marker found in a response: its kind, where it starts, its content."""

  kind: str  # 'box', 'hash' or 'phrase'
  start: int
  content: str


def final_part(response: str) -> str:
  """The part of `response` that holds the final answer: the text after the last '</think>'."""
  cut = response.rfind(THINK_END)
  return response if cut < 0 else response[cut + len(THINK_END):]


def _match_braces(text: str) -> dict[int, int]:
  """Position of every '{' that is closed -> position of its '}' (one pass, a stack)."""
  match: dict[int, int] = {}
  stack: list[int] = []
  for m in _BRACE.finditer(text):
    tok = m.group()
    if tok == "{":
      stack.append(m.start())
    elif tok == "}" and stack:
      match[stack.pop()] = m.start()
  return match


def find_boxes(text: str) -> list[Marker]:
  """All outermost \\boxed{...} / \\fbox{...} contents of `text`, in order.

  Braces are matched (nested braces inside the box are kept). The brace-less form '\\boxed 5'
  takes the token after the command (up to whitespace or '$'). A box that is never closed (a
  truncated response) is skipped. Boxes nested inside a box are part of the outer content.
  """
  boxes: list[Marker] = []
  match = None  # computed lazily: most responses have no box at all
  resume = 0
  for cmd in _BOX_CMD.finditer(text):
    if cmd.start() < resume:
      continue  # inside a box already taken
    i = cmd.end()
    while i < len(text) and text[i] in " \t":
      i += 1
    if i < len(text) and text[i] == "{":
      if match is None:
        match = _match_braces(text)
      close = match.get(i)
      if close is None:
        continue
      boxes.append(Marker("box", cmd.start(), text[i + 1:close]))
      resume = close + 1
    elif i > cmd.end():  # '\boxed 5': a space, then a token
      token = re.match(r"[^\s$]+", text[i:])
      if token:
        boxes.append(Marker("box", cmd.start(), token.group()))
        resume = i + token.end()
  return boxes


def _after_last(pattern: re.Pattern, text: str,
                accept: Callable[[str], object] | None = None) -> tuple[int, str] | None:
  """(start of the last match of `pattern` whose rest of line, stripped, `accept` takes (any
  without it), that rest), or None."""
  for match in reversed(list(pattern.finditer(text))):
    end = text.find("\n", match.end())
    rest = (text[match.end():] if end < 0 else text[match.end():end]).strip()
    if accept is None or accept(rest):
      return match.start(), rest
  return None


def find_hash_answer(text: str, accept: Callable[[str], object] | None = None) -> Marker | None:
  """The last '#### ...' marker: the rest of its line (GSM8K's final-answer format); with
  accept(content), the last one whose content it accepts."""
  found = _after_last(_HASHES, text, accept)
  return None if found is None else Marker("hash", *found)


def find_answer_phrase(text: str) -> Marker | None:
  """The last '(final) answer is ...' phrase: the rest of its line up to a sentence end."""
  found = _after_last(_ANSWER_PHRASE, text)
  if found is None:
    return None
  # '... answer is 4. So we are done' -> '4.': the sentence the phrase opens.
  start, content = found
  return Marker("phrase", start, re.split(r"(?<=[.!?])\s", content, maxsplit=1)[0].strip())


def strip_trailing_punct(s: str) -> str:
  """'30^\\circ.' -> '30^\\circ', '\\text{(E)},' -> '\\text{(E)}': sentence punctuation, not answer."""
  return s.strip().rstrip(".,;: \t\n").strip()


def brace_depth(s: str) -> int:
  """Deepest nesting of structural braces in `s` ('\\frac{a}{\\sqrt{b}}' -> 2)."""
  depth = deepest = 0
  for m in _BRACE.finditer(s):
    if m.group() == "{":
      depth += 1
      deepest = max(deepest, depth)
    elif m.group() == "}":
      depth = max(0, depth - 1)
  return deepest
