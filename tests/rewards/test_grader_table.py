"""The grader test table: (gold, response, expected outcome) for the 'math' and 'gsm8k' graders.

The first block is every row of the side-by-side table in shared/GRADING.md (section 5), with
the verdict of its 'correct?' column; the response is the model's \\boxed{prediction}. The two
rows marked 'debatable' there are decided here: '50\\%' vs '0.5' is correct (math-verify reads
50% as 0.5) and '\\frac{1}{2}' vs '2/4' is correct (unreduced fractions are not required).
"""

import pytest

from rft_jax import rewards
from rft_jax.rewards import Outcome

C, W, N = Outcome.CORRECT, Outcome.WRONG, Outcome.NO_ANSWER


def boxed(pred: str) -> str:
  return f"Let me work it out. The final answer is \\boxed{{{pred}}}."


GRADING_MD_TABLE = [
    (r"10,\!080", boxed("10080"), C),
    (r"\$32,\!348", boxed("32348"), C),
    (r"\text{Evelyn}", boxed("Evelyn"), C),
    (r"\text{east}", boxed(r"\text{East}"), C),
    (r"\frac{270}7\text{ degrees}", boxed(r"\frac{270}{7}"), C),
    (r"\dfrac{17}{50}", boxed("0.34"), C),
    (r"1,-2", boxed("-2, 1"), C),
    (r"(3,4]", boxed("(3,4)"), W),
    (r"\left( 3, \frac{\pi}{2} \right)", boxed(r"(3, \pi/2)"), C),
    (r"864 \mbox{ inches}^2", boxed("864"), C),
    (r"52_8", boxed("52"), W),
    (r"\text{(C)}", boxed("C"), C),
    (r"1 \pm \sqrt{19}", boxed(r"1+\sqrt{19}, 1-\sqrt{19}"), C),
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
     boxed(r"\begin{pmatrix} -\frac13 \\ \frac23 \\ \frac53 \end{pmatrix}"), C),
    (r"50\%", boxed("0.5"), C),  # debatable in GRADING.md; decided correct
    (r"50", boxed("0.5"), W),
    (r"\frac{1}{2}", boxed("2/4"), C),  # debatable in GRADING.md; decided correct
    (r"18", boxed("18.0"), C),
    (r"x \le 0", boxed(r"(-\infty, 0]"), C),
    (r"\frac{1}{2004!}", boxed(r"\frac{1}{2006!}"), W),
    (r"1,000", boxed("1000"), C),
    (r"2", r"It is \boxed{1} \boxed{2}", W),  # two different boxes: a hedge
]

