"""Micro-batch gradient accumulation that equals the whole batch, for every chain.

Two things make a micro-batch differ from a slice of the whole batch: advantages that look at
other rollouts (group and batch statistics, leave-one-out, history windows, first-k-of-group) and
normalisers that count the whole batch (tokens, sequences). `prepare_batch` runs the chain once
over the whole batch and stores both in the Batch:

  - `advantages`: the chain's final advantages. Advantages never depend on the parameters (KL-in-
    reward uses behaviour_logp, see kl_reward), so logp = behaviour_logp suffices and no model
    forward is needed. Every advantage-stage transform (reward maps, kl_reward, baselines,
    scalings, history) is skipped when batch.advantages is set, so nothing is applied twice and
    stateful baselines update their state once, here.
  - `grad_mask`: the rows that carry the gradient (from baseline_only, or the input grad_mask).
  - `token_count`, `seq_count`: the whole batch's loss-token and loss-sequence counts.

Each micro-batch loss is then the whole-batch loss restricted to its rows, so the sum of the
micro-batch losses (and gradients) is the whole-batch loss (and gradient), up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rft_jax.losses.base import Batch, LossTransform, State, count_seqs, initial_terms


def prepare_batch(transform: LossTransform, batch: Batch,
                  state: State) -> tuple[Batch, State, dict]:
  """Runs the chain over the whole batch; returns (batch with advantages, grad_mask, token_count
  and seq_count set; the chain's new state; the chain's metrics).

  The metrics of the advantage stage (rewards, advantages, baselines) are exact here; the
  surrogate ones are at logp = behaviour_logp and mean nothing.
  """
  batch = jax.lax.stop_gradient(batch)
  logp = batch.behaviour_logp
  terms = initial_terms(logp, batch, jnp.zeros_like(logp))  # entropy: only the loss stage reads it
  terms, new_state = transform.update(terms, state, batch)
  rows = (jnp.sum(terms.mask, axis=-1) > 0).astype(batch.mask.dtype)
  prepared = batch.replace(
      advantages=terms.advantages,
      grad_mask=rows,
      # float32 whatever the mask's dtype: a bool mask's count would become True, and a
      # bfloat16 one's rounds (867 tokens -> 868).
      token_count=jnp.sum(terms.mask, dtype=jnp.float32),
      seq_count=count_seqs(terms.mask),
  )
  return prepared, new_state, terms.metrics


def split_batch(batch: Batch, num_micro_batches: int) -> Batch:
  """[B, ...] fields -> [M, B/M, ...] (consecutive rows); scalar fields are repeated M times."""
  b = batch.mask.shape[0]
  m = num_micro_batches
  if m < 1 or b % m:
    raise ValueError(f"batch size {b} is not divisible into {m} micro-batches")

  def split(x):
    x = jnp.asarray(x)
    if x.ndim == 0:
      return jnp.broadcast_to(x, (m,))
    return x.reshape(m, b // m, *x.shape[1:])

  return jax.tree.map(split, batch)


def accumulate_gradients(
    loss_fn: Callable[[Any, Batch], tuple[jax.Array, Any]],
    params: Any,
    batch: Batch,
    num_micro_batches: int,
    *,
    transform: LossTransform,
    state: State,
    inputs: Any = None,
) -> tuple[jax.Array, Any, dict]:
  """(loss, grads, aux) equal to the whole batch's, computed over `num_micro_batches` pieces.

  loss_fn(params, micro_batch) -> (loss, aux): usually a closure over the chain and the input
  `state` that computes logp from params and calls `compute_loss(transform, logp, micro_batch,
  state)`; aux may be compute_loss's aux (its "metrics" are combined). `transform` and `state`
  are the same chain and state, used once by `prepare_batch`.

  inputs: optional pytree of [B, ...] arrays the forward pass needs besides the Batch (the
  prompts), split into the same rows; then loss_fn(params, micro_batch, micro_inputs).

  Returns aux = {"metrics": ..., "state": the chain's new state (from the whole-batch pass),
  "metric_weights": each averaged metric's total weight, for combining batches further}.
  Metrics: "loss" is the total; the others are micro-batch values averaged with weights equal to
  their loss-token counts (exact for token means such as clip_frac), then the advantage-stage
  metrics of the whole-batch pass. A metric averaged over other tokens gives its own weight in
  aux["metric_weights"][name] (e.g. the count of all generated tokens, which differs from the
  loss tokens under baseline_only). Micro-batches run in a lax.scan, so memory is one
  micro-batch.
  """
  prepared, new_state, pre_metrics = prepare_batch(transform, batch, state)
  micro = split_batch(prepared, num_micro_batches)
  micro_inputs = None if inputs is None else _split_rows(inputs, num_micro_batches)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  call = (lambda p, xs: grad_fn(p, xs[0])) if inputs is None else (
      lambda p, xs: grad_fn(p, *xs))
  first = jax.tree.map(lambda x: x[0], (micro, micro_inputs))
  (loss_shape, _), grads_shape = jax.eval_shape(call, params, first)

  def body(carry, xs):
    loss_sum, grad_sum = carry
    mb = xs[0]
    (loss, aux), grads = call(params, xs)
    metrics = aux.get("metrics", {}) if isinstance(aux, dict) else {}
    carry = (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads))
    return carry, ({k: jnp.asarray(v, loss.dtype) for k, v in metrics.items()},
                   metric_weights(aux, metrics, jnp.sum(mb.loss_mask)))

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), grads_shape)
  init = (jnp.zeros(loss_shape.shape, loss_shape.dtype), zeros)
  (loss, grads), (metrics, weights) = jax.lax.scan(body, init, (micro, micro_inputs))
  metrics = {**combine_metrics(metrics, weights), **_advantage_metrics(pre_metrics, metrics),
             "loss": loss}
  return loss, grads, {"metrics": metrics, "state": new_state,
                       "metric_weights": {k: jnp.sum(w) for k, w in weights.items()}}


def metric_weights(aux, metrics: dict, default) -> dict:
  """What each of `metrics` averages over, as a float32 weight: its own count from
  aux["metric_weights"] where the loss function gives one, else `default` (the loss tokens)."""
  own = aux.get("metric_weights", {}) if isinstance(aux, dict) else {}
  return {k: jnp.asarray(own.get(k, default), jnp.float32) for k in metrics}


def combine_metrics(metrics: dict, weights: dict) -> dict:
  """Per-piece metrics [n] -> one value each, sum_i w_i m_i / max(sum_i w_i, 1): the mean one
  batch of all the pieces' tokens would give (pieces with no tokens count for nothing). Integer
  and bool metrics (counts, flags) average in float32."""
  def mean(v, w):
    v = v if jnp.issubdtype(v.dtype, jnp.floating) else v.astype(jnp.float32)
    return jnp.sum(v * (w / jnp.maximum(jnp.sum(w), 1.0)).astype(v.dtype))
  return {k: mean(jnp.asarray(v), weights[k]) for k, v in metrics.items()}


def _split_rows(tree, m: int):
  """[B, ...] leaves -> [M, B/M, ...] (consecutive rows), as split_batch."""
  def split(x):
    if x.shape[0] % m:
      raise ValueError(f"inputs of {x.shape[0]} rows do not split into {m} micro-batches")
    return x.reshape(m, x.shape[0] // m, *x.shape[1:])
  return jax.tree.map(split, tree)


def _advantage_metrics(pre: dict, micro: dict) -> dict:
  # Keys only the whole-batch pass produced: the advantage stage, skipped in micro-batches.
  return {k: v for k, v in pre.items() if k not in micro}
