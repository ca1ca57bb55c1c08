"""Two runs at once on the 2-core CPU, one core each, against one run after the other on both.

    python benchmarks/parallel_runs.py [--rounds 3] [--g 8] [--new 128]     # ~6 min

The workload is SmolLM2-135M-Instruct's L1 round as the layers run it: G rollouts of the
training question at temperature 0.6, grading, one train step (L1's chain, AdamW 1e-5), --rounds
times after one warm-up round (compilation). EOS is disabled, so every round decodes exactly
--new tokens per row and every mode does the same work. Each worker loads the model, warms up, then waits
at a barrier so that only the timed rounds overlap.

  sequential  one worker with both cores, twice (what `rft_jax.pipeline` does: one run at a time)
  pinned      two workers at once, `taskset` to one core each (XLA sizes its thread pool to the
              cores it may use)
  shared      two workers at once, both free to use both cores

Prints each mode's wall time for the same total work (2 x rounds rounds) and the throughput
ratio against sequential. A run's evaluation batches behave like bigger rollouts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args) -> None:
  import bench_model
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  from configs import common
  from rft_jax import losses, sampling, train

  config, policy, task, example, prompt, prompt_mask = bench_model.smollm2_layer_round()
  transform = losses.from_config(config.loss.to_dict())
  optimizer = train.make_optimizer(ml_collections.ConfigDict(
      {**common.base_config().optimizer.to_dict(), "learning_rate": 1e-5}))
  state = train.TrainState(round=jnp.zeros((), jnp.int32), params=policy.params,
                           opt_state=jax.jit(optimizer.init)(policy.params),
                           loss_state=transform.init())
  no_eos = np.asarray([-1], np.int32)  # every row decodes args.new tokens: equal work per round

  def one_round(r: int):
    nonlocal state
    rollout = sampling.sample(policy.decoder, state.params, jnp.asarray(prompt),
                              jnp.asarray(prompt_mask), jax.random.PRNGKey(r),
                              max_new_tokens=args.new, num_samples=args.g,
                              temperature=np.float32(0.6), eos_ids=no_eos, pad_id=policy.pad_id)
    tokens, mask = jax.device_get((rollout.tokens, rollout.mask))
    texts = [policy.decode_completion(t, m) for t, m in zip(tokens, mask)]
    task.grade_batch(texts, [example] * args.g)
    rewards = [float(i % 2 == 0) for i in range(args.g)]  # a gradient whatever was earned
    batch = train.RolloutBatch(
        prompt_tokens=rollout.prompt_tokens, prompt_mask=rollout.prompt_mask,
        loss=losses.Batch(tokens=rollout.tokens, mask=rollout.mask, behaviour_logp=rollout.logp,
                          rewards=jnp.asarray(rewards, jnp.float32),
                          group_ids=jnp.zeros((args.g,), jnp.int32),
                          sampler_logp=rollout.sampler_logp))
    state, metrics = train.train_step(state, batch, jnp.float32(0.6), decoder=policy.decoder,
                                      transform=transform, optimizer=optimizer)
    jax.block_until_ready(metrics)

  one_round(1000)  # compiles
  for path in (args.ready,):
    with open(path, "w") as f:
      f.write("ready")
  while not os.path.exists(args.go):
    time.sleep(0.05)
  t = time.perf_counter()
  for r in range(args.rounds):
    one_round(r)
  print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)


def launch(args, tmp: str, name: str, cpus: str | None, repeat: int = 1) -> list:
  """Starts one worker (repeat times in a row when sequential); returns the processes."""
  ready, go = os.path.join(tmp, f"{name}.ready"), os.path.join(tmp, "go")
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--rounds",
         str(args.rounds * repeat), "--g", str(args.g), "--new", str(args.new),
         "--ready", ready, "--go", go]
  if cpus is not None:
    cmd = ["taskset", "-c", cpus, *cmd]
  return [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE)]


def mode(args, name: str, cpus: list) -> float:
  """Wall seconds from the barrier until every worker has done its rounds."""
  with tempfile.TemporaryDirectory() as tmp:
    repeat = 2 if len(cpus) == 1 else 1
    procs = [p for i, c in enumerate(cpus) for p in launch(args, tmp, f"{name}{i}", c, repeat)]
    while not all(os.path.exists(os.path.join(tmp, f"{name}{i}.ready"))
                  for i in range(len(cpus))):
      if any(p.poll() not in (None, 0) for p in procs):
        raise SystemExit(f"a {name} worker failed")
      time.sleep(0.1)
    t = time.perf_counter()
    open(os.path.join(tmp, "go"), "w").close()
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - t
  print(f"{name}: wall {wall:.1f} s (workers: "
        + ", ".join(f"{o['seconds']:.1f} s" for o in outs) + ")", flush=True)
  return wall


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--g", type=int, default=8)
  ap.add_argument("--new", type=int, default=128)
  ap.add_argument("--worker", action="store_true")
  ap.add_argument("--ready", default="")
  ap.add_argument("--go", default="")
  args = ap.parse_args()
  if args.worker:
    worker(args)
    return
  import bench_model

  print(f"{2 * args.rounds} rounds of G = {args.g}, up to {args.new} new tokens, in each mode; "
        f"{bench_model.load_average()}")
  seq = mode(args, "sequential", [None])
  pinned = mode(args, "pinned", ["0", "1"])
  shared = mode(args, "shared", [None, None])
  print(f"\n| mode | wall s | throughput vs sequential |\n|---|---|---|\n"
        f"| sequential (both cores, one run after the other) | {seq:.1f} | 1.00x |\n"
        f"| pinned (two runs, one core each) | {pinned:.1f} | {seq / pinned:.2f}x |\n"
        f"| shared (two runs, both cores) | {shared:.1f} | {seq / shared:.2f}x |")


if __name__ == "__main__":
  main()
