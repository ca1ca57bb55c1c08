"""Beyond the paper, loss aggregation: how per-token objectives become one loss.

Parent: L2 (configs/l2_advantage.py, token_mean: sum over all tokens / number of tokens).
Changes: the chain's last transform (argument agg, rft_jax/losses/aggregation.py):

  seq_mean_token_mean (default)  mean over sequences of each sequence's token mean (GRPO)
  seq_mean_token_sum_norm        sum of tokens / (number of sequences x max length) (Dr. GRPO)
  seq_mean_token_sum             mean over sequences of each sequence's token sum (REINFORCE)

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_aggregation.py:agg=seq_mean_token_mean \
      --workdir=runs/aggregation

Expected: small differences on the embedded task, whose answers have similar lengths; the
per-sequence mean weighs short responses' tokens more (Dr. GRPO's length-bias argument), and the
constant normalizer scales the step size down by the mean length / max length.
"""

from configs import l2_advantage, layers

ARGS = dict(agg="seq_mean_token_mean")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                "seq_mean_token_sum_norm")


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  if own.agg not in AGGREGATIONS:
    raise ValueError(f"aggregation: agg={own.agg!r}; use one of {AGGREGATIONS}")
  c = l2_advantage.get_config(rest)
  head, _, _ = c.loss.chain.rpartition(",")
  c.loss.chain = f"{head},{own.agg}"
  return c
