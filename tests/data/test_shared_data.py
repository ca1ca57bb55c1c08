"""The shared GSM8K / MATH files: row counts, bad-row filters, and every reference solution grading
as correct against its own gold (the grader's self-consistency check, through the batched path)."""

import re
import time

from rft_jax import rewards
from rft_jax.data import gsm8k, math as math_data


def test_counts_and_filters(shared_data):
  assert len(gsm8k.load_gsm8k(shared_data / "gsm8k/train.jsonl", "train")) == 7473
  assert len(gsm8k.load_gsm8k(shared_data / "gsm8k/test.jsonl", "test")) == 1319
  train_all = math_data.load_math(shared_data / "math/train.jsonl", "train", drop_bad=False)
  assert len(train_all) == 12000
  assert sorted(e.id for e in train_all if e.meta["level"] is None) == [
      "train/geometry/377.json", "train/geometry/471.json"]
  empty = sorted(e.id for e in train_all if not e.answer)
  assert empty == ["train/number_theory/7115.json", "train/number_theory/7117.json"]
  train = math_data.load_math(shared_data / "math/train.jsonl", "train")
  assert len(train) == 12000 - 48 - 2
  assert not {e.id for e in train} & math_data.MULTI_BOX_IDS
  assert len(math_data.load_math(shared_data / "math/test.jsonl", "test")) == 500


def test_multi_box_ids_match_the_data_readme(shared_data):
  """MULTI_BOX_IDS is hard-coded; check it against the list in shared/data/README.md."""
  text = (shared_data / "README.md").read_text()
  section = text[text.index("Ids:"):text.index("(each `.json`)")]
  listed = set()
  for m in re.finditer(r"(train|test)/(\w+)/(\{[^}]*\}|\d+)", section):
    for n in m.group(3).strip("{}").split(","):
      listed.add(f"{m.group(1)}/{m.group(2)}/{n.strip()}.json")
  assert listed == set(math_data.MULTI_BOX_IDS)


def test_math_reference_solutions_grade_correct(shared_data):
  exs = (math_data.load_math(shared_data / "math/train.jsonl", "train")
         + math_data.load_math(shared_data / "math/test.jsonl", "test"))
  start = time.monotonic()
  scores, counts = rewards.grade_batch("math", [e.solution for e in exs], [e.answer for e in exs])
  elapsed = time.monotonic() - start
  print(f"\nMATH reference solutions: {len(exs)} graded in {elapsed:.2f} s; {dict(counts)}")
  failed = [e.id for e, s in zip(exs, scores) if s != 1.0]
  assert failed == [] and counts["correct"] == len(exs) == 12450


def test_math_multi_box_rows_are_what_the_hedging_rule_rejects(shared_data):
  """The dropped multi-box rows: the grader rejects those whose boxes really differ (37 of 48)
  and accepts those that box one value in two spellings (11: e.g. '\\dfrac{1}{6}', '\\frac16')."""
  train_all = math_data.load_math(shared_data / "math/train.jsonl", "train", drop_bad=False)
  bad = [e for e in train_all if e.id in math_data.MULTI_BOX_IDS]
  assert len(bad) == 48  # all in train.jsonl (its 'test/' ids are the 4,500 outside MATH-500)
  scores, counts = rewards.grade_batch("math", [e.solution for e in bad], [e.answer for e in bad])
  assert (counts["correct"], counts["wrong"]) == (11, 37)
  by_id = dict(zip((e.id for e in bad), scores))
  assert by_id["train/algebra/152.json"] == 0.0  # boxes (-2,18) and (8,38): a two-part answer
  assert by_id["train/number_theory/796.json"] == 0.0  # boxes 28 and 28_9


def test_gsm8k_reference_solutions_grade_correct(shared_data):
  exs = (gsm8k.load_gsm8k(shared_data / "gsm8k/train.jsonl", "train")
         + gsm8k.load_gsm8k(shared_data / "gsm8k/test.jsonl", "test"))
  start = time.monotonic()
  scores, counts = rewards.grade_batch("gsm8k", [e.solution for e in exs], [e.answer for e in exs])
  print(f"\nGSM8K reference solutions: {len(exs)} graded in {time.monotonic() - start:.2f} s")
  assert counts["correct"] == len(exs) == 8792 and scores.min() == 1.0
