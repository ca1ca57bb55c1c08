"""L4, example difficulty: the training question drawn from a difficulty bucket of the base.

Parent: L1 (configs/l1_rollouts.py: G = 8 rollouts, raw reward). Not over L0: a question with
pass rate below ~1/16 gives L0's single rollout a signal in about one round of 16, so L4 would
measure "no correct sample yet" rather than generalization; G rollouts per round make a rare
correct arm reachable. Not over L2 or L3: the paper finds the advantage does not help and the
negative reward fails. Changes: example.selection = the bucket (argument bucket):

  easy p >= 0.7, medium 0.3 <= p < 0.7 (L0's bucket: L4 then equals L1), hard 0 < p < 0.3,
  extremely_hard (default) p = 0 in example.samples = 16 samples (rft_jax/data/selection.py).

p is the base policy's pass rate on each of example.candidates = 64 training questions; the
question is a seeded draw from the bucket, the same for every seed of a layer.

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/l4_difficulty.py:bucket=extremely_hard --workdir=runs/l4

Expected (the paper): easy and medium questions are learned and test Pass@1 holds or rises;
training on an extremely hard question does not generalize (test Pass@1 does not improve). With
the raw reward it learns only once a rare correct sample appears (signal_frac 0 until then).
On `runlocal` only extremely_hard is non-empty (the tiny base solves nothing).

Measured (python -m rft_jax.pipeline --layers=quick --seeds=2 --quick, 60 rounds): the
extremely hard question went from 0.00 to 0.94 training Pass@1 (>= 0.9 at round 52 ± 11: G = 8
samples per round found its rare correct arm); test Pass@1 0.32 -> 0.34, unchanged.
"""

from configs import l1_rollouts, layers

ARGS = dict(bucket="extremely_hard")
BUCKETS = ("easy", "medium", "hard", "extremely_hard")  # rft_jax.data.selection.BUCKETS


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  if own.bucket not in BUCKETS:
    raise ValueError(f"l4: bucket={own.bucket!r}; use one of {BUCKETS}")
  c = l1_rollouts.get_config(rest)
  c.example.selection = own.bucket
  return c
