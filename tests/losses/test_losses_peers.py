"""The peer recipes (verl_grpo, verl_dr_grpo, verl_gspo, trl_grpo) against NumPy transcriptions of
verl 0.9.1 (and 0.7.0's seq-mean-token-sum-norm) and TRL 1.16.0 (tests/losses/peer_refs.py, read
from the released wheels, never imported here).

The batches hold groups of one, all-equal groups, mixed groups, variable lengths plus padded
columns of hostile garbage, and planted log-ratios so that every branch binds: the clip from
above (A > 0) and from below (A < 0), verl's dual clip (A < 0, r > 3), verl's log-ratio clamp at
+-20, low_var_kl's clamps (log-ratio at 20, k3 at 10), GSPO's sequence clip both ways and its
clamp at log s = 10. Loss values agree to 1e-12 (float64); gradients with respect to the policy
log-probs to 1e-6 against central differences of the reference (and, for GSPO, against the
gradient of verl's stop-gradient form written out).
"""

import jax
import jax.numpy as jnp
import numpy as np
import peer_refs as ref
import pytest
from losses_testlib import finite_differences, pad_time

import rft_jax.losses as rl

# Groups (in batch order, interleaved): 0 = rows 0, 4, 7 mixed {1, 0, 0.3}; 1 = rows 1, 5 all
# equal {1, 1}; 2 = rows 2, 8, 9 all equal {0, 0, 0}; 3 = row 3 alone (R = 1); 4 = row 6 alone
# (R = 0.5); 5 = rows 10, 11 mixed {0, 1}.
VERL_GROUPS = [0, 1, 2, 3, 0, 1, 4, 0, 2, 2, 5, 5]
VERL_REWARDS = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5, 0.3, 0.0, 0.0, 0.0, 1.0]


def _batch(rewards, groups, seed, t=7, plant=None, ratio_scale=0.4, ref_scale=0.7):
  """A float64 batch with random lengths (row 0 full), log-ratios log r ~ N(0, ratio_scale) and
  log pi - log ref ~ N(0, ref_scale), then `plant(log_ratio, ref_gap, lengths)` edits."""
  rng = np.random.default_rng(seed)
  b = len(rewards)
  lengths = rng.integers(1, t + 1, size=b)
  lengths[0] = t
  log_ratio = ratio_scale * rng.normal(size=(b, t))
  ref_gap = ref_scale * rng.normal(size=(b, t))
  if plant is not None:
    plant(log_ratio, ref_gap, lengths)
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float64)
  old = np.log(rng.uniform(0.05, 0.95, size=(b, t)))
  logp = old + log_ratio
  with jax.enable_x64(True):
    batch = rl.Batch(tokens=jnp.zeros((b, t), jnp.int32), mask=jnp.asarray(mask),
                     behaviour_logp=jnp.asarray(old), rewards=jnp.asarray(rewards, jnp.float64),
                     group_ids=jnp.asarray(groups, jnp.int32),
                     ref_logp=jnp.asarray(logp - ref_gap))
    return batch, jnp.asarray(logp)


def _plant_token_extremes(log_ratio, ref_gap, lengths):
  # Rows 0 (A > 0) and 4 (A < 0) are full-length rows of group 0 with both outcomes.
  lengths[4] = log_ratio.shape[1]
  log_ratio[0, :4] = [0.5, -0.5, 0.05, -21.0]   # clip above binds; below; inside; clamp at -20
  log_ratio[4, :4] = [1.5, -0.5, 0.05, 22.0]    # dual clip (r > 3); clip below binds; inside;
  #                                               clamp at +20 (and dual clip)
  ref_gap[0, :3] = [-3.0, 25.0, -25.0]          # k3 = e^3 - 4 > 10; |d| > 20 both ways
  ref_gap[4, :2] = [13.0, 0.01]                 # k3 = 12 > 10 with |d| < 20; tiny


def _plant_sequence_extremes(log_ratio, ref_gap, lengths):
  # GSPO's clip range is 3e-4 / 4e-4: sequence log-ratios of +-2e-3 clip, +-1e-4 do not.
  # Row 0 (A > 0) clips above, row 4 (A < 0) below, rows 7 (A < 0) and 11 (A > 0) are inside;
  # row 10 (A < 0) clamps at log s = 10 (its loss is -A e^10, with zero gradient), and so does
  # row 1 (an all-equal group, A = 0). Every token of a row the same: the mean is the value.
  log_ratio[:] *= 1e-3
  for row, value in ((0, 2e-3), (4, -2e-3), (7, 1e-4), (11, -1e-4), (10, 12.0), (1, 11.0)):
    log_ratio[row] = value
  lengths[[0, 1]] = log_ratio.shape[1]
  lengths[10] = 3


def _as_numpy(batch, logp):
  d = {"logp": logp, "old": batch.behaviour_logp, "ref": batch.ref_logp, "mask": batch.mask,
       "R": batch.rewards}
  d = {k: np.asarray(v, np.float64) for k, v in d.items()}
  d["gid"] = np.asarray(batch.group_ids)
  return d


