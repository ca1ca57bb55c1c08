"""GSM8K / MATH loaders on small hand-written files: formats, filters, and errors naming file:line."""

import json
import re

import pytest

from rft_jax.data import gsm8k, math as math_data, prompts_text
from rft_jax.data.jsonl import DataError, read_jsonl


def write_lines(path, lines):
  path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
  return path


# ---- jsonl errors -----------------------------------------------------------------------------

def test_non_utf8_line_names_file_and_line(tmp_path):
  """A Latin-1 'é' on line 3: a DataError with the file and line, not a UnicodeDecodeError
  whose position is an offset into a read buffer."""
  p = tmp_path / "latin1.jsonl"
  p.write_bytes(b'{"question": "a", "answer": "#### 1"}\n\n{"question": "caf\xe9", '
                b'"answer": "#### 2"}\n')
  with pytest.raises(DataError, match=re.escape(f"{p}:3: not UTF-8 (invalid continuation byte "
                                                "at byte 17 of the line)")):
    list(read_jsonl(p))


def test_malformed_line_names_file_and_line(tmp_path):
  p = write_lines(tmp_path / "bad.jsonl", [{"question": "q", "answer": "#### 1"}, '{"question": "q", "ans'])
  with pytest.raises(DataError, match=re.escape(f"{p}:") + r"2: not valid JSON"):
    gsm8k.load_gsm8k(p)


def test_non_object_line(tmp_path):
  p = write_lines(tmp_path / "list.jsonl", ["[1, 2]"])
  with pytest.raises(DataError, match=re.escape(f"{p}:") + r"1: expected a JSON object, got list"):
    list(read_jsonl(p))


