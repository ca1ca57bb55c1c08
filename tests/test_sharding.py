"""Sharding: the train step on 8 forced CPU devices equals the 1-device step; mesh and rules.

conftest.py forces 8 CPU devices and full-precision float32 matmuls, so sharded and unsharded
steps differ only by the order of float reductions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rft_jax import logprobs, losses, sharding, train
from rft_jax.models import decoder as decoder_lib

# vocab 134 is even (splits over tensor=2) but not a multiple of 4 (dropped for tensor=4).
CONFIG = decoder_lib.ModelConfig(vocab_size=134, d_model=16, n_layers=1, n_heads=4,
                                 n_kv_heads=2, head_dim=8, d_ff=32)
ROWS, PROMPT, COMPLETION, GROUP = 8, 6, 5, 4


def _spec(x) -> tuple:
  """An array's (or sharding's) PartitionSpec as a tuple without trailing Nones."""
  spec = list(getattr(x, "sharding", x).spec)
  while spec and spec[-1] is None:
    spec.pop()
  return tuple(spec)


def _needs_8_devices():
  if jax.device_count() < 8:
    pytest.skip(f"needs 8 devices (conftest forces 8 CPU devices), have {jax.device_count()}")


def _host_params(rng) -> dict:
  """Random numpy params of CONFIG's shapes (cheaper on a busy CPU than compiling Flax init)."""
  shapes = nn.unbox(decoder_lib.abstract_params(CONFIG))
  return jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def setup():
  """Host (numpy) params and a synthetic round of rollouts: padding, 0/1 rewards, 2 groups."""
  rng = np.random.default_rng(0)
  params = _host_params(rng)
  prompt_len = np.array([6, 4, 2, 5, 6, 3, 1, 6])  # left padding
  prompt_mask = (np.arange(PROMPT)[None] >= PROMPT - prompt_len[:, None]).astype(np.int32)
  prompt_tokens = np.where(prompt_mask, rng.integers(3, CONFIG.vocab_size, (ROWS, PROMPT)), 0)
  comp_len = np.array([5, 3, 1, 5, 2, 4, 5, 3])  # right padding after EOS
  mask = (np.arange(COMPLETION)[None] < comp_len[:, None]).astype(np.float32)
  tokens = np.where(mask > 0, rng.integers(3, CONFIG.vocab_size, (ROWS, COMPLETION)), 0)
  logp = np.asarray(jax.jit(logprobs.completion_logprobs, static_argnums=0)(
      decoder_lib.Decoder(CONFIG), params, prompt_tokens, prompt_mask, tokens, mask))
  # Off-policy behaviour log-probs (ratios away from 1, some clipped) and a reference for KL.
  behaviour = (logp + rng.normal(0, 0.3, logp.shape)).astype(np.float32) * mask
  ref = (logp + rng.normal(0, 0.1, logp.shape)).astype(np.float32) * mask
  batch = train.RolloutBatch(
      prompt_tokens=prompt_tokens.astype(np.int32), prompt_mask=prompt_mask,
      loss=losses.Batch(tokens=tokens.astype(np.int32), mask=mask, behaviour_logp=behaviour,
                        rewards=np.array([1, 0, 0, 1, 0, 1, 1, 1], np.float32),
                        group_ids=np.repeat(np.arange(ROWS // GROUP), GROUP).astype(np.int32),
                        ref_logp=ref))
  return params, batch


def _step(setup, mesh, *, epochs=1, mini_batches=1, logprob_chunk=0):
  """One train_step (grpo chain, AdamW) on `mesh`; returns (host params, host metrics, state)."""
  params, batch = setup
  transform = losses.from_config(losses.recipe_config("grpo"))
  # Adam's first step is lr * g / (|g| + eps): with the default eps = 1e-8 a gradient entry of
  # ~1e-8 would turn float reduction-order noise into an lr-sized difference. A larger eps keeps
  # the update smooth in g, so the params compare to float tolerance.
  optimizer = optax.adamw(1e-2, eps=1e-3, weight_decay=0.01)
  shardings = sharding.param_shardings(decoder_lib.abstract_params(CONFIG), mesh)
  placed = jax.device_put(params, shardings)  # fresh buffers from host: safe to donate
  state = train.TrainState(round=jnp.zeros((), jnp.int32), params=placed,
                           opt_state=jax.jit(optimizer.init)(placed),
                           loss_state=transform.init())
  state, metrics = train.train_step(state, sharding.shard_batch(batch, mesh), jnp.float32(1.0),
                                    decoder=decoder_lib.Decoder(CONFIG), transform=transform,
                                    optimizer=optimizer, epochs=epochs,
                                    mini_batches=mini_batches, logprob_chunk=logprob_chunk)
  return jax.device_get(state.params), jax.device_get(metrics), state


def _assert_same(got, want):
  g_params, g_metrics, g_state = got
  w_params, w_metrics, _ = want
  assert int(g_state.round) == 1
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               g_params, w_params)
  assert g_metrics.keys() == w_metrics.keys()
  for k in w_metrics:
    np.testing.assert_allclose(g_metrics[k], w_metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def one_device(setup):
  return _step(setup, sharding.build_mesh(devices=jax.devices()[:1]))


def test_data_parallel_step_equals_one_device(setup, one_device):
  _needs_8_devices()
  mesh = sharding.build_mesh(data=8)
  got = _step(setup, mesh)
  _assert_same(got, one_device)
  w_params, w_metrics, _ = one_device
  assert np.isfinite(w_metrics["loss"]) and w_metrics["grad_norm"] > 0
  assert 0 < w_metrics["signal_frac"] <= 1
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), w_params, setup[0])
  assert min(jax.tree.leaves(moved)) > 0  # every tensor took a step
  # The batch really was split over the 8 devices (one row each).
  batch = sharding.shard_batch(setup[1], mesh)
  assert _spec(batch.loss.tokens) == (("data", "fsdp"),)
  assert len(batch.loss.tokens.addressable_shards) == 8
  assert batch.loss.tokens.addressable_shards[0].data.shape == (1, COMPLETION)


