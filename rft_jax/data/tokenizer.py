"""The embedded task's tokenizer: a tiny word-level vocabulary with one token per digit.

Built with the HF `tokenizers` library and wrapped as a transformers PreTrainedTokenizerFast, so
the rest of the code treats it like a real checkpoint's tokenizer.

- Pieces: a word, one digit, '####' or one punctuation character, each with an optional leading
  space (' apples', ' 4', '5', ' +'), a newline, or a lone space. '45' is [' 4', '5']: numbers are
  digit sequences, and words carry their space, so a sequence is about one token per word/digit.
- Vocabulary: '<pad>' (id 0), '<bos>' (1), '<eos>' (2), '<unk>' (3), then the sorted pieces (each
  with and without a leading space) of a fixed alphabet: digits, punctuation, '####', newline,
  space and the words. Sorted strings, never a set's iteration order, so every machine and run
  gets the same ids.
- The decoder concatenates the pieces (decoders.Fuse), so decode(encode(x)) == x for every text
  made of known pieces, and clean_up_tokenization_spaces is off.
- No post-processor: encode() never inserts <bos>/<eos>; the caller adds them explicitly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rft_jax import fileio
from rft_jax.data import arithmetic
from rft_jax.data.base import Task

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3 in this order

# One piece per match; alternatives are tried in order, so '####' wins over '#'.
_PIECE = r" ?####| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\n| "
_DIGITS = "0123456789"
_PUNCTUATION = "!#$%'()*+,-./:;<=>?"
_FILES = ("tokenizer.json", "tokenizer_config.json")


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Split(Regex(_PIECE), behavior="isolated")


def _pieces(texts: Iterable[str]) -> set[str]:
  split = _pre_tokenizer()
  return {piece for text in texts for piece, _ in split.pre_tokenize_str(text)}


def build_tokenizer(texts_or_task: Task | Iterable[str] | None = None) -> PreTrainedTokenizerFast:
  """A deterministic word-level tokenizer (vocab < 256 for the embedded task).

  texts_or_task: None for the embedded arithmetic task (its template words, from
  `arithmetic.vocabulary()`); a Task (every prompt and solution of its train and test sets); or
  texts whose pieces become the vocabulary. The base alphabet (digits, punctuation, '####',
  newline, space) is always included; each word also gets its leading-space form.
  """
  if texts_or_task is None:
    words = arithmetic.vocabulary()
  elif isinstance(texts_or_task, Task):
    task = texts_or_task
    examples = [*task.train, *task.test]
    words = _pieces([task.prompt_text(e) for e in examples] + [e.solution for e in examples])
  else:
    words = _pieces(texts_or_task)
  alphabet = {w.lstrip(" ") for w in words if w.strip()} | set(_DIGITS) | set(_PUNCTUATION)
  alphabet.add("####")
  pieces = {p for a in alphabet for p in (a, " " + a)} | {"\n", " "}
  vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *sorted(pieces - set(SPECIAL_TOKENS))])}

  tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tok.pre_tokenizer = _pre_tokenizer()
  tok.decoder = decoders.Fuse()
  return PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
      clean_up_tokenization_spaces=False)


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | os.PathLike) -> None:
  """save_pretrained into a temporary directory beside `directory`, then rename it into place:
  a crash leaves either no directory or a complete one, never a half-written one. An existing
  `directory` is replaced."""
  directory = os.path.abspath(os.fspath(directory))
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(directory)}.tmp-")
  try:
    fileio.chmod_as_created(tmp, directory=True)  # not mkdtemp's 0700 once renamed into place
    tok.save_pretrained(tmp)
    if os.path.exists(directory):
      # rename() does not replace a non-empty directory: move the old one aside first.
      old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(directory)}.old-")
      os.rename(directory, os.path.join(old, "tokenizer"))
      os.rename(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, directory)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
  """The tokenizer saved in `directory`, loaded offline."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"tokenizer directory {directory!r} does not exist")
  missing = [f for f in _FILES if not os.path.isfile(os.path.join(directory, f))]
  if missing:
    raise FileNotFoundError(
        f"tokenizer directory {directory!r} lacks {', '.join(missing)}: not a saved tokenizer")
  return PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)


def embedded_tokenizer(workdir: str | os.PathLike) -> PreTrainedTokenizerFast:
  """The embedded task's tokenizer: loaded from '<workdir>/tokenizer' if present (so a resumed
  run keeps the ids its checkpoint was trained with), else built, saved there and returned."""
  directory = os.path.join(os.fspath(workdir), "tokenizer")
  if not os.path.exists(directory):
    save_tokenizer(build_tokenizer(), directory)
  return load_tokenizer(directory)
