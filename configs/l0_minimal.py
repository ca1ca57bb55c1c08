"""L0, the minimalist configuration: one training question, one rollout per round, the raw
{0, 1} reward as the learning signal, no advantage function (../shared/PAPER.md).

Loss: raw_reward -> clipped_ratio(eps=0.2) -> token_mean (rft_jax.losses.minimal). With one
on-policy rollout the ratio is 1, so each round follows r * grad log pi(y) of its sample: only
correct samples move the policy, and the training question's Pass@1 climbs toward 1.

Command (embedded default, no download; 2-core CPU, a few minutes with the warm start):

  python -m rft_jax.main --config=configs/l0_minimal.py --workdir=runs/l0

Expected (measured, README): the warm start stops when test Pass@1 on a 200-question probe
reaches 0.25 (the full test set then reads ~0.3); the medium training question goes from ~0.5
to >= 0.9 training Pass@1 within ~20 rounds at AdamW 3e-5; test Pass@1 stays about where it was
(one question teaches little about 500 others at this scale; at 3e-4 and above it falls).
`:runlocal` is a seconds-long variant for tests.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.base_config(arg)
