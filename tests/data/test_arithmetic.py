"""The embedded arithmetic task: determinism, disjoint splits, and reference solutions that grade
correct and are arithmetically right step by step."""

import re
import subprocess
import sys

import pytest

from rft_jax import rewards
from rft_jax.data import arithmetic
from rft_jax.data.base import Task

_STEP = re.compile(r"^(-?\d+) ([-+*]) (\d+) = (-?\d+)$")
_NEGATIVE = re.compile(r"(^|[= ])-\d", re.M)


@pytest.fixture(scope="module")
def task() -> Task:
  return arithmetic.arithmetic_task(seed=0)


def test_task_shape(task):
  assert task.name == "arithmetic" and task.grader == "arithmetic"
  assert len(task.train) == 2000 and len(task.test) >= 500
  assert task.train[17].id == "arith/train/17" and task.test[0].id == "arith/test/0"
  assert task.template == arithmetic.TEMPLATE
  forms = {e.meta["form"] for e in task.train}
  assert forms == {"symbol", "word"}
  assert any("*" in e.meta["expression"] for e in task.train)


def test_same_seed_same_task_different_seed_different(task):
  again = arithmetic.arithmetic_task(seed=0)
  assert again.train == task.train and again.test == task.test
  other = arithmetic.arithmetic_task(seed=1)
  assert [e.question for e in other.train] != [e.question for e in task.train]
  assert [e.question for e in other.test] != [e.question for e in task.test]


def test_same_seed_across_processes():
  # No Python hash() randomness: a fresh interpreter (own PYTHONHASHSEED) draws the same problems.
  code = ("from rft_jax.data import arithmetic; "
          "print(repr([e.question for e in arithmetic.generate(3, 20)]))")
  outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": str(h)}).stdout for h in (1, 2)}
  assert outs == {repr([e.question for e in arithmetic.generate(3, 20)]) + "\n"}


def test_test_set_independent_of_n_train(task):
  small = arithmetic.arithmetic_task(seed=0, n_train=10)
  assert small.test == task.test
  assert small.train == task.train[:10]


def test_train_and_test_disjoint(task):
  train_q = {e.question for e in task.train}
  test_q = {e.question for e in task.test}
  assert not train_q & test_q
  assert not {e.meta["expression"] for e in task.train} & {e.meta["expression"] for e in task.test}
  # Distinct within each split too.
  assert len(train_q) == len(task.train) and len(test_q) == len(task.test)


def test_reference_solutions_grade_correct(task):
  for e in [*task.train, *task.test]:
    assert rewards.grade("arithmetic", e.solution, e.answer) == 1.0, e
    prompt, completion = arithmetic.sft_text(e)
    assert completion == e.solution and prompt == task.prompt_text(e)
    assert prompt.endswith("\n") and not completion[0].isspace()


def test_corrupted_and_malformed_grade_zero(task):
  for e in task.test[:100]:
    wrong = str(int(e.answer) + 1)
    body = e.solution.rsplit("####", 1)[0]
    assert rewards.grade("arithmetic", body + "#### " + wrong, e.answer) == 0.0
    assert rewards.grade("arithmetic", body, e.answer) == 0.0  # no '####'
    assert rewards.grade("arithmetic", e.solution + "\nso the answer", e.answer) == 0.0


def test_worked_steps_are_right(task):
  ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
  for e in [*task.train, *task.test]:
    *steps, last = e.solution.split("\n")
    assert len(steps) == 2 and last == f"#### {e.answer}"
    carried = None
    for line in steps:
      a, op, b, c = _STEP.match(line).groups()
      assert ops[op](int(a), int(b)) == int(c), line
      assert carried is None or int(a) == carried  # each step starts from the previous result
      carried = int(c)
    assert carried == int(e.answer)
    assert e.meta["expression"] == " ".join(steps[0].split()[:3] + steps[1].split()[1:3])


def test_question_states_the_operands(task):
  for e in task.train[:300]:
    numbers = re.findall(r"\d+", e.question)
    assert numbers == re.findall(r"\d+", e.meta["expression"]), e
    assert not _NEGATIVE.search(e.solution), e  # negatives only when asked for


