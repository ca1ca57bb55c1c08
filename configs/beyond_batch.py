"""Beyond the paper, batch size: b training questions per round (the batched contextual bandit).

Parent: configs/beyond_trainset.py (L2 with 16 training questions): a batch of several questions
needs a training set of several. Changes: rollout.prompts_per_round = b (argument b, default 4):
each round samples G = 8 rollouts of each of b questions drawn without replacement, and the
group baseline works per question (group = one question's rollouts).

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_batch.py:b=4 --workdir=runs/batch

Expected: per round, b times the rollouts of beyond_trainset; training and test Pass@1 rise in
fewer rounds and with less seed-to-seed spread (an average over b questions per update).
"""

from configs import beyond_trainset, layers

ARGS = dict(b=4)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = beyond_trainset.get_config(rest)
  c.rollout.prompts_per_round = own.b
  return c