MATH_CASES = [
    # extraction
    ("5", "The answer is 5.", N),                                  # no box: never 'last number'
    ("5", r"so the answer is $\boxed 5$.", C),                     # brace-less \boxed
    ("5", r"\fbox{5}", C),
    ("5", r"\boxed{}", N),                                         # empty box
    ("5", r"\boxed{5", N),                                         # never closed (truncated)
    ("5", r"\boxed{\boxed{5}}", C),                                # nested box
    ("5", r"<think>maybe \boxed{4}</think> The answer is \boxed{5}.", C),
    ("5", r"\boxed{5} </think> and then nothing boxed", N),
    # hedging: every distinct box must be right
    ("5", r"\boxed{5} ... as computed, \boxed{5}.", C),
    ("2", r"\boxed{2} or equivalently \boxed{2.0}", C),
    (r"\frac{639}{40}", r"\boxed{15\frac{39}{40}} = \boxed{\frac{639}{40}}", C),
    ("5", r"first \boxed{3}, no wait, \boxed{5}", W),
    ("1331", boxed(r"1331 \text{ or } 1728"), W),
    # numbers and fractions
    (r"\frac{1}{2}", boxed(r"\dfrac12"), C),
    (r"\frac{1}{2}", boxed("0.5"), C),
    ("0.5", boxed(r"\frac{1}{2}"), C),
    (r"\frac{1}{2}", boxed(r"\frac{1}{3}"), W),
    (r"\frac{1}{3}", boxed("0.333333"), C),
    (r"\frac{1}{3}", boxed("0.33"), W),
    ("1000", boxed("1000.1"), W),
    (".0000672", boxed("0.0000672"), C),
    (".0000672", boxed("0.0000673"), W),                           # tiny-value guard
    (r"\frac{1}{2^{99}}", boxed(r"\frac{1}{2^{98}}"), W),          # tiny-value guard
    ("30^\\circ.", boxed("30^\\circ"), C),                         # gold's trailing '.' stripped
    ("10", boxed("10."), C),
    ("0", boxed("-0"), C),
    ("1", boxed(r"\frac{2}{2}"), C),
    (r"\frac{1}{4}", boxed(r"25\%"), C),
    # radicals, pi, complex, polynomials
    (r"\sqrt{2}", boxed(r"\sqrt2"), C),
    (r"2\sqrt{2}", boxed(r"\sqrt{8}"), C),
    (r"\pi", boxed("3.14"), W),
    ("-3 + 6i", boxed("6i - 3"), C),
    ("x^2+2x+1", boxed("(x+1)^2"), C),
    ("x^2+2x+1", boxed("(x+1)^3"), W),
    (r"\infty", boxed(r"\infty"), C),
    # units, money, percent, words, choices
    (r"90^\circ", boxed("90"), C),
    (r"\$18.90", boxed("18.90"), C),
    (r"64\%", boxed("64"), C),
    (r"4 \text{ feet}", boxed("4"), C),
    (r"\text{Sunday}", boxed(r"\text{Monday}"), W),
    ("B", boxed("C"), W),
    ("C", boxed(r"\text{(C)}"), C),
    # equations, lists
    ("y = 2x + 3", boxed("y=2x+3"), C),
    ("y = 2x + 3", boxed("y = 2x + 4"), W),
    (r"k = \frac{-33}{2}", boxed(r"-\frac{33}{2}"), C),
    ("3, 5, 7", boxed("7, 5, 3"), C),
    ("3, 5, 7", boxed("3, 5"), W),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", boxed(r"\begin{pmatrix} 1 \\ 3 \end{pmatrix}"), W),
    # base subscripts (math-verify drops them: the guard decides)
    ("2516_8", boxed("2516_{8}"), C),
    ("2516_8", boxed("2516"), W),
    ("2516_8", boxed("2516_{10}"), W),
    ("2516", boxed("2516_8"), W),
    (r"\text{A5}_{11}", boxed("A5_{11}"), C),
    ("43_5.", boxed("43_5"), C),
    # intervals: bracket types are strict
    ("(3,4]", boxed("(3,4]"), C),
    ("[1,2]", boxed("(1,2)"), W),
    (r"(-\infty,3] \cup [4,\infty)", boxed(r"(-\infty, 3] \cup [4, \infty)"), C),
    (r"(-\infty,3] \cup [4,\infty)", boxed(r"\left(-\infty, 3\right) \cup [4, \infty)"), W),
    # a union in another order is the same set; its brackets still count
    (r"(-\infty,3] \cup [4,\infty)", boxed(r"[4,\infty) \cup (-\infty,3]"), C),
    (r"(-\infty,3] \cup [4,\infty)", boxed(r"[4,\infty] \cup (-\infty,3)"), W),
    # thousands separators inside a fraction (MATH train/number_theory/794's form)
    (r"\dfrac{2469}{20,\!000}", boxed(r"\frac{2469}{20000}"), C),
    (r"\dfrac{2469}{20,\!000}", boxed("0.12345"), C),
    ("(1,000)", boxed("(1000)"), W),  # a tuple keeps its comma
    # a.m. / p.m. is part of a time, not a unit to strip
    (r"9\text{ a.m.}", boxed(r"9\text{ p.m.}"), W),
    (r"8\!:\!34 \text{ p.m.}", boxed(r"8:34 \text{ a.m.}"), W),
    (r"9\text{ a.m.}", boxed(r"9\text{ a.m.}"), C),
    ("9 am", boxed("9 pm"), W),  # the undotted spelling too
    (r"9\text{ a.m.}", boxed("9"), W),  # the half of the day is part of the answer
]

