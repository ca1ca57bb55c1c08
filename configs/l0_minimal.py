"""L0, the minimalist configuration: one training question, one rollout per round, the raw
{0, 1} reward as the learning signal, no advantage function (../shared/PAPER.md).

Loss: raw_reward -> clipped_ratio(eps=0.2) -> token_mean (rft_jax.losses.minimal). With one
on-policy rollout the ratio is 1, so each round follows r * grad log pi(y) of its sample: only
correct samples move the policy, and the training question's Pass@1 climbs toward 1.

Command (embedded default, no download; 2-core CPU, about 3 minutes with the warm start):

  python -m rft_jax.main --config=configs/l0_minimal.py --workdir=runs/l0

Expected: the base policy's test Pass@1 in the middle (warm start stops near 0.35); training
Pass@1 on the chosen medium question from about 0.5 to >= 0.9 in 150 rounds; test Pass@1 about
unchanged (one question teaches little about the others). `:runlocal` is a seconds-long variant.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.base_config(arg)
