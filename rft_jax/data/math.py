"""MATH (Hendrycks et al. 2021) and MATH-500 from local JSON lines: loader and Task.

Accepted record layouts (field alternatives in the order tried):
  * prm800k / MATH-500 / shared/data: problem, solution, answer, subject, level (int), unique_id.
  * HF MATH-lighteval, hendrycks 'competition_math': problem, solution, type, level ('Level 3');
    `answer` is then the content of the last \\boxed{} of the solution.
  `problem` (or `question`) is required; `answer` is required unless the solution has a box.
  `level` may be an int, 'Level N', 'Level ?' or null (-> None); `subject` falls back to `type`.
  Without `unique_id` (or `id`), ids are '<split_name>/<row>'.

Gold answers lose trailing sentence punctuation ('30^\\circ.' -> '30^\\circ'), as GRADING.md
recommends; the original is kept in meta['raw_answer'] when it changed.

Bad rows (shared/data/README.md, "Known problems") are dropped unless `drop_bad=False`:
  * an empty gold answer (train/number_theory/7115.json and 7117.json),
  * the 48 problems whose solution boxes two or more different expressions (MULTI_BOX_IDS):
    their `answer` holds only the last box, so it is often incomplete.
"""

from __future__ import annotations

import logging
import os
import re

from rft_jax.data import prompts_text
from rft_jax.data.base import Example, Task
from rft_jax.data.jsonl import DataError, field, read_jsonl
from rft_jax.rewards.extract import find_boxes, strip_trailing_punct

logger = logging.getLogger(__name__)

# shared/data/README.md, "48 solutions box two or more *different* expressions".
MULTI_BOX_IDS = frozenset(
    f"{split}/{subject}/{n}.json"
    for split, subject, numbers in [
        ("train", "algebra", (152, 535, 1397, 1771, 2156)),
        ("train", "counting_and_probability", (955,)),
        ("train", "geometry", (892,)),
        ("train", "intermediate_algebra", (396, 1113, 1266, 1486, 1609, 1964)),
        ("train", "number_theory", (796, 837, 7041)),
        ("train", "prealgebra", (452,)),
        ("train", "precalculus", (571, 722, 860, 865, 982, 1040, 1089, 1149, 1269)),
        ("test", "algebra", (1197, 1730, 1861, 1878)),
        ("test", "geometry", (66, 787, 1125)),
        ("test", "intermediate_algebra", (25, 225, 702, 747, 1020, 1114, 1855, 2089)),
        ("test", "prealgebra", (177, 224, 1088, 1407)),
        ("test", "precalculus", (679, 1227, 1233)),
    ]
    for n in numbers
)

_LEVEL = re.compile(r"^\s*(?:level\s*)?(\d+)\s*$", re.IGNORECASE)


def parse_level(value, where: str) -> int | None:
  """1..5 from 3 or 'Level 3'; None for null or 'Level ?' (the original's unknown level)."""
  if value is None or isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  m = _LEVEL.match(value)
  if m:
    return int(m.group(1))
  if "?" in value or not value.strip():
    return None
  raise DataError(f"{where}: field 'level' should be an integer or 'Level N', got {value!r}")


def last_boxed(solution: str) -> str | None:
  """Content of the last \\boxed{} of a reference solution (the MATH convention for the answer)."""
  boxes = find_boxes(solution)
  return boxes[-1].content if boxes else None


def load_math(
    path: str | os.PathLike,
    split_name: str | None = None,
    *,
    drop_bad: bool = True,
) -> list[Example]:
  """Examples of one MATH-style file (see the module doc for layouts, ids and bad rows).

  meta: subject (str, '' if absent), level (int or None), split, source ('path:line') and
  raw_answer when the gold was cleaned.
  """
  path_str = os.fspath(path)
  split_name = split_name or os.path.splitext(os.path.basename(path_str))[0]
  examples, dropped = [], []
  for row, (line_no, record) in enumerate(read_jsonl(path)):
    where = f"{path_str}:{line_no}"
    problem = field(record, ("problem", "question"), where)
    solution = field(record, "solution", where, default="")
    raw_answer = field(record, "answer", where, default=None)
    if raw_answer is None:
      raw_answer = last_boxed(solution)
      if raw_answer is None:
        raise DataError(
            f"{where}: field 'answer' is missing and the solution has no \\boxed{{}} to take it from"
        )
    ex_id = field(record, ("unique_id", "id"), where, types=(str, int), default=None)
    ex_id = f"{split_name}/{row}" if ex_id is None else str(ex_id)
    subject = field(record, ("subject", "type"), where, default="")
    level = parse_level(field(record, "level", where, types=(int, str, type(None)), default=None),
                        where)
    answer = strip_trailing_punct(raw_answer)
    if drop_bad and (not answer or ex_id in MULTI_BOX_IDS):
      dropped.append(ex_id)
      continue
    meta = {"subject": subject, "level": level, "split": split_name, "source": where}
    if answer != raw_answer:
      meta["raw_answer"] = raw_answer
    examples.append(Example(id=ex_id, question=problem, answer=answer, solution=solution, meta=meta))
  if dropped:
    logger.info("%s: dropped %d bad rows (empty or multi-box gold): %s", path_str, len(dropped),
                dropped)
  return examples


def math_task(
    train_path: str | os.PathLike | None,
    test_path: str | os.PathLike | None,
    *,
    template: str = prompts_text.MATH,
    drop_bad: bool = True,
    name: str = "math",
) -> Task:
  """The MATH task (train: MATH 12k, test: MATH-500 in shared/data), graded by rewards 'math'.
  A None path gives an empty split."""
  train = load_math(train_path, "train", drop_bad=drop_bad) if train_path is not None else []
  test = load_math(test_path, "test", drop_bad=drop_bad) if test_path is not None else []
  return Task(name=name, grader="math", train=train, test=test, template=template)
