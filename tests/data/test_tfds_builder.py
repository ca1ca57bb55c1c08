"""The optional TFDS builder: same Examples as the loaders, rebuilt when the files change."""

import json
import sys

import pytest

from rft_jax.data import gsm8k, math as math_data, tfds_builder


def test_missing_tfds_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
  tfds_builder.builder_class.cache_clear()
  try:
    with pytest.raises(ImportError, match=r"pip install 'rft_jax\[tfds\]'"):
      tfds_builder.build("math", {}, "/nonexistent")
  finally:
    tfds_builder.builder_class.cache_clear()


def test_unknown_task():
  with pytest.raises(ValueError, match="unknown task 'mmlu'"):
    tfds_builder.build("mmlu", {}, "/nonexistent")


@pytest.fixture
def tfds():
  return pytest.importorskip("tensorflow_datasets", reason="optional extra [tfds] not installed")


def test_builder_yields_the_loader_examples(tfds, tmp_path):
  g = tmp_path / "g.jsonl"
  g.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"r <<1+1=2>>\n#### {i},000"})
                       + "\n" for i in range(7)))
  builder = tfds_builder.build("gsm8k", {"train": g, "test": g}, tmp_path / "tfds")
  assert tfds_builder.load_examples(builder, "train") == gsm8k.load_gsm8k(g, "train")
  assert tfds_builder.load_examples(builder, "test") == gsm8k.load_gsm8k(g, "test")
  assert (tmp_path / "tfds/rft_jax_tasks/gsm8k/1.0.0").is_dir()
  assert any(p.name.endswith("array_record-00000-of-00001")
             for p in (tmp_path / "tfds/rft_jax_tasks/gsm8k/1.0.0").iterdir())

  # Changed file contents: the dataset is rebuilt, not silently reused.
  g.write_text(g.read_text().splitlines(keepends=True)[0])
  rebuilt = tfds_builder.build("gsm8k", {"train": g, "test": g}, tmp_path / "tfds")
  assert [e.answer for e in tfds_builder.load_examples(rebuilt, "train")] == ["0000"]


def test_builder_on_math500(tfds, shared_data, tmp_path):
  path = shared_data / "math/test.jsonl"
  builder = tfds_builder.build("math", {"test": path}, tmp_path)
  source = tfds_builder.data_source(builder, "test")
  assert len(source) == 500
  assert tfds_builder.load_examples(builder, "test") == math_data.load_math(path, "test")