@pytest.mark.parametrize("axes", [dict(data=8), dict(data=-1, fsdp=2, tensor=2)])
def test_step_with_chunked_logprobs_equals_one_device(setup, one_device, axes):
  # Log-probs in chunks of 2 over the 5 completion positions (rft_jax.logprobs): the head's
  # gradient accumulates over chunks, summed across data shards; tensor=2 splits its vocabulary.
  _needs_8_devices()
  _assert_same(_step(setup, sharding.build_mesh(**axes), logprob_chunk=2), one_device)


def test_fsdp_tensor_step_equals_one_device(setup, one_device):
  _needs_8_devices()
  mesh = sharding.build_mesh(data=-1, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  got = _step(setup, mesh)
  _assert_same(got, one_device)
  params = got[2].params
  # Params are split as the rules say, and stay split after the step.
  assert _spec(params["layer_0"]["attn"]["q"]) == ("fsdp", "tensor")
  assert _spec(params["embedding"]) == ("tensor", "fsdp")
  assert _spec(params["layer_0"]["mlp"]["down"]) == ("tensor", "fsdp")


def test_build_mesh_sizes_and_errors():
  devices = jax.devices()
  n = len(devices)
  assert dict(sharding.build_mesh().shape) == {"data": n, "fsdp": 1, "tensor": 1}
  assert dict(sharding.build_mesh(data=1, fsdp=-1, devices=devices[:1]).shape) == {
      "data": 1, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="at most one of data/fsdp/tensor may be -1"):
    sharding.build_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match=rf"data=3 fsdp=1 tensor=1 does not fit {n} devices"):
    sharding.build_mesh(data=3)
  with pytest.raises(ValueError, match="does not fit"):
    sharding.build_mesh(data=0)
  if n > 1:
    with pytest.raises(ValueError, match=rf"uses 1 devices, but {n} are present; set one axis"):
      sharding.build_mesh(data=1)


def test_param_shardings_drop_axes_that_do_not_divide():
  _needs_8_devices()
  mesh = sharding.build_mesh(data=2, fsdp=1, tensor=4)
  specs = jax.tree.map(_spec,
                       sharding.param_shardings(decoder_lib.abstract_params(CONFIG), mesh))
  assert specs["embedding"] == (None, "fsdp")  # vocab 134 % 4 != 0: replicated there
  assert specs["lm_head"] == ("fsdp",)
  attn = specs["layer_0"]["attn"]
  assert attn["q"] == ("fsdp", "tensor")  # 4 heads over tensor=4
  assert attn["k"] == ("fsdp",)  # 2 kv heads do not split 4 ways
  assert specs["layer_0"]["mlp"]["up"] == ("fsdp", "tensor")  # d_ff 32
  assert specs["final_norm"]["scale"] == ()
  placed = jax.device_put(_host_params(np.random.default_rng(1)),
                          sharding.param_shardings(decoder_lib.abstract_params(CONFIG), mesh))
  assert _spec(placed["embedding"]) == (None, "fsdp")
  assert len(placed["embedding"].addressable_shards) == 8


def test_logical_sharding_never_reuses_a_mesh_axis():
  _needs_8_devices()
  mesh = sharding.build_mesh(data=2, fsdp=2, tensor=2)
  # Two dims asking for the same mesh axis: the second one is replicated.
  assert _spec(sharding.logical_sharding(("mlp", "vocab"), (32, 134), mesh)) == ("tensor",)
  # The batch axis splits over data x fsdp as far as it divides.
  assert _spec(sharding.batch_sharding(mesh, (8, 3))) == (("data", "fsdp"),)
  assert _spec(sharding.batch_sharding(mesh, (2, 3))) == ("data",)
  assert _spec(sharding.batch_sharding(mesh, (3, 3))) == ()
