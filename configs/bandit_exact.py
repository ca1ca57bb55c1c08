"""L0 on a task small enough to list every completion: the exact optimal-arm probability.

Parent: L0 (configs/l0_minimal.py). Changes: the arithmetic task asks one-digit problems
(operands 1..3, factor 2) whose solution is the answer line alone ('#### 7', two tokens), rollouts
stop after 2 tokens, and diagnostics.exact_arms logs every round the exact probability that the
policy's next completion of the training question is graded correct (rft_jax.bandit): a sum over
all 17,823 completions of up to two tokens, not a sample estimate. The small ranges hold 92
distinct problems, so the test and training sets are 24 each and the warm start trains on the
68 outside the test set (the training questions among them: the base has seen its answer once
in supervision, as a pretrained model may have). Not a layer of the pipeline: a diagnostic of
L0's bandit view.

Command (embedded default; 2-core CPU, a few minutes including the warm start):

  python -m rft_jax.main --config=configs/bandit_exact.py --workdir=runs/bandit_exact

metrics.jsonl then has, every round, `p_optimal_arms` (exact), `arm_mass` (the sum over every
arm: 1 up to float32 rounding) beside the sampled `p_correct` / `p_correct_window` and their
Wilson intervals, and at evaluation rounds the sampled `train_pass1` of the same question. In
the row of round s, `p_optimal_arms` and `train_pass1` are of the policy after round s's update,
`p_correct` of the rollouts that update learned from (the policy before it).
"""

from configs import l0_minimal


def get_config(arg: str | None = None):
  c = l0_minimal.get_config(arg)
  c.task.update(max_operand=3, n_train=24, n_test=24)
  c.task.max_factor = 2
  c.task.answer_only = True
  c.rollout.max_new_tokens = 2
  c.warm_start.update(corpus_size=1000, probe_size=24)
  c.example.update(candidates=24)
  c.diagnostics.exact_arms = True
  return c
