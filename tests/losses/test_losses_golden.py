"""Golden values computed by hand for every transform (the derivation is in each comment)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rft_jax.losses as rl

ATOL = 1e-6


def mk(rewards, mask=None, group_ids=None, behaviour=None, **kw):
  """A batch from plain lists; missing per-token fields are zeros, all rows in one group."""
  rewards = jnp.asarray(rewards, jnp.float32)
  b = rewards.shape[0]
  mask = jnp.ones((b, 1)) if mask is None else jnp.asarray(mask, jnp.float32)
  behaviour = jnp.zeros_like(mask) if behaviour is None else jnp.asarray(behaviour, jnp.float32)
  group_ids = jnp.zeros((b,), jnp.int32) if group_ids is None else jnp.asarray(group_ids, jnp.int32)
  floats = ("ref_logp", "sampler_logp", "grad_mask", "advantages")
  kw = {k: (jnp.asarray(v, jnp.float32) if k in floats
            else jnp.asarray(v, jnp.int32) if k == "prompt_ids" else v) for k, v in kw.items()}
  return rl.Batch(tokens=jnp.zeros(mask.shape, jnp.int32), mask=mask, behaviour_logp=behaviour,
                  rewards=rewards, group_ids=group_ids, **kw)


def run(transform, batch, logp=None, entropy=None, state=None):
  """Runs the chain (jitted: one compile beats many eager ops); returns (terms, state)."""
  logp = jnp.zeros_like(batch.mask) if logp is None else jnp.asarray(logp, jnp.float32)
  state = transform.init() if state is None else state
  return _run(transform, batch, logp, entropy, state)


@jax.jit(static_argnums=0)
def _run(transform, batch, logp, entropy, state):
  return transform.update(rl.initial_terms(logp, batch, entropy), state, batch)


def advantages_of(transform, batch):
  return np.asarray(run(transform, batch)[0].advantages)


# ---- reward maps -------------------------------------------------------------------------------

def test_affine_reward_maps_01_to_pm1_and_m10():
  batch = mk([0.0, 1.0, 1.0, 0.0])
  # {0,1} -> {-1,1}: 2R - 1.
  got = advantages_of(rl.chain(rl.affine_reward(2.0, -1.0), rl.raw_reward()), batch)
  np.testing.assert_allclose(got, [-1, 1, 1, -1])
  # {0,1} -> {-1,0}: R - 1.
  got = advantages_of(rl.chain(rl.affine_reward(1.0, -1.0), rl.raw_reward()), batch)
  np.testing.assert_allclose(got, [-1, 0, 0, -1])


def test_clip_reward():
  # clip([-3, 0.5, 2], -1, 1) = [-1, 0.5, 1].
  got = advantages_of(rl.chain(rl.clip_reward(-1.0, 1.0), rl.raw_reward()), mk([-3.0, 0.5, 2.0]))
  np.testing.assert_allclose(got, [-1, 0.5, 1])


@pytest.mark.parametrize("estimator,expected", [
    # d = behaviour - ref on unmasked tokens: row 0 [0.5, -1], row 1 [0.5] (the 9.0 is padding).
    # k1: row sums -0.5, 0.5 -> R' = [1 - 0.1 (-0.5), 0 - 0.1 (0.5)] = [1.05, -0.05].
    ("k1", [1.05, -0.05]),
    # k2 = d^2/2: row sums 0.125 + 0.5 = 0.625, 0.125 -> [1 - 0.0625, -0.0125].
    ("k2", [0.9375, -0.0125]),
    # k3 = exp(-d) - 1 + d: exp(-0.5) - 0.5 = 0.10653066, exp(1) - 2 = 0.71828183;
    # row sums 0.82481249, 0.10653066 -> [1 - 0.082481249, -0.010653066].
    ("k3", [1 - 0.082481249, -0.010653066]),
])
def test_kl_reward(estimator, expected):
  batch = mk([1.0, 0.0], mask=[[1, 1], [1, 0]], behaviour=[[-1.0, -2.0], [-0.5, 9.0]],
             ref_logp=[[-1.5, -1.0], [-1.0, 0.0]])
  # logp differs from behaviour: the penalty must use behaviour_logp, not the current policy.
  transform = rl.chain(rl.kl_reward(0.1, estimator), rl.raw_reward())
  terms, _ = run(transform, batch, logp=[[-3.0, -3.0]] * 2)
  np.testing.assert_allclose(terms.advantages, expected, atol=ATOL)


def test_kl_reward_zero_coef_needs_no_reference():
  got = advantages_of(rl.chain(rl.kl_reward(0.0), rl.raw_reward()), mk([1.0, 0.0]))
  np.testing.assert_allclose(got, [1.0, 0.0])


# ---- baselines and scalings -------------------------------------------------------------------

# Groups 7 = rows 0, 2, 3 with R = 1, 0, 0; group 3 = rows 1, 4 with R = 1, 0.
GROUPED = {"rewards": [1.0, 1.0, 0.0, 0.0, 0.0], "group_ids": [7, 3, 7, 7, 3]}


def test_raw_reward_and_precomputed_advantages():
  np.testing.assert_allclose(advantages_of(rl.raw_reward(), mk([0.0, 1.0])), [0.0, 1.0])
  # A precomputed batch.advantages wins over the rewards.
  got = advantages_of(rl.raw_reward(), mk([0.0, 1.0], advantages=[5.0, -5.0]))
  np.testing.assert_allclose(got, [5.0, -5.0])


def test_group_mean():
  # Group 7 mean 1/3 -> [2/3, -1/3, -1/3]; group 3 mean 1/2 -> [1/2, -1/2].
  got = advantages_of(rl.group_mean(), mk(**GROUPED))
  np.testing.assert_allclose(got, [2 / 3, 0.5, -1 / 3, -1 / 3, -0.5], atol=ATOL)


def test_group_std_unbiased_and_population():
  batch = mk(**GROUPED)
  # ddof=1: group 7 squared deviations 4/9 + 1/9 + 1/9 = 2/3, / 2 -> var 1/3, std 1/sqrt(3):
  # A = (2/3) sqrt(3) = 1.1547005, -(1/3) sqrt(3) = -0.5773503. Group 3: 0.5 / 1 -> std
  # 1/sqrt(2): A = +-0.5 sqrt(2) = +-0.70710678.
  got = advantages_of(rl.chain(rl.group_mean(), rl.group_std(eps=0.0, ddof=1)), batch)
  s3 = math.sqrt(3)
  r2 = math.sqrt(2)
  np.testing.assert_allclose(got, [2 / 3 * s3, 0.5 * r2, -s3 / 3, -s3 / 3, -0.5 * r2], atol=ATOL)
  # ddof=0: group 7 var 2/9, std sqrt(2)/3 -> [sqrt 2, -1/sqrt 2]; group 3 std 1/2 -> [1, -1].
  got = advantages_of(rl.chain(rl.group_mean(), rl.group_std(eps=0.0, ddof=0)), batch)
  np.testing.assert_allclose(got, [r2, 1.0, -1 / r2, -1 / r2, -1.0], atol=ATOL)


def test_group_std_degenerate_groups():
  # Group 0: R = [1, 1], std 0 -> A = 0 / (0 + eps) = 0. Group 1: one rollout, ddof=1 has no std:
  # left unscaled, so raw_reward's A = 3 stays 3 (not 3 / eps).
  batch = mk([1.0, 1.0, 3.0], group_ids=[0, 0, 1])
  got = advantages_of(rl.chain(rl.group_mean(), rl.group_std(eps=1e-6)), batch)
  np.testing.assert_allclose(got, [0.0, 0.0, 0.0], atol=ATOL)
  got = advantages_of(rl.chain(rl.raw_reward(), rl.group_std(eps=1e-6)), batch)
  np.testing.assert_allclose(got[2], 3.0, atol=ATOL)


def test_a_group_of_equal_rewards_has_exactly_zero_advantage():
  # In float32 seven 0.7s sum to 4.9000006 and sum / 7 is one rounding unit off 0.7, which
  # GRPO's std scaling (std also ~1 unit, eps 1e-6) blew up to A = 0.056. Summed as offsets
  # from the group's smallest reward, every group below has R - mean = 0 and std = 0 exactly.
  for value, n in ((0.7, 7), (3.7, 7), (100.3, 7), (0.9, 16)):
    batch = mk([value] * n + [0.0, 1.0], group_ids=[0] * n + [1, 1])
    grpo = rl.chain(rl.group_mean(), rl.group_std(eps=1e-6))  # GRPO's advantage
    for transform in (grpo, rl.leave_one_out(),
                      rl.chain(rl.group_mean(), rl.batch_std(eps=0.0))):
      got = advantages_of(transform, batch)
      np.testing.assert_array_equal(got[:n], 0.0, err_msg=f"{value} x {n}")
    terms, _ = run(grpo, batch)
    # group 0 (n rows) has no spread, group 1 (two rows) has: the share of rows is n / (n + 2)
    np.testing.assert_allclose(terms.metrics["zero_std_frac"], n / (n + 2))
  # The other group still gets the hand value: [0, 1] -> mean 1/2, unbiased std 1/sqrt(2).
  got = advantages_of(rl.chain(rl.group_mean(), rl.group_std(eps=0.0)),
                      mk([0.7] * 7 + [0.0, 1.0], group_ids=[0] * 7 + [1, 1]))
  np.testing.assert_allclose(got[7:], [-0.5 * math.sqrt(2), 0.5 * math.sqrt(2)], atol=ATOL)


def test_zero_eps_leaves_groups_without_spread_unscaled():
  # eps = 0 (allowed: the formula's plain form) with R = [1, 1]: (R - mean) / std = 0 / 0. The
  # group carries no signal, so A = 0 (not NaN); raw_reward's A = R is left unscaled, not R / 0.
  batch = mk([1.0, 1.0, 0.0, 1.0], group_ids=[0, 0, 1, 1])
  got = advantages_of(rl.chain(rl.group_mean(), rl.group_std(eps=0.0)), batch)
  np.testing.assert_allclose(got, [0.0, 0.0, -0.5 * math.sqrt(2), 0.5 * math.sqrt(2)], atol=ATOL)
  got = advantages_of(rl.chain(rl.raw_reward(), rl.group_std(eps=0.0)), batch)
  np.testing.assert_allclose(got[:2], [1.0, 1.0])
  same = mk([1.0, 1.0, 1.0])
  np.testing.assert_array_equal(
      advantages_of(rl.chain(rl.group_mean(), rl.batch_std(eps=0.0)), same), 0.0)
  np.testing.assert_allclose(
      advantages_of(rl.chain(rl.raw_reward(), rl.batch_std(eps=0.0)), same), 1.0)


def test_batch_std():
  # R = [1, 0, 0, 1]: mean 1/2, unbiased var 4 (1/4) / 3 = 1/3, std 1/sqrt(3) -> A = R sqrt(3).
  batch = mk([1.0, 0.0, 0.0, 1.0], group_ids=[0, 0, 1, 1])
  got = advantages_of(rl.chain(rl.raw_reward(), rl.batch_std(eps=0.0)), batch)
  np.testing.assert_allclose(got, [math.sqrt(3), 0, 0, math.sqrt(3)], atol=ATOL)
  # With group_mean first (Lite PPO): group means 1/2 -> A = [1/2, -1/2, -1/2, 1/2] sqrt(3).
  got = advantages_of(rl.chain(rl.group_mean(), rl.batch_std(eps=0.0)), batch)
  np.testing.assert_allclose(got, 0.5 * math.sqrt(3) * np.array([1, -1, -1, 1]), atol=ATOL)


def test_leave_one_out():
  # Group 0 = R [1, 0, 0]: row 0: 1 - (0+0)/2 = 1; rows 1, 2: 0 - (1+0)/2 = -1/2.
  # Group 1 = R [1, 3]: 1 - 3 = -2, 3 - 1 = 2. Group 2 = [5] alone: baseline 0, A = 5.
  batch = mk([1.0, 0.0, 0.0, 1.0, 3.0, 5.0], group_ids=[0, 0, 0, 1, 1, 2])
  np.testing.assert_allclose(advantages_of(rl.leave_one_out(), batch), [1, -0.5, -0.5, -2, 2, 5],
                             atol=ATOL)


def test_history_baseline_over_rounds():
  t = rl.history_baseline(num_prompts=2, window=3, empty_value=0.5)
  state = t.init()
  # Round 1: empty windows -> baseline 0.5: A = [1, 0, 1] - 0.5. Push: p0 = [1, 0], p1 = [1].
  terms, state = run(t, mk([1.0, 0.0, 1.0], prompt_ids=[0, 0, 1]), state=state)
  np.testing.assert_allclose(terms.advantages, [0.5, -0.5, 0.5], atol=ATOL)
  np.testing.assert_array_equal(state["count"], [2, 1])
  # Round 2: p0 baseline mean(1, 0) = 0.5; p1 mean(1) = 1; id 5 is out of range: empty_value 0.5,
  # not stored. A = [1-0.5, 1-0.5, 0-1, 1-0.5]. Push: p0 slots 2, 0 <- 1, 1 -> [1, 0, 1] (full);
  # p1 slot 1 <- 0 -> [1, 0].
  terms, state = run(t, mk([1.0, 1.0, 0.0, 1.0], prompt_ids=[0, 0, 1, 5]), state=state)
  np.testing.assert_allclose(terms.advantages, [0.5, 0.5, -1.0, 0.5], atol=ATOL)
  assert float(terms.metrics["history_dropped"]) == 1.0
  np.testing.assert_array_equal(state["count"], [3, 2])
  # Round 3: p0 baseline (1+0+1)/3 = 2/3; p1 (1+0)/2 = 1/2. A = [-2/3, -1/2].
  # Push: p0 slot 1 <- 0 -> [1, 0, 1]; p1 slot 2 <- 0 -> [1, 0, 0], next 0.
  terms, state = run(t, mk([0.0, 0.0], prompt_ids=[0, 1]), state=state)
  np.testing.assert_allclose(terms.advantages, [-2 / 3, -0.5], atol=ATOL)
  # Round 4: four rollouts of p1 > window 3: baseline (1+0+0)/3 = 1/3, A = R - 1/3; only the last
  # three (2, 3, 4) are stored (ranks 1..3 -> slots 1, 2, 0).
  terms, state = run(t, mk([1.0, 2.0, 3.0, 4.0], prompt_ids=[1, 1, 1, 1]), state=state)
  np.testing.assert_allclose(terms.advantages, np.array([1, 2, 3, 4]) - 1 / 3, atol=ATOL)
  np.testing.assert_allclose(state["rewards"][1], [4.0, 2.0, 3.0])
  # Round 5: p1 baseline mean(4, 2, 3) = 3 -> A = -3.
  terms, _ = run(t, mk([0.0], prompt_ids=[1]), state=state)
  np.testing.assert_allclose(terms.advantages, [-3.0], atol=ATOL)
  # With precomputed advantages the window is neither read nor written.
  terms, same = run(t, mk([0.0], prompt_ids=[1], advantages=[9.0]), state=state)
  np.testing.assert_allclose(terms.advantages, [9.0])
  jax.tree.map(np.testing.assert_array_equal, same, state)


def test_baseline_only_first_k_of_each_group():
  # Groups: 0 = rows 0, 2; 1 = rows 1, 3; R = [1, 1, 0, 0] -> group_mean A = [.5, .5, -.5, -.5].
  # num_grad=1 keeps rows 0 and 1 (first of each group): A = [.5, .5, 0, 0], rows 2, 3 unmasked.
  logp = [[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0], [-7.0, -8.0]]
  batch = mk([1.0, 1.0, 0.0, 0.0], mask=[[1, 1], [1, 0], [1, 1], [1, 1]], group_ids=[0, 1, 0, 1])
  t = rl.chain(rl.group_mean(), rl.baseline_only(1), rl.policy_gradient(), rl.token_mean())
  terms, _ = run(t, batch, logp=logp)
  np.testing.assert_allclose(terms.advantages, [0.5, 0.5, 0.0, 0.0])
  np.testing.assert_allclose(terms.mask, [[1, 1], [1, 0], [0, 0], [0, 0]])
  # token_mean over the 3 kept tokens: -(0.5 (-1 - 2) + 0.5 (-3)) / 3 = 3 / 3 = 1.
  np.testing.assert_allclose(terms.loss, 1.0, atol=ATOL)
  # A data-side grad_mask [0, 1, 1, 0] picks rows 1, 2 instead: A = [0, .5, -.5, 0];
  # loss = -(0.5 (-3) - 0.5 (-5 - 6)) / 3 = -(-1.5 + 5.5) / 3 = -4/3.
  terms, _ = run(t, batch.replace(grad_mask=jnp.array([0.0, 1.0, 1.0, 0.0])), logp=logp)
  np.testing.assert_allclose(terms.advantages, [0.0, 0.5, -0.5, 0.0])
  np.testing.assert_allclose(terms.loss, -4 / 3, atol=ATOL)


# ---- surrogates --------------------------------------------------------------------------------

def _ratios_batch(ratios, adv, mask=None):
  """logp - behaviour = log(ratio); advantages given directly."""
  ratios = np.asarray(ratios, np.float64)
  behaviour = np.full(ratios.shape, -1.0)
  logp = behaviour + np.log(ratios)
  mask = np.ones(ratios.shape) if mask is None else mask
  batch = mk([0.0] * len(adv), mask=mask, behaviour=behaviour, advantages=adv)
  return batch, jnp.asarray(logp, jnp.float32)


def test_policy_gradient():
  # token_loss = -A logp = [[-2 (-0.5), -2 (-1)], [1 (-2), 0 (masked)]] = [[1, 2], [-2, 0]];
  # token_mean = (1 + 2 - 2) / 3 = 1/3.
  batch = mk([0.0, 0.0], mask=[[1, 1], [1, 0]], advantages=[2.0, -1.0])
  terms, _ = run(rl.chain(rl.raw_reward(), rl.policy_gradient(), rl.token_mean()), batch,
                 logp=[[-0.5, -1.0], [-2.0, -3.0]])
  np.testing.assert_allclose(terms.token_loss, [[1, 2], [-2, 0]], atol=ATOL)
  np.testing.assert_allclose(terms.loss, 1 / 3, atol=ATOL)


def test_clipped_ratio_clip_higher():
  # eps_low 0.2, eps_high 0.28: bounds [0.8, 1.28].
  # A=+1, r=1.5: min(1.5, 1.28) = 1.28 (clipped); r=0.5: min(0.5, 0.8) = 0.5; r=1.1: 1.1.
  # A=-1, r=0.5: min(-0.5, -0.8) = -0.8 (clipped); r=1.5: min(-1.5, -1.28) = -1.5; r=1.1: -1.1.
  batch, logp = _ratios_batch([[1.5, 0.5, 1.1], [0.5, 1.5, 1.1]], [1.0, -1.0])
  terms, _ = run(rl.chain(rl.raw_reward(), rl.clipped_ratio(0.2, 0.28)), batch, logp=logp)
  np.testing.assert_allclose(terms.token_loss, [[-1.28, -0.5, -1.1], [0.8, 1.5, 1.1]], atol=1e-5)
  np.testing.assert_allclose(terms.metrics["clip_frac"], 2 / 6, atol=ATOL)
  # The gradient of a clipped token is 0; unclipped: d(-r A)/dlogp = -r A.
  grad = jax.grad(lambda lp: jnp.sum(run(rl.chain(rl.raw_reward(), rl.clipped_ratio(0.2, 0.28)),
                                         batch, logp=lp)[0].token_loss))(logp)
  np.testing.assert_allclose(grad, [[0, -0.5, -1.1], [0, 1.5, 1.1]], atol=1e-5)
  # eps_high = -1 (the config sentinel) is symmetric: r = 1.5, A = +1 now clips at 1.2.
  terms, _ = run(rl.chain(rl.raw_reward(), rl.clipped_ratio(0.2)), batch, logp=logp)
  np.testing.assert_allclose(terms.token_loss[0, 0], -1.2, atol=1e-5)


def test_dual_clip():
  # eps 0.2, c 1.5 (bounds [0.8, 1.2]).
  # A=+1 r=[5, 0.5, 1]: min(5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; 1 -> l = [-1.2, -0.5, -1].
  # A=-1 r=[0.5, 1.1, 5]: min(-0.5, -0.8) = -0.8 -> 0.8; min(-1.1, -1.1) = -1.1 > -1.5 -> 1.1;
  # r=5: min(-5, -1.2) = -5, max(-5, 1.5 (-1)) = -1.5 (dual clip) -> 1.5.
  batch, logp = _ratios_batch([[5.0, 0.5, 1.0], [0.5, 1.1, 5.0]], [1.0, -1.0])
  t = rl.chain(rl.raw_reward(), rl.dual_clip(0.2, 0.2, c=1.5))
  terms, _ = run(t, batch, logp=logp)
  np.testing.assert_allclose(terms.token_loss, [[-1.2, -0.5, -1.0], [0.8, 1.1, 1.5]], atol=1e-5)
  np.testing.assert_allclose(terms.metrics["dual_clip_frac"], 1 / 6, atol=ATOL)
  # The dual-clipped token has zero gradient (the plain clipped loss would give -r A = 5).
  grad = jax.grad(lambda lp: jnp.sum(run(t, batch, logp=lp)[0].token_loss))(logp)
  np.testing.assert_allclose(grad, [[0, -0.5, -1.0], [0, 1.1, 0]], atol=1e-5)


def test_sequence_ratio_gspo():
  # Row 0: mask [1, 1, 0], log r = [0.2, 0.4, (padding 7)] -> mean 0.3, s = e^0.3 = 1.3498588;
  #   A = +1: min(1.3498588, 1.2) = 1.2 -> l = -1.2 on its two tokens (clipped).
  # Row 1: log r = [0, -0.3, 0] -> mean -0.1, s = e^-0.1 = 0.90483742 in [0.9, 1.2];
  #   A = -2: min(-1.8096748, -1.8096748) -> l = 1.8096748 on its three tokens.
  # seq_mean_token_mean: (-1.2 + 1.8096748) / 2 = 0.3048374.
  behaviour = np.array([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
  logp = behaviour + np.array([[0.2, 0.4, 7.0], [0.0, -0.3, 0.0]])
  batch = mk([0.0, 0.0], mask=[[1, 1, 0], [1, 1, 1]], behaviour=behaviour, advantages=[1.0, -2.0])
  t = rl.chain(rl.raw_reward(), rl.sequence_ratio(0.1, 0.2), rl.seq_mean_token_mean())
  terms, _ = run(t, batch, logp=jnp.asarray(logp, jnp.float32))
  s1 = math.exp(-0.1)
  np.testing.assert_allclose(terms.token_loss, [[-1.2, -1.2, 0], [2 * s1] * 3], atol=1e-5)
  np.testing.assert_allclose(terms.loss, (-1.2 + 2 * s1) / 2, atol=1e-5)
  # seq_ratio_mean over loss tokens (2 of row 0, 3 of row 1): (2 e^0.3 + 3 e^-0.1) / 5; an
  # empty row adds nothing (a plain row mean counted it as ratio 1).
  seq_mean = (2 * math.exp(0.3) + 3 * s1) / 5
  np.testing.assert_allclose(terms.metrics["seq_ratio_mean"], seq_mean, rtol=1e-6)
  empty = batch.replace(mask=jnp.concatenate([batch.mask, jnp.zeros((1, 3))]),
                        **{k: jnp.concatenate([getattr(batch, k), v]) for k, v in (
                            ("tokens", jnp.zeros((1, 3), jnp.int32)),
                            ("behaviour_logp", jnp.zeros((1, 3))), ("rewards", jnp.zeros(1)),
                            ("group_ids", jnp.zeros(1, jnp.int32)),
                            ("advantages", jnp.zeros(1)))})
  padded_logp = jnp.concatenate([jnp.asarray(logp, jnp.float32), jnp.zeros((1, 3))])
  np.testing.assert_allclose(run(t, empty, logp=padded_logp)[0].metrics["seq_ratio_mean"],
                             seq_mean, rtol=1e-6)
  # dL/dlogp_1t = (1/2) d(-s A)/dlogp_1t = (1/2) (-A s / 3) = s / 3 = 0.30161247; row 0 clipped: 0.
  grad = jax.grad(lambda lp: run(t, batch, logp=lp)[0].loss)(jnp.asarray(logp, jnp.float32))
  np.testing.assert_allclose(grad, [[0, 0, 0], [s1 / 3] * 3], atol=1e-6)


def test_truncated_is_weight_is_capped_and_stop_gradient():
  # Fallback (no sampler_logp): w = min(exp(logp - behaviour), 2) = min([1.5, 3], 2) = [1.5, 2].
  # policy_gradient with A = 1: l = -logp = [1, 2]; times w: [1.5, 4]; token_mean 5.5 / 2 = 2.75.
  # The weight is a constant: dL/dlogp = -A w / 2 = [-0.75, -1].
  logp = jnp.array([[-1.0, -2.0]])
  batch = mk([1.0], mask=[[1, 1]], behaviour=[[-1.0 - math.log(1.5), -2.0 - math.log(3.0)]])
  t = rl.chain(rl.raw_reward(), rl.policy_gradient(), rl.truncated_is(cap=2.0), rl.token_mean())
  terms, _ = run(t, batch, logp=logp)
  np.testing.assert_allclose(terms.loss, 2.75, atol=1e-5)
  grad = jax.grad(lambda lp: run(t, batch, logp=lp)[0].loss)(logp)
  np.testing.assert_allclose(grad, [[-0.75, -1.0]], atol=1e-5)
  # With sampler_logp, w = min(exp(behaviour - sampler), 2): behaviour - sampler = log [0.5, 4]
  # -> w = [0.5, 2] whatever logp is: l = [0.5, 4], token_mean 2.25.
  b2 = batch.replace(sampler_logp=batch.behaviour_logp - jnp.log(jnp.array([[0.5, 4.0]])))
  terms, _ = run(t, b2, logp=logp)
  np.testing.assert_allclose(terms.loss, 2.25, atol=1e-5)


# ---- regularizers ------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator,kl,dkl", [
    # d = logp - ref = [0.5, -1].  k1 = d, dk1/dlogp = 1.
    ("k1", [0.5, -1.0], [1.0, 1.0]),
    # k2 = d^2/2 = [0.125, 0.5], dk2/dlogp = d.
    ("k2", [0.125, 0.5], [0.5, -1.0]),
    # k3 = exp(-d) - 1 + d = [0.10653066, 0.71828183];
    # dk3/dlogp = 1 - exp(-d) = [0.39346934, -1.7182818].
    ("k3", [0.10653066, 0.71828183], [0.39346934, -1.7182818]),
])
def test_kl_loss(estimator, kl, dkl):
  batch = mk([0.0], mask=[[1, 1, 0]], ref_logp=[[-1.5, -1.0, 80.0]])
  logp = jnp.array([[-1.0, -2.0, -0.1]])
  t = rl.kl_loss(coef=0.1, estimator=estimator)
  terms, _ = run(t, batch, logp=logp)
  np.testing.assert_allclose(terms.token_loss, [[0.1 * kl[0], 0.1 * kl[1], 0.0]], atol=1e-6)
  np.testing.assert_allclose(terms.metrics["kl"], (kl[0] + kl[1]) / 2, atol=1e-6)
  grad = jax.grad(lambda lp: jnp.sum(run(t, batch, logp=lp)[0].token_loss))(logp)
  np.testing.assert_allclose(grad, [[0.1 * dkl[0], 0.1 * dkl[1], 0.0]], atol=1e-6)


def test_entropy_bonus():
  # token_loss -= 0.1 H m = -0.1 [1, 2] [1, 0] = [-0.1, 0]; d/dH = [-0.1, 0].
  batch = mk([0.0], mask=[[1, 0]])
  ent = jnp.array([[1.0, 2.0]])
  terms, _ = run(rl.entropy_bonus(0.1), batch, entropy=ent)
  np.testing.assert_allclose(terms.token_loss, [[-0.1, 0.0]], atol=ATOL)
  g = jax.grad(lambda e: jnp.sum(run(rl.entropy_bonus(0.1), batch, entropy=e)[0].token_loss))(ent)
  np.testing.assert_allclose(g, [[-0.1, 0.0]], atol=ATOL)


# ---- aggregations ------------------------------------------------------------------------------

def _aggregate(transform, mask, token_loss, **batch_kw):
  mask = jnp.asarray(mask, jnp.float32)
  batch = mk([0.0] * mask.shape[0], mask=mask, **batch_kw)
  terms = rl.initial_terms(jnp.zeros_like(mask), batch).replace(token_loss=jnp.asarray(token_loss))
  return float(transform.update(terms, transform.init(), batch)[0].loss)


# Row 0 keeps [1, 2], row 1 keeps [4], row 2 is all padding (not a sequence).
AGG_MASK = [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
AGG_LOSS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]


@pytest.mark.parametrize("transform,expected", [
    # (1 + 2 + 4) / 3 tokens.
    (rl.token_mean(), 7 / 3),
    # Row means (1 + 2)/2 = 1.5 and 4/1 = 4, over 2 sequences: 2.75.
    (rl.seq_mean_token_mean(), 2.75),
    # Row sums 3 and 4, over 2 sequences: 3.5.
    (rl.seq_mean_token_sum(), 3.5),
    # Sum 7 over (2 sequences x max_len 10): 0.35.
    (rl.seq_mean_token_sum_norm(max_len=10), 0.35),
    # max_len -1: the padded length T = 3: 7 / 6.
    (rl.seq_mean_token_sum_norm(), 7 / 6),
])
def test_aggregations(transform, expected):
  assert _aggregate(transform, AGG_MASK, AGG_LOSS) == pytest.approx(expected, abs=ATOL)


@pytest.mark.parametrize("transform,expected", [
    (rl.token_mean(), 7 / 10),  # whole-batch normalisers: 10 tokens, 4 sequences
    (rl.seq_mean_token_mean(), 5.5 / 4),
    (rl.seq_mean_token_sum(), 7 / 4),
    (rl.seq_mean_token_sum_norm(max_len=10), 7 / 40),
])
def test_aggregations_use_whole_batch_counts(transform, expected):
  got = _aggregate(transform, AGG_MASK, AGG_LOSS, token_count=jnp.float32(10),
                   seq_count=jnp.float32(4))
  assert got == pytest.approx(expected, abs=ATOL)


def test_drop_zero_variance_groups():
  # Group 4: [1, 1] all equal -> dropped; group 2: [0, 1] kept; group 9: [0, 0, 0] dropped;
  # group 5: a single rollout has no variance -> dropped.
  keep = rl.drop_zero_variance_groups(np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.5]),
                                      np.array([4, 2, 4, 9, 9, 2, 9, 5]))
  np.testing.assert_array_equal(keep, [False, True, False, False, False, True, False, False])
  keep = rl.drop_zero_variance_groups(jnp.array([0.0, 1.0]), jnp.array([0, 0]))
  np.testing.assert_array_equal(keep, [True, True])


# ---- peer conventions: verl's and TRL's options on the same transforms --------------------------

def test_group_mean_singleton_conventions():
  # Group 0 = [1, 0] (mean 1/2); groups 1, 2 are single rollouts with R = 1 and 0.3.
  batch = mk([1.0, 0.0, 1.0, 0.3], group_ids=[0, 0, 1, 2])
  # "mean": a group of one is its own mean, A = 0. "zero" (verl): baseline 0, A = R.
  np.testing.assert_allclose(advantages_of(rl.group_mean(), batch), [0.5, -0.5, 0, 0], atol=ATOL)
  np.testing.assert_allclose(advantages_of(rl.group_mean(singleton="zero"), batch),
                             [0.5, -0.5, 1.0, 0.3], atol=ATOL)


def test_group_std_singleton_std():
  # Group 0 = [1, 0]: std (ddof 1) = 1/sqrt(2), A = +-0.5 / (0.70710678 + 0.1) = +-0.61949672.
  # Singletons: default left unscaled (A = R under singleton="zero"); singleton_std=1 (verl):
  # A = R / (1 + eps) = [1, 0.3] / 1.1 = [0.90909091, 0.27272727].
  batch = mk([1.0, 0.0, 1.0, 0.3], group_ids=[0, 0, 1, 2])
  base = rl.group_mean(singleton="zero")
  got = advantages_of(rl.chain(base, rl.group_std(eps=0.1)), batch)
  np.testing.assert_allclose(got, [0.61949672, -0.61949672, 1.0, 0.3], atol=ATOL)
  got = advantages_of(rl.chain(base, rl.group_std(eps=0.1, singleton_std=1.0)), batch)
  np.testing.assert_allclose(got, [0.61949672, -0.61949672, 0.90909091, 0.27272727], atol=ATOL)


@pytest.mark.parametrize("factory", [rl.clipped_ratio, rl.dual_clip])
def test_log_ratio_clamp(factory):
  # log r = [25, -25, 0.1], A = [-1, +1, +1], eps 0.2, clamp 20 (verl): r = [e^20, e^-20, e^0.1].
  # A = -1, r = e^20: clipped_ratio min(-e^20, -1.2) -> l = e^20 = 4.85165195e8 (dual_clip c = 3:
  # l = 3); A = +1, r = e^-20: min(e^-20, 0.8) -> l = -e^-20 = -2.0611536e-9 (not -e^-25);
  # r = e^0.1 inside: l = -1.10517092. Clamped tokens have zero gradient; the third -1.10517092.
  with jax.enable_x64(True):
    behaviour = jnp.full((3, 1), -30.0)
    logp = behaviour + jnp.array([[25.0], [-25.0], [0.1]])
    batch = mk([0.0] * 3, mask=np.ones((3, 1))).replace(
        behaviour_logp=behaviour, advantages=jnp.array([-1.0, 1.0, 1.0]))
    t = rl.chain(rl.raw_reward(), factory(0.2, log_ratio_clamp=20.0))
    terms, _ = _run(t, batch, logp, None, t.init())
    first = math.exp(20.0) if factory is rl.clipped_ratio else 3.0
    np.testing.assert_allclose(terms.token_loss[:, 0], [first, -math.exp(-20.0), -math.exp(0.1)],
                               rtol=1e-12)
    grad = jax.grad(lambda lp: jnp.sum(_run(t, batch, lp, None, t.init())[0].token_loss))(logp)
    np.testing.assert_allclose(grad[:, 0], [0.0, 0.0, -math.exp(0.1)], rtol=1e-12)


def test_sequence_ratio_max_log_ratio():
  # One row, log r = [12, 12], A = -1: log s = 12, capped at 10: l = -(-1) e^10 = 22026.466 on
  # each token, zero gradient. Uncapped: e^12 = 162754.79 and gradient -A s / |o| = e^12 / 2.
  batch = mk([0.0], mask=[[1, 1]], behaviour=[[-20.0, -20.0]], advantages=[-1.0])
  logp = jnp.array([[-8.0, -8.0]])
  for cap, value, g in ((10.0, math.exp(10), 0.0), (-1.0, math.exp(12), math.exp(12) / 2)):
    t = rl.chain(rl.raw_reward(), rl.sequence_ratio(0.1, 0.1, max_log_ratio=cap))
    terms, _ = run(t, batch, logp=logp)
    np.testing.assert_allclose(terms.token_loss, [[value, value]], rtol=1e-6)
    grad = jax.grad(lambda lp, t=t: jnp.sum(run(t, batch, logp=lp)[0].token_loss) / 2)(logp)
    np.testing.assert_allclose(grad, [[g, g]], rtol=1e-6)


@pytest.mark.parametrize("estimator,kl,dkl", [
    # d = logp - ref = [0.5, -1]: abs = |d| = [0.5, 1], d abs / d logp = sign(d) = [1, -1].
    ("abs", [0.5, 1.0], [1.0, -1.0]),
])
def test_kl_loss_abs(estimator, kl, dkl):
  test_kl_loss(estimator, kl, dkl)


def test_kl_clamps_as_verl_low_var_kl():
  # d = logp - ref = [-3, 30, -30, 0.5]. k3 = exp(-d) - 1 + d:
  #   d = -3: e^3 - 4 = 16.0855 -> clamp 10 (zero gradient);
  #   d = 30: log-ratio clamp to 20: e^-20 + 19 = 19.0 -> 10; d = -30: -> -20: e^20 - 21 -> 10;
  #   d = 0.5: e^-0.5 - 0.5 = 0.10653066, gradient 1 - e^-0.5 = 0.39346934.
  batch = mk([0.0], mask=[[1, 1, 1, 1]], ref_logp=[[0.0, -40.0, 20.0, -1.5]])
  logp = jnp.array([[-3.0, -10.0, -10.0, -1.0]])
  t = rl.kl_loss(coef=1.0, estimator="k3", clamp=10.0, log_ratio_clamp=20.0)
  terms, _ = run(t, batch, logp=logp)
  np.testing.assert_allclose(terms.token_loss, [[10.0, 10.0, 10.0, 0.10653066]], atol=1e-6)
  grad = jax.grad(lambda lp: jnp.sum(run(t, batch, logp=lp)[0].token_loss))(logp)
  np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0, 0.39346934]], atol=1e-6)
  # Without the log-ratio clamp, float32 exp(100) overflows: the value clamp alone would then
  # multiply an infinite derivative by 0 (NaN); with it the gradient stays finite.
  far = mk([0.0], mask=[[1]], ref_logp=[[0.0]])
  lp = jnp.array([[-100.0]])
  for log_clamp, finite in ((20.0, True), (-1.0, False)):
    t = rl.kl_loss(coef=1.0, estimator="k3", clamp=10.0, log_ratio_clamp=log_clamp)
    g = jax.grad(lambda x, t=t: jnp.sum(run(t, far, logp=x)[0].token_loss))(lp)
    assert bool(np.all(np.isfinite(g))) == finite


def test_kl_reward_clamps():
  # kl_reward reads behaviour_logp: d = [-3, 0.5] -> k3 clamped at 10 = [10, 0.10653066].
  batch = mk([1.0], mask=[[1, 1]], behaviour=[[-3.0, -1.0]], ref_logp=[[0.0, -1.5]])
  t = rl.chain(rl.kl_reward(0.1, "k3", clamp=10.0, log_ratio_clamp=20.0), rl.raw_reward())
  np.testing.assert_allclose(advantages_of(t, batch), [1 - 0.1 * 10.10653066], atol=1e-6)


def test_kl_loss_ratio_weight_as_trl():
  # TRL's use_bias_correction_kl: l_t = coef r_t k3_t with r_t = exp(logp - behaviour).
  # logp = [-1, -2], behaviour = [-1, -2.5] -> r = [1, e^0.5 = 1.64872127];
  # d = logp - ref = [0.5, -1]: k3 = [0.10653066, 0.71828183].
  # l = [0.10653066, 1.64872127 * 0.71828183 = 1.18424653];
  # d l / d logp = r (k3 + 1 - e^-d) = [0.10653066 + 0.39346934 = 0.5,
  #                                     1.64872127 (0.71828183 - 1.71828183) = -1.64872127].
  batch = mk([0.0], mask=[[1, 1]], behaviour=[[-1.0, -2.5]], ref_logp=[[-1.5, -1.0]])
  logp = jnp.array([[-1.0, -2.0]])
  t = rl.kl_loss(coef=1.0, estimator="k3", ratio_weight=True)
  terms, _ = run(t, batch, logp=logp)
  np.testing.assert_allclose(terms.token_loss, [[0.10653066, 1.18424653]], atol=1e-6)
  grad = jax.grad(lambda lp: jnp.sum(run(t, batch, logp=lp)[0].token_loss))(logp)
  np.testing.assert_allclose(grad, [[0.5, -1.64872127]], atol=1e-6)


def test_seq_mean_token_sum_norm_without_the_sequence_count():
  # verl <= 0.7.0: sum 7 over max_len 10 only (not 2 sequences x 10): 0.7.
  t = rl.seq_mean_token_sum_norm(max_len=10, divide_by_seqs=False)
  assert _aggregate(t, AGG_MASK, AGG_LOSS) == pytest.approx(0.7, abs=ATOL)
  assert _aggregate(t, AGG_MASK, AGG_LOSS, seq_count=jnp.float32(4)) == pytest.approx(0.7)
