"""Sampler throughput: rft_jax's jitted sampler against transformers' `generate`, same weights.

    python benchmarks/sampler.py [--quick] [--reps 3] [--no-sweep] [--sweep-hf]

Writes a random Qwen2-shaped checkpoint (benchmarks/bench_model.py) through rft_jax's HF export,
loads it into rft_jax (`models.load`) and into transformers (Qwen2ForCausalLM, PyTorch CPU, 2
threads, its default attention), then:

1. greedy parity: batch 4, prompt 64, 32 new tokens, temperature 0 / do_sample=False; the
   tokens must be identical;
2. the headline: batch 16, prompt 64, 128 new tokens, sampling at temperature 1 (no top-k /
   top-p), EOS ignored so both sides generate every token; tokens/s = B * N / wall time. The
   two sides run alternately, `--reps` times each, and the best time of each is kept (the
   machine is shared: the best run is the least disturbed). rft_jax's first call (trace +
   compile + run) is reported separately from its steady state; a bfloat16-compute row too;
3. a sweep over batch (1, 4, 16, 64) x new tokens (32, 128, 512) for rft_jax, showing how time
   grows (transformers too with --sweep-hf, for B x N <= 2048 tokens: beyond, a row costs
   minutes on the 2-core CPU).

Only the ratios mean anything on a shared CPU; absolute numbers belong to GPU / TPU runs.
"""

from __future__ import annotations

import argparse
import time

import bench_model
import jax
import numpy as np
import torch

from rft_jax import metrics, sampling

PROMPT = 64
HF_SWEEP_TOKENS = 2048  # transformers joins the sweep up to B x N tokens (minutes per row beyond)


def rft_sampler(policy, batch: int, new: int, temperature: float, seed: int = 0):
  """A function running one sample() call to completion; returns its tokens [B, N]."""
  tokens = jax.device_put(bench_model.random_prompts(batch, PROMPT, seed))
  mask = jax.device_put(np.ones((batch, PROMPT), bool))
  eos = np.array([-1], np.int32)  # no stopping token: every row generates N tokens
  rng = jax.random.PRNGKey(seed)
  temperature = np.float32(temperature)

  def run():
    out = sampling.sample(policy.decoder, policy.params, tokens, mask, rng, max_new_tokens=new,
                          num_samples=1, temperature=temperature, top_k=np.int32(0),
                          top_p=np.float32(1.0), eos_ids=eos, pad_id=policy.pad_id)
    return np.asarray(out.tokens)

  return run


def hf_sampler(model, batch: int, new: int, greedy: bool = False, seed: int = 0):
  """A function running transformers' generate; returns the new tokens [B, N]."""
  import copy

  ids = torch.from_numpy(bench_model.random_prompts(batch, PROMPT, seed).astype(np.int64))
  mask = torch.ones_like(ids)
  gen = copy.deepcopy(model.generation_config)
  gen.eos_token_id = None  # no stopping token: every row generates N tokens
  gen.pad_token_id = bench_model.PAD

  def run():
    with torch.inference_mode():
      out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                           do_sample=not greedy, temperature=1.0, top_k=0, top_p=1.0,
                           use_cache=True, max_new_tokens=new, min_new_tokens=new)
    out = out[:, PROMPT:].numpy()
    assert out.shape == (batch, new), out.shape
    return out

  return run


def timed(fn) -> tuple[float, float]:
  """(wall s, CPU s of every thread of this process) of one call."""
  t, c = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - t, time.process_time() - c


def greedy_parity(policy, model) -> bool:
  ours = rft_sampler(policy, 4, 32, temperature=0.0, seed=1)()
  theirs = hf_sampler(model, 4, 32, greedy=True, seed=1)()
  same = bool(np.array_equal(ours, theirs))
  agree = float(np.mean(ours == theirs))
  print(f"greedy parity (batch 4, prompt {PROMPT}, 32 new tokens): "
        f"{'identical' if same else f'DIFFERENT ({agree:.1%} of tokens agree)'}")
  return same


