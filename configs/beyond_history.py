"""Beyond the paper, history baseline: each question's baseline is the mean of its past rewards.

Parent: L2 (configs/l2_advantage.py). Changes: loss.chain from
group_mean,group_std,clipped_ratio,token_mean to history_baseline,clipped_ratio,token_mean: A_i =
R_i - mean of the last `window` rewards of the same question from earlier rounds (the companion
code of arXiv 2601.22532; rft_jax/losses/advantages.py), no std scaling. Argument window
(default 8). The baseline never includes this round's rewards, so unlike L2 a round whose G
rewards are all equal still carries a signal once the history disagrees with it.
loss.history_baseline.num_prompts follows example.num_examples (one window per question).

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_history.py:window=8 --workdir=runs/history

Expected: a larger signal_frac than L2 (fewer rounds without gradient) and a steadier test Pass@1
curve than L2; training Pass@1 rises about as fast.
"""

from configs import l2_advantage, layers

ARGS = dict(window=8)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = l2_advantage.get_config(rest)
  c.loss.chain = "history_baseline,clipped_ratio,token_mean"
  c.loss.history_baseline.window = own.window
  # A derived reference, so that --config.example.num_examples=N gives N windows, and an
  # override of num_prompts alone does not write through to num_examples (a plain get_ref is
  # two-way: it would change the training set).
  c.loss.history_baseline.num_prompts = c.example.get_ref("num_examples") + 0
  return c
