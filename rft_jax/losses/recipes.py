"""Named chains for the common algorithms: each recipe is one line of transforms."""

from __future__ import annotations

from rft_jax.losses.advantages import raw_reward
from rft_jax.losses.aggregation import token_mean
from rft_jax.losses.base import LossTransform, named_chain
from rft_jax.losses.surrogates import clipped_ratio


def minimal(eps: float = 0.2) -> LossTransform:
  """The paper's L0: raw {0,1} reward, clipped ratio (eps 0.2), token mean."""
  return named_chain(
      ("raw_reward", raw_reward()),
      ("clipped_ratio", clipped_ratio(eps, eps)),
      ("token_mean", token_mean()),
  )
