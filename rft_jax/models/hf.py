"""Hugging Face checkpoints: import a local model directory into a Policy, export one back.

    policy = load("/path/to/Qwen2.5-0.5B-Instruct", dtype="bfloat16")
    save(policy.replace(params=new_params), "/path/to/out")   # transformers loads it unchanged

Supported `model_type`s: llama (Llama 3 / 3.1 / 3.2, llama3 RoPE scaling), qwen2 (Qwen2, Qwen2.5)
and olmo2 (OLMo 2). config.json may use the transformers 4.x layout (`rope_theta`,
`rope_scaling`, `torch_dtype`) or the 5.x one (`rope_parameters` holding `rope_theta`, `dtype`).

Weights: model.safetensors, or shards listed by model.safetensors.index.json. The safetensors
format (8-byte header length, JSON header, raw little-endian data) is read here directly with
positioned reads, one tensor at a time, rather than through a memory map: mapped pages count in
the process's resident memory, and reading into a fresh buffer keeps host memory at the params
plus one tensor in flight. Every header is checked against the expected names and shapes before
any data is read, so a bad checkpoint fails at once with the tensor named and nothing is loaded
half-way.

Layout (HF torch Linear weights are [out, in]; ours are [in, out], heads split out):
  model.embed_tokens.weight            [V, D]        embedding                 [V, D]
  model.layers.i.self_attn.q_proj.w    [H*E, D]      layer_i/attn/q            [D, H, E]
  ... k_proj / v_proj .weight          [K*E, D]      layer_i/attn/k, v         [D, K, E]
  ... q_proj / k_proj / v_proj .bias   [H*E], [K*E]  layer_i/attn/q_bias, ...  [H, E], [K, E]
  ... o_proj.weight                    [D, H*E]      layer_i/attn/o            [H, E, D]
  ... q_norm / k_norm .weight (OLMo 2) [H*E], [K*E]  layer_i/attn/q_norm/scale [H*E], [K*E]
  ... mlp.gate_proj / up_proj .weight  [F, D]        layer_i/mlp/gate, up      [D, F]
  ... mlp.down_proj.weight             [D, F]        layer_i/mlp/down          [F, D]
  ... input_layernorm, post_attention_layernorm    layer_i/attn_norm, mlp_norm (llama, qwen2)
  ... post_attention_layernorm, post_feedforward_layernorm
                                                    layer_i/post_attn_norm, post_mlp_norm (olmo2)
  model.norm.weight                    [D]           final_norm/scale          [D]
  lm_head.weight                       [V, D]        lm_head                   [D, V] (untied only)
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from rft_jax.models.decoder import ModelConfig
from rft_jax.models.policy import Policy

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "olmo2")
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
DTYPES = ("float32", "bfloat16", "float16")

# Tokens that end an assistant turn in the supported families' chat templates (and plain EOS).
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>",
                      "<|endoftext|>", "<|end|>")

# Class defaults of transformers' configs, for keys a config.json may leave out.
_FAMILY_DEFAULTS = {
    "llama": dict(rms_norm_eps=1e-6, max_position_embeddings=2048),
    "qwen2": dict(rms_norm_eps=1e-6, max_position_embeddings=32768),
    "olmo2": dict(rms_norm_eps=1e-5, max_position_embeddings=2048),
}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "olmo2": "Olmo2ForCausalLM"}

# safetensors dtype names <-> numpy dtypes (bfloat16 through ml_dtypes, as jax uses).
_ST_DTYPES = {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32),
              "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16)}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}

# Names some checkpoints carry that hold no parameter (older Llama exports' RoPE buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class _Tensor(NamedTuple):
  """One expected HF tensor: where it goes in our tree and how its layout differs."""

  path: tuple[str, ...]   # key path in the params tree
  hf_shape: tuple[int, ...]
  transpose: bool         # a torch Linear weight [out, in]: ours is w.T reshaped
  shape: tuple[int, ...]  # our shape


class _Entry(NamedTuple):
  """One tensor found in a safetensors file."""

  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int  # absolute byte offset in the file
  end: int


# -- config ----------------------------------------------------------------------------------


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def _rope(hf: dict, config_path: str) -> tuple[float, tuple | None]:
  """(rope_theta, rope_scaling tuple) from either layout: 5.x keeps theta in rope_parameters."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if params and all(isinstance(v, dict) for v in params.values()):  # 5.x per-layer-type nesting
    if len(params) != 1 and "full_attention" not in params:
      raise ValueError(f"{config_path}: per-layer RoPE settings {sorted(params)} are not "
                       "supported")
    params = params.get("full_attention") or next(iter(params.values()))
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
    raise ValueError(f"{config_path}: partial_rotary_factor != 1 is not supported")
  kind = params.get("rope_type", params.get("type", "default"))
  if kind == "default":
    return theta, None
  if kind != "llama3":
    raise ValueError(f"{config_path}: RoPE type {kind!r} is not supported; supported: "
                     "default, llama3")
  try:
    original = params.get("original_max_position_embeddings", hf.get("max_position_embeddings"))
    scaling = ("llama3", float(params["factor"]), float(params["low_freq_factor"]),
               float(params["high_freq_factor"]), int(original))
  except (KeyError, TypeError) as e:
    raise ValueError(f"{config_path}: llama3 RoPE scaling lacks {e}") from None
  return theta, scaling


