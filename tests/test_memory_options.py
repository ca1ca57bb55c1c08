"""What makes a round fit (docs/scale.md): each option computes what the plain step computes.

remat and query-chunked attention: the same values and gradients (float rounding); micro-
batches: the same update as one batch, for a chain whose advantages look at the whole group;
bfloat16 compute over float32 params: log-probs within a stated bound of float32's.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rft_jax import logprobs, losses, train
from rft_jax.models import Decoder, ModelConfig, init_params

CONFIG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                     d_ff=48, variant="qwen2", qkv_bias=True)
B, P, N = 8, 6, 10


def rollouts(seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  prompt = jax.random.randint(k[0], (B, P), 1, 64)
  prompt_mask = jnp.arange(P)[None] >= jnp.array([0, 2, 1, 0, 3, 0, 1, 2])[:, None]
  tokens = jax.random.randint(k[1], (B, N), 1, 64)
  lengths = jax.random.randint(k[2], (B,), 3, N + 1)
  mask = (jnp.arange(N)[None] < lengths[:, None]).astype(jnp.float32)
  return prompt, prompt_mask, tokens, mask


def logp_and_grads(config, params, chunk=0):
  prompt, prompt_mask, tokens, mask = rollouts()

  def f(p):
    logp, ent = logprobs.completion_logprobs(Decoder(config), p, prompt, prompt_mask, tokens,
                                             mask, 1.0, with_entropy=True, chunk=chunk)
    return jnp.sum((logp + 0.1 * ent) * mask), logp

  (_, logp), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  return logp, grads


def assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.parametrize("change", [dict(remat=True), dict(attn_chunk=4),
                                    dict(remat=True, attn_chunk=3)])
def test_remat_and_chunked_attention_give_the_same_values_and_gradients(change):
  params = init_params(CONFIG, jax.random.PRNGKey(1))
  want_logp, want_grads = logp_and_grads(CONFIG, params)
  got_logp, got_grads = logp_and_grads(dataclasses.replace(CONFIG, **change), params)
  np.testing.assert_allclose(got_logp, want_logp, atol=1e-5)
  assert_trees_close(got_grads, want_grads, atol=1e-5)
  if change == dict(remat=True):  # the same operations, recomputed: bit for bit
    for x, y in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
      np.testing.assert_array_equal(x, y)


def test_bfloat16_compute_is_within_its_bound_of_float32():
  """bf16 keeps 8 bits of mantissa (relative error 2^-9 per rounding); through two layers and
  a 64-way softmax the log-probs of this model move by at most 0.1 nats, 0.02 on average."""
  params = init_params(CONFIG, jax.random.PRNGKey(1))
  want, _ = logp_and_grads(CONFIG, params)
  got, grads = logp_and_grads(dataclasses.replace(CONFIG, dtype="bfloat16"), params)
  mask = rollouts()[3] > 0
  err = np.abs(np.asarray(got) - np.asarray(want))[np.asarray(mask)]
  assert err.max() < 0.1 and err.mean() < 0.02, (err.max(), err.mean())
  assert err.max() > 0  # bf16 did run
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(grads))  # float32 masters


def step_inputs(chain="group_mean,group_std,clipped_ratio,token_mean"):
  prompt, prompt_mask, tokens, mask = rollouts()
  behaviour = -jax.random.uniform(jax.random.PRNGKey(5), (B, N), minval=0.5, maxval=4.0)
  batch = train.RolloutBatch(
      prompt_tokens=prompt, prompt_mask=prompt_mask,
      loss=losses.Batch(tokens=tokens, mask=mask, behaviour_logp=behaviour,
                        rewards=jnp.array([1.0, 0, 0, 1, 1, 0, 1, 0]),
                        group_ids=jnp.array([0, 0, 0, 0, 1, 1, 1, 1]),
                        sampler_logp=behaviour))
  transform = losses.from_config({"chain": chain})
  return batch, transform


def one_step(batch, transform, micro_batch_size, mini_batches=1, params=None, lr=1e-2,
             epochs=1):
  optimizer = train.make_optimizer(train.ml_collections.ConfigDict(dict(
      learning_rate=lr, warmup_steps=0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      clip_norm=1.0)))
  params = init_params(CONFIG, jax.random.PRNGKey(1)) if params is None else params
  state = train.TrainState(round=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params), loss_state=transform.init())
  return train.train_step(state, batch, jnp.float32(1.0), decoder=Decoder(CONFIG),
                          transform=transform, optimizer=optimizer, mini_batches=mini_batches,
                          epochs=epochs,
                          micro_batch_size=micro_batch_size, logprob_chunk=0)


@pytest.mark.parametrize("mini_batches", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_micro_batches_give_the_update_of_one_batch(mini_batches):
  """Group baselines and the token normalizer span the mini-batch; micro-batches of 2 rows
  split every group and still reproduce its loss, gradient and update. (Adam divides by
  sqrt(v): a gradient entry near zero turns float rounding into up to ~1e-5 of the update at
  learning rate 1e-2; a wrong normalizer or baseline moves entries by ~1e-2.)"""
  batch, transform = step_inputs()
  want, want_m = one_step(batch, transform, 0, mini_batches)
  got, got_m = one_step(batch, transform, 2, mini_batches)
  np.testing.assert_allclose(got_m["loss"], want_m["loss"], atol=1e-6)
  np.testing.assert_allclose(got_m["grad_norm" if mini_batches == 1 else "grad_norm_last"],
                             want_m["grad_norm" if mini_batches == 1 else "grad_norm_last"],
                             rtol=1e-5)
  assert_trees_close(got.params, want.params, atol=2e-5)
  assert float(want_m["grad_norm" if mini_batches == 1 else "grad_norm_last"]) > 0


@pytest.mark.parametrize("micro_batch_size", [0, 2])
def test_the_metrics_of_several_updates_are_those_of_one_batch(micro_batch_size):
  """At learning rate 0 every update sees the same params, so the round's metrics over two
  mini-batches (rows 0-3 and 4-7: 21 and 29 tokens here) and two epochs must be the whole
  batch's token means. A plain mean of the updates' means weighs the short half's tokens more
  (entropy off by 6e-3 here; equal within float rounding when the weights are right)."""
  batch, transform = step_inputs("group_mean,clipped_ratio,token_mean")
  lengths = np.asarray(batch.loss.mask.sum(axis=1))
  assert lengths[:4].sum() != lengths[4:].sum()
  _, want = one_step(batch, transform, 0, lr=0.0)
  _, got = one_step(batch, transform, micro_batch_size, mini_batches=2, lr=0.0, epochs=2)
  halves = [one_step(jax.tree.map(lambda x: x[rows] if jnp.ndim(x) else x, batch), transform,
                     0, lr=0.0)[1] for rows in (slice(0, 4), slice(4, 8))]
  assert abs(float(halves[0]["entropy"]) - float(halves[1]["entropy"])) > 1e-2
  for key in ("entropy", "ratio_mean"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
  assert got["grad_norm"] == pytest.approx(
      (float(halves[0]["grad_norm"]) + float(halves[1]["grad_norm"])) / 2, rel=1e-5)
  assert got["grad_norm_last"] == pytest.approx(float(halves[1]["grad_norm"]), rel=1e-5)


def test_micro_batch_size_must_divide_the_rollouts_of_an_update():
  batch, transform = step_inputs()
  with pytest.raises(ValueError, match="micro-batches of train.micro_batch_size=3"):
    one_step(batch, transform, 3)
  # Checked before any work: 0, a divisor, or at least the update's rows (the whole batch: one
  # setting for layers of G = 1 and G = 8 alike).
  from configs import common

  config = common.base_config()
  config.rollout.num_samples = 8
  for ok in (0, 2, 8, 16):
    config.train.micro_batch_size = ok
    train.validate_config(config)
  config.train.micro_batch_size = 3
  with pytest.raises(train.errors.ConfigError, match="micro_batch_size=3: must be 0, at least, "
                     "or divide the 8 rollouts of an update"):
    train.validate_config(config)


def test_completion_width_is_the_longest_rollout_rounded_up_to_the_bucket():
  lengths = np.array([3, 17, 9])
  assert train.completion_width(lengths, 256, 0) == 256       # off: every position
  assert train.completion_width(lengths, 256, 16) == 32       # 17 -> 32
  assert train.completion_width(lengths, 256, 32) == 32
  assert train.completion_width(lengths, 20, 32) == 20        # never past max_new_tokens
  assert train.completion_width(np.array([0, 0]), 256, 8) == 8  # at least one bucket


def short_rollouts(longest=6):
  """step_inputs' batch with every completion ended by position `longest` (pads after)."""
  batch, transform = step_inputs()
  lengths = jnp.array([2, 6, 3, 5, 1, 4, 6, 2]) * longest // 6
  mask = (jnp.arange(N)[None] < lengths[:, None]).astype(jnp.float32)
  return batch.replace(loss=batch.loss.replace(mask=mask)), transform, np.asarray(lengths)


