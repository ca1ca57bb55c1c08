"""L1, rollouts: G rollouts of the training question per round, still the raw {0, 1} reward.

Parent: L0 (configs/l0_minimal.py). Changes: rollout.num_samples = G (argument g, default 8;
the paper's question is whether more pulls per round help, so the pipeline sweeps g=4, 8, 16).
Still one on-policy update per round; the token mean now runs over the G rollouts' tokens, so a
round's gradient is the mean of R * grad log pi over G samples (the learning signal per round is
proportional to p = P(correct | q), as in L0, but with G times less noise).

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/l1_rollouts.py:g=8 --workdir=runs/l1

Expected: training Pass@1 reaches >= 0.9 in fewer rounds than L0 (more correct samples per
round); test Pass@1 about as L0's (the paper: more rollouts do not improve generalization).

Measured (python -m rft_jax.pipeline --layers=quick --seeds=2 --quick, 60 rounds): training
Pass@1 0.58 -> 1.00, >= 0.9 by the first evaluation (round 15) as L0; test Pass@1 0.32 -> 0.34
(L0: 0.33).
"""

from configs import l0_minimal, layers

ARGS = dict(g=8)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = l0_minimal.get_config(rest)
  c.rollout.num_samples = own.g
  return c
