"""Evaluation batches of SmolLM2-135M-Instruct: the sampler against the compacting sampler.

    python benchmarks/compacting.py [--batch 64] [--reps 2] [--temperature 0.6]

The first --batch test questions of configs/smollm2.py's task (one-operation arithmetic through
the chat template, 256 new tokens, EOS on) as one evaluation batch: `sampling.sample` (the batch
decodes until its longest row ends) against `sampling.sample_compacting` (ended rows leave the
batch, in stages of 32 tokens, down to 16 rows), alternating, best of --reps, the same rng. Prints
seconds, the rows' mean and longest length, the row-steps each side computes, and whether the
tokens are identical. Ratios only: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import time

import bench_model  # noqa: F401  (puts the repository root on sys.path)
import jax
import numpy as np

from configs import smollm2
from configs.common import base_config
from rft_jax import models, sampling, train


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--reps", type=int, default=2)
  p.add_argument("--temperature", type=float, default=0.6)
  args = p.parse_args()
  config = smollm2.apply(base_config())
  task = train.build_task(config.task)
  policy = models.load(config.model.checkpoint, dtype="float32")
  prompts = [policy.encode_prompt(task.prompt_text(e)) for e in task.test[:args.batch]]
  tokens, mask = sampling.left_pad(prompts, policy.pad_id, bucket=config.rollout.prompt_bucket)
  kwargs = dict(max_new_tokens=config.rollout.max_new_tokens, temperature=args.temperature,
                eos_ids=np.asarray(policy.eos_ids, np.int32), pad_id=policy.pad_id)
  args_ = (policy.decoder, policy.params, tokens, mask, jax.random.PRNGKey(0))
  stages = []

  def plain():
    return sampling.sample(*args_, **kwargs)

  def compacting():
    stages.clear()
    return sampling.sample_compacting(*args_, on_stage=lambda *a: stages.append(a), **kwargs)

  times = {"sample": [], "sample_compacting": []}
  out = {}
  for rep in range(args.reps + 1):  # rep 0 compiles
    for name, fn in (("sample", plain), ("sample_compacting", compacting)):
      t0 = time.perf_counter()
      r = fn()
      jax.block_until_ready(r.tokens)
      if rep:
        times[name].append(time.perf_counter() - t0)
      out[name] = r
  lengths = np.asarray(out["sample"].lengths)
  steps, prev = 0, 0
  for step, rows, _ in stages:
    steps += rows * (step - prev)
    prev = step
  same = np.array_equal(out["sample"].tokens, out["sample_compacting"].tokens)
  t_plain, t_compact = min(times["sample"]), min(times["sample_compacting"])
  print(f"load average {os.getloadavg()[0]:.1f}; batch {args.batch}, temperature "
        f"{args.temperature}; lengths mean {lengths.mean():.0f}, longest {lengths.max()}, "
        f"{np.mean(lengths >= config.rollout.max_new_tokens):.0%} cut")
  print("| sampler | s | row-steps decoded | stages (step: rows) |")
  print("|---|---|---|---|")
  print(f"| sample | {t_plain:.1f} | {args.batch * lengths.max():,} | - |")
  print(f"| sample_compacting | {t_compact:.1f} | {steps:,} | "
        f"{', '.join(f'{s}: {r}' for s, r, _ in stages)} |")
  print(f"ratio {t_plain / t_compact:.2f}x; tokens identical: {same}")


if __name__ == "__main__":
  main()
