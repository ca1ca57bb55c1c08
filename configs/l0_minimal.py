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

`:paper_exact` is the paper's minimalist objective as verl computes it (the paper ran verl; its
companion scripts: adv_estimator=grpo with one rollout, policy loss "vanilla", token-mean, KL loss
0.001 low_var_kl, entropy 0): loss = rft_jax.losses.verl_grpo(kl_coef=0.001), i.e.

  group_mean(singleton=zero), group_std(eps=1e-6, singleton_std=1), dual_clip(0.2, c=3,
  log_ratio_clamp=20), kl_loss(0.001, k3, clamp=10, log_ratio_clamp=20), token_mean

With one rollout A = R / (1 + 1e-6) (not R: verl's group of one has mean 0, std 1); the dual
clip never binds (A >= 0); the ratio clamp does not bind on-policy; so the one material change is
the KL term to the base policy, which also moves the policy on wrong answers (R = 0), where L0
gives no gradient. The optimizer stays L0's. With G > 1 rollouts (L1 and above) verl's grpo
estimator normalises by the group: that is the L2 advantage, not L1's raw reward. Measured beside
L0 in experiments/paper_exact/.

  python -m rft_jax.main --config=configs/l0_minimal.py:paper_exact --workdir=runs/l0_paper_exact
"""

from configs import common, layers
from rft_jax.losses import recipe_chain

ARGS = dict(paper_exact=False)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = common.base_config(rest)
  if own.paper_exact:
    chain, settings = recipe_chain("verl_grpo", kl_coef=0.001, kl_estimator="low_var_kl")
    c.loss.chain = chain
    for name, kwargs in settings.items():
      c.loss[name].update(kwargs)
  return c
