"""The fused log-prob / entropy and its custom VJP against plain autodiff of log_softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rft_jax import logprobs


def reference(logits, targets, temperature):
  """The unfused definitions, differentiated by JAX itself."""
  tau = jnp.where(temperature > 0, temperature, 1.0)
  logp_all = jax.nn.log_softmax(logits / tau, axis=-1)
  logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
  return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def random_case(seed, shape=(3, 5, 37), scale=3.0):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
  targets = jnp.asarray(rng.integers(0, shape[-1], shape[:-1]), jnp.int32)
  return logits, targets, rng


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6, 0.0])
def test_values_match_log_softmax(temperature):
  logits, targets, _ = random_case(0)
  got = logprobs.token_logprobs_and_entropy(logits, targets, temperature)
  want = reference(logits, targets, jnp.float32(temperature))
  np.testing.assert_allclose(got[0], want[0], atol=1e-5)
  np.testing.assert_allclose(got[1], want[1], atol=1e-5)
  np.testing.assert_allclose(logprobs.token_logprobs(logits, targets, temperature), want[0],
                             atol=1e-5)
  np.testing.assert_allclose(logprobs.entropy(logits, temperature), want[1], atol=1e-5)


def test_hand_computed_two_token_vocabulary():
  # z = (0, log 3): p = (1/4, 3/4); log p_1 = log 3/4; H = -(1/4 log 1/4 + 3/4 log 3/4).
  logits = jnp.asarray([[0.0, np.log(3.0)]], jnp.float32)
  logp, ent = logprobs.token_logprobs_and_entropy(logits, jnp.asarray([1]), 1.0)
  np.testing.assert_allclose(logp, [np.log(0.75)], rtol=1e-6)
  np.testing.assert_allclose(ent, [-(0.25 * np.log(0.25) + 0.75 * np.log(0.75))], rtol=1e-6)
  # d log p_1 / dz = onehot(1) - p = (-1/4, 1/4).
  grad = jax.grad(lambda z: logprobs.token_logprobs(z, jnp.asarray([1]))[0])(logits)
  np.testing.assert_allclose(grad, [[-0.25, 0.25]], atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_vjp_matches_autodiff_for_both_outputs(temperature):
  logits, targets, rng = random_case(1)
  g_logp = jnp.asarray(rng.standard_normal(targets.shape), jnp.float32)
  g_ent = jnp.asarray(rng.standard_normal(targets.shape), jnp.float32)

  def objective(fn):
    def f(z):
      logp, ent = fn(z, targets, temperature)
      return jnp.sum(g_logp * logp) + jnp.sum(g_ent * ent)
    return f

  got = jax.grad(objective(logprobs.token_logprobs_and_entropy))(logits)
  want = jax.grad(objective(lambda z, t, tau: reference(z, t, jnp.float32(tau))))(logits)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_vjp_under_jit_and_extreme_logits():
  # A row with one logit far above the rest (p ~ one-hot): finite values and gradients.
  logits, targets, _ = random_case(2, shape=(4, 11))
  logits = logits.at[0, 3].set(80.0)
  f = jax.jit(jax.value_and_grad(
      lambda z: jnp.sum(sum(logprobs.token_logprobs_and_entropy(z, targets, 1.0)))))
  value, grad = f(logits)
  want_value, want_grad = jax.value_and_grad(
      lambda z: jnp.sum(sum(reference(z, targets, jnp.float32(1.0)))))(logits)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, atol=2e-5)


def test_rank_errors_are_not_silent():
  logits, targets, _ = random_case(3)
  with pytest.raises(ValueError, match="without the vocabulary axis"):
    logprobs.token_logprobs_and_entropy(logits, targets[:, :2], 1.0)


def test_gradient_with_respect_to_temperature_matches_autodiff():
  logits, targets, _ = random_case(4)

  def objective(fn):
    return lambda tau: jnp.sum(sum(fn(logits, targets, tau)))

  got = jax.grad(objective(logprobs.token_logprobs_and_entropy))(jnp.float32(0.7))
  want = jax.grad(objective(reference))(jnp.float32(0.7))
  np.testing.assert_allclose(got, want, rtol=1e-4)
  with pytest.raises(ValueError, match="scalar"):
    logprobs.token_logprobs_and_entropy(logits, targets, jnp.ones(3))


def test_masked_minus_inf_logits_keep_values_and_gradients_finite():
  # A token masked to -inf (never sampled) has p = 0: it must not turn the row's entropy or
  # gradient into NaN. Autodiff of the unfused definition is finite there too.
  logits, targets, rng = random_case(5)
  targets = jnp.where(targets == 0, 1, targets)  # the masked token is never the target
  masked = logits.at[..., 0].set(-jnp.inf)
  g_logp = jnp.asarray(rng.standard_normal(targets.shape), jnp.float32)
  g_ent = jnp.asarray(rng.standard_normal(targets.shape), jnp.float32)

  def objective(fn):
    def f(z):
      logp, ent = fn(z, targets, 1.0)
      return jnp.sum(g_logp * logp) + jnp.sum(g_ent * ent)
    return f

  got_value = logprobs.token_logprobs_and_entropy(masked, targets, 1.0)
  got = jax.grad(objective(logprobs.token_logprobs_and_entropy))(masked)
  want = jax.grad(objective(lambda z, t, tau: reference(z, t, jnp.float32(tau))))(
      logits.at[..., 0].set(-1e30))
  assert np.all(np.isfinite(got_value[1])) and np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_negative_targets_count_from_the_end_in_both_passes():
  logits, targets, _ = random_case(6)
  vocab = logits.shape[-1]
  f = lambda t: jax.value_and_grad(lambda z: jnp.sum(logprobs.token_logprobs(z, t)))(logits)
  (value_neg, grad_neg), (value_pos, grad_pos) = f(targets - vocab), f(targets)
  np.testing.assert_allclose(value_neg, value_pos, rtol=1e-6)
  np.testing.assert_allclose(grad_neg, grad_pos, atol=1e-7)
