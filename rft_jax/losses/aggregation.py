"""Aggregations: how per-token losses become the scalar loss."""

from __future__ import annotations

import jax.numpy as jnp

from rft_jax.losses.base import LossTransform, stateless


def token_mean() -> LossTransform:
  """Mean over every completion token of the batch: L = sum_bt m_bt l_bt / sum_bt m_bt.

  (DAPO's token-level mean; with one sequence it is the paper's (1/|o|) sum_t.) The normaliser is
  `batch.total_tokens`, so micro-batches of one batch can share the whole batch's token count.
  """

  def update(terms, batch):
    loss = jnp.sum(terms.token_loss * batch.mask) / jnp.maximum(batch.total_tokens, 1.0)
    return terms.replace(loss=loss, metrics=dict(terms.metrics, loss=loss))

  return stateless(update)