def model_config_from_hf(hf: dict, dtype: str = "float32", config_path: str = CONFIG_FILE,
                         compute_dtype: str | None = None) -> ModelConfig:
  """A transformers config dict (4.x or 5.x layout) -> ModelConfig with param dtype `dtype`."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"{config_path}: model_type {model_type!r} is not supported; supported: "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}")
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads") if hf.get(k) is None]
  if missing:
    raise ValueError(f"{config_path}: missing {', '.join(missing)}")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{config_path}: hidden_act {hf['hidden_act']!r} is not supported (silu)")
  if model_type in ("llama", "olmo2") and hf.get("attention_bias"):
    # transformers puts that bias on o_proj as well, which the decoder does not have.
    raise ValueError(f"{config_path}: attention_bias=true (bias on q/k/v/o) is not supported "
                     f"for {model_type}")
  if hf.get("mlp_bias"):
    raise ValueError(f"{config_path}: mlp_bias=true is not supported")
  if model_type == "qwen2" and hf.get("use_sliding_window"):
    raise ValueError(f"{config_path}: use_sliding_window=true is not supported")
  defaults = _FAMILY_DEFAULTS[model_type]
  heads = int(hf["num_attention_heads"])
  theta, scaling = _rope(hf, config_path)
  dtype = _dtype_name(dtype)
  return ModelConfig(
      vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
      n_layers=int(hf["num_hidden_layers"]), n_heads=heads,
      n_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
      d_ff=int(hf["intermediate_size"]), variant=model_type, rope_theta=theta,
      rope_scaling=scaling, norm_eps=float(hf.get("rms_norm_eps", defaults["rms_norm_eps"])),
      qkv_bias=model_type == "qwen2", qk_norm=model_type == "olmo2",
      post_norm=model_type == "olmo2", tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=int(hf.get("max_position_embeddings")
                                  or defaults["max_position_embeddings"]),
      dtype=_dtype_name(compute_dtype) if compute_dtype else dtype, param_dtype=dtype)


def hf_config_from_model(config: ModelConfig, *, eos_ids=(), bos_id=None, pad_id=None) -> dict:
  """ModelConfig -> a transformers 5.x config dict (`rope_parameters`, `dtype`)."""
  family = _family(config)
  rope = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling is not None:
    _, factor, low, high, original = config.rope_scaling
    rope = {"rope_type": "llama3", "rope_theta": config.rope_theta, "factor": factor,
            "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": original}
  eos = list(eos_ids)
  out = {
      "architectures": [_ARCHITECTURES[family]], "model_type": family,
      "vocab_size": config.vocab_size, "hidden_size": config.d_model,
      "intermediate_size": config.d_ff, "num_hidden_layers": config.n_layers,
      "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
      "head_dim": config.head_dim, "hidden_act": "silu",
      "max_position_embeddings": config.max_position_embeddings,
      "rms_norm_eps": config.norm_eps, "rope_parameters": rope,
      "tie_word_embeddings": config.tie_embeddings, "dtype": config.param_dtype,
      "bos_token_id": bos_id, "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
      "pad_token_id": pad_id, "use_cache": True,
  }
  if family == "qwen2":
    out.update(use_sliding_window=False, sliding_window=None)
  else:
    out.update(attention_bias=False)
  if family == "llama":
    out.update(mlp_bias=False)
  return out


def _family(config: ModelConfig) -> str:
  """The HF model_type whose architecture the switches describe (an error for other mixes)."""
  switches = (config.qkv_bias, config.qk_norm, config.post_norm)
  family = {(False, False, False): "llama", (True, False, False): "qwen2",
            (False, True, True): "olmo2"}.get(switches)
  if family is None:
    raise ValueError(f"no transformers architecture has qkv_bias={config.qkv_bias}, "
                     f"qk_norm={config.qk_norm}, post_norm={config.post_norm}; supported: "
                     "llama (none), qwen2 (qkv_bias), olmo2 (qk_norm + post_norm)")
  return family


def _dtype_name(dtype) -> str:
  name = jnp.dtype(dtype).name
  if name not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is not supported; supported: {', '.join(DTYPES)}")
  return name


# -- tensor layout ---------------------------------------------------------------------------


def expected_tensors(config: ModelConfig) -> dict[str, _Tensor]:
  """HF tensor name -> where it goes and its shapes, for every parameter of `config`."""
  d, h, k, e, f, v = (config.d_model, config.n_heads, config.n_kv_heads, config.head_dim,
                      config.d_ff, config.vocab_size)
  out = {"model.embed_tokens.weight": _Tensor(("embedding",), (v, d), False, (v, d)),
         "model.norm.weight": _Tensor(("final_norm", "scale"), (d,), False, (d,))}
  if not config.tie_embeddings:
    out["lm_head.weight"] = _Tensor(("lm_head",), (v, d), True, (d, v))
  for i in range(config.n_layers):
    hf, ours = f"model.layers.{i}.", f"layer_{i}"
    linear = lambda name, path, hf_shape, shape: out.__setitem__(
        hf + name + ".weight", _Tensor((ours, *path), hf_shape, True, shape))
    vector = lambda name, path, hf_shape, shape: out.__setitem__(
        hf + name, _Tensor((ours, *path), hf_shape, False, shape))
    linear("self_attn.q_proj", ("attn", "q"), (h * e, d), (d, h, e))
    linear("self_attn.k_proj", ("attn", "k"), (k * e, d), (d, k, e))
    linear("self_attn.v_proj", ("attn", "v"), (k * e, d), (d, k, e))
    linear("self_attn.o_proj", ("attn", "o"), (d, h * e), (h, e, d))
    linear("mlp.gate_proj", ("mlp", "gate"), (f, d), (d, f))
    linear("mlp.up_proj", ("mlp", "up"), (f, d), (d, f))
    linear("mlp.down_proj", ("mlp", "down"), (d, f), (f, d))
    if config.qkv_bias:
      vector("self_attn.q_proj.bias", ("attn", "q_bias"), (h * e,), (h, e))
      vector("self_attn.k_proj.bias", ("attn", "k_bias"), (k * e,), (k, e))
      vector("self_attn.v_proj.bias", ("attn", "v_bias"), (k * e,), (k, e))
    if config.qk_norm:
      vector("self_attn.q_norm.weight", ("attn", "q_norm", "scale"), (h * e,), (h * e,))
      vector("self_attn.k_norm.weight", ("attn", "k_norm", "scale"), (k * e,), (k * e,))
    if config.post_norm:
      vector("post_attention_layernorm.weight", ("post_attn_norm", "scale"), (d,), (d,))
      vector("post_feedforward_layernorm.weight", ("post_mlp_norm", "scale"), (d,), (d,))
    else:
      vector("input_layernorm.weight", ("attn_norm", "scale"), (d,), (d,))
      vector("post_attention_layernorm.weight", ("mlp_norm", "scale"), (d,), (d,))
  return out


@functools.partial(jax.jit, static_argnames=("transpose", "shape", "dtype"))
def _to_ours(x, *, transpose: bool, shape: tuple, dtype: str):
  """HF layout -> ours, converted to dtype (one fused XLA copy, faster than numpy's)."""
  return (x.T if transpose else x).reshape(shape).astype(dtype)


@functools.partial(jax.jit, static_argnames=("transpose", "hf_shape"))
def _to_hf(x, *, transpose: bool, hf_shape: tuple):
  return x.reshape(hf_shape[::-1]).T if transpose else x.reshape(hf_shape)


def assemble_params(expected: dict[str, _Tensor], read, dtype: str) -> dict:
  """The params tree, reading each expected tensor in the HF layout with `read(name)`.

  Each tensor is read, converted to our layout and dtype and placed on the default device before
  the next is read (both the safetensors and the GGUF reader go through here).
  """
  params: dict = {}
  for name, t in expected.items():
    x = _to_ours(jax.device_put(read(name)), transpose=t.transpose, shape=t.shape, dtype=dtype)
    # One tensor in flight: async dispatch would otherwise let reads run ahead of conversions
    # and pile up raw buffers.
    x.block_until_ready()
    node = params
    for key in t.path[:-1]:
      node = node.setdefault(key, {})
    node[t.path[-1]] = x
  return params


# -- safetensors -----------------------------------------------------------------------------


def _read_header(path: str) -> dict[str, _Entry]:
  """Tensor name -> entry, from a safetensors file's header (no data read)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n <= 0 or 8 + n > size:
      raise ValueError(f"{path}: not a safetensors file (bad header length)")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: not a safetensors file ({e})") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: not a safetensors file (the header is not a JSON object)")
  entries = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= info.keys()
            and len(info["data_offsets"]) == 2
            and 0 <= int(info["data_offsets"][0]) <= int(info["data_offsets"][1])):
      raise ValueError(f"{path}: tensor {name} has a malformed header entry {info!r}")
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; supported: "
                       f"{', '.join(_ST_DTYPES)}")
    dtype = _ST_DTYPES[info["dtype"]]
    shape = tuple(int(s) for s in info["shape"])
    start, end = (8 + n + int(o) for o in info["data_offsets"])
    if end - start != dtype.itemsize * int(np.prod(shape)) or end > size:
      raise ValueError(f"{path}: tensor {name} has inconsistent offsets (truncated file?)")
    entries[name] = _Entry(path, dtype, shape, start, end)
  # As the safetensors library requires: the tensors tile the data, no overlap, no gap.
  at = 8 + n
  for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
    if entry.start != at:
      raise ValueError(f"{path}: tensor data overlaps or leaves a gap at byte {at:,} "
                       "(corrupt header?)")
    at = entry.end
  if at != size:
    raise ValueError(f"{path}: the tensors end at byte {at:,} but the file has {size:,} bytes")
  return entries


def _read_tensor(entry: _Entry) -> np.ndarray:
  """The tensor's data in a fresh buffer (positioned reads; no memory map)."""
  buf = np.empty(entry.end - entry.start, np.uint8)
  view, done = memoryview(buf), 0
  with open(entry.file, "rb", buffering=0) as f:
    f.seek(entry.start)
    while done < len(buf):
      got = f.readinto(view[done:])
      if not got:
        raise ValueError(f"{entry.file}: unexpected end of file")
      done += got
  return buf.view(entry.dtype).reshape(entry.shape)


def _weight_entries(path: str) -> dict[str, _Entry]:
  """Every tensor of the checkpoint, from model.safetensors or the shards of the index."""
  index = os.path.join(path, WEIGHTS_INDEX_FILE)
  single = os.path.join(path, WEIGHTS_FILE)
  if os.path.isfile(index):
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: no weight_map")
    entries = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = os.path.join(path, shard)
      if not os.path.isfile(shard_path):
        raise FileNotFoundError(f"{shard_path}: weights shard listed in {index} not found")
      entries.update(_read_header(shard_path))
    unlisted = sorted(set(weight_map) - set(entries))
    if unlisted:
      raise ValueError(f"{index}: lists {unlisted[0]} but its shard {weight_map[unlisted[0]]} "
                       "does not hold it")
    return entries
  if os.path.isfile(single):
    return _read_header(single)
  others = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pth")
            if os.path.exists(os.path.join(path, n))]
  hint = f" (found {others[0]}: convert it to safetensors)" if others else ""
  raise FileNotFoundError(f"{single}: weights not found (nor {WEIGHTS_INDEX_FILE}){hint}")


