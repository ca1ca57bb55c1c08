"""A TFDS builder over the local GSM8K / MATH files (optional extra: `pip install rft_jax[tfds]`).

It turns the same JSON-lines files the loaders read into a TFDS dataset stored as array_record,
whose random-access data source (`tfds.data_sources`, no TensorFlow needed) yields the same
Examples, in file order, as `load_gsm8k` / `load_math` (same filters, same ids, same meta). This
is for pipelines that want TFDS/Grain-style random access; the trainer itself takes the lists.

    builder = build("math", {"train": "../shared/data/math/train.jsonl",
                             "test": "../shared/data/math/test.jsonl"}, data_dir="/tmp/tfds")
    examples = load_examples(builder, "test")   # == load_math(test file, "test")

The prepared dataset lives in data_dir/rft_jax_tasks/<task>/<version>; it is reused when the
source files are unchanged (their sha256 is recorded in the dataset's metadata) and rebuilt
when they change. tensorflow_datasets is imported only when a function here is called.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

from rft_jax import fileio
from rft_jax.data.base import Example

TASKS = ("gsm8k", "math")
INSTALL_HINT = "pip install 'rft_jax[tfds]'  (tensorflow-datasets and importlib_resources)"


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"rft_jax.data.tfds_builder needs tensorflow-datasets: {INSTALL_HINT}") from e
  return tfds


def _load(task: str, path: str, split: str, drop_bad: bool) -> list[Example]:
  if task == "gsm8k":
    from rft_jax.data.gsm8k import load_gsm8k
    return load_gsm8k(path, split, drop_bad=drop_bad)
  from rft_jax.data.math import load_math
  return load_math(path, split, drop_bad=drop_bad)


@functools.cache
def builder_class():
  """The GeneratorBasedBuilder subclass (defined on first use, so TFDS stays optional)."""
  tfds = _tfds()
  import numpy as np

  class RftJaxTasks(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GSM8K or MATH from local JSON lines: one config per task; files given at construction."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Examples of rft_jax.data.gsm8k / rft_jax.data.math."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=t, description=f"{t} from local JSONL") for t in TASKS
    ]

    def __init__(self, *, files: Mapping[str, str] | None = None, drop_bad: bool = True, **kwargs):
      self._files = {k: os.fspath(v) for k, v in (files or {}).items()}
      self._drop_bad = drop_bad
      super().__init__(**kwargs)

    def _info(self):
      text = tfds.features.Text()
      return tfds.core.DatasetInfo(
          builder=self,
          description=__doc__,
          features=tfds.features.FeaturesDict({
              "id": text, "question": text, "answer": text, "solution": text,
              "subject": text, "level": tfds.features.Scalar(dtype=np.int32),  # -1: unknown
              "meta_json": text,  # the Example's meta, exactly
          }),
          metadata=tfds.core.MetadataDict(
              sources={k: fileio.sha256_of(v) for k, v in self._files.items()},
              drop_bad=self._drop_bad),
          disable_shuffling=True,  # keep file order: the data source yields the loader's order
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # local files only
      if not self._files:
        raise ValueError("RftJaxTasks needs files={'train': path, ...} to prepare the dataset")
      return {split: self._generate_examples(split, path) for split, path in self._files.items()}

    def _generate_examples(self, split, path):
      for row, ex in enumerate(_load(self.builder_config.name, path, split, self._drop_bad)):
        level = ex.meta.get("level")
        yield row, {
            "id": ex.id, "question": ex.question, "answer": ex.answer, "solution": ex.solution,
            "subject": ex.meta.get("subject") or "", "level": -1 if level is None else int(level),
            "meta_json": json.dumps(dict(ex.meta), sort_keys=True),
        }

  return RftJaxTasks


def build(task: str, files: Mapping[str, str | os.PathLike], data_dir: str | os.PathLike, *,
          drop_bad: bool = True):
  """Prepare (or reuse) the array_record dataset of `task` from `files` {split: path}; returns
  the builder. A dataset prepared from different file contents or filters is rebuilt."""
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
  tfds = _tfds()
  files = {k: os.fspath(v) for k, v in files.items()}
  for split, path in files.items():
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{task} {split} file not found: {path}")
  cls = builder_class()
  builder = cls(config=task, data_dir=os.fspath(data_dir), files=files, drop_bad=drop_bad,
                file_format="array_record")
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared():
    stored = dict(builder.info.metadata or {})
    wanted = {"sources": {k: fileio.sha256_of(v) for k, v in files.items()},
              "drop_bad": drop_bad}
    if stored != wanted:
      mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # regenerate from the new files
      builder = cls(config=task, data_dir=os.fspath(data_dir), files=files, drop_bad=drop_bad,
                    file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
  return builder


def data_source(builder, split: str):
  """The random-access data source of one split (len() and [i])."""
  return builder.as_data_source(split=split)


def to_example(record: Mapping[str, Any]) -> Example:
  """An Example from one data-source record (bytes fields decoded)."""
  def text(x):
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)
  return Example(id=text(record["id"]), question=text(record["question"]),
                 answer=text(record["answer"]), solution=text(record["solution"]),
                 meta=json.loads(text(record["meta_json"])))


def load_examples(builder, split: str) -> list[Example]:
  """Every Example of `split`, in file order."""
  source = data_source(builder, split)
  return [to_example(source[i]) for i in range(len(source))]
