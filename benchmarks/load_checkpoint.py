"""Time and peak host memory of `rft_jax.models.load` on a 1B-parameter checkpoint.

    python benchmarks/load_checkpoint.py [--dir /tmp/llama1b] [--no-transformers] [--keep]

Writes a random checkpoint of the Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads, 8 kv
heads, FF 8192, vocab 128256, tied embeddings: 1.24B parameters, 2.47 GB in bfloat16) as a
transformers directory (config.json in the 5.x layout, one bfloat16 model.safetensors, a tiny
tokenizer), streamed tensor by tensor so the writer never holds the model. Then loads it in a
fresh subprocess per row, so each row's peak RSS (getrusage ru_maxrss) is its own:

  rft_jax bfloat16 / float32   models.load(dir, dtype=...)
  transformers bfloat16 / float32   AutoModelForCausalLM.from_pretrained(dir, dtype=...), the peer

Reported: load seconds (wall, and CPU = user + system time of all the process's threads: on a
shared machine the wall time includes waiting for a core), peak RSS, the peak over the RSS just
before loading (the process's imports), and that increase over the loaded parameter bytes
(1.0 = the params alone). transformers memory-maps the file and, when the dtype matches, keeps
its tensors as views of the map, so its bfloat16 row reads nothing until the weights are used
(its time and memory are then paid later, as page faults). The file was just written, so it is
read from the page cache: these are conversion costs, not disk speed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# Llama-3.2-1B(-Instruct)'s config.json, in the transformers 5.x layout.
LLAMA_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192},
    "attention_bias": False, "mlp_bias": False, "dtype": "bfloat16", "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "use_cache": True,
}


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
  """HF tensor name -> shape for a tied Llama config."""
  d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
  q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
  out = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    out.update({p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
                p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
                p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                p + "mlp.down_proj.weight": (d, f), p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,)})
  return out


def write_checkpoint(directory: str) -> int:
  """Streams a random bfloat16 checkpoint to directory; returns the parameter count."""
  import ml_dtypes
  from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  os.makedirs(directory, exist_ok=True)
  shapes = tensor_shapes(LLAMA_1B)
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, shape in shapes.items():
    n = 2 * int(np.prod(shape))
    header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
    offset += n
  raw = json.dumps(header).encode()
  raw += b" " * (-len(raw) % 8)
  # Random values without drawing 1.2B normals: slices of one 16M-value block.
  block = (np.random.default_rng(0).standard_normal(1 << 24) * 0.02).astype(ml_dtypes.bfloat16)
  with open(os.path.join(directory, "model.safetensors"), "wb") as f:
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for i, (name, shape) in enumerate(shapes.items()):
      n = int(np.prod(shape))
      data = np.ones(n, ml_dtypes.bfloat16) if name.endswith("norm.weight") else np.resize(
          np.roll(block, i), n)
      f.write(data.view(np.uint16).data)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(LLAMA_1B, f, indent=2)
  # A stand-in tokenizer (load needs one; its size does not matter for the weights).
  words = ["<unk>", "<|begin_of_text|>", "<|eot_id|>", *(f"w{i}" for i in range(61))]
  tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|begin_of_text|>",
                          eos_token="<|eot_id|>").save_pretrained(directory)
  return sum(int(np.prod(s)) for s in shapes.values())


def _current_rss() -> int:
  """Resident bytes now (ru_maxrss is the peak so far, which start-up transients inflate)."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(mode: str, directory: str) -> None:
  """One load in this (fresh) process; prints a JSON line of its figures."""
  import resource

  library, dtype = mode.split(":")
  if library == "rft_jax":
    import jax

    from rft_jax import models

    jax.devices()  # backend start-up is not part of the load
    load = lambda: models.load(directory, dtype=dtype)
    count = lambda p: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(p.params))
    device = str(jax.devices()[0].platform)
  else:
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=getattr(torch, dtype))
    count = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())
    device = "cpu"
  before = _current_rss()
  usage = resource.getrusage(resource.RUSAGE_SELF)
  start = time.perf_counter()
  loaded = load()
  seconds = time.perf_counter() - start
  end = resource.getrusage(resource.RUSAGE_SELF)
  cpu = end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime
  print(json.dumps({"mode": mode, "seconds": seconds, "cpu": cpu, "before": before,
                    "peak": end.ru_maxrss * 1024, "param_bytes": count(loaded),
                    "device": device}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dir", default="", help="checkpoint directory (default: a temp dir)")
  parser.add_argument("--no-transformers", action="store_true", help="skip the peer rows")
  parser.add_argument("--keep", action="store_true", help="keep the written checkpoint")
  parser.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(*args.child)
    return

  directory = args.dir or tempfile.mkdtemp(prefix="rft_jax_load_bench_")
  try:
    start = time.perf_counter()
    n = write_checkpoint(directory)
    size = os.path.getsize(os.path.join(directory, "model.safetensors"))
    print(f"wrote {n / 1e9:.3f}B params ({size / 1e9:.2f} GB bfloat16) to {directory} in "
          f"{time.perf_counter() - start:.1f}s; {os.cpu_count()} CPUs")
    modes = ["rft_jax:bfloat16", "rft_jax:float32"]
    if not args.no_transformers:
      modes += ["transformers:bfloat16", "transformers:float32"]
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"| {'load':<22} | {'device':<6} | {'wall s':>6} | {'CPU s':>5} | {'peak RSS GB':>11} | "
          f"{'peak - start GB':>15} | {'params GB':>9} | {'(peak-start)/params':>19} |")
    print(f"|{'-' * 24}|{'-' * 8}|{'-' * 8}|{'-' * 7}|{'-' * 13}|{'-' * 17}|{'-' * 11}|"
          f"{'-' * 21}|")
    for mode in modes:
      out = subprocess.run([sys.executable, __file__, "--child", mode, directory],
                           capture_output=True, text=True)
      if out.returncode:
        print(f"| {mode:<22} | failed: {out.stderr.strip().splitlines()[-1]}")
        continue
      r = json.loads(out.stdout.strip().splitlines()[-1])
      grow = r["peak"] - r["before"]
      print(f"| {mode:<22} | {r['device']:<6} | {r['seconds']:>6.1f} | {r['cpu']:>5.1f} | "
            f"{r['peak'] / 1e9:>11.2f} | {grow / 1e9:>15.2f} | {r['param_bytes'] / 1e9:>9.2f} | "
            f"{grow / r['param_bytes']:>19.2f} |")
  finally:
    if not args.keep and not args.dir:
      shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  main()
