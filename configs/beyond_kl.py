"""Beyond the paper, KL penalty: L2 plus beta * KL(pi || pi_ref) to the base policy.

Parent: L2 (configs/l2_advantage.py). Changes: loss.chain gains kl_loss before the aggregation
(group_mean,group_std,clipped_ratio,kl_loss,token_mean), so the run also computes reference
log-probs under the base params. Arguments: coef (beta, default 0.001: the companion code's
setting; GRPO used 0.04) and estimator (default k3, the "low-variance" estimator
exp(q) - q - 1 with q = log pi_ref - log pi; k1 and k2 also exist: rft_jax/losses/regularizers.py).

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_kl.py:coef=0.001 --workdir=runs/kl

Expected: with beta = 0.001 close to L2 (the RL signal is far larger at learning rate 1e-3);
larger beta (coef=0.04) slows the rise of training Pass@1 and keeps the policy's entropy
nearer the base's.
"""

from configs import l2_advantage, layers

ARGS = dict(coef=0.001, estimator="k3")


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = l2_advantage.get_config(rest)
  c.loss.chain = layers.before_aggregation(c.loss.chain, "kl_loss")
  c.loss.kl_loss.coef = own.coef
  c.loss.kl_loss.estimator = own.estimator
  return c