def _ours(transform, batch, logp):
  with jax.enable_x64(True):
    def loss_fn(lp):
      return rl.compute_loss(transform, lp, batch, transform.init())[0]
    loss, grad = jax.jit(jax.value_and_grad(loss_fn))(logp)
    metrics = rl.compute_loss(transform, logp, batch, transform.init())[1]["metrics"]
  return float(loss), np.asarray(grad), {k: float(v) for k, v in metrics.items()}


def _check(transform, batch, logp, reference, padded=True):
  """Loss and gradient of the chain against the reference, on the batch and (padded) on the
  batch with 3 extra columns of hostile garbage."""
  loss, grad, metrics = _ours(transform, batch, logp)
  d = _as_numpy(batch, logp)
  expected = reference(d)
  assert abs(expected) > 1e-6, "a vanishing reference loss would make the comparison weak"
  assert loss == pytest.approx(expected, rel=1e-12, abs=1e-13)
  fd = finite_differences(reference, d)
  assert np.abs(fd).max() > 1e-3
  np.testing.assert_allclose(grad, fd, atol=1e-6)
  if padded:
    with jax.enable_x64(True):
      pbatch, plogp, _ = pad_time(batch, logp, jnp.zeros_like(logp), extra=3)
    ploss, pgrad, _ = _ours(transform, pbatch, plogp)
    # verl's horizon (the padded width) enters seq-mean-token-sum-norm: same T on both sides.
    assert ploss == pytest.approx(reference(_as_numpy(pbatch, plogp)), rel=1e-12, abs=1e-13)
    t = logp.shape[1]
    np.testing.assert_array_equal(pgrad[:, t:], 0.0)
    if not np.isclose(reference(d), ploss):  # only seq-mean-token-sum-norm's horizon moves it
      return metrics, grad
    np.testing.assert_allclose(pgrad[:, :t], grad, rtol=1e-12, atol=1e-15)
  return metrics, grad


# ---- verl ------------------------------------------------------------------------------------

def test_verl_singletons_get_the_raw_reward_and_equal_groups_zero():
  batch, logp = _batch(VERL_REWARDS, VERL_GROUPS, seed=0)
  with jax.enable_x64(True):
    t = rl.verl_grpo()
    terms = rl.compute_loss(t, logp, batch, t.init())[1]["terms"]
  expected = ref.verl_grpo_advantages(VERL_REWARDS, VERL_GROUPS)
  np.testing.assert_allclose(terms.advantages, expected, rtol=1e-14, atol=1e-15)
  # Groups of one: R / (1 + 1e-6), not 0 as rft_jax's grpo gives; all-equal groups: 0.
  np.testing.assert_allclose(np.asarray(terms.advantages)[[3, 6]], np.array([1.0, 0.5]) / (1 + 1e-6))
  np.testing.assert_array_equal(np.asarray(terms.advantages)[[1, 5, 2, 8, 9]], 0.0)
  with jax.enable_x64(True):
    ours = rl.compute_loss(rl.grpo(), logp, batch, rl.grpo().init())[1]["terms"].advantages
  np.testing.assert_array_equal(np.asarray(ours)[[3, 6]], 0.0)


