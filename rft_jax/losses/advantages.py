"""Advantage transforms: how the learning signal of each sequence is made from its reward."""

from __future__ import annotations

from rft_jax.losses.base import LossTransform, stateless


def raw_reward() -> LossTransform:
  """No baseline, no scaling: A_i = R_i.

  The paper's minimalist configuration (L0): the {0, 1} outcome reward is the signal itself, so a
  wrong answer gives no gradient and only correct responses are reinforced.
  """

  def update(terms, batch):
    adv = terms.rewards if batch.advantages is None else batch.advantages
    return terms.replace(advantages=adv)

  return stateless(update)
