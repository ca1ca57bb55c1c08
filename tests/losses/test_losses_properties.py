"""Every transform and recipe: jits, finite outputs, right shapes, gradient only through the
policy log-probs (and the entropy); and clear errors for misuse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from losses_testlib import build, context_chain, random_batch, recipe

import rft_jax.losses as rl

CASES = [("transform", n) for n in rl.REGISTRY] + [("recipe", n) for n in rl.RECIPES]


def make(kind, name):
  return build(context_chain(name)) if kind == "transform" else recipe(name)


def test_cases_cover_registry_and_recipes():
  assert {n for k, n in CASES if k == "transform"} == set(rl.REGISTRY)
  assert {n for k, n in CASES if k == "recipe"} == {
      "minimal", "reinforce", "rloo", "grpo", "dr_grpo", "dapo", "gspo", "verl_grpo",
      "verl_dr_grpo", "verl_gspo", "trl_grpo"}


@pytest.mark.parametrize("kind,name", CASES)
def test_jit_finite_shapes_and_gradient_only_through_policy(kind, name):
  transform = make(kind, name)
  batch, logp, entropy = random_batch(seed=1)
  b, t = batch.mask.shape
  state = transform.init()

  def f(logp, entropy, behaviour, ref, sampler, rewards):
    bt = batch.replace(behaviour_logp=behaviour, ref_logp=ref, sampler_logp=sampler,
                       rewards=rewards)
    return rl.compute_loss(transform, logp, bt, state, entropy=entropy)

  # One compile: the loss, its aux, and the gradient with respect to every float input.
  args = (logp, entropy, batch.behaviour_logp, batch.ref_logp, batch.sampler_logp, batch.rewards)
  (loss, aux), grads = jax.jit(jax.value_and_grad(f, argnums=tuple(range(6)), has_aux=True))(*args)
  assert loss.shape == () and np.isfinite(loss)
  terms = aux["terms"]
  assert terms.token_loss.shape == (b, t) and np.all(np.isfinite(terms.token_loss))
  assert terms.advantages.shape == (b,) and np.all(np.isfinite(terms.advantages))
  assert np.all(np.asarray(terms.token_loss)[np.asarray(batch.mask) == 0] == 0)
  for k, v in aux["metrics"].items():
    assert jnp.shape(v) == () and np.isfinite(v), (k, v)
  assert float(aux["metrics"]["loss"]) == float(loss)
  assert jax.tree.structure(aux["state"]) == jax.tree.structure(state)

  g_logp, g_ent, *g_batch = grads
  for g in g_batch:  # behaviour, ref, sampler log-probs and rewards: constants of the loss
    np.testing.assert_array_equal(g, 0.0)
  assert np.all(np.isfinite(g_logp))
  assert np.abs(g_logp).sum() > 0, "the loss must depend on the policy log-probs"
  np.testing.assert_array_equal(np.asarray(g_logp)[np.asarray(batch.mask) == 0], 0.0)
  uses_entropy = kind == "transform" and name == "entropy_bonus"
  assert (np.abs(g_ent).sum() > 0) == uses_entropy


def test_batch_fields_would_carry_gradient_without_compute_loss_stop_gradient():
  # Control for the test above: the ratio does depend on behaviour_logp, so a zero gradient
  # there is compute_loss's stop_gradient at work, not an accident of the formula.
  transform = build(context_chain("clipped_ratio"))
  batch, logp, _ = random_batch(seed=1)

  def raw(behaviour):
    bt = batch.replace(behaviour_logp=behaviour)
    return transform.update(rl.initial_terms(logp, bt), transform.init(), bt)[0].loss

  assert np.abs(jax.jit(jax.grad(raw))(batch.behaviour_logp)).sum() > 0


# ---- errors a person can act on ---------------------------------------------------------------

def _loss(names, batch=None, entropy=None, settings=None):
  batch, logp, _ = random_batch() if batch is None else (batch, *random_batch()[1:])
  t = build(names, settings)
  return rl.compute_loss(t, logp, batch, t.init(), entropy=entropy)


@pytest.mark.parametrize("names,match", [
    (["clipped_ratio", "token_mean"], "clipped_ratio needs advantages"),
    (["policy_gradient", "token_mean"], "policy_gradient needs advantages"),
    (["group_std", "policy_gradient", "token_mean"], "group_std needs advantages"),
    (["raw_reward", "affine_reward", "policy_gradient", "token_mean"], "before the advantage"),
    (["raw_reward", "kl_reward", "policy_gradient", "token_mean"], "put it before the advantage"),
    (["raw_reward", "policy_gradient"], "must end in exactly one aggregation"),  # when built
    (["raw_reward", "policy_gradient", "entropy_bonus", "token_mean"], "needs per-token entropy"),
])
def test_chain_errors(names, match):
  with pytest.raises(ValueError, match=match):
    _loss(names)


def test_missing_batch_fields():
  batch, _, _ = random_batch()
  with pytest.raises(ValueError, match="kl_loss needs batch.ref_logp"):
    _loss(["raw_reward", "policy_gradient", "kl_loss", "token_mean"], batch.replace(ref_logp=None))
  with pytest.raises(ValueError, match="kl_reward needs batch.ref_logp"):
    _loss(["kl_reward", "raw_reward", "policy_gradient", "token_mean"],
          batch.replace(ref_logp=None))
  with pytest.raises(ValueError, match="history_baseline needs batch.prompt_ids"):
    _loss(["history_baseline", "policy_gradient", "token_mean"], batch.replace(prompt_ids=None))
  # coef = 0 switches the KL terms off, and then no reference is needed.
  loss, _ = _loss(["kl_reward", "raw_reward", "policy_gradient", "kl_loss", "token_mean"],
                  batch.replace(ref_logp=None), settings={"kl_loss": {"coef": 0.0},
                                                          "kl_reward": {"coef": 0.0}})
  assert np.isfinite(loss)


@pytest.mark.parametrize("field,value,match", [
    ("rewards", jnp.zeros((8, 1)), r"batch.rewards must be \[B\]"),
    ("group_ids", jnp.zeros((7,), jnp.int32), r"batch.group_ids must be \[B\]"),
    ("ref_logp", jnp.zeros((8, 5)), r"batch.ref_logp must be \[B, T\]"),
    ("behaviour_logp", jnp.zeros((8,)), r"batch.behaviour_logp must be \[B, T\]"),
    ("advantages", jnp.zeros((8, 2)), r"batch.advantages must be \[B\] or \[B, T\]"),
    ("token_count", jnp.zeros((2,)), "batch.token_count must be a scalar"),
])
def test_shape_errors_name_the_field(field, value, match):
  batch, _, _ = random_batch()
  with pytest.raises(ValueError, match=match):
    _loss(["raw_reward", "policy_gradient", "token_mean"], batch.replace(**{field: value}))


def test_logp_shape_error():
  batch, logp, _ = random_batch()
  with pytest.raises(ValueError, match="logp must be"):
    rl.compute_loss(rl.minimal(), logp[:, :-1], batch, rl.minimal().init())


@pytest.mark.parametrize("factory,kwargs,match", [
    (rl.clipped_ratio, {"eps_low": -0.1}, "eps_low"),
    (rl.dual_clip, {"c": 1.0}, "c=1.0 must be > 1"),
    (rl.truncated_is, {"cap": 0.0}, "cap"),
    (rl.kl_loss, {"estimator": "k4"}, "unknown estimator"),
    (rl.kl_reward, {"estimator": "k0"}, "unknown estimator"),
    (rl.kl_loss, {"clamp": 0.0}, "clamp=0 would zero"),
    (rl.kl_reward, {"log_ratio_clamp": 0.0}, "log_ratio_clamp=0 would zero"),
    (rl.clipped_ratio, {"log_ratio_clamp": 0.0}, "fix the ratio at 1"),
    (rl.dual_clip, {"log_ratio_clamp": 0.0}, "fix the ratio at 1"),
    (rl.sequence_ratio, {"max_log_ratio": 0.0}, "max_log_ratio=0"),
    (rl.group_mean, {"singleton": "self"}, "choose one of"),
    (rl.group_std, {"eps": 0.0, "singleton_std": 0.0}, "singleton_std \\+ eps must be > 0"),
    (rl.group_std, {"eps": -1.0}, "must be >= 0"),
    (rl.history_baseline, {"window": 0}, "must be >= 1"),
    (rl.baseline_only, {"num_grad": 0}, "must be >= 1"),
    (rl.clip_reward, {"low": 1.0, "high": 0.0}, "must be <= high"),
])
def test_factory_argument_errors(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(**kwargs)
