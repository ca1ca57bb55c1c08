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

from collections.abc import Callable
from typing import Any, NamedTuple

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
                  micro-batches see advantages computed over the whole batch; when set, every
                  advantage-stage transform (reward maps, KL-in-reward, baselines, scalings) is
                  skipped, since it already ran over the whole batch.
  token_count:    scalar total number of loss tokens of the whole batch, or None (= this batch's).
  seq_count:      scalar number of loss sequences of the whole batch, or None (= this batch's).
  sampler_logp:   [B, T] float log-probs from the sampler when it differs from the trainer (vLLM-
                  style engines), or None. Only `truncated_is` reads it; see there.
  grad_mask:      [B] float 1 for sequences that carry the gradient, 0 for sequences that only
                  enter the baseline ("extra rollouts for the baseline"), or None (= all carry it).
                  Rewards of every sequence still enter the baselines; only the loss ignores rows
                  with grad_mask 0. `baseline_only` and `accumulate` set it too.

  A "loss token" is one with mask * grad_mask = 1; a "loss sequence" is a row with at least one
  loss token (an all-padding row is not a sequence).
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
  sampler_logp: Array | None = None
  grad_mask: Array | None = None

  @property
  def loss_mask(self) -> Array:
    """[B, T] mask * grad_mask: the tokens that enter the loss."""
    if self.grad_mask is None:
      return self.mask
    return self.mask * self.grad_mask[:, None].astype(self.mask.dtype)

  @property
  def total_tokens(self) -> Array:
    return jnp.sum(self.loss_mask) if self.token_count is None else self.token_count

  @property
  def total_seqs(self) -> Array:
    return count_seqs(self.loss_mask) if self.seq_count is None else self.seq_count


def count_seqs(mask: Array) -> Array:
  """Number of rows of a [B, T] mask with at least one token."""
  return jnp.sum(jnp.sum(mask, axis=-1) > 0, dtype=jnp.float32)  # exact at any row count


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
  mask:       [B, T] the loss tokens (starts as batch.loss_mask); `baseline_only` narrows it to
              the rollouts that carry the gradient. Surrogates, regularizers and aggregations
              read this one, not batch.mask.
  """

  logp: Array
  rewards: Array
  token_loss: Array
  advantages: Array | None = None
  loss: Array | None = None
  entropy: Array | None = None
  metrics: dict = flax.struct.field(default_factory=dict)
  mask: Array | None = None


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


def check_batch(batch: Batch) -> None:
  """Rank/shape checks (at trace time) with one message naming the field."""
  if batch.mask.ndim != 2:
    raise ValueError(f"batch.mask must be [B, T], got shape {batch.mask.shape}")
  bt = batch.mask.shape
  per_token = ("tokens", "behaviour_logp", "ref_logp", "sampler_logp")
  per_seq = ("rewards", "group_ids", "prompt_ids", "grad_mask")
  for name in per_token:
    x = getattr(batch, name)
    if x is not None and x.shape != bt:
      raise ValueError(f"batch.{name} must be [B, T]={bt} like batch.mask, got {x.shape}")
  for name in per_seq:
    x = getattr(batch, name)
    if x is not None and x.shape != bt[:1]:
      raise ValueError(f"batch.{name} must be [B]={bt[:1]}, got {x.shape}")
  if batch.advantages is not None and batch.advantages.shape not in (bt[:1], bt):
    raise ValueError(f"batch.advantages must be [B] or [B, T] ({bt}), got {batch.advantages.shape}")
  for name in ("token_count", "seq_count"):
    x = getattr(batch, name)
    if x is not None and jnp.ndim(x) != 0:
      raise ValueError(f"batch.{name} must be a scalar, got shape {jnp.shape(x)}")


def initial_terms(logp: Array, batch: Batch, entropy: Array | None = None) -> Terms:
  """The terms a chain starts from: policy log-probs and raw rewards, nothing else."""
  if logp.ndim != 2 or logp.shape != batch.mask.shape:
    raise ValueError(f"logp must be [B, T] like batch.mask {batch.mask.shape}, got {logp.shape}")
  check_batch(batch)
  if entropy is not None and entropy.shape != logp.shape:
    raise ValueError(f"entropy must be [B, T]={logp.shape} like logp, got {entropy.shape}")
  return Terms(
      logp=logp,
      rewards=batch.rewards.astype(logp.dtype),
      token_loss=jnp.zeros_like(logp),
      entropy=entropy,
      mask=batch.loss_mask.astype(logp.dtype),
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
  produced `logp` (usually the model parameters). The batch is wrapped in stop_gradient, so the
  gradient flows only through `logp` (and `entropy`), never through rewards, behaviour or
  reference log-probs, whatever the transforms do with them.
  """
  batch = jax.lax.stop_gradient(batch)
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


def loss_mask(terms: Terms, batch: Batch) -> Array:
  """The [B, T] loss tokens: terms.mask (set by initial_terms), else batch.loss_mask."""
  return batch.loss_mask.astype(terms.logp.dtype) if terms.mask is None else terms.mask


def token_total(terms: Terms, batch: Batch) -> Array:
  """Normaliser: the whole batch's loss-token count if given (micro-batches), else this batch's."""
  if batch.token_count is not None:
    return batch.token_count
  return jnp.sum(loss_mask(terms, batch))


def seq_total(terms: Terms, batch: Batch) -> Array:
  """Normaliser: the whole batch's loss-sequence count if given (micro-batches), else this one's."""
  if batch.seq_count is not None:
    return batch.seq_count
  return count_seqs(loss_mask(terms, batch))


def safe_log_ratio(a: Array, b: Array, mask: Array) -> Array:
  """a - b on loss tokens, 0 elsewhere: garbage in padding never reaches exp() or the gradient."""
  return jnp.where(mask > 0, a - b, 0.0)


def advantages_given(batch: Batch) -> bool:
  """True when `accumulate` (or the caller) precomputed the advantage stage for the whole batch."""
  return batch.advantages is not None