def test_allow_negative():
  ex = arithmetic.generate(0, 500, allow_negative=True)
  assert any(_NEGATIVE.search(e.solution) for e in ex)
  assert not any(_NEGATIVE.search(e.solution) for e in ex if e.meta["form"] == "word")
  assert all(rewards.grade("arithmetic", e.solution, e.answer) == 1.0 for e in ex)


def test_task_ranges():
  small = arithmetic.arithmetic_task(seed=0, n_train=50, n_test=500, max_operand=9)
  assert all(int(n) <= 9 for e in [*small.train, *small.test]
             for n in re.findall(r"\d+", e.meta["expression"]))
  assert small.test != arithmetic.arithmetic_task(seed=0, n_train=50).test


def test_generate_options():
  ex = arithmetic.generate(0, 300, max_operand=9, mul_prob=0.0, word_prob=0.0)
  assert all(int(n) <= 9 for e in ex for n in re.findall(r"\d+", e.question))
  assert all("*" not in e.meta["expression"] and e.meta["form"] == "symbol" for e in ex)
  excluded = {e.meta["expression"] for e in ex[:50]}
  assert not excluded & {e.meta["expression"] for e in arithmetic.generate(0, 300, exclude=excluded,
                                                                          max_operand=9)}
  with pytest.raises(ValueError, match="distinct problems"):
    arithmetic.generate(0, 100, max_operand=2, mul_prob=0.0)  # 32 expressions


def test_vocabulary_covers_questions(task):
  words = set(arithmetic.vocabulary())
  assert arithmetic.vocabulary() == sorted(words)
  for e in [*task.train, *task.test]:
    assert set(re.findall(r"[A-Za-z]+", e.question)) <= words


def test_answer_only_small_ranges():
  # Operands 1..3 and a factor of 2: every answer is one digit, and the ranges hold few problems.
  examples = arithmetic.generate(0, 1000, max_operand=3, max_factor=2, answer_only=True,
                                 allow_fewer=True)
  assert 50 < len(examples) < 1000
  assert len({e.meta["expression"] for e in examples}) == len(examples)
  for e in examples:
    assert e.solution == f"#### {e.answer}"
    assert 0 <= int(e.answer) <= 9
    assert rewards.grade("arithmetic", e.solution, e.answer) == 1.0
  with pytest.raises(ValueError, match="distinct problems"):
    arithmetic.generate(0, 1000, max_operand=3, max_factor=2)


def test_ranges_from_config_reads_only_what_the_config_sets():
  import ml_collections

  cfg = ml_collections.ConfigDict(dict(name="arithmetic", max_operand=3, answer_only=True))
  assert arithmetic.ranges_from_config(cfg) == {"max_operand": 3, "answer_only": True}


def test_one_operation_problems():
  """num_ops=1: 'a op b' symbol problems, answers right, distinct, negatives only if allowed."""
  examples = arithmetic.generate(3, 300, num_ops=1, word_prob=0.0, max_operand=50,
                                 allow_negative=True, mul_prob=0.2)
  exprs = [e.meta["expression"] for e in examples]
  assert len(set(exprs)) == 300
  for e in examples:
    a, op, b = e.meta["expression"].split()
    assert int(e.answer) == {"+": int(a) + int(b), "-": int(a) - int(b),
                             "*": int(a) * int(b)}[op]
    assert e.meta["expression"] in e.question and e.solution.endswith(f"#### {e.answer}")
  assert any(int(e.answer) < 0 for e in examples)
  assert all(int(e.answer) >= 0 for e in arithmetic.generate(3, 100, num_ops=1, word_prob=0.0))
  with pytest.raises(ValueError, match="symbol problems only"):
    arithmetic.generate(3, 10, num_ops=1)
  with pytest.raises(ValueError, match="num_ops=3"):
    arithmetic.generate(3, 10, num_ops=3, word_prob=0.0)


def test_two_operation_stream_unchanged():
  """Adding num_ops did not move the embedded task's draws (first test problem as before)."""
  first = arithmetic.arithmetic_task(0, 50, 20).test[0]
  assert (first.meta["expression"], first.answer) == ("8 - 1 - 2", "5")
