"""Settings shared by every pipeline layer: the embedded default task and model, and the loop.

Each layer's config file calls `base_config(arg)` and then changes only its own fields. `arg` is
a comma-separated list of `key=value` words (big_vision style), e.g. `--config=l0.py:runlocal`:

  runlocal   a tiny, fast variant for tests and smoke runs (seconds, not minutes).
  base=NAME  another base model for every layer: smollm2 (configs/smollm2.py, the real
             SmolLM2-135M-Instruct); empty = the embedded default.
"""

from __future__ import annotations

import ml_collections

from configs import smollm2
from rft_jax.losses import recipe_config

# base=NAME -> the function that switches the embedded default's config to that base model.
BASES = {"": None, "smollm2": smollm2.apply}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'runlocal,g=8' -> ConfigDict(runlocal=True, g=8) over `defaults` (types follow defaults)."""
  out = dict(runlocal=False, **defaults)
  for word in filter(None, (arg or "").split(",")):
    key, _, value = word.partition("=")
    if key not in out:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(out)}")
    if not value:
      out[key] = True
    else:
      kind = type(out[key])
      out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return ml_collections.ConfigDict(out)


def base_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The embedded default with the L0 loss; layers override what they change."""
  args = parse_arg(arg, base="")
  if args.base not in BASES:
    raise ValueError(f"unknown base {args.base!r}; known: {', '.join(repr(b) for b in BASES)}")
  c = ml_collections.ConfigDict()
  c.seed = 0  # rollouts and evaluation samples; the base policy and the example are fixed

  # The embedded arithmetic task (rft_jax.data.arithmetic); gsm8k / math read train/test paths.
  # Operands of the arithmetic problems are in [1, max_operand].
  c.task = dict(name="arithmetic", seed=0, n_train=2000, n_test=500, max_operand=20,
                train_path="", test_path="", template="")

  # Empty checkpoint = the embedded decoder below, warm-started; else a Hugging Face directory.
  # Memory and adapters (rft_jax.train.apply_model_options; docs/scale.md): remat recomputes
  # each decoder block in the backward pass; attn_chunk > 0 computes the trainer's attention
  # that many queries at a time (exact; 0 = all at once); compute_dtype "bfloat16" computes in bf16 over
  # float32 params ("" = as loaded); lora.rank > 0 trains rank-r adapters on the listed
  # projections (q,k,v,o,gate,up,down) instead of every param, scaled by alpha / rank.
  c.model = dict(checkpoint="", dtype="float32", d_model=128, n_layers=2, n_heads=4,
                 n_kv_heads=2, head_dim=32, d_ff=384, rope_theta=10000.0, remat=False,
                 attn_chunk=0, compute_dtype="",
                 lora=dict(rank=0, alpha=16.0, modules="q,k,v,o,gate,up,down"))

  # Supervised warm start of the embedded model, stopped at a middling test Pass@1.
  c.warm_start = dict(dir="", seed=0, corpus_size=10000, batch_size=64, learning_rate=3e-3,
                      warmup_steps=20, max_steps=1500, eval_every=25, probe_size=200,
                      target_pass1=0.25)

  # The training question(s): a difficulty bucket of the base policy (data.selection), an id,
  # or an index into the training pool; num_examples > 1 draws that many from the bucket.
  # table: a difficulty table file shared by runs with the same base and example settings (the
  # pipeline sets it): read when it exists, written after sampling when it does not.
  c.example = dict(selection="medium", example_id="", index=0, num_examples=1, candidates=64,
                   samples=16, seed=0, table="")

  # Rollouts per round: prompts_per_round questions x num_samples (G) samples each.
  c.rollout = dict(num_samples=1, prompts_per_round=1, max_new_tokens=32, temperature=1.0,
                   top_k=0, top_p=1.0, prompt_bucket=8)

  c.loss = recipe_config("minimal")

  c.optimizer = dict(learning_rate=3e-5, warmup_steps=0, b1=0.9, b2=0.999, eps=1e-8,
                     weight_decay=0.0, clip_norm=1.0)

  # epochs x mini_batches optimizer updates per round on the round's rollouts (1 x 1 = on-policy).
  # logprob_chunk: completion positions whose log-probs (and their gradient) the train step
  # computes at a time, so its memory grows with the chunk, not with completion length x vocab
  # (rft_jax.logprobs.head_logprobs_and_entropy; 0 = all at once; float rounding differs only).
  # micro_batch_size: rollouts whose forward and backward run at once, gradients summed over an
  # update's micro-batches (0, or at least the update's rollouts = the whole mini-batch at once;
  # float rounding differs only; on the 2-core CPU not shown slower: benchmarks/README.md).
  # completion_bucket: the step scores the round's longest completion rounded up to a multiple
  # of it, not all max_new_tokens positions (0 = all; float rounding differs only, unless the
  # loss divides by the padded width: train.completion_width).
  # texts_every: the text and reward of every rollout of round 1, of every texts_every-th round
  # and of the last go to <workdir>/rollouts.jsonl (0 = none): what the policy writes, for
  # reading a mechanism off the curves (format, length, repetition).
  c.train = dict(rounds=100, epochs=1, mini_batches=1, eval_every=10, checkpoint_every=20,
                 logprob_chunk=128, micro_batch_size=0, completion_bucket=0, texts_every=0)

  # Training Pass@1 = mean of train_samples samples of the training question(s); test Pass@1 =
  # one sample per test question (test_size 0 = all); greedy accuracy on the test set too.
  # curve_test_size: evaluations between the first and the last round on the first N test
  # questions only (0 = all test_size), so a long test set costs two full evaluations per run;
  # curve_greedy False leaves greedy accuracy out of those (it is measured at the base and end).
  # shared_base: a folder where the base policy's test rewards are kept for every run that
  # evaluates the same base the same way (train.base_test_path; the pipeline sets it): the layers
  # of one seed differ only after round 0, so the base's test set is sampled once per seed.
  c.eval = dict(train_samples=64, test_size=0, batch_size=256, greedy=True, temperature=1.0,
                curve_test_size=0, curve_greedy=True, shared_base="")

  # Bandit diagnostics logged every round (rft_jax.train, rft_jax.bandit): p(correct | training
  # question) from the round's rollouts and pooled over the last p_correct_window rounds, with
  # Wilson 95% intervals; exact_arms adds the exact probability of the optimal arm set, for tasks
  # whose completions can be listed (at most max_arms of them; configs/bandit_exact.py).
  c.diagnostics = dict(p_correct_window=10, exact_arms=False, max_arms=200_000)

  # Device mesh; -1 fills with the remaining devices.
  c.mesh = dict(data=-1, fsdp=1, tensor=1)

  if args.runlocal:
    c.task.n_train, c.task.n_test = 200, 32
    c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64)
    c.warm_start.update(corpus_size=512, max_steps=6, eval_every=3, probe_size=16,
                        batch_size=16)
    c.example.update(selection="index", candidates=8, samples=4)
    c.train.update(rounds=4, eval_every=2, checkpoint_every=2)
    c.eval.update(train_samples=8, batch_size=32)
  if args.base:
    BASES[args.base](c, args.runlocal)
  return c
