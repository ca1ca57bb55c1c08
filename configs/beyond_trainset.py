"""Beyond the paper, training-set size: n training questions instead of one.

Parent: L2 (configs/l2_advantage.py). The beyond-paper layers build on L2 because the choices
they vary (KL, entropy, aggregation, clipping, epochs, baselines, data) are the knobs of
GRPO-style training that the companion paper (arXiv 2601.22532) and the literature argue about.
Changes: example.num_examples = n (argument n, default 16), drawn with a fixed seed from L0's
bucket (medium), and example.candidates raised to 8n when below it, so that the bucket holds n
questions (about 1 candidate in 5 is medium for the embedded base). Each round still trains on
one question (prompts_per_round = 1, drawn per round); configs/beyond_batch.py changes that.
Training Pass@1 is the mean over the n questions.

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_trainset.py:n=16 --workdir=runs/trainset

Expected: training Pass@1 rises more slowly than with one question (each gets 1/n of the
rounds); test Pass@1 gains at least as much as L2's (more distinct questions to generalize
from; the companion paper's batched-bandit view).
"""

from configs import l2_advantage, layers

ARGS = dict(n=16)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = l2_advantage.get_config(rest)
  c.example.num_examples = own.n
  c.example.candidates = max(c.example.candidates, 8 * own.n)
  return c
