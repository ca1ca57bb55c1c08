"""GGUF checkpoints (llama.cpp's single-file format) in: `models.load("x.gguf")` lands here.

    policy = rft_jax.models.load("SmolLM2-135M-Instruct.Q4_1.gguf")   # -> Policy, float32 params

Supported architectures: `llama` and `qwen2` (`general.architecture`). The file carries the model
shape, RoPE theta and norm epsilon as metadata (`{arch}.block_count`, `.embedding_length`, ...),
the weights as (possibly quantized) tensors, and the tokenizer (vocabulary, merges, token types,
special ids, chat template) as metadata too.

Tensor names: the params come from the same table as the safetensors reader's
(`hf.expected_tensors`, Hugging Face names -> our params); the gguf package's own name map
(`gguf.get_tensor_name_map`, the one llama.cpp's converter writes with) turns each Hugging Face
name into its GGUF name (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`).
GGUF stores a matrix with its dimensions reversed (ne[0] fastest), which read back as a numpy
array is exactly the torch [out, in] layout, so from there the two readers share the conversion.

Quantized tensors are dequantized to float32 with `gguf.quants` (QUANT_TYPES below), then cast to
the requested dtype. llama.cpp's converter permutes the rows of attn_q / attn_k of llama models
(RoPE pairs (i, i + E/2) become adjacent rows, its interleaved rotation); `_unpermute` undoes it,
so the decoder's half-split RoPE sees the Hugging Face layout. qwen2 files are not permuted.

The tokenizer is rebuilt from the metadata with the `tokenizers` library (byte-level BPE; the
pre-tokenizer chosen by `tokenizer.ggml.pre` as llama.cpp does) and wrapped as a transformers
PreTrainedTokenizerFast with the file's chat template, so the Policy's text side is the same as
for a Hugging Face directory (and `models.save` exports it).
"""

from __future__ import annotations

import os

import numpy as np

from rft_jax import errors
from rft_jax.models import hf
from rft_jax.models.policy import Policy

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
GGUF_MAGIC = b"GGUF"

# Tensor types read (dequantized to float32 by gguf.quants; each is round-tripped in the tests).
QUANT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K",
               "Q6_K")

# Pre-tokenizer split of each `tokenizer.ggml.pre` (llama.cpp's names), applied before the
# byte-level mapping. smollm: digits one by one, then GPT-2's split (SmolLM's tokenizer.json).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {
    "default": (_GPT2_SPLIT,), "gpt-2": (_GPT2_SPLIT,), "smollm": (r"\p{N}", _GPT2_SPLIT),
    "llama3": (_LLAMA3_SPLIT,), "llama-bpe": (_LLAMA3_SPLIT,), "llama-v3": (_LLAMA3_SPLIT,),
    "qwen2": (_QWEN2_SPLIT,),
}
# llama.cpp looks a whole pre-token up in the vocabulary before merging for these (Llama 3's
# tokenizer.json says "ignore_merges": true).
_IGNORE_MERGES = ("llama3", "llama-bpe", "llama-v3")

_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4


class GGUFFile:
  """The metadata and tensor directory of a .gguf file (tensor data memory-mapped, read lazily)."""

  def __init__(self, path: str):
    self.path = path
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: GGUF file not found")
    with open(path, "rb") as f:
      magic = f.read(4)
    if magic != GGUF_MAGIC:
      raise ValueError(f"{path}: not a GGUF file (starts with {magic!r}, not {GGUF_MAGIC!r})")
    import gguf  # the optional-looking import is a hard dependency; kept local to this reader

    try:
      reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError) as e:  # numpy raises on a header past
      # the end, gguf a KeyError on a duplicated metadata key
      raise ValueError(f"{path}: unreadable GGUF ({type(e).__name__}: {e}; truncated or "
                       "corrupt file?)") from None
    if reader.byte_order == "S":  # gguf reads it, but dequantize views the bytes as native
      raise ValueError(f"{path}: the file's byte order is not this machine's (a big-endian "
                       "GGUF?); not supported")
    self.metadata = {}
    for key, field in reader.fields.items():
      try:
        self.metadata[key] = field.contents()
      except errors.RunInterrupted:  # a SIGTERM while loading (train._Signals)
        raise
      except Exception:  # a field we cannot decode is one we do not use
        continue
    self.tensors = {t.name: t for t in reader.tensors}
    size = os.path.getsize(path)
    for t in reader.tensors:
      if t.data_offset + t.n_bytes > size:
        raise ValueError(f"{path}: tensor {t.name} ends at byte {t.data_offset + t.n_bytes:,} "
                         f"but the file has {size:,} bytes (truncated file?)")

  def get(self, key: str, default=None):
    return self.metadata.get(key, default)

  def require(self, key: str):
    if key not in self.metadata:
      raise ValueError(f"{self.path}: metadata key {key!r} missing")
    return self.metadata[key]

  def read(self, name: str) -> np.ndarray:
    """Tensor `name` as float32 in numpy order (a matrix: torch's [out, in])."""
    import gguf

    t = self.tensors[name]
    kind = t.tensor_type.name
    if kind not in QUANT_TYPES:
      raise ValueError(f"{self.path}: tensor {name} has type {kind}, not supported; supported: "
                       f"{', '.join(QUANT_TYPES)}")
    out = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    shape = tuple(int(n) for n in t.shape[::-1])
    return np.ascontiguousarray(out, np.float32).reshape(shape)


