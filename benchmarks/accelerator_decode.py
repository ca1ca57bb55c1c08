"""On a machine with a GPU (or TPU): the sampler's decode speed at SmolLM2-135M's shape against
the memory-bandwidth limit, and whether its log-probs are the train step's on that backend.

    python benchmarks/accelerator_decode.py [--shape=smollm2-135m] [--batches=1,8,32,128,512]
        [--new=256] [--bandwidth=4.3e12] [--parts=logprobs,decode] [--smoke] [--out=DIR]

Random weights of the shape (rft_jax.models.shapes; no download), float32 params and compute
as the SmolLM2 runs use, one prompt of 64 tokens.

1. decode: for each batch B, `sampling.sample` of B rollouts (num_samples=B) of --new tokens at
   temperature 1, EOS ignored so every row runs the full length; tokens/s of a second call (the
   first compiles). The limits beside it: a decode step reads the params once and each row's KV
   cache (2 x layers x kv heads x head dim x 4 bytes per cached position), so at --bandwidth
   bytes/s (H200: ~4.3e12, the device-to-device copy rate the workplace's device notes report)
   no sampler beats B / (bytes per step / bandwidth) tokens/s, counting the filled positions
   (prompt + half the new tokens on average); this sampler attends over its whole cache (prompt
   + all new slots, masked) at every step, its own floor ('limit_full_cache').
2. log-probs: the PPO ratio of the first update is exp(train log-prob - sampler log-prob), 1 when
   both compute the same number. A rollout of 8 x 256 tokens; its sampler log-probs (decode with
   the KV cache, one position at a time) against `logprobs.completion_logprobs` (one teacher-
   forced forward, unchunked; the train step's logprob_chunk path equals it to float rounding,
   tests/test_logprobs.py) on this backend, and against the same forward on the CPU backend
   (float32): max and mean |difference| and max |ratio - 1| over the completion tokens.
   Every matmul runs at decoder.PRECISION (full precision since c1704df; before, the backend's
   default: TF32 on an H200, benchmarks/README.md).

Writes <out>/accelerator_decode.json (default $OUT, else the current directory) after each part.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_model
import jax
import jax.numpy as jnp
import numpy as np

from rft_jax import logprobs
from rft_jax.models import Decoder, ModelConfig, decoder as decoder_lib, shapes

PROMPT = 64
# --smoke: a tiny model (checks the script runs, on any machine: tests/test_accelerator_check.py).
SMOKE = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                    head_dim=16, d_ff=128, tie_embeddings=True)


def kv_bytes_per_position(mc) -> int:
  return 2 * mc.n_layers * mc.n_kv_heads * mc.head_dim * jnp.dtype(mc.dtype).itemsize


def rollout(decoder, params, prompt, mask, rows: int, new: int, seed: int):
  return bench_model.full_length_sample(decoder, params, prompt, mask, jax.random.PRNGKey(seed),
                                        rows=rows, new=new)


def decode_speed(mc, decoder, params, prompt, mask, batches, new, bandwidth, result, save):
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  result["param_bytes"] = param_bytes
  result["decode"] = []
  for b in batches:
    t0 = time.time()
    jax.block_until_ready(rollout(decoder, params, prompt, mask, b, new, 1))
    first = time.time() - t0
    t0 = time.time()
    out = jax.block_until_ready(rollout(decoder, params, prompt, mask, b, new, 2))
    dt = time.time() - t0
    tokens = float(np.asarray(out.mask).sum())
    # filled positions, mean over the steps: the prompt plus half the new tokens; the sampler
    # itself reads all prompt + new slots of its cache every step
    limit, limit_full = (b / ((param_bytes + b * slots * kv_bytes_per_position(mc)) / bandwidth)
                         for slots in (PROMPT + new / 2, PROMPT + new))
    row = dict(batch=b, first_call_s=first, s=dt, tokens=tokens, tok_per_s=tokens / dt,
               step_ms=1e3 * dt / new, limit_tok_per_s=limit, fraction=tokens / dt / limit,
               limit_full_cache_tok_per_s=limit_full, fraction_full_cache=tokens / dt / limit_full)
    result["decode"].append(row)
    print(f"decode B={b:4d}: first call {first:5.1f} s; {dt:6.2f} s for {tokens:.0f} tokens = "
          f"{tokens / dt:9.0f} tok/s, {row['step_ms']:.2f} ms/step; bandwidth limit "
          f"{limit:9.0f} tok/s ({100 * row['fraction']:.1f}%), reading the whole cache "
          f"{limit_full:9.0f} ({100 * row['fraction_full_cache']:.1f}%)", flush=True)
    save()


def logprob_agreement(decoder, params, prompt, mask, result, save, rows=8, new=256):
  """Part 2 (module docstring): the sampler's log-probs against teacher-forced ones."""
  out = rollout(decoder, params, prompt, mask, rows, new, 3)
  sampled = np.asarray(out.logp, np.float64)
  keep = np.asarray(out.mask, bool)
  score = jax.jit(lambda p, *a: logprobs.completion_logprobs(decoder, p, *a))
  args = (out.prompt_tokens, out.prompt_mask, out.tokens, out.mask)

  def compare(name, forced):
    d = (np.asarray(forced, np.float64) - sampled)[keep]
    row = dict(max_abs=float(np.abs(d).max()), mean_abs=float(np.abs(d).mean()),
               max_ratio_dev=float(np.abs(np.expm1(d)).max()), tokens=int(keep.sum()))
    result["logprobs"][name] = row
    print(f"logp  {name:34s} max |d| {row['max_abs']:.2e}  mean |d| {row['mean_abs']:.2e}  "
          f"max |ratio - 1| {row['max_ratio_dev']:.2e}", flush=True)
    save()
    return np.asarray(forced, np.float64)

  result["logprobs"] = {"sampler_mean_logp": float(sampled[keep].mean())}
  forced = compare("teacher-forced", score(params, *args))
  cpu = jax.devices("cpu")[0]
  on_cpu = jax.device_put((params, *args), cpu)
  # the same jitted forward: inputs committed to the CPU run it there
  reference = compare("teacher-forced on the CPU backend", score(*on_cpu))
  d = np.abs(forced - reference)[keep]
  result["logprobs"]["forced_vs_cpu_max_abs"] = float(d.max())
  print(f"logp  teacher-forced against the CPU's forward: max |d| {d.max():.2e}", flush=True)
  save()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--shape", default="smollm2-135m")
  ap.add_argument("--batches", default="1,8,32,128,512")
  ap.add_argument("--new", type=int, default=256)
  ap.add_argument("--bandwidth", type=float, default=4.3e12)
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--parts", default="decode,logprobs")
  ap.add_argument("--smoke", action="store_true", help="a tiny model instead of --shape")
  args = ap.parse_args()
  dev = jax.devices()[0]
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, commit "
        f"{commit or 'unknown'}, matmul precision {decoder_lib.PRECISION}", flush=True)
  mc = SMOKE if args.smoke else shapes.model_config(args.shape)
  decoder = Decoder(mc)
  params = jax.device_put(bench_model.spread_params(mc, jax.random.PRNGKey(0)))
  prompt = np.random.default_rng(0).integers(10, mc.vocab_size, (1, PROMPT)).astype(np.int32)
  mask = np.ones((1, PROMPT), bool)
  result = {"device": dev.device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
            "shape": "smoke" if args.smoke else args.shape, "prompt": PROMPT, "new": args.new,
            "commit": commit or None, "precision": str(decoder_lib.PRECISION)}
  os.makedirs(args.out, exist_ok=True)

  def save():
    with open(os.path.join(args.out, "accelerator_decode.json"), "w") as f:
      json.dump(result, f, indent=2)

  parts = args.parts.split(",")
  if "logprobs" in parts:  # first: the smaller, and a correctness check
    try:
      logprob_agreement(decoder, params, prompt, mask, result, save, new=min(256, args.new))
    except Exception:  # the other part still runs; the error is in the output
      traceback.print_exc()
  if "decode" in parts:
    batches = [int(b) for b in args.batches.split(",")]
    try:
      decode_speed(mc, decoder, params, prompt, mask, batches, args.new, args.bandwidth, result,
                   save)
    except Exception:
      traceback.print_exc()
  save()


if __name__ == "__main__":
  main()
