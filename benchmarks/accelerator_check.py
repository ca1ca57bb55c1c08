"""On a machine with a GPU (or TPU): one round at the paper's lengths, measured against the plan.

    python benchmarks/accelerator_check.py [--shape=qwen2.5-0.5b] [--g=8] [--micro_batch=4]
        [--steps=3] [--out=DIR]

Random weights of the Qwen2.5-0.5B-Instruct shape (rft_jax.models.shapes; no download), one
question of 512 prompt tokens, G = 8 rollouts of 1024 tokens (no EOS, so every rollout runs the
full length), the L2 loss chain, float32 params with bfloat16 compute, remat per block,
attention in 256-query chunks, micro-batches of 4. It prints:

  plan      rft_jax.plan's per-device peak for the same settings, compiled by this machine's
            own backend (the CPU plan of docs/scale.md is XLA:CPU's buffer assignment)
  sampler   compile time, then decode tokens per second of a second call
  train     compile time, then seconds per train step (mean of --steps)
  memory    the device's peak_bytes_in_use (memory_stats) against the planned peak

and writes the same as JSON to <out>/accelerator_check.json (default $OUT, else the current
directory). Budget: under 8 minutes on one A100 / H100 / H200 (two compiles of ~1 min, a 1024-
token decode, a few train steps). Run on an H200 on 2026-11-30 (141 s; docs/scale.md, "The
accelerator check"; benchmarks/results/accelerator_check_h200.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_model
import jax
import jax.numpy as jnp
import numpy as np

from configs import l2_advantage
from rft_jax import losses, plan as plan_lib, sharding, train
from rft_jax.models import Decoder, ModelConfig, abstract_params

PROMPT, RESPONSE = 512, 1024
# --smoke: the same script on a tiny model and short lengths (checks it runs, on any machine).
SMOKE = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                    head_dim=16, d_ff=128, variant="qwen2", qkv_bias=True, tie_embeddings=True)


def config_for(args):
  c = l2_advantage.get_config(None)
  c.loss.chain = "group_mean,group_std,clipped_ratio,token_mean"
  c.rollout.update(num_samples=args.g, max_new_tokens=RESPONSE, prompts_per_round=1)
  c.train.update(micro_batch_size=args.micro_batch, logprob_chunk=128)
  c.model.update(dtype="float32", compute_dtype="bfloat16", remat=True,
                 attn_chunk=min(256, RESPONSE // 4))
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  return c


def peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--shape", default="qwen2.5-0.5b")
  ap.add_argument("--g", type=int, default=8)
  ap.add_argument("--micro_batch", type=int, default=4)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--smoke", action="store_true", help="tiny model, 32 + 32 tokens")
  args = ap.parse_args()
  global PROMPT, RESPONSE
  if args.smoke:
    PROMPT, RESPONSE = 32, 32
  shape = SMOKE if args.smoke else args.shape
  t_start = time.time()
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({jax.default_backend()}), {len(jax.devices())} device(s)",
        flush=True)
  config = config_for(args)  # after PROMPT / RESPONSE are set
  result = {"device": dev.device_kind, "backend": jax.default_backend(),
            "shape": "smoke" if args.smoke else args.shape,
            "g": args.g, "micro_batch": args.micro_batch, "prompt": PROMPT, "response": RESPONSE}

  # 1. The plan, compiled by this backend.
  pl = plan_lib.plan(config, shape, PROMPT, log=lambda m: print(m, flush=True))
  print(plan_lib.format_plan(pl), flush=True)
  result["plan"] = pl.to_dict()

  # 2. Random params placed as run() places them; the optimizer state; the round's prompt.
  mc = plan_lib.model_config_for(config, shape)
  mesh = sharding.build_mesh(**config.mesh)
  shardings = sharding.param_shardings(abstract_params(mc), mesh)
  params = jax.jit(lambda k: bench_model.spread_params(mc, k),
                   out_shardings=shardings)(jax.random.PRNGKey(0))
  transform = train._loss_chain(config.loss.to_json())
  optimizer = train._optimizer(config.optimizer.to_json())
  state = sharding.on_mesh(train.TrainState(
      round=jnp.zeros((), jnp.int32), params=params,
      opt_state=train.init_optimizer(optimizer, params, mesh), loss_state=transform.init()),
      mesh)
  rng = np.random.default_rng(0)
  prompt = rng.integers(10, mc.vocab_size, (1, PROMPT)).astype(np.int32)
  prompt_mask = np.ones((1, PROMPT), bool)
  prompt, prompt_mask = sharding.shard_batch((prompt, prompt_mask), mesh)
  decoder = Decoder(mc)

  def sample(key):  # no EOS: every rollout runs the full response length
    return bench_model.full_length_sample(decoder, state.params, prompt, prompt_mask, key,
                                          rows=args.g, new=RESPONSE)

  # 3. The sampler: compile + first call, then a timed call.
  t0 = time.time()
  rollout = jax.block_until_ready(sample(jax.random.PRNGKey(1)))
  result["sampler_first_call_s"] = time.time() - t0
  t0 = time.time()
  rollout = jax.block_until_ready(sample(jax.random.PRNGKey(2)))
  dt = time.time() - t0
  tokens = float(np.asarray(rollout.mask).sum())
  result.update(sampler_s=dt, decode_tokens=tokens, decode_tok_per_s=tokens / dt)
  print(f"sampler: first call {result['sampler_first_call_s']:.1f} s; then {dt:.2f} s for "
        f"{tokens:.0f} tokens = {tokens / dt:.0f} tok/s", flush=True)

  # 4. The train step on those rollouts (random 0/1 rewards), as run() calls it.
  rewards = np.asarray(rng.integers(0, 2, args.g), np.float32)
  rewards[:2] = [0, 1]  # a learning signal
  batch = train.RolloutBatch(
      prompt_tokens=rollout.prompt_tokens, prompt_mask=rollout.prompt_mask,
      loss=losses.Batch(tokens=rollout.tokens, mask=rollout.mask, behaviour_logp=rollout.logp,
                        rewards=sharding.shard_batch(rewards, mesh),
                        group_ids=sharding.shard_batch(np.zeros(args.g, np.int32), mesh),
                        prompt_ids=sharding.shard_batch(np.zeros(args.g, np.int32), mesh),
                        sampler_logp=rollout.sampler_logp))
  step = lambda s: train.train_step(
      s, batch, jnp.float32(1.0), decoder=decoder, transform=transform, optimizer=optimizer,
      epochs=config.train.epochs, mini_batches=config.train.mini_batches,
      logprob_chunk=config.train.logprob_chunk, micro_batch_size=args.micro_batch)
  t0 = time.time()
  state, metrics = step(state)
  jax.block_until_ready(metrics)
  result["train_first_call_s"] = time.time() - t0
  times = []
  for _ in range(args.steps):
    t0 = time.time()
    state, metrics = step(state)
    jax.block_until_ready(metrics)
    times.append(time.time() - t0)
  result.update(train_step_s=float(np.mean(times)), loss=float(metrics["loss"]),
                grad_norm=float(metrics["grad_norm"]), entropy=float(metrics["entropy"]))
  print(f"train step: first call {result['train_first_call_s']:.1f} s; then "
        f"{result['train_step_s']:.2f} s/step (loss {result['loss']:.4f}, grad norm "
        f"{result['grad_norm']:.3g})", flush=True)

  # 5. Memory against the plan.
  peak = peak_bytes()
  result["peak_bytes_in_use"] = peak
  if peak is not None:
    print(f"memory: device peak {peak / 1e9:.2f} GB, planned {pl.peak / 1e9:.2f} GB "
          f"(ratio {peak / pl.peak:.2f})", flush=True)
  else:
    print("memory: this backend reports no memory_stats", flush=True)
  result["wall_s"] = time.time() - t_start
  print(f"total wall time {result['wall_s']:.0f} s", flush=True)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "accelerator_check.json"), "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
