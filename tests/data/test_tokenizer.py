"""The embedded task's tokenizer: exact round trip, one token per digit, fixed special ids,
deterministic vocabulary, atomic save and offline load, length bounds."""

import json
import os
import subprocess
import sys

import pytest

from rft_jax.data import arithmetic, tokenizer
from rft_jax.data.base import Task


@pytest.fixture(scope="module")
def task() -> Task:
  return arithmetic.arithmetic_task(seed=0)


@pytest.fixture(scope="module")
def tok():
  return tokenizer.build_tokenizer()


@pytest.fixture(scope="module")
def texts(task):
  """(prompt, completion) of every train and test example, and of the widest ranges."""
  wide = arithmetic.generate(7, 3000, split="wide", max_operand=99, allow_negative=True)
  examples = [*task.train, *task.test, *wide]
  return [arithmetic.sft_text(e) for e in examples]


def test_special_tokens(tok):
  assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
  assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<bos>", "<eos>")
  # No automatic BOS/EOS: the caller adds them.
  ids = tok("What is 1 + 2?\n")["input_ids"]
  assert tok.bos_token_id not in ids and tok.eos_token_id not in ids
  assert tok.decode([tok.bos_token_id, *ids, tok.eos_token_id], skip_special_tokens=True) == (
      "What is 1 + 2?\n")


def test_round_trip_and_no_unknowns(tok, texts):
  fulls = [p + c for p, c in texts]
  ids = tok(fulls)["input_ids"]
  for text, seq in zip(fulls, ids):
    assert tok.unk_token_id not in seq, text
    assert tok.decode(seq) == text
  # Prompt and completion tokenize independently: their ids concatenate to the full text's.
  prompt_ids = tok([p for p, _ in texts])["input_ids"]
  completion_ids = tok([c for _, c in texts])["input_ids"]
  assert all(p + c == f for p, c, f in zip(prompt_ids, completion_ids, ids))


def test_digits_are_split(tok):
  pieces = tok.convert_ids_to_tokens(tok("12 + 345 = -357\n#### 357")["input_ids"])
  assert pieces == ["1", "2", " +", " 3", "4", "5", " =", " -", "3", "5", "7", "\n", "####",
                    " 3", "5", "7"]
  assert all(len(p.strip()) == 1 for p in pieces if p.strip().isdigit())


def test_length_bounds(tok, texts):
  prompt_lens = [len(x) for x in tok([p for p, _ in texts])["input_ids"]]
  full_lens = [len(x) for x in tok([p + c for p, c in texts])["input_ids"]]
  assert max(prompt_lens) <= 24
  assert max(full_lens) + 2 <= 48  # with the caller's <bos> and <eos>
  # The longest problem the templates allow (2-digit operands, a two-token verb, 3-digit results).
  worst = ("Lily has 99 stamps, buys 99 and gives away 10. How many stamps now?\n"
           "99 + 99 = 198\n198 - 10 = 188\n#### 188")
  assert len(tok(worst)["input_ids"]) == 46


def test_vocab_small_and_deterministic(tok):
  assert len(tok) < 256
  assert tokenizer.build_tokenizer().get_vocab() == tok.get_vocab()
  # A fresh interpreter (its own hash seed, so its own set order) builds the same ids.
  code = ("import json; from rft_jax.data import tokenizer; "
          "print(json.dumps(tokenizer.build_tokenizer().get_vocab(), sort_keys=True))")
  env = {**os.environ, "PYTHONHASHSEED": "123"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=env).stdout
  assert json.loads(out) == tok.get_vocab()


def test_build_from_task_and_texts(task, tok):
  from_task = tokenizer.build_tokenizer(task)
  assert len(from_task) <= len(tok)
  ids = from_task("Ann has 12 pens, buys 3 and loses 4. How many pens now?\n")["input_ids"]
  assert from_task.unk_token_id not in ids
  from_texts = tokenizer.build_tokenizer(["zebra 42\n"])
  assert from_texts.convert_ids_to_tokens(from_texts("zebra 42")["input_ids"]) == [
      "zebra", " 4", "2"]
  assert from_texts.convert_ids_to_tokens(from_texts("x")["input_ids"]) == ["<unk>"]


def test_save_load_identical(tmp_path, tok, texts):
  directory = tmp_path / "tok"
  tokenizer.save_tokenizer(tok, directory)
  assert sorted(os.listdir(tmp_path)) == ["tok"]  # no temporary directory left behind
  loaded = tokenizer.load_tokenizer(directory)
  assert loaded.get_vocab() == tok.get_vocab()
  sample = [p + c for p, c in texts[:500]]
  assert loaded(sample)["input_ids"] == tok(sample)["input_ids"]
  assert [loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id] == [0, 1, 2]
  assert loaded.decode(loaded(sample[0])["input_ids"]) == sample[0]
  # Saving again replaces the directory in place.
  tokenizer.save_tokenizer(tok, directory)
  assert sorted(os.listdir(tmp_path)) == ["tok"]
  assert tokenizer.load_tokenizer(directory).get_vocab() == tok.get_vocab()


def test_load_errors_name_the_directory(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="empty.*lacks tokenizer.json"):
    tokenizer.load_tokenizer(empty)
  with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
    tokenizer.load_tokenizer(tmp_path / "missing")


def test_embedded_tokenizer(tmp_path, tok):
  first = tokenizer.embedded_tokenizer(tmp_path)
  assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
  assert first.get_vocab() == tok.get_vocab()
  # A second call loads the saved one (a changed file would show).
  second = tokenizer.embedded_tokenizer(tmp_path)
  assert second.get_vocab() == tok.get_vocab()
  (tmp_path / "tokenizer" / "tokenizer.json").unlink()
  with pytest.raises(FileNotFoundError, match="tokenizer"):
    tokenizer.embedded_tokenizer(tmp_path)
