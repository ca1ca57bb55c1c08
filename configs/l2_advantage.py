"""L2, advantage: GRPO's group baseline and scaling, A_i = (R_i - mean_G R) / (std_G R + 1e-6).

Parent: L1 (configs/l1_rollouts.py, G = 8). Changes: loss.chain from
raw_reward,clipped_ratio,token_mean to group_mean,group_std,clipped_ratio,token_mean
(rft_jax/losses/advantages.py; std with ddof=1 as TRL / verl). Only the advantage changes: the
clip (eps 0.2) and the token-mean aggregation stay L0's, so GRPO's sequence-mean aggregation and
KL term are separate layers (configs/beyond_aggregation.py, configs/beyond_kl.py). A group whose
G rewards are equal (all right or all wrong) now carries no gradient at all (signal_frac 0).

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/l2_advantage.py --workdir=runs/l2

Expected (the paper): training Pass@1 still rises; test Pass@1 no higher than L1's and less
stable across seeds and rounds (wrong answers are now pushed down, and the std scaling magnifies
rare successes: 1 correct of 8 gets A = 2.47, against R = 1 in L1).

Measured (python -m rft_jax.pipeline --layers=quick --seeds=2 --quick, 60 rounds): training
Pass@1 0.58 -> 1.00 but >= 0.9 only at round 30 ± 21 (L1: 15 ± 0); test Pass@1 0.32 -> 0.33.
"""

from configs import l1_rollouts, layers

ARGS = {}


def get_config(arg: str | None = None):
  _, rest = layers.split_arg(arg, ARGS)
  c = l1_rollouts.get_config(rest)
  c.loss.chain = "group_mean,group_std,clipped_ratio,token_mean"
  return c
