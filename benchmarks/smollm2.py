"""SmolLM2-135M-Instruct (the real GGUF): rollouts and one RL round, against transformers / TRL.

    python benchmarks/smollm2.py [--rollouts] [--profile] [--round] [--reps 2] [--threads 2]

(no section flag = all three). The model is `rft_jax.models.load("smollm2")` (fetched into the
cache on first use) and, for the peers, transformers' `AutoModelForCausalLM.from_pretrained(dir,
gguf_file=...)` of the same file: the same dequantized float32 weights on both sides.

1. --rollouts: batch 8 and 32 chat prompts ("What is a - b?" through the chat template), 128 new
   tokens, temperature 1, float32, EOS disabled on both sides so every row decodes 128 tokens;
   rft_jax `sampling.sample` against transformers `generate` (PyTorch CPU, --threads threads),
   alternating, best of --reps. Also the roofline of the 2-core CPU: a decode step reads the
   538 MB of float32 weights (~21 ms at 26 GB/s) and costs 0.27 GFLOP per row (~1.4 ms at
   195 GFLOP/s), so B rows cannot beat B / max(21 ms, B x 1.4 ms) tokens/s (730 at B = 32).
2. --profile: where a batch-32 decode step's time goes, by timing its parts alone (jitted,
   best of 3): the 30 blocks, the tied head [32, 576] x [576, 49152], the token draw.
3. --round: one L1-sized round, 1 question x G = 8 rollouts of up to 128 tokens (stopping at
   EOS), grading, one train step (GRPO advantage, clip 0.2, token mean, AdamW 1e-6, clip 1.0,
   no KL), against TRL's GRPOTrainer step with the same model, prompt, G, lengths, temperature,
   learning rate and beta = 0 (TRL's own loss_type default; the weights reach TRL as a plain
   Hugging Face directory written by models.save, since Trainer refuses a GGUF-loaded model).
   Median seconds per step of steps
   3 to 8 on each side (the first two include compilation / warm-up).

Only ratios measured in the same run mean anything on the shared 2-core CPU; the load average is
printed with each table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import bench_model
import jax
import jax.numpy as jnp
import numpy as np
import torch

from rft_jax import losses, models, sampling, train
from rft_jax.data import arithmetic, prompts_text

NEW = 128
WEIGHT_BYTES = 538e6           # float32 weights a decode step reads (tied head counted once)
FLOP_PER_ROW = 0.27e9          # one decode step of one row
STREAM_BPS, PEAK_FLOPS = 26e9, 195e9


def roofline_tok_s(batch: int) -> float:
  return batch / max(WEIGHT_BYTES / STREAM_BPS, batch * FLOP_PER_ROW / PEAK_FLOPS)


def load_peers():
  import transformers

  from rft_jax.models import fetch

  path = fetch.fetch("smollm2")
  directory, name = os.path.split(path)
  policy = models.load(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                            dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  return policy, model, tokenizer


def chat_prompts(policy, batch: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  ids = [policy.encode_prompt(f"What is {a} - {b}?")
         for a, b in rng.integers(1, 100, (batch, 2))]
  return sampling.left_pad(ids, policy.pad_id)


def timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


# -- 1. rollouts -----------------------------------------------------------------------------


def rollouts(policy, model, reps: int):
  print(f"\nrollouts: {NEW} new tokens, temperature 1, float32, EOS disabled; best of {reps} "
        f"alternating runs; {bench_model.load_average()}\n")
  print("| batch | prompt | rft_jax s | rft_jax tok/s | compile s | transformers s | "
        "transformers tok/s | ratio | roofline tok/s | rft_jax / roofline |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for batch in (8, 32):
    tokens, mask = chat_prompts(policy, batch)
    no_eos = np.array([-1], np.int32)

    def ours():
      out = sampling.sample(policy.decoder, policy.params, jnp.asarray(tokens),
                            jnp.asarray(mask), jax.random.PRNGKey(0), max_new_tokens=NEW,
                            temperature=np.float32(1.0), top_k=np.int32(0),
                            top_p=np.float32(1.0), eos_ids=no_eos, pad_id=policy.pad_id)
      assert np.asarray(out.mask).sum() == batch * NEW
      return out

    ids, attn = torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def theirs():
      with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=NEW, min_new_tokens=NEW,
                             eos_token_id=None, pad_token_id=policy.pad_id)
      assert out.shape == (batch, tokens.shape[1] + NEW)

    first = timed(ours)
    ours_s, theirs_s = [], []
    for _ in range(reps):
      ours_s.append(timed(ours))
      theirs_s.append(timed(theirs))
    o, t = min(ours_s), min(theirs_s)
    limit = roofline_tok_s(batch)
    print(f"| {batch} | {tokens.shape[1]} | {o:.2f} | {batch * NEW / o:.0f} | {first - o:.1f} | "
          f"{t:.2f} | {batch * NEW / t:.0f} | {t / o:.2f}x | {limit:.0f} | "
          f"{batch * NEW / o / limit:.0%} |", flush=True)


# -- 2. profile ------------------------------------------------------------------------------


def best_ms(fn, *args, reps: int = 5) -> float:
  jax.block_until_ready(fn(*args))
  out = []
  for _ in range(3):
    t = time.perf_counter()
    for _ in range(reps):
      jax.block_until_ready(fn(*args))
    out.append((time.perf_counter() - t) / reps)
  return 1e3 * min(out)


def profile(policy, batch: int = 32):
  import dataclasses

  from rft_jax.models.decoder import Decoder

  config = dataclasses.replace(policy.config, tie_embeddings=False)  # as the sampler runs it
  params = {**policy.params, "lm_head": policy.params["embedding"].T}
  decoder = Decoder(config)
  token = jnp.ones((batch, 1), jnp.int32)
  position = jnp.full((batch, 1), 60, jnp.int32)
  valid = jnp.ones((batch, 1), bool)
  blocks_and_head = jax.jit(lambda p: decoder.apply({"params": p}, token, position, valid)[0])
  head = jax.jit(lambda x, w: x @ w)
  logits = jax.random.normal(jax.random.PRNGKey(0), (batch, config.vocab_size))
  draw = jax.jit(lambda z, key: sampling._choose(key, z, jnp.float32(1.0), jnp.int32(0),
                                                  jnp.float32(1.0)))
  tokens, mask = chat_prompts(policy, batch)

  def loop():
    return sampling.sample(policy.decoder, policy.params, jnp.asarray(tokens), jnp.asarray(mask),
                           jax.random.PRNGKey(0), max_new_tokens=NEW,
                           temperature=np.float32(1.0), top_k=np.int32(0),
                           top_p=np.float32(1.0), eos_ids=np.array([-1], np.int32),
                           pad_id=policy.pad_id).tokens

  step = best_ms(loop, reps=1) / NEW
  full = best_ms(blocks_and_head, params)
  head_ms = best_ms(head, jnp.ones((batch, config.d_model)), params["lm_head"])
  draw_ms = best_ms(draw, logits, jax.random.PRNGKey(1))
  flops = batch * FLOP_PER_ROW
  print(f"\nprofile of one decode step at batch {batch} (ms, best of 3; "
        f"{bench_model.load_average()}):\n")
  print("| part | ms | share of the step | GFLOP/s |")
  print("|---|---|---|---|")
  head_flops = 2 * batch * config.d_model * config.vocab_size
  rows = [("whole step in the while loop (sample / 128)", step, flops),
          ("30 blocks + head, one token, no KV cache", full, flops),
          ("  of which the head [B, 576] x [576, 49152]", head_ms, head_flops),
          ("  of which the 30 blocks (difference)", full - head_ms, flops - head_flops),
          ("token draw (inverse CDF) + log-prob", draw_ms, None),
          ("rest: KV-cache attention, cache writes, loop", step - full - draw_ms, None)]
  for name, ms, f in rows:
    rate = f"{f / ms / 1e6:.0f}" if f else "-"
    print(f"| {name} | {ms:.1f} | {ms / step:.0%} | {rate} |")


# -- 3. one L1-sized round -------------------------------------------------------------------

G, LR = 8, 1e-6


def round_question():
  task = arithmetic.arithmetic_task(0, 64, 8)
  example = task.train[0]
  return task, example, prompts_text.GSM8K.format(question=example.question)


def rft_round(policy, steps: int) -> tuple[list[float], float]:
  task, example, text = round_question()
  prompt, prompt_mask = sampling.left_pad([policy.encode_prompt(text)], policy.pad_id)
  transform = losses.recipes.grpo(kl_coef=0.0)
  optimizer = train.make_optimizer(
      __import__("ml_collections").ConfigDict(dict(learning_rate=LR, warmup_steps=0, b1=0.9,
                                                   b2=0.999, eps=1e-8, weight_decay=0.0,
                                                   clip_norm=1.0)))
  params = jax.tree.map(jnp.copy, policy.params)
  state = train.TrainState(round=jnp.zeros((), jnp.int32), params=params,
                           opt_state=jax.jit(optimizer.init)(params),
                           loss_state=transform.init())
  eos = np.asarray(policy.eos_ids, np.int32)
  times, lengths, phases = [], [], []
  for r in range(steps):
    t = time.perf_counter()
    rollout = sampling.sample(policy.decoder, state.params, jnp.asarray(prompt),
                              jnp.asarray(prompt_mask), jax.random.PRNGKey(r),
                              max_new_tokens=NEW, num_samples=G, temperature=np.float32(1.0),
                              top_k=np.int32(0), top_p=np.float32(1.0), eos_ids=eos,
                              pad_id=policy.pad_id)
    tokens, mask = jax.device_get((rollout.tokens, rollout.mask))
    t_sampled = time.perf_counter()
    texts = [policy.decode_completion(a, m) for a, m in zip(tokens, mask)]
    rewards, _ = task.grade_batch(texts, [example] * G)
    t_graded = time.perf_counter()
    batch = train.RolloutBatch(
        prompt_tokens=rollout.prompt_tokens, prompt_mask=rollout.prompt_mask,
        loss=losses.Batch(tokens=rollout.tokens, mask=rollout.mask, behaviour_logp=rollout.logp,
                          rewards=jnp.asarray(rewards, jnp.float32),
                          group_ids=jnp.zeros((G,), jnp.int32)))
    state, metrics = train.train_step(state, batch, jnp.float32(1.0), decoder=policy.decoder,
                                      transform=transform, optimizer=optimizer)
    jax.block_until_ready(metrics)
    end = time.perf_counter()
    times.append(end - t)
    phases.append((t_sampled - t, t_graded - t_sampled, end - t_graded))
    lengths.append(float(mask.sum(-1).mean()))
  rft_round.phases = phases  # (sample, grade, train step) seconds per round, for the table
  return times, float(np.mean(lengths))


def trl_round(model, tokenizer, steps: int) -> tuple[list[float], float]:
  import transformers
  from datasets import Dataset
  from trl import GRPOConfig, GRPOTrainer

  task, example, text = round_question()
  data = Dataset.from_list([{"prompt": [{"role": "user", "content": text}]}] * (steps * G))

  def reward(completions, **_):
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(r) for r in task.grade_batch(texts, [example] * len(texts))[0]]

  times, lengths = [], []

  class Clock(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
      self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
      times.append(time.perf_counter() - self.t)

    def on_log(self, args, state, control, logs=None, **kw):
      if logs and "completions/mean_length" in logs:
        lengths.append(logs["completions/mean_length"])

  with tempfile.TemporaryDirectory() as out:
    config = GRPOConfig(output_dir=out, per_device_train_batch_size=G, num_generations=G,
                        max_completion_length=NEW, temperature=1.0, top_p=1.0, top_k=0,
                        learning_rate=LR, lr_scheduler_type="constant", beta=0.0,
                        max_grad_norm=1.0, epsilon=0.2, num_iterations=1, max_steps=steps,
                        use_cpu=True, bf16=False, fp16=False, logging_steps=1, report_to=[],
                        save_strategy="no", disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
  return times, float(np.mean(lengths)) if lengths else float("nan")


def one_round(policy, steps: int = 8):
  import transformers
  import trl

  ours, ours_len = rft_round(policy, steps)
  # transformers marks a model loaded from a GGUF as quantized and Trainer refuses to train it:
  # TRL gets the same weights and tokenizer as a plain Hugging Face directory (models.save).
  with tempfile.TemporaryDirectory() as tmp:
    directory = models.save(policy, os.path.join(tmp, "smollm2"))
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    theirs, theirs_len = trl_round(model, tokenizer, steps)
  o, t = statistics.median(ours[2:]), statistics.median(theirs[2:])
  print(f"\none round: 1 question x G = {G}, up to {NEW} new tokens, grading, one train step; "
        f"median of steps 3-{steps} (trl {trl.__version__}; {bench_model.load_average()}):\n")
  print("| side | s / round | mean completion tokens | first two rounds s |")
  print("|---|---|---|---|")
  print(f"| rft_jax | {o:.2f} | {ours_len:.0f} | {ours[0]:.1f}, {ours[1]:.1f} |")
  print(f"| TRL GRPOTrainer | {t:.2f} | {theirs_len:.0f} | {theirs[0]:.1f}, {theirs[1]:.1f} |")
  sample, grade, step = (statistics.median(x) for x in zip(*rft_round.phases[2:]))
  print(f"\nrft_jax's round by phase (median): sample {sample:.2f} s, grade {grade:.2f} s, "
        f"train step {step:.2f} s")
  print(f"ratio (TRL / rft_jax): {t / o:.2f}x; all rounds s: rft_jax "
        + ", ".join(f"{x:.1f}" for x in ours) + "; TRL " + ", ".join(f"{x:.1f}" for x in theirs))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rollouts", action="store_true")
  ap.add_argument("--profile", action="store_true")
  ap.add_argument("--round", action="store_true")
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--steps", type=int, default=8, help="rounds per side in --round")
  ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  args = ap.parse_args()
  every = not (args.rollouts or args.profile or args.round)
  bench_model.start(args.threads)
  policy, model, tokenizer = load_peers()
  print(f"SmolLM2-135M-Instruct: {models.count_params(policy.params) / 1e6:.1f}M params, "
        f"transformers attention {model.config._attn_implementation}")
  if args.rollouts or every:
    rollouts(policy, model, args.reps)
  if args.profile or every:
    profile(policy)
  if args.round or every:
    one_round(policy, args.steps)


if __name__ == "__main__":
  main()