def test_missing_field_names_field_file_and_line(tmp_path):
  p = write_lines(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 1"}, "", {"question": "q2"}])
  # Line 2 is blank (skipped), so the record without 'answer' is on line 3.
  with pytest.raises(DataError, match=re.escape(f"{p}:") + r"3: field 'answer' is missing \(has: question\)"):
    gsm8k.load_gsm8k(p)
  m = write_lines(tmp_path / "m.jsonl", [{"solution": r"\boxed{1}", "answer": "1"}])
  with pytest.raises(DataError, match=re.escape(f"{m}:") + r"1: field 'problem' / 'question' is missing"):
    math_data.load_math(m)


def test_wrong_type_and_missing_file(tmp_path):
  p = write_lines(tmp_path / "t.jsonl", [{"question": 7, "answer": "#### 1"}])
  with pytest.raises(DataError, match=re.escape(f"{p}:") + r"1: field 'question' should be str, got int"):
    gsm8k.load_gsm8k(p)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    gsm8k.load_gsm8k(tmp_path / "nope.jsonl")


# ---- GSM8K ------------------------------------------------------------------------------------

def test_gsm8k_loader(tmp_path):
  p = write_lines(tmp_path / "test.jsonl", [
      {"question": "How many?", "answer": "It costs 2*540=<<2*540=1080>>1080.\n#### 1,080"},
      {"question": "Debt?", "answer": "Owes 3-13=<<3-13=-10>>-10\n#### -10"},
  ])
  exs = gsm8k.load_gsm8k(p, "test")
  assert [e.id for e in exs] == ["gsm8k/test/0", "gsm8k/test/1"]
  assert [e.answer for e in exs] == ["1080", "-10"]
  assert exs[0].solution == "It costs 2*540=1080.\n#### 1,080"  # calculator annotation removed
  assert exs[0].meta["source"] == f"{p}:1"
  raw = gsm8k.load_gsm8k(p, "test", keep_calculator_annotations=True)
  assert "<<2*540=1080>>" in raw[0].solution


def test_gsm8k_needs_final_answer_and_drops_empty(tmp_path):
  p = write_lines(tmp_path / "a.jsonl", [{"question": "q", "answer": "no marker"}])
  with pytest.raises(DataError, match=re.escape(f"{p}:") + r"1: field 'answer' has no '####'"):
    gsm8k.load_gsm8k(p)
  p = write_lines(tmp_path / "b.jsonl", [{"question": "q", "answer": "x\n#### "},
                                         {"question": "r", "answer": "y\n#### 4"}])
  assert [e.id for e in gsm8k.load_gsm8k(p, "train")] == ["gsm8k/train/1"]
  assert [e.answer for e in gsm8k.load_gsm8k(p, "train", drop_bad=False)] == ["", "4"]


# ---- MATH -------------------------------------------------------------------------------------

PRM800K_ROW = {"problem": "What is $1+1$?", "solution": r"Clearly $\boxed{2}$.", "answer": "2",
               "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"}


def test_math_prm800k_layout(tmp_path):
  p = write_lines(tmp_path / "test.jsonl", [PRM800K_ROW])
  (ex,) = math_data.load_math(p)
  assert (ex.id, ex.question, ex.answer) == ("test/prealgebra/1.json", "What is $1+1$?", "2")
  assert ex.meta["subject"] == "Prealgebra" and ex.meta["level"] == 1
  assert ex.meta["split"] == "test"  # from the file name when not given


def test_math_lighteval_layout(tmp_path):
  p = write_lines(tmp_path / "light.jsonl", [
      {"problem": "P1", "level": "Level 3", "type": "Algebra",
       "solution": r"First \boxed{4}, so finally $\boxed{\frac{1}{2}}$."},
      {"problem": "P2", "level": "Level ?", "type": "Geometry", "solution": r"\boxed 9"},
      {"problem": "P3", "level": None, "type": "Geometry", "solution": r"\boxed{30^\circ.}"},
  ])
  exs = math_data.load_math(p, "train")
  assert [e.id for e in exs] == ["train/0", "train/1", "train/2"]
  assert [e.answer for e in exs] == [r"\frac{1}{2}", "9", r"30^\circ"]  # last box; '.' stripped
  assert [e.meta["level"] for e in exs] == [3, None, None]
  assert [e.meta["subject"] for e in exs] == ["Algebra", "Geometry", "Geometry"]
  assert exs[2].meta["raw_answer"] == "30^\\circ." and "raw_answer" not in exs[0].meta


def test_math_answer_missing_without_box(tmp_path):
  p = write_lines(tmp_path / "m.jsonl", [{"problem": "P", "solution": "no box here"}])
  with pytest.raises(DataError, match=re.escape(f"{p}:") + r"1: field 'answer' is missing"):
    math_data.load_math(p)


def test_math_bad_level(tmp_path):
  p = write_lines(tmp_path / "m.jsonl", [dict(PRM800K_ROW, level="hard")])
  with pytest.raises(DataError, match=re.escape(f"{p}:") + r"1: field 'level'"):
    math_data.load_math(p)


def test_math_bad_rows_dropped_by_default(tmp_path):
  rows = [
      dict(PRM800K_ROW, unique_id="train/number_theory/7115.json", answer="", solution=r"\boxed{}"),
      dict(PRM800K_ROW, unique_id="train/algebra/152.json", answer="(8,38)"),  # multi-box list
      dict(PRM800K_ROW, unique_id="train/algebra/1.json", answer="2."),
  ]
  p = write_lines(tmp_path / "train.jsonl", rows)
  kept = math_data.load_math(p)
  assert [e.id for e in kept] == ["train/algebra/1.json"]
  assert kept[0].answer == "2"
  everything = math_data.load_math(p, drop_bad=False)
  assert [e.id for e in everything] == [r["unique_id"] for r in rows]
  assert len(math_data.MULTI_BOX_IDS) == 48


# ---- tasks and prompts ------------------------------------------------------------------------

def test_prompts_are_the_papers():
  q = "What is $\\{1,2\\}$?"  # braces in a question are fine: only the template is formatted
  assert prompts_text.GSM8K.format(question=q) == (
      q + " Let's think step by step and output the final answer after \"####\".")
  assert prompts_text.MATH.format(question=q) == (
      q + " Let's think step by step and output the final answer within \\boxed{}.")
  assert prompts_text.GSM8K_BOXED.format(question=q) == prompts_text.MATH.format(question=q)
  assert prompts_text.template("gsm8k") is prompts_text.GSM8K
  with pytest.raises(ValueError, match="unknown prompt template 'x'"):
    prompts_text.template("x")


def test_tasks(tmp_path):
  g = write_lines(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "r\n#### 5"}])
  task = gsm8k.gsm8k_task(g, g)
  assert (task.name, task.grader, len(task.train), len(task.test)) == ("gsm8k", "gsm8k", 1, 1)
  assert task.prompt_text(task.test[0]).startswith("Q? Let's think step by step")
  assert task.grade("so #### 5", task.test[0]) == 1.0
  boxed = gsm8k.gsm8k_task(None, g, template=prompts_text.GSM8K_BOXED)
  assert boxed.train == [] and boxed.prompt_text(boxed.test[0]).endswith("\\boxed{}.")
  assert boxed.grade(r"\boxed{5}", boxed.test[0]) == 1.0

  m = write_lines(tmp_path / "m.jsonl", [PRM800K_ROW])
  mt = math_data.math_task(None, m)
  assert (mt.grader, mt.train) == ("math", [])
  assert mt.prompt_text(mt.test[0]).endswith("within \\boxed{}.")
  rewards, counts = mt.grade_batch([r"\boxed{2}", r"\boxed{3}", "2"], [mt.test[0]] * 3)
  assert rewards.tolist() == [1.0, 0.0, 0.0]
  assert (counts["correct"], counts["wrong"], counts["no_answer"]) == (1, 1, 1)