def _check_entries(entries: dict[str, _Entry], expected: dict[str, _Tensor], config: ModelConfig,
                   where: str) -> None:
  """Every expected tensor present with its shape, nothing unexpected; else one clear error."""
  problems = []
  for name in sorted(entries):
    if name in expected or name.endswith(_IGNORED_SUFFIXES):
      continue
    if name == "lm_head.weight" and config.tie_embeddings:  # a redundant copy some exports keep
      if entries[name].shape != (config.vocab_size, config.d_model):
        problems.append(f"tensor {name} has shape {list(entries[name].shape)}, expected "
                        f"{[config.vocab_size, config.d_model]}")
      continue
    problems.append(f"unexpected tensor {name} {list(entries[name].shape)} (in "
                    f"{os.path.basename(entries[name].file)})")
  for name, t in expected.items():
    if name not in entries:
      problems.append(f"missing tensor {name} (expected shape {list(t.hf_shape)})")
    elif entries[name].shape != t.hf_shape:
      problems.append(f"tensor {name} has shape {list(entries[name].shape)}, expected "
                      f"{list(t.hf_shape)} from config.json")
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ValueError(f"{where}: checkpoint does not match its config: "
                     + "; ".join(problems[:5]) + more)


def _write_safetensors(path: str, tensors: list[tuple[str, Any, tuple, bool]]) -> None:
  """Streams (name, our array, hf_shape, transpose) to a safetensors file, one at a time."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, x, hf_shape, _ in tensors:
    dtype = np.dtype(x.dtype)
    if dtype not in _ST_NAMES:
      raise ValueError(f"cannot save {name} of dtype {dtype}")
    nbytes = dtype.itemsize * int(np.prod(hf_shape))
    header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(hf_shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for _, x, hf_shape, transpose in tensors:
      a = np.ascontiguousarray(np.asarray(_to_hf(x, transpose=transpose, hf_shape=hf_shape)))
      f.write(a.reshape(-1).view(np.uint8).data)


# -- tokenizer and EOS -----------------------------------------------------------------------


def _load_tokenizer(path: str):
  if not os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
    raise FileNotFoundError(f"{os.path.join(path, TOKENIZER_FILE)}: tokenizer not found (a "
                            "fast tokenizer file is needed)")
  # The fast tokenizer class directly: AutoTokenizer may rebuild the pre-tokenizer from the model
  # config beside it, and then its ids would differ from the ones the model was trained on.
  from transformers import PreTrainedTokenizerFast

  return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)


def _ids(value) -> list[int]:
  if value is None:
    return []
  return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def eos_ids_of(hf: dict, generation: dict, tokenizer, vocab_size: int) -> tuple[int, ...]:
  """config eos + generation_config eos + tokenizer eos + end-of-turn tokens in the vocab."""
  ids = _ids(hf.get("eos_token_id")) + _ids(generation.get("eos_token_id"))
  ids += _ids(tokenizer.eos_token_id)
  vocab = tokenizer.get_vocab()
  ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
  out = []
  for i in ids:  # ids the model can never emit are no stopping condition
    if 0 <= i < vocab_size and i not in out:
      out.append(i)
  return tuple(out)


# -- public API ------------------------------------------------------------------------------


def load(path: str | os.PathLike, dtype: str = "float32", *,
         compute_dtype: str | None = None) -> Policy:
  """A checkpoint -> Policy with params in `dtype` ("float32" or "bfloat16").

  path: a Hugging Face model directory; a .gguf file (models.gguf_file); or a name registered in
  models.fetch (e.g. "smollm2"), fetched into the cache on first use.

  compute_dtype: the decoder's activation dtype; defaults to `dtype`. Each tensor is read,
  converted to our layout and dtype, and placed on the default device before the next is read.
  Raises FileNotFoundError (missing directory or file, named) or ValueError (unsupported
  model_type, a tensor with an unexpected name or shape, a tokenizer without EOS), before
  any weight is read.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    from rft_jax.models import fetch  # a registered name ("smollm2"): fetched once, cached

    if path in fetch.MODELS:
      path = fetch.fetch(path)
  if os.path.isfile(path):
    from rft_jax.models import gguf_file

    return gguf_file.load(path, dtype, compute_dtype=compute_dtype)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: checkpoint not found (a Hugging Face directory, a .gguf "
                            "file, or a registered name: python -m rft_jax.models.fetch --list)")
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path}: model config not found")
  hf = _read_json(config_path)
  config = model_config_from_hf(hf, dtype, config_path, compute_dtype)
  expected = expected_tensors(config)
  entries = _weight_entries(path)
  _check_entries(entries, expected, config, path)

  tokenizer = _load_tokenizer(path)
  generation_path = os.path.join(path, GENERATION_CONFIG_FILE)
  generation = _read_json(generation_path) if os.path.isfile(generation_path) else {}
  eos_ids = eos_ids_of(hf, generation, tokenizer, config.vocab_size)
  if not eos_ids:
    raise ValueError(f"{path}: no EOS token: config.json and generation_config.json set no "
                     "eos_token_id, the tokenizer has no eos_token and none of "
                     f"{', '.join(END_OF_TURN_TOKENS)} is in its vocabulary")
  pad_id = tokenizer.pad_token_id
  if pad_id is None:
    pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else eos_ids[0]

  params = assemble_params(expected, lambda name: _read_tensor(entries[name]),
                           config.param_dtype)
  return Policy(config=config, params=params, tokenizer=tokenizer, eos_ids=eos_ids,
                pad_id=int(pad_id), chat=bool(getattr(tokenizer, "chat_template", None)))


