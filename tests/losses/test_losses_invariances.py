"""Invariances: padding changes nothing; micro-batch accumulation equals the whole batch for every
aggregation mode and baseline; `minimal` is exactly REINFORCE with one on-policy rollout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from losses_testlib import (
  SETTINGS,
  bigram_logp,
  bigram_params,
  build,
  pad_time,
  random_batch,
  recipe,
)

import rft_jax.losses as rl

# Chains that together use every registered transform (and every aggregation and baseline).
COMBINED = {
    "token_mean": ["affine_reward", "kl_reward", "group_mean", "group_std", "baseline_only",
                   "clipped_ratio", "truncated_is", "kl_loss", "entropy_bonus", "token_mean"],
    "seq_mean_token_mean": ["clip_reward", "leave_one_out", "batch_std", "dual_clip",
                            "seq_mean_token_mean"],
    "seq_mean_token_sum_norm": ["history_baseline", "sequence_ratio", "seq_mean_token_sum_norm"],
    "seq_mean_token_sum": ["raw_reward", "policy_gradient", "truncated_is", "seq_mean_token_sum"],
    "baseline_only_seq": ["group_mean", "baseline_only", "policy_gradient", "kl_loss",
                          "seq_mean_token_mean"],
}
CASES = [("chain", n) for n in COMBINED] + [("recipe", n) for n in rl.RECIPES]


def make(kind, name):
  return build(COMBINED[name]) if kind == "chain" else recipe(name)


def test_combined_chains_cover_every_transform():
  assert set().union(*COMBINED.values()) == set(rl.REGISTRY)


def _batch_for(name, seed=3):
  batch, _, _ = random_batch(seed=seed)
  if name == "seq_mean_token_sum":  # truncated_is without sampler_logp: the stop-gradient fallback
    batch = batch.replace(sampler_logp=None)
  return batch


@pytest.mark.parametrize("kind,name", CASES)
def test_padding_with_masked_tokens_changes_nothing(kind, name):
  transform = make(kind, name)
  batch, logp, entropy = random_batch(seed=2)
  if name == "seq_mean_token_sum":
    batch = batch.replace(sampler_logp=None)
  padded, plogp, pent = pad_time(batch, logp, entropy, extra=3)
  t = batch.mask.shape[1]

  def f(bt):
    return jax.jit(jax.value_and_grad(
        lambda lp, ent: rl.compute_loss(transform, lp, bt, transform.init(), entropy=ent)[0],
        argnums=(0, 1)))

  loss, (g, ge) = f(batch)(logp, entropy)
  ploss, (pg, pge) = f(padded)(plogp, pent)
  assert np.isfinite(ploss)
  np.testing.assert_allclose(ploss, loss, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(pg[:, :t], g, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(pge[:, :t], ge, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(pg[:, t:], 0.0)
  np.testing.assert_array_equal(pge[:, t:], 0.0)


def _loss_fn(transform, state):
  def loss_fn(params, mb):
    logp, entropy = bigram_logp(params, mb.tokens)
    return rl.compute_loss(transform, logp, mb, state, entropy=entropy)
  return loss_fn


@pytest.mark.parametrize("kind,name", CASES)
def test_micro_batches_equal_whole_batch(kind, name):
  transform = make(kind, name)
  batch = _batch_for(name)
  params = bigram_params()
  state = transform.init()
  if kind == "chain" and name == "seq_mean_token_sum_norm":  # a history with earlier rounds in it
    first_round = jax.jit(
        lambda s: transform.update(rl.initial_terms(batch.behaviour_logp, batch), s, batch)[1])
    state = first_round(state)
  loss_fn = _loss_fn(transform, state)
  # 4 micro-batches of 2 rows: every group (interleaved) is split across them. The token_mean
  # chain (with baseline_only, group stats, KL-in-reward) also runs with 2 and 8 micro-batches.
  counts = (2, 4, 8) if name == "token_mean" else (4,)

  @jax.jit
  def both(params, batch):
    whole = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    return whole, [rl.accumulate_gradients(loss_fn, params, batch, m, transform=transform,
                                           state=state) for m in counts]

  ((loss, aux), grads), accumulated = both(params, batch)
  for aloss, agrads, aaux in accumulated:
    np.testing.assert_allclose(aloss, loss, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(agrads["W"], grads["W"], rtol=2e-5, atol=1e-7)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 aaux["state"], aux["state"])
    np.testing.assert_allclose(aaux["metrics"]["loss"], loss, rtol=2e-6, atol=1e-7)
    # token means and advantage statistics: the whole batch's
    for k in ("clip_frac", "kl", "entropy", "adv_mean", "ratio_mean", "seq_ratio_mean"):
      if k in aux["metrics"]:
        np.testing.assert_allclose(aaux["metrics"][k], aux["metrics"][k], rtol=1e-5, atol=1e-7)
  assert np.abs(grads["W"]).sum() > 0


@pytest.mark.parametrize("dtype", [jnp.bool_, jnp.bfloat16])
def test_micro_batches_count_tokens_in_float32_whatever_the_mask_dtype(dtype):
  # The whole batch's token count travels to every micro-batch; cast to a bool mask's dtype it
  # became True (a loss 800x too large), to bfloat16 it rounded (867 -> 868 at this size).
  transform = build(["group_mean", "clipped_ratio", "token_mean"])
  batch, _, _ = random_batch(seed=3, b=16, t=120)
  tokens = int(np.sum(batch.mask))
  assert tokens > 256  # beyond bfloat16's exact integers
  params = bigram_params()
  loss_fn = _loss_fn(transform, transform.init())
  whole = jax.jit(loss_fn)(params, batch)[0]
  cast = batch.replace(mask=batch.mask.astype(dtype))
  prepared, _, _ = jax.jit(lambda b: rl.prepare_batch(transform, b, transform.init()))(cast)
  assert prepared.token_count.dtype == jnp.float32 and int(prepared.token_count) == tokens
  loss = jax.jit(lambda p, b: rl.accumulate_gradients(loss_fn, p, b, 4, transform=transform,
                                                      state=transform.init())[0])(params, cast)
  np.testing.assert_allclose(loss, whole, rtol=1e-5)  # float rounding; the bfloat16 count: 1e-3


def test_a_metric_over_other_tokens_keeps_its_weight_across_micro_batches():
  """baseline_only keeps only the first rollout of a group in the loss, so a micro-batch can hold
  generated tokens but no loss tokens. A metric averaged over every generated token (train's
  entropy) gives its own weight (aux['metric_weights']); by loss tokens it came out wrong."""
  transform = build(["group_mean", "baseline_only", "policy_gradient", "token_mean"])
  batch, _, _ = random_batch(seed=3, b=8, interleave=False)  # groups 0..3, 4..7: rows 0, 4 in
  params = bigram_params()

  def loss_fn(params, mb, weighted=True):
    logp, entropy = bigram_logp(params, mb.tokens)
    loss, aux = rl.compute_loss(transform, logp, mb, transform.init(), entropy=entropy)
    aux["metrics"]["all_entropy"] = jnp.sum(entropy * mb.mask) / jnp.maximum(jnp.sum(mb.mask), 1)
    if weighted:
      aux["metric_weights"] = {"all_entropy": jnp.sum(mb.mask)}
    return loss, aux

  whole = jax.jit(loss_fn)(params, batch)[1]["metrics"]["all_entropy"]
  accumulated = {w: jax.jit(lambda p, w=w: rl.accumulate_gradients(
      lambda q, mb: loss_fn(q, mb, w), p, batch, 4, transform=transform,
      state=transform.init())[2]["metrics"]["all_entropy"])(params) for w in (True, False)}
  np.testing.assert_allclose(accumulated[True], whole, rtol=1e-6)
  assert abs(float(accumulated[False]) - float(whole)) > 1e-5  # by loss tokens: 1e-4 off here


def test_naive_micro_batches_differ():
  # Control: without prepare_batch, group statistics and normalisers of a micro-batch are wrong
  # (groups are interleaved, so every micro-batch of 2 holds 2 different groups).
  transform = build(["group_mean", "group_std", "clipped_ratio", "token_mean"])
  batch = _batch_for("grpo")
  params = bigram_params()
  loss_fn = _loss_fn(transform, transform.init())

  @jax.jit
  def naive_and_whole(params):
    micro = rl.split_batch(batch, 4)
    naive = sum(loss_fn(params, jax.tree.map(lambda x, i=i: x[i], micro))[0] for i in range(4))
    return naive, loss_fn(params, batch)[0]

  naive, loss = naive_and_whole(params)
  assert abs(float(naive) - float(loss)) > 1e-3


def test_prepare_batch_applies_reward_maps_once():
  # affine then kl_reward, as precomputed: the micro-batch pass must not map again. A chain with
  # raw_reward exposes the advantages = the mapped, penalised rewards, computed exactly once.
  transform = build(["affine_reward", "kl_reward", "raw_reward", "policy_gradient", "token_mean"])
  batch, logp, _ = random_batch(seed=4)
  prepared, _, _ = rl.prepare_batch(transform, batch, transform.init())
  d = batch.behaviour_logp - batch.ref_logp
  k3 = jnp.sum((jnp.expm1(-d) + d) * batch.mask, axis=1)
  expected = 2.0 * batch.rewards - 1.0 - SETTINGS["kl_reward"]["coef"] * k3
  np.testing.assert_allclose(prepared.advantages, expected, rtol=1e-6)
  terms = transform.update(rl.initial_terms(logp, prepared), transform.init(), prepared)[0]
  np.testing.assert_allclose(terms.advantages, expected, rtol=1e-6)
  assert float(prepared.token_count) == float(jnp.sum(batch.mask))
  assert float(prepared.seq_count) == batch.mask.shape[0]


def test_split_batch_errors_and_shapes():
  batch, _, _ = random_batch()
  with pytest.raises(ValueError, match="not divisible"):
    rl.split_batch(batch, 3)
  micro = rl.split_batch(batch.replace(token_count=jnp.float32(7)), 4)
  assert micro.mask.shape == (4, 2, 6) and micro.token_count.shape == (4,)
  np.testing.assert_array_equal(micro.rewards[1], batch.rewards[2:4])


def _minimal_loss(logp_of, w, batch):
  transform = rl.minimal()
  return rl.compute_loss(transform, logp_of(w), batch, transform.init())[0]


def test_minimal_is_reinforce_with_one_on_policy_rollout():
  # Linear-softmax policy pi(v | x_t) = softmax(x_t W)_v. By hand, grad_W log pi(o_t) =
  # x_t (e_{o_t} - p_t)^T. The paper's claim: with one rollout and one on-policy update
  # (behaviour = current policy, ratio 1), minimal's gradient ascends
  # R (1/|o|) sum_t grad log pi(o_t), i.e. the loss gradient is its negative.
  rng = np.random.default_rng(0)
  t, dim, vocab = 5, 3, 4
  x = rng.normal(size=(t, dim))
  w = rng.normal(size=(dim, vocab))
  tokens = rng.integers(0, vocab, size=t)
  length = 4  # the last position is padding
  mask = (np.arange(t) < length).astype(np.float64)

  logits = x @ w
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  grad_logpi = sum(np.outer(x[i], np.eye(vocab)[tokens[i]] - p[i]) for i in range(length))

  with jax.enable_x64(True):
    def logp_of(w):
      lp = jax.nn.log_softmax(jnp.asarray(x) @ w)
      return jnp.take_along_axis(lp, jnp.asarray(tokens)[:, None], axis=1)[:, 0][None, :]

    behaviour = logp_of(jnp.asarray(w))  # on-policy: sampled by the current parameters
    for reward in (1.0, 0.0):
      batch = rl.Batch(tokens=jnp.asarray(tokens)[None], mask=jnp.asarray(mask)[None],
                       behaviour_logp=behaviour, rewards=jnp.array([reward]),
                       group_ids=jnp.array([0]))
      grad_fn = jax.jit(jax.grad(_minimal_loss, argnums=1), static_argnums=0)
      g = grad_fn(logp_of, jnp.asarray(w), batch)
      np.testing.assert_allclose(g, -reward * grad_logpi / length, atol=1e-12)
  assert np.abs(grad_logpi).sum() > 0.1



def test_sequence_counts_are_exact_in_any_mask_dtype():
  # bfloat16 holds integers exactly only up to 256 (then every 2nd): 301 rows counted 301.
  mask = jnp.ones((301, 2), jnp.bfloat16)
  count = rl.base.count_seqs(mask)
  assert count.dtype == jnp.float32 and int(count) == 301


def test_combine_metrics_is_the_token_weighted_mean():
  """Pieces' means combine as one batch of their tokens would: (0.5*2 + 1.0*6) / 8 = 0.875; a
  metric with its own count takes that count (aux["metric_weights"]); no tokens at all give 0."""
  aux = {"metric_weights": {"entropy": jnp.asarray(3)}}
  weights = rl.metric_weights(aux, {"ratio_mean": 0.0, "entropy": 0.0}, jnp.asarray(2))
  assert float(weights["ratio_mean"]) == 2.0 and float(weights["entropy"]) == 3.0
  assert weights["ratio_mean"].dtype == jnp.float32
  combined = rl.combine_metrics(
      {"ratio_mean": jnp.asarray([0.5, 1.0]), "entropy": jnp.asarray([0.2, 0.4])},
      {"ratio_mean": jnp.asarray([2.0, 6.0]), "entropy": jnp.asarray([1.0, 3.0])})
  np.testing.assert_allclose(float(combined["ratio_mean"]), 0.875, rtol=1e-6)
  np.testing.assert_allclose(float(combined["entropy"]), (0.2 + 1.2) / 4, rtol=1e-6)
  empty = rl.combine_metrics({"x": jnp.asarray([0.3, 0.7])}, {"x": jnp.zeros(2)})
  assert float(empty["x"]) == 0.0
  # counts and flags average as numbers: (3*2 + 5*6) / 8 = 4.5; (1*2 + 0*6) / 8 = 0.25
  counts = rl.combine_metrics({"n": jnp.asarray([3, 5]), "flag": jnp.asarray([True, False])},
                              {"n": jnp.asarray([2.0, 6.0]), "flag": jnp.asarray([2.0, 6.0])})
  np.testing.assert_allclose(float(counts["n"]), 4.5, rtol=1e-6)
  np.testing.assert_allclose(float(counts["flag"]), 0.25, rtol=1e-6)
