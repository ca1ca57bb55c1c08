"""The embedded default task: procedurally generated two-step arithmetic, no files.

Each problem is two operations over small integers, evaluated left to right, asked either in
symbol form ('What is 23 + 45 - 17?') or as a short word problem ('Ann has 23 pens, buys 45 and
loses 17. How many pens now?'). The reference solution is one worked step per line, then the
answer line the 'arithmetic' grader reads:

    23 + 45 = 68
    68 - 17 = 51
    #### 51

A multiplication, when drawn, is always the first operation (a one-digit factor times a small
number), so left-to-right order is also the usual precedence. No intermediate result or answer
is negative unless `allow_negative` (symbol problems only: a count of pens is never below zero).

The task stands in for a pretrained model's maths. Measured (2 CPU cores, greedy test Pass@1,
default ranges: operands 1..20): a 2-layer d_model=128 decoder (0.43M params) trained on 10,000
generated solutions (batch 64, lr 3e-3, cosine over 1500 steps) passes 6% at step 250, 29% at
500, 82% at 750 and saturates near 97%: a warm start stopped at a middling pass rate leaves room
for RL. Operands 1..50 or 1..99 stay at 2% after 500 steps of a 4-layer model on 2,000 problems.
Generation uses numpy Generators seeded from (seed, split) only, so the same seed gives the same
task in every process (no Python hash() randomness anywhere).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Collection

import numpy as np

from rft_jax.data.base import Example, Task

# The prompt is the question and a newline; the completion (the solution) starts right after it
# with the first step, so prompt + completion concatenate with no joining space. No 'Question:' /
# 'Answer:' framing: it would cost 4 of the ~48 tokens a whole sequence gets.
TEMPLATE = "{question}\n"

_NAMES = ("Ann", "Ben", "Eva", "Lily", "Max", "Mia", "Sam", "Tom")
_ITEMS = ("apples", "pens", "cards", "coins", "books", "eggs", "stamps", "shells")
# Verb phrases of an addition and a subtraction step, '{n}' being the operand.
_GAIN = ("buys {n}", "finds {n}", "gets {n}")
_LOSE = ("sells {n}", "loses {n}", "gives away {n}")
_SYMBOL_FORMS = ("What is {expr}?", "Compute {expr}.", "Find {expr}.")

_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


# Word problems: `a op1 b op2 c` with op1 in '+-', or `a * b op2 c` (bags of b items). Terse, to
# keep a prompt under ~24 tokens.
_WORD_ADD = "{name} has {a} {item}, {verb1} and {verb2}. How many {item} now?"
_WORD_MUL = "{name} has {a} bags of {b} {item} and {verb2}. How many {item} now?"


def vocabulary() -> list[str]:
  """Every word the templates can produce (sorted), so a tokenizer can cover them exactly."""
  fixed = [TEMPLATE, _WORD_ADD, _WORD_MUL, *_NAMES, *_ITEMS, *_GAIN, *_LOSE, *_SYMBOL_FORMS]
  words = set()
  for text in fixed:
    words.update(re.findall(r"[A-Za-z]+", re.sub(r"{\w+}", " ", text)))  # fields are not words
  return sorted(words)


def _word_question(rng: np.random.Generator, a: int, op1: str, b: int, op2: str, c: int) -> str:
  name = _NAMES[int(rng.integers(len(_NAMES)))]
  item = _ITEMS[int(rng.integers(len(_ITEMS)))]

  def verb(op, n):
    options = _GAIN if op == "+" else _LOSE
    return options[int(rng.integers(len(options)))].format(n=n)

  template = _WORD_MUL if op1 == "*" else _WORD_ADD
  verb1 = "" if op1 == "*" else verb(op1, b)
  return template.format(name=name, item=item, a=a, b=b, verb1=verb1, verb2=verb(op2, c))


def _solution(a: int, op1: str, b: int, op2: str, c: int,
              answer_only: bool = False) -> tuple[str, int]:
  """(worked solution ending in '#### <answer>', or that line alone; answer)."""
  mid = _OPS[op1](a, b)
  ans = _OPS[op2](mid, c)
  if answer_only:
    return f"#### {ans}", ans
  return f"{a} {op1} {b} = {mid}\n{mid} {op2} {c} = {ans}\n#### {ans}", ans


def _split_rng(seed: int, split: str) -> np.random.Generator:
  # crc32, not hash(): stable across processes and Python versions.
  return np.random.default_rng([int(seed), zlib.crc32(split.encode())])


def generate(
    seed: int,
    n: int,
    *,
    split: str = "train",
    exclude: Collection[str] = (),
    max_operand: int = 20,
    max_factor: int = 9,
    mul_prob: float = 0.2,
    word_prob: float = 0.4,
    allow_negative: bool = False,
    answer_only: bool = False,
    allow_fewer: bool = False,
    num_ops: int = 2,
) -> list[Example]:
  """`n` distinct problems drawn from a Generator seeded by (seed, split).

  Ids are 'arith/<split>/<i>'. Problems are distinct by expression (meta['expression'], e.g.
  '23 + 45 - 17'): a word problem and a symbol problem with the same numbers count as one, and
  no expression in `exclude` is drawn (that keeps a test set out of a training pool).
  Operands are in [1, max_operand]; a multiplication (probability `mul_prob`) is a factor in
  [2, max_factor] times an operand. `word_prob` of the problems are word problems.
  `answer_only` solutions are the answer line alone ('#### 7'): with one-digit answers a
  completion is two tokens, few enough to list every one (rft_jax.bandit). `allow_fewer` returns
  what the ranges hold instead of raising when they hold fewer than n distinct problems.
  `num_ops=1`: one operation, symbol problems only ('What is 25 - 49?'), for a small real model
  that cannot do two (configs/smollm2.py); 2 is the embedded task's, drawn as it always was.
  """
  if max_operand < 2 or max_factor < 2:
    raise ValueError(f"max_operand={max_operand} and max_factor={max_factor} must be >= 2")
  if num_ops not in (1, 2):
    raise ValueError(f"num_ops={num_ops}: 1 or 2 operations")
  if num_ops == 1 and word_prob > 0:
    raise ValueError("num_ops=1 problems are symbol problems only: set word_prob=0")
  rng = _split_rng(seed, split)
  seen = set(exclude)
  examples: list[Example] = []
  misses = 0  # consecutive rejected draws: many in a row means the ranges are too small for n
  while len(examples) < n and misses < 10_000:
    misses += 1
    if num_ops == 1:
      example = _one_op(rng, len(examples), split, seen, max_operand, max_factor, mul_prob,
                        allow_negative, answer_only)
      if example is not None:
        examples.append(example)
        misses = 0
      continue
    word = bool(rng.random() < word_prob)
    if rng.random() < mul_prob:
      op1 = "*"
      a = int(rng.integers(2, max_factor + 1))
    else:
      op1 = "+" if rng.random() < 0.5 else "-"
      a = int(rng.integers(1, max_operand + 1))
    op2 = "+" if rng.random() < 0.5 else "-"
    b, c = (int(x) for x in rng.integers(1, max_operand + 1, size=2))
    if (word or not allow_negative) and min(_OPS[op1](a, b), _OPS[op2](_OPS[op1](a, b), c)) < 0:
      continue  # a story never goes below zero; symbol problems only with allow_negative
    expr = f"{a} {op1} {b} {op2} {c}"
    if expr in seen:
      continue
    seen.add(expr)
    misses = 0
    if word:
      question = _word_question(rng, a, op1, b, op2, c)
    else:
      question = _SYMBOL_FORMS[int(rng.integers(len(_SYMBOL_FORMS)))].format(expr=expr)
    solution, answer = _solution(a, op1, b, op2, c, answer_only)
    examples.append(Example(
        id=f"arith/{split}/{len(examples)}", question=question, answer=str(answer),
        solution=solution, meta={"expression": expr, "form": "word" if word else "symbol"}))
  if len(examples) < n and not allow_fewer:
    raise ValueError(f"only {len(examples)} distinct problems found for n={n}: widen the ranges")
  return examples


RANGE_KEYS = ("max_operand", "max_factor", "mul_prob", "word_prob", "allow_negative",
              "answer_only", "num_ops")


def _one_op(rng, index: int, split: str, seen: set, max_operand: int, max_factor: int,
            mul_prob: float, allow_negative: bool, answer_only: bool) -> Example | None:
  """One 'a op b' symbol problem not in `seen` (added to it), or None for a rejected draw."""
  if rng.random() < mul_prob:
    op, a = "*", int(rng.integers(2, max_factor + 1))
  else:
    op, a = ("+" if rng.random() < 0.5 else "-"), int(rng.integers(1, max_operand + 1))
  b = int(rng.integers(1, max_operand + 1))
  value = _OPS[op](a, b)
  expr = f"{a} {op} {b}"
  if (value < 0 and not allow_negative) or expr in seen:
    return None
  seen.add(expr)
  question = _SYMBOL_FORMS[int(rng.integers(len(_SYMBOL_FORMS)))].format(expr=expr)
  solution = f"#### {value}" if answer_only else f"{expr} = {value}\n#### {value}"
  return Example(id=f"arith/{split}/{index}", question=question, answer=str(value),
                 solution=solution, meta={"expression": expr, "form": "symbol"})


def ranges_from_config(task_cfg) -> dict:
  """The `generate` keyword arguments a task config sets (a config names only those it changes)."""
  return {k: task_cfg[k] for k in RANGE_KEYS if k in task_cfg}


def arithmetic_task(seed: int = 0, n_train: int = 2000, n_test: int = 500, **ranges) -> Task:
  """The embedded task: a training pool and a held-out test set with no expression in common.

  The test set depends on (seed, n_test, ranges) only, so changing n_train never moves it.
  `ranges` (RANGE_KEYS) go to `generate`, the same for both splits.
  """
  test = generate(seed, n_test, split="test", **ranges)
  train = generate(seed, n_train, split="train", exclude={e.meta["expression"] for e in test},
                   **ranges)
  return Task(name="arithmetic", grader="arithmetic", train=train, test=test, template=TEMPLATE)


def sft_text(example: Example) -> tuple[str, str]:
  """(prompt, completion) of the supervised warm start: prompt + completion is the full text,
  and the completion is the reference solution exactly as the grader should see it."""
  return TEMPLATE.format(question=example.question), example.solution