GSM8K_CASES = [
    ("18", "She makes 9 * 2 = $18 every day.\n#### 18", C),
    ("18", "#### $18", C),
    ("18", r"#### \$18", C),
    ("1080", "#### 1,080", C),
    ("1080", "#### $1,080.00", C),
    ("109200000", "#### 109,200,000", C),
    ("18", "#### 18 eggs", C),
    ("18", "#### 18.", C),
    ("18", "#### **18**", C),
    ("50", "#### 50%", C),
    ("-10", "#### -10", C),
    ("18", "#### 18\nI hope this helps!", C),
    ("18", r"so the total is \boxed{18}.", C),
    ("18", r"\boxed{\$18}", C),
    ("1080", r"\boxed{1,080 \text{ dollars}}", C),
    ("18", "#### 17\nActually, recounting: \\boxed{18}", C),  # the later marker wins
    ("18", "\\boxed{18}\n#### 17", W),
    ("18", r"\boxed{17} or \boxed{18}", W),                    # hedge
    ("18", "The answer is 18.", N),                           # no marker: no last-number fallback
    ("18", "#### 17", W),
    ("10", "#### -10", W),
    ("50", "#### 0.5", W),                                    # no percent rescaling
    ("18", "#### 18.5", W),                                   # no tolerance
    ("18", "#### 18.0000001", W),
    ("18", "#### eighteen", N),
    ("18", "#### 18 + 2 = 20", N),
    ("18", "#### 36/2", N),
    # '####' not followed by a number is no marker (verl's strict match): a markdown heading
    # after the answer, the marker quoted
    ("18", "\\boxed{18} dollars.\n\n#### Verification\n9 * 2 = 18", C),
    ("18", "#### 18\n\n#### Explanation\nShe sells 9 eggs twice.", C),
    ("37", "9 + 28 = 37\n#### 37\nThe number after \"####\" is the answer.", C),
    ("18", "the answer after \"####\" is 18", N),
    ("18", "#### The total\n18", N),
    ("18", r"#### \textbf{18}", C),  # a wrapper before the number is still a number
    ("18", r"#### \mbox{18} eggs", C),
    # spacing commands and \\textrm{} around a unit
    ("18", r"\boxed{18\ \text{eggs}}", C),
    ("18", r"\boxed{18~\text{eggs}}", C),
    ("18", r"\boxed{18 \textrm{ eggs}}", C),
]


@pytest.mark.parametrize("gold,response,expected", GRADING_MD_TABLE + MATH_CASES)
def test_math_grader(gold, response, expected):
  assert rewards.grade_outcome("math", response, gold) is expected


@pytest.mark.parametrize("gold,response,expected", GSM8K_CASES)
def test_gsm8k_grader(gold, response, expected):
  assert rewards.grade_outcome("gsm8k", response, gold) is expected


def test_table_size():
  # The issue asks for at least 60 cases, including all 22 rows of GRADING.md's table.
  assert len(GRADING_MD_TABLE) == 22
  assert len(GRADING_MD_TABLE) + len(MATH_CASES) + len(GSM8K_CASES) >= 60


def test_math_batch_equals_single():
  """The batched path (fast path here, the rest through the pool) agrees with one-by-one."""
  cases = GRADING_MD_TABLE + MATH_CASES
  golds = [g for g, _, _ in cases]
  responses = [r for _, r, _ in cases]
  rewards_, counts = rewards.grade_batch("math", responses, golds)
  expected = [e for _, _, e in cases]
  assert rewards_.tolist() == [e.reward for e in expected]
  assert counts["correct"] == sum(e is C for e in expected)
  assert counts["wrong"] == sum(e is W for e in expected)
  assert counts["no_answer"] == sum(e is N for e in expected)
  assert counts["timeout"] == 0 and counts["error"] == 0
  assert set(counts) == {o.value for o in Outcome}


def test_empty_gold_is_an_error_not_a_crash():
  assert rewards.grade_outcome("math", boxed("5"), "") is Outcome.ERROR
  assert rewards.grade_outcome("gsm8k", "#### 5", "") is Outcome.ERROR
