"""Answer extraction, MATH normalization and the guards, tested directly."""

import pytest

from rft_jax.rewards import extract, gsm8k, normalize


def contents(text):
  return [m.content for m in extract.find_boxes(text)]


def test_find_boxes_matches_braces_and_forms():
  assert contents(r"a \boxed{\frac{1}{2}} b \fbox{3} c") == [r"\frac{1}{2}", "3"]
  assert contents(r"$\boxed 9$ and \boxed  x+1") == ["9", "x+1"]
  assert contents(r"\boxed{\{1,2\}}") == [r"\{1,2\}"]  # escaped braces do not count
  assert contents(r"\boxed{\boxed{5}} \boxed{6}") == [r"\boxed{5}", "6"]  # inner box is content
  assert contents(r"\boxedfoo{1} \boxed{2") == []  # another command; an unclosed box
  assert contents(r"\boxed{1} \boxed{2") == ["1"]


def test_final_part_and_hash_marker():
  assert extract.final_part("<think>x</think> y </think> z") == " z"
  assert extract.final_part("no think tags") == "no think tags"
  m = extract.find_hash_answer("#### 3\nsteps\n#### 1,080 dollars\nbye")
  assert (m.kind, m.content) == ("hash", "1,080 dollars")
  assert extract.find_hash_answer("no marker") is None
  text = "#### 3\n#### 7 eggs\n#### Verification"
  assert extract.find_hash_answer(text).content == "Verification"
  m = extract.find_hash_answer(text, accept=lambda c: c[:1].isdigit())
  assert (m.content, m.start) == ("7 eggs", len("#### 3\n"))
  assert extract.find_hash_answer(text, accept=lambda c: False) is None


def test_brace_depth_and_trailing_punct():
  assert extract.brace_depth(r"\frac{a}{\sqrt{b}}") == 2
  assert extract.brace_depth(r"\{1\}") == 0
  assert extract.strip_trailing_punct(r"\text{(E)}, ") == r"\text{(E)}"
  assert extract.strip_trailing_punct("30^\\circ.") == "30^\\circ"


@pytest.mark.parametrize("raw,norm", [
    (r"10,\!080", "10080"),
    (r"\$32,\!348", "32348"),
    (r"11,\! 111,\! 111,\! 100", "11111111100"),
    (r"\dfrac{3}{4}", r"\frac{3}{4}"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"\sqrt3", r"\sqrt{3}"),
    (r"\frac 59", r"\frac{5}{9}"),
    (r"\frac{a}2", r"\frac{a}{2}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"90^\circ", "90"),
    (r"90^{\circ}", "90"),
    (r"64\%", "64"),
    (r"4 \text{ feet}", "4"),
    (r"864 \mbox{ inches}^2", "864"),
    (r"2, 3, \text{ and } 4", "2,3,and4"),  # a list: 'and' is not a unit
    (r"\text{(C)}", "c"),
    (r"\text{East}", "east"),
    ("x = 5", "5"),
    ("y = 2x + 3", "2x+3"),
    (".5", "0.5"),
    ("-.5", "-0.5"),
    ("18.000", "18"),
    ("2.50", "2.5"),
    ("3/4", r"\frac{3}{4}"),
    ("1,2", "1,2"),  # not a thousands separator: kept
    ("(1,000)", "(1,000)"),  # a tuple keeps its comma
    ("2516_{8}", "2516_8"),
    (r"\boxed{7}", "7"),
    (r"x \leq 3", r"x\le3"),
])
def test_normalize(raw, norm):
  assert normalize.normalize(raw) == norm


def test_base_n_and_intervals():
  assert normalize.base_n("52_8") == ("", "52", 8)
  assert normalize.base_n("-37_8") == ("-", "37", 8)
  assert normalize.base_n("007") == ("", "7", 10)
  assert normalize.base_n(r"\frac{1}{2}") is None
  assert normalize.interval_brackets(r"(-\infty,3]\cup[4,\infty)") == (("(", "]"), ("[", ")"))
  assert normalize.interval_parts(r"(-\infty,3]\cup[4,\infty)") == (
      ("(", r"-\infty,3", "]"), ("[", r"4,\infty", ")"))
  assert normalize.strip_braced_thousands(r"\dfrac{2469}{20,\!000} + \frac{1}{1{,}000}") == (
      r"\dfrac{2469}{20000} + \frac{1}{1000}")
  assert normalize.strip_braced_thousands(r"\{1,000\} \cup \{1,2\}") == r"\{1,000\} \cup \{1,2\}"
  assert normalize.interval_brackets("(1,2,3)") is None  # a triple, not an interval
  assert normalize.interval_brackets("(t-7)(t+7)") is None
  assert normalize.guard_verdict("52_8", "52") is False
  assert normalize.guard_verdict("52_8", "52_8") is True
  assert normalize.guard_verdict("(3,4]", "(3,4)") is False
  assert normalize.guard_verdict("(3,4]", "(3,4]") is None  # math-verify still compares values
  assert normalize.guard_verdict("5", "6") is None


def test_gsm8k_parse_number():
  assert gsm8k.parse_number("$1,080.00 dollars.") == 1080
  assert gsm8k.parse_number(r"\text{18 eggs}") == 18
  assert gsm8k.parse_number("-3") == -3
  assert gsm8k.parse_number("0.5") * 2 == 1
  assert gsm8k.parse_number("about 18") is None
  assert gsm8k.parse_number("18 - 2") is None
  assert gsm8k.extract("#### 7\nthen \\boxed{8}") == "8"
  assert gsm8k.extract("nothing") is None
