"""rft_jax.models.load / save errors: each names the file, tensor or setting, before any weight
is read (nothing loaded half-way)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from test_hf_parity import make_checkpoint, make_tokenizer  # noqa: E402

from rft_jax import models  # noqa: E402
from rft_jax.models import hf as hf_lib  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
  directory = tmp_path_factory.mktemp("good")
  make_checkpoint(directory, "qwen2", tie=True)
  return directory


@pytest.fixture
def ckpt(good, tmp_path):
  """A fresh copy of the good checkpoint to break."""
  return shutil.copytree(good, tmp_path / "ckpt")


@pytest.fixture
def no_weight_reads(monkeypatch):
  """Fails the test if any tensor data is read (errors must come from the headers alone)."""
  def forbidden(entry):
    raise AssertionError(f"read {entry} before the checkpoint was validated")
  monkeypatch.setattr(hf_lib, "_read_tensor", forbidden)


def _edit_config(directory, **changes):
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    c = json.load(f)
  c.update(changes)
  with open(path, "w") as f:
    json.dump(c, f)


def _edit_weights(directory, edit):
  path = os.path.join(directory, "model.safetensors")
  tensors = safetensors_numpy.load_file(path)
  edit(tensors)
  safetensors_numpy.save_file(tensors, path, metadata={"format": "pt"})


def test_loads_when_intact(ckpt):
  assert models.load(ckpt).config.variant == "qwen2"


def test_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope: checkpoint not found"):
    models.load(tmp_path / "nope")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_named(ckpt, name, no_weight_reads):
  os.remove(os.path.join(ckpt, name))
  with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
    models.load(ckpt)


def test_missing_shard_is_named(good, tmp_path, no_weight_reads):
  model = transformers.AutoModelForCausalLM.from_pretrained(good)
  model.save_pretrained(tmp_path, max_shard_size="40KB")
  make_tokenizer("qwen2").save_pretrained(tmp_path)
  shard = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))[1]
  os.remove(tmp_path / shard)
  with pytest.raises(FileNotFoundError, match=f"{shard}: weights shard listed in"):
    models.load(tmp_path)


def test_bad_json_is_named(ckpt):
  with open(os.path.join(ckpt, "config.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
    models.load(ckpt)


def test_unsupported_model_type_lists_supported(ckpt):
  _edit_config(ckpt, model_type="gpt2")
  with pytest.raises(ValueError, match="model_type 'gpt2' is not supported; supported: llama, "
                                       "qwen2, olmo2"):
    models.load(ckpt)


@pytest.mark.parametrize("changes, message", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     "RoPE type 'yarn' is not supported; supported: default, llama3"),
    ({"use_sliding_window": True}, "use_sliding_window=true is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"hidden_size": None}, "missing hidden_size"),
])
def test_unsupported_settings(ckpt, changes, message):
  _edit_config(ckpt, **changes)
  with pytest.raises(ValueError, match=message):
    models.load(ckpt)


def test_llama_attention_bias_is_refused():
  hf = {"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "attention_bias": True}
  with pytest.raises(ValueError, match="attention_bias=true"):
    hf_lib.model_config_from_hf(hf)


def test_unsupported_dtype(ckpt):
  with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
    models.load(ckpt, dtype="int8")


def test_unexpected_shape_is_named(ckpt, no_weight_reads):
  name = "model.layers.1.self_attn.k_proj.weight"
  _edit_weights(ckpt, lambda t: t.__setitem__(name, np.zeros((16, 64), np.float32)))
  with pytest.raises(ValueError, match=rf"tensor {name} has shape \[16, 64\], expected \[32, 64\]"):
    models.load(ckpt)


def test_unexpected_name_is_named(ckpt, no_weight_reads):
  name = "model.layers.0.mlp.extra_proj.weight"
  _edit_weights(ckpt, lambda t: t.__setitem__(name, np.zeros((4, 4), np.float32)))
  with pytest.raises(ValueError, match=rf"unexpected tensor {name} \[4, 4\]"):
    models.load(ckpt)


def test_missing_tensor_is_named(ckpt, no_weight_reads):
  name = "model.layers.0.self_attn.q_proj.bias"
  _edit_weights(ckpt, lambda t: t.pop(name))
  with pytest.raises(ValueError, match=rf"missing tensor {name} \(expected shape \[64\]\)"):
    models.load(ckpt)


def test_config_and_weights_disagree(ckpt, no_weight_reads):
  _edit_config(ckpt, num_hidden_layers=3)
  with pytest.raises(ValueError, match=r"missing tensor model\.layers\.2\."):
    models.load(ckpt)


def test_truncated_weights(ckpt, no_weight_reads):
  path = os.path.join(ckpt, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)
  with pytest.raises(ValueError, match="inconsistent offsets"):
    models.load(ckpt)


def _edit_header(directory, edit, tail=b""):
  """Rewrites model.safetensors' JSON header through edit(header), the data kept (plus tail)."""
  path = os.path.join(directory, "model.safetensors")
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header, data = json.loads(f.read(n)), f.read()
  edit(header)
  raw = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(raw).to_bytes(8, "little") + raw + data + tail)


def _two_alike(header):
  """Two tensors of the same dtype and shape (RMSNorm weights)."""
  names = [k for k in header if k != "__metadata__"]
  return next((a, b) for a in names for b in names if a < b and header[a]["shape"]
              == header[b]["shape"] and header[a]["dtype"] == header[b]["dtype"])


@pytest.mark.parametrize("case, message", [
    ("overlap", "tensor data overlaps or leaves a gap"),
    ("negative", "has a malformed header entry"),
    ("no_dtype", "has a malformed header entry"),
    ("trailing", "the tensors end at byte"),
])
def test_malformed_safetensors_headers(ckpt, case, message, no_weight_reads):
  """What the safetensors library refuses: tensors sharing bytes (both would read the same
  weights), an offset into the header, an entry without a dtype, bytes after the last tensor."""
  def edit(header):
    a, b = _two_alike(header)
    if case == "overlap":
      header[b]["data_offsets"] = header[a]["data_offsets"]
    elif case == "negative":
      header[a]["data_offsets"] = [-16, header[a]["data_offsets"][1] - header[a]["data_offsets"][0] - 16]
    elif case == "no_dtype":
      del header[a]["dtype"]
  _edit_header(ckpt, edit, tail=b"\0" * 8 if case == "trailing" else b"")
  with pytest.raises(ValueError, match=re.escape(os.path.join(str(ckpt), "model.safetensors"))
                     + ": .*" + message):
    models.load(ckpt)


def test_tokenizer_without_eos(tmp_path, no_weight_reads):
  make_checkpoint(tmp_path, "qwen2", eos=False)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["eos_token_id"] is None
  with pytest.raises(ValueError, match="no EOS token"):
    models.load(tmp_path)


def test_save_rejects_params_that_do_not_match(ckpt, tmp_path):
  policy = models.load(ckpt)
  params = dict(policy.params)
  params.pop("final_norm")
  with pytest.raises(ValueError, match="missing param final_norm/scale"):
    models.save(policy.replace(params=params), tmp_path / "out")
  odd = policy.replace(config=dataclasses.replace(policy.config, qk_norm=True))
  with pytest.raises(ValueError, match="no transformers architecture"):
    models.save(odd, tmp_path / "out")
  assert not os.path.exists(tmp_path / "out")
