"""Aggregations: how per-token losses become the scalar loss.

Each reads `terms.token_loss` on the loss tokens (`terms.mask`) and divides by normalisers that
come from `batch.token_count` / `batch.seq_count` when given (micro-batches of one batch share the
whole batch's counts, so accumulated micro-batch losses sum to the whole-batch loss), else from
the batch itself.

verl's `loss_agg_mode` names the same four modes (token-mean, seq-mean-token-mean,
seq-mean-token-sum, seq-mean-token-sum-norm). They agree with these ones in verl >= 0.7.1 (read:
0.9.1), except that verl divides each sequence's token sum by (count + 1e-8) in
seq-mean-token-mean (a relative 1e-8 / |o_i|, below float32 resolution). In verl <= 0.7.0,
seq-mean-token-sum-norm did not divide by the number of sequences: sum_it l_it / L_max, which is
`seq_mean_token_sum_norm(divide_by_seqs=False)`. docs/losses.md lists the conventions.
"""

from __future__ import annotations

import jax.numpy as jnp

from rft_jax.losses.base import LossTransform, loss_mask, seq_total, stateless, token_total


def _set_loss(terms, loss):
  return terms.replace(loss=loss, metrics=dict(terms.metrics, loss=loss))


def token_mean() -> LossTransform:
  """Mean over every loss token of the batch: L = sum_it m_it l_it / sum_it m_it.

  (DAPO's token-level loss, Yu et al. 2025; with one sequence it is the paper's
  (1/|o|) sum_t.) Long sequences weigh in proportion to their length.
  """

  def update(terms, batch):
    mask = loss_mask(terms, batch)
    loss = jnp.sum(terms.token_loss * mask) / jnp.maximum(token_total(terms, batch), 1.0)
    return _set_loss(terms, loss)

  return stateless(update)


def seq_mean_token_mean() -> LossTransform:
  """Mean over sequences of per-sequence token means: L = (1/N) sum_i (1/|o_i|) sum_t l_it.

  The original GRPO objective (Shao et al. 2024, eq. 3); N counts sequences with loss tokens.
  """

  def update(terms, batch):
    mask = loss_mask(terms, batch)
    per_seq = jnp.sum(terms.token_loss * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return _set_loss(terms, jnp.sum(per_seq) / jnp.maximum(seq_total(terms, batch), 1.0))

  return stateless(update)


def seq_mean_token_sum() -> LossTransform:
  """Mean over sequences of per-sequence token sums: L = (1/N) sum_i sum_t l_it.

  The REINFORCE / RLOO estimator, where a sequence is one action and log pi(o) = sum_t log pi(o_t)
  (Williams 1992; Ahmadian et al. 2024).
  """

  def update(terms, batch):
    mask = loss_mask(terms, batch)
    loss = jnp.sum(terms.token_loss * mask) / jnp.maximum(seq_total(terms, batch), 1.0)
    return _set_loss(terms, loss)

  return stateless(update)


def seq_mean_token_sum_norm(max_len: int = -1, divide_by_seqs: bool = True) -> LossTransform:
  """Token sums over a constant: L = sum_it l_it / (N * L_max).

  Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", sec. 3.1): a constant
  normaliser removes GRPO's length bias. L_max = max_len, the generation budget; max_len <= 0
  (default -1) uses the batch's padded length T, which is constant only if T is fixed.
  divide_by_seqs=False gives L = sum_it l_it / L_max (verl <= 0.7.0's seq-mean-token-sum-norm:
  N times the loss, the same direction; Adam's update barely sees the scale).
  """

  def update(terms, batch):
    mask = loss_mask(terms, batch)
    length = max_len if max_len > 0 else mask.shape[-1]
    seqs = jnp.maximum(seq_total(terms, batch), 1.0) if divide_by_seqs else 1.0
    loss = jnp.sum(terms.token_loss * mask) / (seqs * length)
    return _set_loss(terms, loss)

  return stateless(update)
