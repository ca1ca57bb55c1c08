"""Beyond the paper, off-policy updates: several epochs of mini-batch updates per round.

Parent: L2 (configs/l2_advantage.py: one on-policy update per round, so the ratio is 1 and the
clip never binds). Changes: train.epochs (argument epochs, default 2) and train.mini_batches
(argument mb, default 2): each round's G = 8 rollouts are split into mb mini-batches and passed
over `epochs` times, epochs x mb = 4 AdamW updates per round; from the second update on the
rollouts are off-policy and the clipped ratio (eps 0.2) matters (metrics.jsonl `clip_frac`). The
advantages are computed once per round over all rollouts (rft_jax.train.train_step).

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_offpolicy.py:epochs=2,mb=2 --workdir=runs/offpolicy

Expected: training Pass@1 rises in fewer rounds than L2 (4 updates per round), with clip_frac
above 0 and larger swings of test Pass@1 between evaluations.
"""

from configs import l2_advantage, layers

ARGS = dict(epochs=2, mb=2)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = l2_advantage.get_config(rest)
  c.train.epochs = own.epochs
  c.train.mini_batches = own.mb
  return c
