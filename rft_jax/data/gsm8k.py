"""GSM8K (Cobbe et al. 2021) from local JSON lines: loader and Task.

File format (the original release, also the HF 'openai/gsm8k' main config): one object per line
with `question` (str) and `answer` (str: step-by-step reasoning, then a final line '#### N').
The gold is the text after the last '####' with thousands commas removed ('1,080' -> '1080').
The reference solution keeps the '#### N' line (so it grades as correct) and, by default, loses
the calculator annotations '<<48/2=24>>' (they are tool calls, not text a model should imitate).
"""

from __future__ import annotations

import logging
import os
import re

from rft_jax.data import prompts_text
from rft_jax.data.base import Example, Task
from rft_jax.data.jsonl import DataError, field, read_jsonl

logger = logging.getLogger(__name__)

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def final_answer(answer_text: str) -> str | None:
  """The gold number of a GSM8K `answer` field: after the last '####', commas removed; None when
  there is no '####'."""
  if "####" not in answer_text:
    return None
  return answer_text.rsplit("####", 1)[1].strip().replace(",", "")


def load_gsm8k(
    path: str | os.PathLike,
    split_name: str = "train",
    *,
    drop_bad: bool = True,
    keep_calculator_annotations: bool = False,
) -> list[Example]:
  """Examples of one GSM8K file. Ids are 'gsm8k/<split_name>/<row>' (0-based row in the file).

  A line without a '####' final answer is a DataError (path:line). Rows with an empty final
  answer are bad rows: dropped (and logged) unless `drop_bad=False`. (The shared copies have none.)
  """
  examples, dropped = [], []
  for row, (line_no, record) in enumerate(read_jsonl(path)):
    where = f"{os.fspath(path)}:{line_no}"
    question = field(record, "question", where)
    answer_text = field(record, "answer", where)
    gold = final_answer(answer_text)
    if gold is None:
      raise DataError(f"{where}: field 'answer' has no '####' final-answer line")
    ex_id = f"gsm8k/{split_name}/{row}"
    if not gold and drop_bad:
      dropped.append(ex_id)
      continue
    solution = answer_text if keep_calculator_annotations else _CALCULATOR.sub("", answer_text)
    examples.append(Example(
        id=ex_id, question=question.strip(), answer=gold, solution=solution,
        meta={"split": split_name, "source": where},
    ))
  if dropped:
    logger.info("%s: dropped %d rows with an empty final answer: %s", path, len(dropped), dropped)
  return examples


def gsm8k_task(
    train_path: str | os.PathLike | None,
    test_path: str | os.PathLike | None,
    *,
    template: str = prompts_text.GSM8K,
    drop_bad: bool = True,
    name: str = "gsm8k",
) -> Task:
  """The GSM8K task: graded by rewards 'gsm8k' ('#### N' or \\boxed{N}); a None path gives an
  empty split (e.g. evaluation only)."""
  train = load_gsm8k(train_path, "train", drop_bad=drop_bad) if train_path is not None else []
  test = load_gsm8k(test_path, "test", drop_bad=drop_bad) if test_path is not None else []
  return Task(name=name, grader="gsm8k", train=train, test=test, template=template)
