"""The loss-transform contract: optax-style init/update pairs over per-token log-probs.

A loss is a chain of transforms, each one design choice of the pipeline (reward map, baseline,
surrogate, regularizer, aggregation). Every transform is a pair of pure functions

    init() -> state
    update(terms, state, batch) -> (terms, state)

`batch` holds what the rollouts produced (it never depends on the parameters); `terms` carries the
quantities the chain builds, starting from the current policy log-probs, the only differentiable
input. Shapes: B sequences, T completion tokens; all per-token arrays are aligned with the
completion tokens and are meaningful only where `batch.mask` is 1.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array
State = Any


@flax.struct.dataclass
class Batch:
  """Rollouts of one round; nothing here depends on the parameters being differentiated.

  tokens:         [B, T] int   completion tokens.
  mask:           [B, T] float 1 for completion tokens that count, 0 for padding / after EOS.
  behaviour_logp: [B, T] float log-probs of `tokens` under the sampling (old) policy.
  rewards:        [B]    float outcome reward of each sequence.
  group_ids:      [B]    int   which prompt each sequence answers (rollouts of a prompt share it).
  ref_logp:       [B, T] float log-probs under the reference policy, or None (no KL term).
  prompt_ids:     [B]    int   stable id of the prompt across rounds (history baselines), or None.
  advantages:     [B] or [B, T] precomputed advantages, or None. Set by `accumulate` so that
                  micro-batches see advantages computed over the whole batch.
  token_count:    scalar total mask sum of the whole batch, or None (= sum of this batch's mask).
  seq_count:      scalar number of sequences of the whole batch, or None (= B).
  """

  tokens: Array
  mask: Array
  behaviour_logp: Array
  rewards: Array
  group_ids: Array
  ref_logp: Array | None = None
  prompt_ids: Array | None = None
  advantages: Array | None = None
  token_count: Array | None = None
  seq_count: Array | None = None

  @property
  def total_tokens(self) -> Array:
    return jnp.sum(self.mask) if self.token_count is None else self.token_count

  @property
  def total_seqs(self) -> Array:
    return jnp.asarray(self.mask.shape[0], self.mask.dtype) if self.seq_count is None else self.seq_count


@flax.struct.dataclass
class Terms:
  """What the chain builds, transform by transform.

  logp:       [B, T] current policy log-probs of the batch tokens (differentiable).
  rewards:    [B] rewards after any reward maps (starts as batch.rewards).
  advantages: [B] or [B, T] learning signal; None until an advantage transform sets it.
  token_loss: [B, T] per-token loss (to minimise); surrogates and regularizers add to it.
  loss:       scalar, set by the aggregation transform; None before.
  entropy:    [B, T] per-token policy entropy, or None (needed only by the entropy bonus).
  metrics:    dict of scalar diagnostics.
  """

  logp: Array
  rewards: Array
  token_loss: Array
  advantages: Array | None = None
  loss: Array | None = None
  entropy: Array | None = None
  metrics: dict = flax.struct.field(default_factory=dict)


class LossTransform(NamedTuple):
  """A pure (init, update) pair, as optax.GradientTransformation."""

  init: Callable[[], State]
  update: Callable[[Terms, State, Batch], tuple[Terms, State]]


def stateless(update_fn: Callable[[Terms, Batch], Terms]) -> LossTransform:
  """Wraps a state-free `update_fn(terms, batch) -> terms` as a LossTransform."""

  def update(terms, state, batch):
    return update_fn(terms, batch), state

  return LossTransform(init=lambda: (), update=update)


def chain(*transforms: LossTransform) -> LossTransform:
  """Applies transforms left to right; the state is the tuple of their states."""

  def init():
    return tuple(t.init() for t in transforms)

  def update(terms, state, batch):
    new_state = []
    for t, s in zip(transforms, state):
      terms, s = t.update(terms, s, batch)
      new_state.append(s)
    return terms, tuple(new_state)

  return LossTransform(init, update)


def named_chain(*named: tuple[str, LossTransform]) -> LossTransform:
  """As `chain`, with the state a dict keyed by name (readable checkpoints and metrics)."""
  names = [n for n, _ in named]
  if len(set(names)) != len(names):
    raise ValueError(f"named_chain: duplicate transform names in {names}")

  def init():
    return {n: t.init() for n, t in named}

  def update(terms, state, batch):
    new_state = {}
    for n, t in named:
      terms, new_state[n] = t.update(terms, state[n], batch)
    return terms, new_state

  return LossTransform(init, update)


def initial_terms(logp: Array, batch: Batch, entropy: Array | None = None) -> Terms:
  """The terms a chain starts from: policy log-probs and raw rewards, nothing else."""
  if logp.ndim != 2 or logp.shape != batch.mask.shape:
    raise ValueError(f"logp must be [B, T] like batch.mask {batch.mask.shape}, got {logp.shape}")
  if batch.rewards.shape != logp.shape[:1]:
    raise ValueError(f"rewards must be [B]={logp.shape[:1]}, got {batch.rewards.shape}")
  return Terms(
      logp=logp,
      rewards=batch.rewards.astype(logp.dtype),
      token_loss=jnp.zeros_like(logp),
      entropy=entropy,
  )


def compute_loss(
    transform: LossTransform,
    logp: Array,
    batch: Batch,
    state: State,
    entropy: Array | None = None,
) -> tuple[Array, dict]:
  """Runs the chain; returns (loss, aux) with aux = {"metrics", "state", "terms"}.

  Shaped for `jax.value_and_grad(..., has_aux=True)`: differentiate with respect to whatever
  produced `logp` (usually the model parameters).
  """
  terms, new_state = transform.update(initial_terms(logp, batch, entropy), state, batch)
  if terms.loss is None:
    raise ValueError("the loss chain has no aggregation transform (e.g. token_mean()) at its end")
  return terms.loss, {"metrics": terms.metrics, "state": new_state, "terms": terms}


def require_advantages(terms: Terms, who: str) -> Array:
  """Advantages broadcast to [B, T]; a clear error if no advantage transform came first."""
  if terms.advantages is None:
    raise ValueError(
        f"{who} needs advantages, but no advantage transform (raw_reward(), group_mean(), ...) "
        "precedes it in the chain")
  adv = terms.advantages
  return adv[:, None] if adv.ndim == 1 else adv


def masked_mean(x: Array, mask: Array) -> Array:
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)
