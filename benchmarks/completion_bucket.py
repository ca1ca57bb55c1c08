"""The train step on the round's longest completion (train.completion_bucket) against all N.

    python benchmarks/completion_bucket.py [--g 8] [--reps 3] [--seed 0]   # ~3 min, 2-core CPU

SmolLM2-135M-Instruct (`models.load("smollm2")`), one round as the SmolLM2 layers run it:
G rollouts of the configs/smollm2.py training question 'Compute 9 + 28.' at temperature 0.6,
up to 256 new tokens; then one train step (raw reward, clipped ratio, token mean: L1's chain;
AdamW 1e-5, rewards 1, 0, 1, 0, ...) on the rollout as sampled, [G, 256], and on its first
train.completion_width(lengths, 256, 32) positions, alternating, best of --reps each. Prints
both times, their ratio, the ratio of the positions the step computes (prompt + completion),
and both steps' loss and gradient norm and their largest parameter difference (float
rounding only).
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
from rft_jax import losses, sampling, train

N, BUCKET = 256, 32


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--g", type=int, default=8)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()

  config, policy, task, example, prompt, prompt_mask = bench_model.smollm2_layer_round()
  rollout = sampling.sample(policy.decoder, policy.params, jnp.asarray(prompt),
                            jnp.asarray(prompt_mask), jax.random.PRNGKey(args.seed),
                            max_new_tokens=N, num_samples=args.g, temperature=np.float32(0.6),
                            eos_ids=np.asarray(policy.eos_ids, np.int32), pad_id=policy.pad_id)
  lengths = np.asarray(rollout.mask.sum(-1), np.int64)
  width = train.completion_width(lengths, N, BUCKET)
  texts = [policy.decode_completion(t, m) for t, m in zip(*jax.device_get(
      (rollout.tokens, rollout.mask)))]
  graded, _ = task.grade_batch(texts, [example] * args.g)
  # The timing does not depend on the rewards; alternating 1, 0 gives the parity check below a
  # non-zero gradient whatever the rollouts earned (a round of zeros would not move the params).
  rewards = [float(i % 2 == 0) for i in range(args.g)]

  transform = losses.from_config(config.loss.to_dict())
  optimizer = train.make_optimizer(ml_collections.ConfigDict(
      {**common.base_config().optimizer.to_dict(), "learning_rate": 1e-5}))
  opt_state = jax.jit(optimizer.init)(policy.params)

  def step(cut: int):
    r = train._trim_completions(rollout, cut)
    batch = train.RolloutBatch(
        prompt_tokens=r.prompt_tokens, prompt_mask=r.prompt_mask,
        loss=losses.Batch(tokens=r.tokens, mask=r.mask, behaviour_logp=r.logp,
                          rewards=jnp.asarray(rewards, jnp.float32),
                          group_ids=jnp.zeros((args.g,), jnp.int32), sampler_logp=r.sampler_logp))
    state = jax.block_until_ready(train.TrainState(
        round=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, policy.params),
        opt_state=jax.tree.map(jnp.copy, opt_state), loss_state=transform.init()))
    t = time.perf_counter()  # the copies above are not timed
    state, metrics = train.train_step(state, batch, jnp.float32(0.6), decoder=policy.decoder,
                                      transform=transform, optimizer=optimizer)
    jax.block_until_ready(state.params)
    return time.perf_counter() - t, state.params, metrics

  compile_s = {cut: step(cut)[0] for cut in (N, width)}
  times = {N: [], width: []}
  for _ in range(args.reps):
    for cut in (N, width):
      times[cut].append(step(cut)[0])
  _, full_params, full_m = step(N)
  _, cut_params, cut_m = step(width)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(full_params), jax.tree.leaves(cut_params)))
  p = prompt.shape[1]
  print(f"G = {args.g}, prompt {p} positions, completion lengths {sorted(lengths.tolist())}, "
        f"correct {sum(graded):.0f}/{args.g} (the step's rewards: 1, 0, 1, 0, ...); "
        f"{bench_model.load_average()}\n")
  print(f"| completion positions | step s (best of {args.reps}) | first call s (compiles) |")
  print("|---|---|---|")
  for cut in (N, width):
    print(f"| {cut} | {min(times[cut]):.2f} | {compile_s[cut]:.1f} |")
  print(f"\nspeed-up {min(times[N]) / min(times[width]):.2f}x; positions (prompt + completion) "
        f"{(p + width) / (p + N):.3f} of the full step's; loss {float(full_m['loss']):.7g} vs "
        f"{float(cut_m['loss']):.7g}, gradient norm {float(full_m['grad_norm']):.7g} vs "
        f"{float(cut_m['grad_norm']):.7g}; largest parameter difference after the step "
        f"{diff:.2e} (Adam's first step moves an entry by about the learning rate whatever its "
        "gradient's size, so rounding noise in near-zero entries shows at 1e-5)")


if __name__ == "__main__":
  main()
