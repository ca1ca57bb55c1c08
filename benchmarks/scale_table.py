"""Runs rft_jax.plan over the paper's models and settings and writes docs/scale.md's table.

    python benchmarks/scale_table.py --out=/tmp/plans.jsonl [--devices=1,8] [--models=...]
    python benchmarks/scale_table.py --out=/tmp/plans.jsonl --render   # the markdown table

Each plan runs in its own process (--devices needs a fresh jax). Settings of every row: the
L0 config (one question per round, the minimal loss), prompt 512 and response 1024 tokens,
float32 params with bfloat16 compute, remat per block, attention in 256-query chunks, log-probs
in 128-position chunks; G and the micro-batch size vary, and --lora adds rank-64 rows.
"""

import argparse
import json
import os
import subprocess
import sys
import time

MODELS = ("qwen2.5-0.5b", "llama-3.2-1b", "olmo-2-1b", "qwen2.5-1.5b")
COMMON = ["--config=configs/l0_minimal.py", "--prompt_len=512",
          "--config.rollout.max_new_tokens=1024", "--config.model.compute_dtype=bfloat16",
          "--config.model.remat=true", "--config.model.attn_chunk=256"]


def command(model, g, mb, devices, extra=()):
  mesh = ([f"--devices={devices}", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
          if devices > 1 else [])
  return [sys.executable, "-m", "rft_jax.plan", f"--shape={model}", *COMMON,
          f"--config.rollout.num_samples={g}", f"--config.train.micro_batch_size={mb}", *mesh,
          *extra]


def run(args):
  done = set()
  if os.path.exists(args.out):
    for line in open(args.out):
      r = json.loads(line)
      done.add((r["shape"], r["rows"], r["micro_batch_size"], r["devices"], r["lora_rank"]))
  # The corners first (G=8 mb=4, G=16 mb=8), then the rest, then LoRA: a partial table still
  # spans every model.
  jobs = []
  for settings in (((8, 4), (16, 8)), ((8, 8), (16, 4))):
    jobs += [(m, g, mb, d, 0) for d in args.devices for m in args.models for g, mb in settings]
  if args.lora:
    jobs += [(m, 16, 4, 1, 64) for m in args.models]
  for m, g, mb, d, r in jobs:
    if (m, g, mb, d, r) in done:
      continue
    extra = [f"--config.model.lora.rank={r}"] if r else []
    cmd = command(m, g, mb, d, extra) + [f"--json={args.out}"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    print(f"{m} G={g} mb={mb} devices={d} lora={r}: rc {p.returncode}, "
          f"{time.time() - t0:.0f} s", flush=True)
    if p.returncode:
      print(p.stderr[-2000:], flush=True)


def render(path):
  rows = [json.loads(line) for line in open(path)]
  key = lambda r: (r["lora_rank"], r["devices"], list(MODELS).index(r["shape"]), r["rows"],
                   r["micro_batch_size"])
  out = ["| model | LoRA | devices | G | micro-batch | params | opt state | sampler | train "
         "step | peak / device | 40 GB | 80 GB | plan time |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  gb = lambda b: f"{b / 1e9:.1f}"
  for r in sorted(rows, key=key):
    out.append(
        f"| {r['shape']} | {r['lora_rank'] or '-'} | {r['devices']} | {r['rows']} | "
        f"{r['micro_batch_size']} | {gb(r['params'])} | {gb(r['opt_state'])} | "
        f"{gb(r['sample'])} | {gb(r['train'])} | **{gb(r['peak'])}** | "
        f"{'yes' if r['peak'] <= 40e9 else 'no'} | {'yes' if r['peak'] <= 80e9 else 'no'} | "
        f"{r['train_compile_s'] + r['sample_compile_s']:.0f} s |")
  print("\n".join(out))


if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--devices", default="1,8")
  ap.add_argument("--models", default=",".join(MODELS))
  ap.add_argument("--lora", action="store_true")
  ap.add_argument("--render", action="store_true")
  a = ap.parse_args()
  a.devices = [int(x) for x in a.devices.split(",")]
  a.models = a.models.split(",")
  if a.render:
    render(a.out)
  else:
    run(a)
