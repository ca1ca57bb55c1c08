"""Beyond the paper, clip-higher: a wider upper clip, 1 + eps_high with eps_high > eps_low (DAPO).

Parent: configs/beyond_offpolicy.py (L2 with 2 epochs x 2 mini-batches per round), not L2: with
one on-policy update the ratio is exactly 1 at the update and no clip ever binds, so over L2 this
layer would change nothing. Changes: loss.clipped_ratio.eps_high (argument eps_high, default
0.28 as DAPO, Yu et al. 2025; eps_low stays 0.2): tokens whose probability already rose keep
being pushed up for longer, which DAPO argues keeps entropy from collapsing.

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_clip_higher.py:eps_high=0.28 \
      --workdir=runs/clip_higher

Expected: a lower clip_frac than beyond_offpolicy and a slower fall of the policy's entropy;
training Pass@1 rises at least as fast.
"""

from configs import beyond_offpolicy, layers

ARGS = dict(eps_high=0.28)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = beyond_offpolicy.get_config(rest)
  c.loss.clipped_ratio.eps_high = own.eps_high
  return c
