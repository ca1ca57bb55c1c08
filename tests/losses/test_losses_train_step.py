"""The docs/losses.md train step, end to end on a tiny bandit: the losses plug into a plain
jax + optax step, and the recipes learn the optimal arm."""

import jax
import jax.numpy as jnp
import optax
import pytest

import rft_jax.losses as rl

VOCAB, GOOD = 5, 2  # one-token "responses"; the arm GOOD is correct (reward 1)


def policy_logits(params):
  return params["logits"]


@pytest.mark.parametrize("make", [rl.minimal, rl.grpo, rl.dapo])
def test_train_step_learns_the_optimal_arm(make):
  transform = make(kl_coef=0.0) if make is rl.grpo else make()
  optimizer = optax.adam(0.1)
  group = 8

  def loss_fn(params, batch, loss_state):
    logp = jax.nn.log_softmax(policy_logits(params))
    token_logp = logp[batch.tokens]  # [B, 1]
    return rl.compute_loss(transform, token_logp, batch, loss_state)

  @jax.jit
  def round_(params, opt_state, loss_state, key):
    logp = jax.nn.log_softmax(policy_logits(params))
    tokens = jax.random.categorical(key, logp, shape=(group, 1))
    batch = rl.Batch(tokens=tokens, mask=jnp.ones((group, 1)), behaviour_logp=logp[tokens],
                     rewards=(tokens[:, 0] == GOOD).astype(jnp.float32),
                     group_ids=jnp.zeros((group,), jnp.int32))
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, loss_state)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, aux["state"], aux["metrics"]

  params = {"logits": jnp.zeros((VOCAB,))}
  opt_state, loss_state = optimizer.init(params), transform.init()
  p_good = lambda p: float(jax.nn.softmax(policy_logits(p))[GOOD])
  assert p_good(params) == pytest.approx(0.2)
  for key in jax.random.split(jax.random.PRNGKey(0), 40):
    params, opt_state, loss_state, metrics = round_(params, opt_state, loss_state, key)
  assert jnp.isfinite(metrics["loss"])
  assert p_good(params) > 0.9
