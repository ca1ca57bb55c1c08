"""Beyond the paper, baseline-only rollouts: G rollouts make the baseline, few carry the gradient.

Parent: L2 (configs/l2_advantage.py). Changes: loss.chain gains baseline_only after the
advantage (group_mean,group_std,baseline_only,clipped_ratio,token_mean): the group of G = 8 still
gives (R - mean) / std, but only the first `grad` rollouts of each group (argument grad, default
1) enter the loss; the others only estimated the baseline (the companion code of arXiv
2601.22532: "one rollout for the gradient, extra rollouts for the baseline").

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_baseline_only.py:grad=1 \
      --workdir=runs/baseline_only

Expected: between L0 and L2: a signal from one rollout per round like L0, but a wrong answer
is pushed down when the group often succeeds; slower and noisier training Pass@1 than L2.
"""

from configs import l2_advantage, layers

ARGS = dict(grad=1)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = l2_advantage.get_config(rest)
  c.loss.chain = c.loss.chain.replace("group_std,", "group_std,baseline_only,")
  c.loss.baseline_only.num_grad = own.grad
  return c