# -- config ----------------------------------------------------------------------------------


def hf_config_from_metadata(file: GGUFFile) -> dict:
  """The metadata as a transformers config dict, so `hf.model_config_from_hf` checks it."""
  arch = file.require("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{file.path}: architecture {arch!r} is not supported; supported: "
                     f"{', '.join(SUPPORTED_ARCHITECTURES)}")
  key = lambda name: f"{arch}.{name}"
  if file.get(key("expert_count")):
    raise ValueError(f"{file.path}: a mixture of experts ({file.get(key('expert_count'))} "
                     "experts) is not supported")
  for name in ("attention.head_count", "attention.head_count_kv", "feed_forward_length"):
    if isinstance(file.get(key(name)), (list, tuple)):  # llama.cpp allows one value per layer
      raise ValueError(f"{file.path}: {key(name)} varies by layer; not supported")
  heads = int(file.require(key("attention.head_count")))
  d_model = int(file.require(key("embedding_length")))
  head_dim = int(file.get(key("attention.key_length"), d_model // heads))
  rotary = int(file.get(key("rope.dimension_count"), head_dim))
  if rotary != head_dim:
    raise ValueError(f"{file.path}: RoPE over {rotary} of {head_dim} head dimensions (partial "
                     "rotary) is not supported")
  scaling = file.get(key("rope.scaling.type"), "none")
  # llama.cpp reads a factor without a type as linear scaling (also under the older key)
  factor = file.get(key("rope.scaling.factor"), file.get(key("rope.scale_linear")))
  if scaling in ("none", None) and factor not in (None, 0, 0.0, 1, 1.0):
    scaling = f"linear, factor {factor}"
  if scaling not in ("none", None) or "rope_freqs.weight" in file.tensors:
    raise ValueError(f"{file.path}: RoPE scaling ({scaling if scaling != 'none' else 'rope_freqs'}"
                     ") in a GGUF is not supported; load the Hugging Face directory instead")
  embedding = file.tensors.get("token_embd.weight")
  vocab = file.get(key("vocab_size"))
  if vocab is None:
    vocab = int(embedding.shape[1]) if embedding is not None else len(
        file.require("tokenizer.ggml.tokens"))
  return {
      "model_type": arch, "vocab_size": int(vocab), "hidden_size": d_model,
      "intermediate_size": int(file.require(key("feed_forward_length"))),
      "num_hidden_layers": int(file.require(key("block_count"))),
      "num_attention_heads": heads,
      "num_key_value_heads": int(file.get(key("attention.head_count_kv"), heads)),
      "head_dim": head_dim,
      "rms_norm_eps": float(file.require(key("attention.layer_norm_rms_epsilon"))),
      "rope_theta": float(file.get(key("rope.freq_base"), 10000.0)),
      "max_position_embeddings": int(file.get(key("context_length"), 2048)),
      "tie_word_embeddings": "output.weight" not in file.tensors,
      "eos_token_id": file.get("tokenizer.ggml.eos_token_id"),
  }


def gguf_names(config, arch: str) -> dict[str, str]:
  """Hugging Face tensor name -> GGUF tensor name, for every param of `config`."""
  import gguf

  name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.n_layers)
  out = {}
  for name in hf.expected_tensors(config):
    mapped = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
      raise ValueError(f"no GGUF name for {name} in gguf's {arch} map")
    out[name] = mapped
  return out


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute` of q / k rows ([heads * E, D] or [heads * E] bias).

  llama.cpp: w.reshape(heads, 2, E / 2, ...).swapaxes(1, 2) -- each head's rows (r, r + E/2)
  become rows (2r, 2r + 1). Here: reshape(heads, E / 2, 2, ...).swapaxes(1, 2) back.
  """
  half = w.shape[0] // heads // 2
  return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -- tokenizer -------------------------------------------------------------------------------


def tokenizer_from_metadata(file: GGUFFile):
  """A transformers PreTrainedTokenizerFast built from the file's byte-level BPE metadata."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  kind = file.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"{file.path}: tokenizer model {kind!r} is not supported (byte-level BPE, "
                     "'gpt2', is)")
  pre = file.get("tokenizer.ggml.pre", "default")
  if pre not in _PRE_SPLITS:
    raise ValueError(f"{file.path}: pre-tokenizer {pre!r} is not supported; supported: "
                     f"{', '.join(sorted(_PRE_SPLITS))}")
  tokens = list(file.require("tokenizer.ggml.tokens"))
  merges = [tuple(m.split(" ", 1)) for m in file.require("tokenizer.ggml.merges")]
  types = list(file.get("tokenizer.ggml.token_type") or [])
  backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                 ignore_merges=pre in _IGNORE_MERGES))
  backend.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _PRE_SPLITS[pre]]
      + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  backend.decoder = decoders.ByteLevel()
  # Control tokens (<|im_end|>, ...) are matched whole and are special; user-defined ones are
  # matched whole but decode as text.
  backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                              for t, k in zip(tokens, types) if k == _TOKEN_CONTROL])
  backend.add_tokens([AddedToken(t, special=False, normalized=False)
                      for t, k in zip(tokens, types) if k == _TOKEN_USER_DEFINED])
  token = lambda key: (tokens[int(file.get(key))] if file.get(key) is not None
                       and 0 <= int(file.get(key)) < len(tokens) else None)
  return PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token=token("tokenizer.ggml.bos_token_id"),
      eos_token=token("tokenizer.ggml.eos_token_id"),
      unk_token=token("tokenizer.ggml.unknown_token_id"),
      pad_token=token("tokenizer.ggml.padding_token_id"),
      chat_template=file.get("tokenizer.chat_template"))


# -- public API ------------------------------------------------------------------------------


def load(path: str | os.PathLike, dtype: str = "float32", *,
         compute_dtype: str | None = None) -> Policy:
  """A .gguf file -> Policy with params in `dtype` (dequantized, then cast).

  Raises FileNotFoundError or ValueError naming the file and the problem (not a GGUF, truncated,
  unsupported architecture / tensor type / tokenizer / byte order, a tensor missing, of the
  wrong shape or not read by the model, special token ids outside the embedding) before any
  weight is converted.
  """
  path = os.fspath(path)
  file = GGUFFile(path)
  hf_config = hf_config_from_metadata(file)
  arch = hf_config["model_type"]
  config = hf.model_config_from_hf(hf_config, dtype, path, compute_dtype)
  expected = hf.expected_tensors(config)
  names = gguf_names(config, arch)

  problems = []
  for name, t in expected.items():
    tensor = file.tensors.get(names[name])
    if tensor is None:
      problems.append(f"missing tensor {names[name]} (expected shape {list(t.hf_shape)})")
      continue
    shape = tuple(int(n) for n in tensor.shape[::-1])
    if shape != t.hf_shape:
      problems.append(f"tensor {names[name]} has shape {list(shape)}, expected "
                      f"{list(t.hf_shape)}")
    if tensor.tensor_type.name not in QUANT_TYPES:
      problems.append(f"tensor {names[name]} has type {tensor.tensor_type.name}, not supported "
                      f"(supported: {', '.join(QUANT_TYPES)})")
  # Tensors the model would not read (llama's optional attention biases, a block past
  # block_count): llama.cpp refuses such files too; loading them would drop weights silently.
  for name in sorted(set(file.tensors) - set(names.values())):
    bias = name.endswith(".bias") and ".attn_" in name
    problems.append(f"unexpected tensor {name}"
                    + (f" (attention biases are not supported for {arch})" if bias else ""))
  tokens = file.require("tokenizer.ggml.tokens")
  if len(tokens) > config.vocab_size:
    problems.append(f"{len(tokens)} tokens in the vocabulary but {config.vocab_size} rows in "
                    "the embedding")
  for key in ("eos_token_id", "padding_token_id", "eot_token_id"):
    token_id = file.get(f"tokenizer.ggml.{key}")
    if token_id is not None and not 0 <= int(token_id) < config.vocab_size:
      problems.append(f"tokenizer.ggml.{key} = {token_id} is outside the vocabulary "
                      f"(0..{config.vocab_size - 1})")
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ValueError(f"{path}: " + "; ".join(problems[:5]) + more)

  tokenizer = tokenizer_from_metadata(file)
  eos_ids = hf.eos_ids_of(hf_config, {}, tokenizer, config.vocab_size)
  eot = file.get("tokenizer.ggml.eot_token_id")
  if eot is not None and int(eot) not in eos_ids:
    eos_ids += (int(eot),)
  if not eos_ids:
    raise ValueError(f"{path}: no EOS token in the metadata or the vocabulary")
  pad_id = file.get("tokenizer.ggml.padding_token_id")
  pad_id = int(pad_id) if pad_id is not None else eos_ids[0]

  unpermute = {}
  if arch == "llama":  # llama.cpp's converter permuted these rows; qwen2's did not
    for i in range(config.n_layers):
      unpermute[names[f"model.layers.{i}.self_attn.q_proj.weight"]] = config.n_heads
      unpermute[names[f"model.layers.{i}.self_attn.k_proj.weight"]] = config.n_kv_heads

  def read(name):
    x = file.read(names[name])
    heads = unpermute.get(names[name])
    return x if heads is None else _unpermute(x, heads)

  params = hf.assemble_params(expected, read, config.param_dtype)
  return Policy(config=config, params=params, tokenizer=tokenizer, eos_ids=tuple(eos_ids),
                pad_id=pad_id, chat=bool(tokenizer.chat_template))
