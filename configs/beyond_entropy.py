"""Beyond the paper, entropy bonus: L2 plus coef * H(pi) per token, maximized.

Parent: L2 (configs/l2_advantage.py). Changes: loss.chain gains entropy_bonus before the
aggregation (group_mean,group_std,clipped_ratio,entropy_bonus,token_mean); argument coef
(default 0.001; the companion code sets 0, i.e. no bonus, which is L2 itself).

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_entropy.py:coef=0.001 --workdir=runs/entropy

Expected: the policy's entropy (metrics.jsonl `entropy`) falls more slowly than in L2; training
Pass@1 rises more slowly; with a large coef (0.01) it may not reach 0.9.
"""

from configs import l2_advantage, layers

ARGS = dict(coef=0.001)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = l2_advantage.get_config(rest)
  c.loss.chain = layers.before_aggregation(c.loss.chain, "entropy_bonus")
  c.loss.entropy_bonus.coef = own.coef
  return c