@pytest.mark.parametrize("kl", [None, ("low_var_kl", 0.001), ("low_var_kl", 0.1), ("abs", 0.1),
                                ("kl", 0.1), ("mse", 0.1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_verl_grpo(kl, seed):
  batch, logp = _batch(VERL_REWARDS, VERL_GROUPS, seed, plant=_plant_token_extremes)
  if kl is None:
    transform = rl.verl_grpo()
    settings = {}
  else:
    transform = rl.verl_grpo(kl_coef=kl[1], kl_estimator=kl[0])
    settings = {"use_kl_loss": True, "kl_loss_coef": kl[1], "kl_loss_type": kl[0]}

  def reference(d):
    return ref.verl_ppo_loss(d, loss_agg_mode="token-mean", **settings)

  metrics, _ = _check(transform, batch, logp, reference)
  assert 0.05 < metrics["clip_frac"] < 0.95 and metrics["dual_clip_frac"] > 0
  # The planted extremes are where verl's clamps and dual clip decide; without them the loss moves.
  d = _as_numpy(batch, logp)
  unclamped = rl.build_chain([("group_mean", {"singleton": "zero"}),
                              ("group_std", {"singleton_std": 1.0}),
                              ("clipped_ratio", {}), ("kl_loss", {"coef": 0.0}),
                              ("token_mean", {})])
  assert abs(_ours(unclamped, batch, logp)[0] - reference(d)) > 1e-3


def test_verl_grpo_clip_higher_and_paper_setting():
  # The paper's companion setting: KL 0.001 low_var_kl, token-mean, eps 0.2; plus clip-higher.
  batch, logp = _batch(VERL_REWARDS, VERL_GROUPS, seed=2, plant=_plant_token_extremes)
  transform = rl.verl_grpo(eps=0.2, eps_high=0.28, kl_coef=0.001)
  _check(transform, batch, logp, lambda d: ref.verl_ppo_loss(
      d, clip_high=0.28, use_kl_loss=True, kl_loss_coef=0.001))


@pytest.mark.parametrize("version", ["0.9.1", "0.7.0"])
@pytest.mark.parametrize("max_len", [-1, 16])
def test_verl_dr_grpo(version, max_len):
  batch, logp = _batch(VERL_REWARDS, VERL_GROUPS, seed=3, plant=_plant_token_extremes)
  transform = rl.verl_dr_grpo(max_len=max_len, divide_by_seqs=version != "0.7.0", kl_coef=0.1)

  def reference(d):
    return ref.verl_ppo_loss(d, norm_adv_by_std_in_grpo=False,
                             loss_agg_mode="seq-mean-token-sum-norm", use_kl_loss=True,
                             kl_loss_coef=0.1, version=version,
                             loss_scale_factor=None if max_len <= 0 else max_len)

  _check(transform, batch, logp, reference)


@pytest.mark.parametrize("aggregation,mode", [("seq_mean_token_mean", "seq-mean-token-mean"),
                                              ("token_mean", "token-mean")])
@pytest.mark.parametrize("seed", [0, 1])
def test_verl_gspo(aggregation, mode, seed):
  batch, logp = _batch(VERL_REWARDS, VERL_GROUPS, seed, plant=_plant_sequence_extremes)
  transform = rl.verl_gspo(aggregation=aggregation)

  def reference(d, count_eps=0.0):
    return ref.verl_ppo_loss(d, policy="gspo", clip_low=3e-4, clip_high=4e-4,
                             loss_agg_mode=mode, count_eps=count_eps)

  metrics, grad = _check(transform, batch, logp, reference)
  assert 0.05 < metrics["clip_frac"] < 0.95
  # The gradient of verl's stop-gradient form, written out, is the same.
  d = _as_numpy(batch, logp)
  np.testing.assert_allclose(grad, ref.verl_gspo_grad(d, loss_agg_mode=mode), atol=1e-12)
  # verl's seq-mean-token-mean adds 1e-8 to each token count: a relative 1e-8 / |o_i| at most.
  assert reference(d, 1e-8) == pytest.approx(reference(d), rel=1e-8)
  # The clamp at log s = 10 binds (row 10): without it the loss differs.
  unclamped = rl.build_chain([("group_mean", {"singleton": "zero"}),
                              ("group_std", {"singleton_std": 1.0}),
                              ("sequence_ratio", {}), (aggregation, {})])
  assert abs(_ours(unclamped, batch, logp)[0] - reference(d)) > 1e-3


def test_verl_gspo_with_kl():
  batch, logp = _batch(VERL_REWARDS, VERL_GROUPS, seed=4, plant=_plant_sequence_extremes)
  transform = rl.verl_gspo(kl_coef=0.05)
  _check(transform, batch, logp, lambda d: ref.verl_ppo_loss(
      d, policy="gspo", clip_low=3e-4, clip_high=4e-4, loss_agg_mode="seq-mean-token-mean",
      count_eps=0.0, use_kl_loss=True, kl_loss_coef=0.05))


# ---- TRL -------------------------------------------------------------------------------------

# Consecutive groups of 4 (TRL's layout): mixed, all equal, mixed with a continuous reward.
TRL_REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.3, 1.0, 0.0]


def _plant_trl(log_ratio, ref_gap, lengths):
  lengths[3] = log_ratio.shape[1]
  log_ratio[0, :2] = [0.5, -0.5]   # row 0: A > 0, clip above binds, below does not
  log_ratio[1, :2] = [-0.5, 1.5]   # row 1: A < 0, clip below binds; r = 4.5 unbounded (no dual)
  log_ratio[3, 3] = 3.0


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("seed", [0, 1])
def test_trl_grpo(beta, seed):
  groups = np.arange(12) // 4
  batch, logp = _batch(TRL_REWARDS, groups, seed, plant=_plant_trl)
  transform = rl.trl_grpo(beta=beta)
  metrics, _ = _check(transform, batch, logp,
                      lambda d: ref.trl_grpo_loss(d, num_generations=4, beta=beta))
  assert 0.05 < metrics["clip_frac"] < 0.95


def test_trl_grpo_clip_higher():
  groups = np.arange(12) // 4
  batch, logp = _batch(TRL_REWARDS, groups, seed=2, plant=_plant_trl)
  _check(rl.trl_grpo(eps=0.2, eps_high=0.28, beta=0.04), batch, logp,
         lambda d: ref.trl_grpo_loss(d, num_generations=4, epsilon_high=0.28, beta=0.04))


def test_trl_grpo_groups_of_one():
  # TRL trains with num_generations >= 2; at 1 (its evaluation path) A = 0 and only the KL moves.
  batch, logp = _batch([1.0, 0.0, 0.5], [0, 1, 2], seed=5)
  with jax.enable_x64(True):
    t = rl.trl_grpo(beta=0.04)
    np.testing.assert_array_equal(rl.compute_loss(t, logp, batch, t.init())[1]["terms"].advantages,
                                  0.0)
  _check(rl.trl_grpo(beta=0.04), batch, logp,
         lambda d: ref.trl_grpo_loss(d, num_generations=1, beta=0.04))