def trimmed(batch, width):
  rollout = train.sampling.Rollout(
      prompt_tokens=batch.prompt_tokens, prompt_mask=batch.prompt_mask, tokens=batch.loss.tokens,
      mask=batch.loss.mask, logp=batch.loss.behaviour_logp,
      sampler_logp=batch.loss.sampler_logp)
  cut = train._trim_completions(rollout, width)
  assert cut.tokens.shape == cut.mask.shape == cut.logp.shape == (B, width)
  return batch.replace(loss=batch.loss.replace(tokens=cut.tokens, mask=cut.mask,
                                               behaviour_logp=cut.logp,
                                               sampler_logp=cut.sampler_logp))


def test_completions_cut_to_their_longest_give_the_same_update():
  """Positions after every row's end are masked out of group baselines and sequence means
  (token means: tests/test_train.py's run with train.completion_bucket), so the step on the
  first completion_width positions is the step on all N (the trimmed step drops 2 of 10
  positions here; a mask or normalizer that counted them would move the loss by ~20%)."""
  batch, transform, lengths = short_rollouts()
  transform = losses.from_config({"chain": "group_mean,group_std,clipped_ratio,"
                                           "seq_mean_token_mean"})
  width = train.completion_width(lengths, N, 4)
  assert width == 8
  want, want_m = one_step(batch, transform, 0)
  got, got_m = one_step(trimmed(batch, width), transform, 0)
  np.testing.assert_allclose(got_m["loss"], want_m["loss"], rtol=1e-5)
  np.testing.assert_allclose(got_m["grad_norm"], want_m["grad_norm"], rtol=1e-5)
  assert_trees_close(got.params, want.params, atol=2e-5)
  assert float(want_m["grad_norm"]) > 0


def test_completion_bucket_refuses_a_loss_normalized_by_the_padded_width():
  from configs import common

  config = common.base_config()
  config.loss.chain = "raw_reward,clipped_ratio,seq_mean_token_sum_norm"
  config.loss.seq_mean_token_sum_norm.max_len = -1
  config.train.completion_bucket = 32
  with pytest.raises(train.errors.ConfigError, match="train.completion_bucket=32: must be 0"):
    train.validate_config(config)
  config.loss.seq_mean_token_sum_norm.max_len = config.rollout.max_new_tokens
  train.validate_config(config)  # a fixed normalizer does not depend on the width
  del config.loss["seq_mean_token_sum_norm"]  # absent: the factory's max_len, -1
  with pytest.raises(train.errors.ConfigError, match="train.completion_bucket=32: must be 0"):
    train.validate_config(config)
