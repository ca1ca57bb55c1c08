"""L3, reward form: a negative reward for wrong answers, R' = scale * R + shift on R in {0, 1}.

Parent: L1 (configs/l1_rollouts.py: G = 8 rollouts, raw reward, no baseline), not L2. Under
L2's advantage an affine reward map is invisible: (aR + b - mean(aR + b)) / std(aR + b) =
(R - mean R) / std R for any a > 0 (up to the 1e-6 in the denominator), so L3 over L2 would
measure nothing. Over L1 the map changes the learning signal itself, which is the paper's
question: with {0, 1} wrong answers give no gradient; with a negative value they are pushed down.

Changes: loss.chain = affine_reward,raw_reward,clipped_ratio,token_mean and the map's settings:
  neg=pm1 (default)  {0, 1} -> {-1, +1}: scale 2, shift -1
  neg=m10            {0, 1} -> {-1, 0}:  scale 1, shift -1 (correct answers carry no signal)
Evaluation still grades with the {0, 1} reward, so Pass@1 means the same in every layer.

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/l3_negative_reward.py:neg=pm1 --workdir=runs/l3

Expected (the paper): training fails: training Pass@1 does not climb as in L1 and may fall, as
probability mass pushed off a wrong answer can go to other wrong answers (with {-1, 0} a correct
answer gets no direct signal at all).

Measured (python -m rft_jax.pipeline --layers=quick --seeds=2 --quick, 60 rounds): with
neg=pm1 training did not fail on the medium question: 0.58 -> 1.00, >= 0.9 by round 15; test
Pass@1 0.32 -> 0.33.
"""

from configs import l1_rollouts, layers

ARGS = dict(neg="pm1")
MAPS = {"pm1": dict(scale=2.0, shift=-1.0), "m10": dict(scale=1.0, shift=-1.0)}


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  if own.neg not in MAPS:
    raise ValueError(f"l3: neg={own.neg!r}; use one of {sorted(MAPS)}")
  c = l1_rollouts.get_config(rest)
  c.loss.chain = "affine_reward," + c.loss.chain
  c.loss.affine_reward.update(MAPS[own.neg])
  return c
