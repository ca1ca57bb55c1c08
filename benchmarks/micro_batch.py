"""The SmolLM2 train step with its rollouts in micro-batches (train.micro_batch_size) or whole.

    python benchmarks/micro_batch.py [--g 8] [--n 224] [--micro 0 4 2 1]   # ~4 min, 2-core CPU

One train step of L1's chain (AdamW 1e-5) on G rows of a 64-token prompt and an n-token
completion (random tokens, every position scored, rewards 1, 0, 1, 0, ...) for each
micro-batch size in --micro (0 = all G rows at once), best of 2 after a compiling call, each
from the same fresh state; then the compiled step's scratch memory (XLA's memory analysis).
The micro-batched step computes the same update to float rounding
(tests/test_memory_options.py); this measures what it costs or saves.
"""

from __future__ import annotations

import argparse
import time

import bench_model
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import common
from rft_jax import losses, train

P = 64


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--g", type=int, default=8)
  ap.add_argument("--n", type=int, default=224)
  ap.add_argument("--micro", type=int, nargs="+", default=[0, 4, 2, 1])
  args = ap.parse_args()
  g, n = args.g, args.n

  config, policy, *_ = bench_model.smollm2_layer_round()
  transform = losses.from_config(config.loss.to_dict())
  optimizer = train.make_optimizer(ml_collections.ConfigDict(
      {**common.base_config().optimizer.to_dict(), "learning_rate": 1e-5}))
  rng = np.random.default_rng(0)
  batch = train.RolloutBatch(
      prompt_tokens=jnp.asarray(rng.integers(1, 1000, (g, P)), jnp.int32),
      prompt_mask=jnp.ones((g, P), bool),
      loss=losses.Batch(tokens=jnp.asarray(rng.integers(1, 1000, (g, n)), jnp.int32),
                        mask=jnp.ones((g, n)), behaviour_logp=-jnp.ones((g, n)),
                        rewards=jnp.asarray([float(i % 2 == 0) for i in range(g)]),
                        group_ids=jnp.zeros((g,), jnp.int32), sampler_logp=-jnp.ones((g, n))))

  def fresh_state():
    params = jax.tree.map(jnp.copy, policy.params)
    return train.TrainState(round=jnp.zeros((), jnp.int32), params=params,
                            opt_state=jax.jit(optimizer.init)(params),
                            loss_state=transform.init())

  print(f"G = {g}, prompt {P} + completion {n} positions; {bench_model.load_average()}\n")
  print("| micro_batch_size | step s (best of 2) | scratch GiB |")
  print("|---|---|---|")
  for micro in args.micro:
    kw = dict(decoder=policy.decoder, transform=transform, optimizer=optimizer,
              micro_batch_size=micro)
    scratch = train.train_step.lower(fresh_state(), batch, jnp.float32(0.6), **kw).compile(
    ).memory_analysis().temp_size_in_bytes / 2 ** 30
    jax.block_until_ready(train.train_step(fresh_state(), batch, jnp.float32(0.6), **kw))
    times = []
    for _ in range(2):
      state = jax.block_until_ready(fresh_state())  # the copies are not timed
      t = time.perf_counter()
      jax.block_until_ready(train.train_step(state, batch, jnp.float32(0.6), **kw))
      times.append(time.perf_counter() - t)
    print(f"| {micro or 'whole batch'} | {min(times):.2f} | {scratch:.2f} |", flush=True)


if __name__ == "__main__":
  main()