def headline(policy, policy_bf16, model, reps: int, batch: int = 16, new: int = 128):
  rows = []
  ours = rft_sampler(policy, batch, new, 1.0)
  ours_bf16 = rft_sampler(policy_bf16, batch, new, 1.0)
  theirs = hf_sampler(model, batch, new)
  first = timed(ours)[0]
  first_bf16 = timed(ours_bf16)[0]
  hf_sampler(model, 2, 4)()  # transformers' one-off set-up outside the timing
  times = {"rft_jax": [], "rft_jax bf16": [], "transformers": []}
  for _ in range(reps):  # alternate, so both sides see the same machine load
    times["rft_jax"].append(timed(ours))
    times["transformers"].append(timed(theirs))
    times["rft_jax bf16"].append(timed(ours_bf16))
  hf_best = min(times["transformers"])
  print(f"\nbatch {batch}, prompt {PROMPT}, {new} new tokens, temperature 1, best of {reps} "
        "(wall; CPU = seconds of all the process's threads in that run):\n")
  print("| sampler                       | first call s | steady s | compile s | tokens/s | "
        "vs transformers | CPU s |")
  print("|-------------------------------|--------------|----------|-----------|----------|"
        "-----------------|-------|")
  for name, label, first_s in (("transformers", "transformers generate (torch)", None),
                               ("rft_jax", "rft_jax sample, float32", first),
                               ("rft_jax bf16", "rft_jax sample, bfloat16", first_bf16)):
    best, cpu = min(times[name])
    first_txt = "-" if first_s is None else f"{first_s:.2f}"
    compile_txt = "-" if first_s is None else f"{first_s - best:.2f}"
    print(f"| {label:29s} | {first_txt:>12s} | {best:8.3f} | {compile_txt:>9s} | "
          f"{batch * new / best:8.0f} | {hf_best[0] / best:14.2f}x | {cpu:5.1f} |")
    rows.append((name, best))
  print("all runs (wall s): " + "; ".join(f"{k}: " + ", ".join(f"{t[0]:.3f}" for t in v)
                                          for k, v in times.items()))
  return dict(rows)


def sweep(policy, model, batches, news, reps: int, with_hf: bool):
  print(f"\nsweep (prompt {PROMPT}, temperature 1, best of {reps}; s = steady-state seconds, "
        "compile = first call - steady):\n")
  header = "| batch | new | rft_jax s | rft_jax tok/s | compile s |"
  rule = "|-------|-----|-----------|---------------|-----------|"
  if with_hf:
    header += " transformers s | transformers tok/s | ratio |"
    rule += "----------------|--------------------|-------|"
  print(header)
  print(rule)
  for b in batches:
    for n in news:
      ours = rft_sampler(policy, b, n, 1.0)
      with metrics.compile_log() as compiled:
        first = timed(ours)[0]
      best = min(timed(ours)[0] for _ in range(reps))
      # A shape compiled earlier in the run (greedy check, headline) is reused, not compiled.
      compile_txt = f"{first - best:9.2f}" if "jit(sample)" in compiled else "   cached"
      line = f"| {b:5d} | {n:3d} | {best:9.3f} | {b * n / best:13.0f} | {compile_txt} |"
      if with_hf and b * n <= HF_SWEEP_TOKENS:
        theirs = hf_sampler(model, b, n)
        hf_best = min(timed(theirs)[0] for _ in range(reps))
        line += f" {hf_best:14.3f} | {b * n / hf_best:18.0f} | {hf_best / best:4.2f}x |"
      elif with_hf:
        line += "              - |                  - |     - |"
      print(line, flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="a smaller sweep: batch 1, 16 x 32, 128")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--no-sweep", action="store_true")
  ap.add_argument("--sweep-hf", action="store_true",
                  help=f"time transformers in the sweep too, up to B x N = {HF_SWEEP_TOKENS}")
  ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  args = ap.parse_args()
  bench_model.start(args.threads)
  (policy, policy_bf16), model = bench_model.load_models("float32", "bfloat16")
  print(f"model: {bench_model.CONFIG.variant}, {bench_model.CONFIG.n_layers} layers, "
        f"d {bench_model.CONFIG.d_model}, vocab {bench_model.CONFIG.vocab_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params (tied), "
        f"transformers attention: {model.config._attn_implementation}")
  greedy_parity(policy, model)
  headline(policy, policy_bf16, model, args.reps)
  if not args.no_sweep:
    batches, news = ((1, 16), (32, 128)) if args.quick else ((1, 4, 16, 64), (32, 128, 512))
    sweep(policy, model, batches, news, reps=1 if not args.quick else 2, with_hf=args.sweep_hf)
  print(f"\n{bench_model.load_average()}")


if __name__ == "__main__":
  main()