def save(policy: Policy, out_dir: str | os.PathLike, *, overwrite: bool = False) -> str:
  """Writes `policy` as a Hugging Face directory that transformers' AutoModelForCausalLM loads.

  Files: config.json (5.x layout), model.safetensors (torch names and layouts, in the params'
  dtype; no lm_head for tied embeddings), generation_config.json (the EOS ids), the tokenizer's
  files. LoRA adapters are merged into their weights (models.lora.merge). Written into a
  temporary directory beside out_dir and renamed into place, so out_dir
  is either absent or complete. An existing out_dir is an error unless overwrite=True.
  Returns out_dir.
  """
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir) and not overwrite and (not os.path.isdir(out_dir)
                                                    or os.listdir(out_dir)):
    raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True to replace it)")
  config = policy.config
  if config.lora_rank:  # LoRA: the merged weights W + (alpha / r) A B, a plain checkpoint
    from rft_jax.models import lora

    policy = policy.replace(params=lora.merge(config, policy.params),
                            config=lora.configure(config, 0, config.lora_alpha, ()))
    config = policy.config
  tokenizer = policy.tokenizer
  if not hasattr(tokenizer, "save_pretrained"):
    raise ValueError("the policy's tokenizer has no save_pretrained (not a transformers one)")
  bos_id = getattr(tokenizer, "bos_token_id", None)
  hf = hf_config_from_model(config, eos_ids=policy.eos_ids, bos_id=bos_id, pad_id=policy.pad_id)

  tensors, problems = [], []
  for name, t in expected_tensors(config).items():
    node = policy.params
    try:
      for key in t.path:
        node = node[key]
    except (KeyError, TypeError):
      problems.append(f"missing param {'/'.join(t.path)}")
      continue
    if tuple(node.shape) != t.shape:
      problems.append(f"param {'/'.join(t.path)} has shape {list(node.shape)}, expected "
                      f"{list(t.shape)}")
    tensors.append((name, node, t.hf_shape, t.transpose))
  if problems:
    raise ValueError("params do not match the policy's config: " + "; ".join(problems[:5]))
  hf["dtype"] = np.dtype(tensors[0][1].dtype).name

  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise stay on out_dir
  try:
    _write_safetensors(os.path.join(tmp, WEIGHTS_FILE), tensors)
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      json.dump(hf, f, indent=2)
    generation = {"bos_token_id": bos_id, "eos_token_id": list(policy.eos_ids),
                  "pad_token_id": policy.pad_id}
    with open(os.path.join(tmp, GENERATION_CONFIG_FILE), "w") as f:
      json.dump(generation, f, indent=2)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
      os.rename(out_dir, os.path.join(old, "x"))
      os.rename(tmp, out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir
