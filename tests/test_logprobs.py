"""The fused log-prob / entropy and its custom VJP against plain autodiff of log_softmax."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rft_jax import logprobs, losses, train
from rft_jax.models import decoder as decoder_lib


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


# -- the chunked head path: hidden states and the head matrix in, the same values out ---------


def head_case(seed, b=2, n=7, d=6, v=29):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.standard_normal((b, n, d)), jnp.float32)
  head = jnp.asarray(rng.standard_normal((d, v)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, (b, n)), jnp.int32)
  g_logp = jnp.asarray(rng.standard_normal((b, n)), jnp.float32)
  g_ent = jnp.asarray(rng.standard_normal((b, n)), jnp.float32)
  return hidden, head, targets, g_logp, g_ent


def _head_objective(chunk, targets, g_logp, g_ent):
  """sum(g_logp logp + g_ent H) through the chunked path, or (chunk 0) through the logits."""
  def f(hidden, head, tau):
    if chunk:
      logp, ent = logprobs.head_logprobs_and_entropy(hidden, head, targets, tau, chunk)
    else:
      logits = (hidden @ head).astype(jnp.float32)
      logp, ent = logprobs.token_logprobs_and_entropy(logits, targets, tau)
    return jnp.sum(g_logp * logp) + jnp.sum(g_ent * ent)
  return f


# chunk 3 and 2 do not divide N = 7 (chunks of 3 and 2: the last one padded); 7 = N; 64 > N is
# one chunk of N.
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_chunked_head_values_and_gradients_match_unchunked(chunk, temperature):
  hidden, head, targets, g_logp, g_ent = head_case(7)
  got = logprobs.head_logprobs_and_entropy(hidden, head, targets, temperature, chunk)
  want = logprobs.token_logprobs_and_entropy((hidden @ head).astype(jnp.float32), targets,
                                             temperature)
  for g, w in zip(got, want):
    assert g.shape == targets.shape
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  tau = jnp.float32(temperature)
  got = jax.jit(jax.grad(_head_objective(chunk, targets, g_logp, g_ent), argnums=(0, 1, 2)))(
      hidden, head, tau)
  want = jax.grad(_head_objective(0, targets, g_logp, g_ent), argnums=(0, 1, 2))(
      hidden, head, tau)
  for g, w, name in zip(got, want, ("hidden", "head", "tau")):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("n, chunk, size", [(160, 128, 80), (224, 128, 112), (256, 128, 128),
                                           (129, 128, 65), (7, 3, 3), (7, 2, 2), (7, 64, 7)])
def test_balanced_chunk_is_the_fewest_chunks_of_equal_size(n, chunk, size):
  assert logprobs.balanced_chunk(n, chunk) == size
  chunks = -(-n // size)
  assert size <= chunk and chunks == -(-n // chunk) and chunks * size - n < chunks


def test_chunked_head_hand_computed():
  # W = [[0, log 3], [0, 0]]: h = (a, 0) has logits (0, a log 3); target 1 everywhere.
  #   a = 1: p = (1/4, 3/4), log p_1 = log 3/4, H = -(1/4 log 1/4 + 3/4 log 3/4),
  #          d logp / d logits = (-1/4, 1/4), d h = W (-1/4, 1/4) = (log 3 / 4, 0);
  #   a = 0: p = (1/2, 1/2), log p_1 = log 1/2, H = log 2, d h = W (-1/2, 1/2) = (log 3 / 2, 0).
  # d sum(logp) / d W = sum_n h_n^T (onehot - p_n) = 2 (1, 0)^T (-1/4, 1/4) (the a = 0 row is 0).
  # N = 3 in chunks of 2: the second chunk is half padding.
  log3 = np.log(3.0)
  head = jnp.asarray([[0.0, log3], [0.0, 0.0]], jnp.float32)
  hidden = jnp.asarray([[[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]], jnp.float32)
  targets = jnp.ones((1, 3), jnp.int32)
  logp, ent = logprobs.head_logprobs_and_entropy(hidden, head, targets, 1.0, chunk=2)
  h_quarter = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
  np.testing.assert_allclose(logp, [[np.log(0.75), np.log(0.5), np.log(0.75)]], rtol=1e-6)
  np.testing.assert_allclose(ent, [[h_quarter, np.log(2.0), h_quarter]], rtol=1e-6)
  d_hidden, d_head = jax.grad(
      lambda h, w: jnp.sum(logprobs.head_logprobs_and_entropy(h, w, targets, 1.0, chunk=2)[0]),
      argnums=(0, 1))(hidden, head)
  np.testing.assert_allclose(d_hidden, [[[log3 / 4, 0], [log3 / 2, 0], [log3 / 4, 0]]],
                             atol=1e-6)
  np.testing.assert_allclose(d_head, [[-0.5, 0.5], [0.0, 0.0]], atol=1e-6)


def test_chunked_head_shape_errors():
  hidden, head, targets, _, _ = head_case(8)
  with pytest.raises(ValueError, match=r"\[B, N, D\]"):
    logprobs.head_logprobs_and_entropy(hidden[0], head, targets, 1.0, 4)
  with pytest.raises(ValueError, match="model dimension"):
    logprobs.head_logprobs_and_entropy(hidden, head.T, targets, 1.0, 4)
  with pytest.raises(ValueError, match="without the model axis"):
    logprobs.head_logprobs_and_entropy(hidden, head, targets[:, :3], 1.0, 4)
  with pytest.raises(ValueError, match="positive int"):
    logprobs.head_logprobs_and_entropy(hidden, head, targets, 1.0, 0)
  with pytest.raises(ValueError, match="scalar"):
    logprobs.head_logprobs_and_entropy(hidden, head, targets, jnp.ones(2), 4)


def test_chunked_head_memory_grows_with_the_chunk_not_n_times_v():
  # The compiled gradient's scratch memory: the unchunked path holds [B, N, V] float32 logits
  # and their cotangent (2 x 8 MiB here); the chunked one about [B, chunk, V] of each.
  b, n, d, v, chunk = 2, 512, 8, 2048, 16
  hidden = jax.ShapeDtypeStruct((b, n, d), jnp.float32)
  head = jax.ShapeDtypeStruct((d, v), jnp.float32)
  targets = jax.ShapeDtypeStruct((b, n), jnp.int32)

  def temp_bytes(c):
    f = lambda h, w, t: _head_objective(c, t, 1.0, 1.0)(h, w, 1.0)
    compiled = jax.jit(jax.grad(f, argnums=(0, 1))).lower(hidden, head, targets).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  logits_bytes = b * n * v * 4
  unchunked, chunked = temp_bytes(0), temp_bytes(chunk)
  assert unchunked >= logits_bytes  # the measurement sees the [B, N, V] logits
  assert chunked < logits_bytes / 8, (chunked, unchunked)


# -- through the decoder: completion_logprobs(chunk=) equals the logits path ---------------------


def _decoder_case(tied, dtype="float32", seed=0):
  cfg = decoder_lib.ModelConfig(vocab_size=53, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                                head_dim=8, d_ff=24, tie_embeddings=tied, dtype=dtype)
  params = decoder_lib.init_params(cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  b, p, n = 3, 5, 10
  prompt_mask = (np.arange(p)[None] >= np.array([0, 2, 4])[:, None])  # left padding
  prompt = np.where(prompt_mask, rng.integers(1, cfg.vocab_size, (b, p)), 0)
  mask = (np.arange(n)[None] < np.array([10, 6, 1])[:, None]).astype(np.float32)  # masked tails
  completion = np.where(mask > 0, rng.integers(1, cfg.vocab_size, (b, n)), 0)
  g_logp, g_ent = rng.standard_normal((2, b, n)).astype(np.float32)
  return decoder_lib.Decoder(cfg), params, (prompt, prompt_mask, completion, mask), g_logp, g_ent


@pytest.mark.parametrize("tied", [True, False])
def test_completion_logprobs_chunked_equals_unchunked_through_the_decoder(tied):
  decoder, params, rollout, g_logp, g_ent = _decoder_case(tied)
  mask = rollout[3]

  def run(chunk):
    def f(prm):
      logp, ent = logprobs.completion_logprobs(decoder, prm, *rollout, 0.8, with_entropy=True,
                                               chunk=chunk)
      return jnp.sum(mask * (g_logp * logp + g_ent * ent)), (logp, ent)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (want_loss, want_out), want_grad = run(0)
  (loss, out), grad = run(3)  # N = 10: chunks of 3, 3, 3 and 1 (+ 2 padding)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for g, w in zip(out, want_out):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  assert ("lm_head" in grad) is not tied
  flat, want_flat = jax.tree_util.tree_leaves_with_path(grad), jax.tree.leaves(want_grad)
  for (path, g), w in zip(flat, want_flat):
    # chunks sum the gradient in another order: rounding relative to the leaf's scale (an
    # entry near 0 in a leaf of entries ~4 is off by ~1e-6 on some CPUs' kernels)
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(w).max()),
                               err_msg=jax.tree_util.keystr(path))
  assert float(jnp.abs(grad["embedding"]).sum()) > 0
  # N <= chunk is one chunk: the logits path itself, bit for bit.
  (loss_one, _), _ = run(10)
  assert float(loss_one) == float(want_loss)


def test_completion_logprobs_chunked_in_bfloat16_compute():
  decoder, params, rollout, g_logp, g_ent = _decoder_case(True, dtype="bfloat16", seed=1)

  def run(chunk):
    f = lambda prm: jnp.sum(rollout[3] * g_logp * logprobs.completion_logprobs(
        decoder, prm, *rollout, 1.0, chunk=chunk))
    return jax.jit(jax.value_and_grad(f))(params)

  (want_loss, want_grad), (loss, grad) = run(0), run(4)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-3)
  for g, w in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
    assert g.dtype == w.dtype == jnp.float32
    # Measured: identical but for the embedding (1e-3 of its largest entry: d W accumulates in
    # float32 across chunks, where autodiff's bfloat16 matmul rounds once).
    np.testing.assert_allclose(g, w, rtol=1e-2, atol=5e-3 * float(jnp.abs(w).max()))


def test_completion_logprobs_rejects_a_negative_chunk():
  decoder, params, rollout, _, _ = _decoder_case(True)
  with pytest.raises(ValueError, match="chunk"):
    logprobs.completion_logprobs(decoder, params, *rollout, chunk=-1)


def test_train_step_losses_and_updates_unchanged_by_chunking():
  # One train step (grpo chain: clipped ratio, KL to a reference, entropy metric; AdamW) with
  # the logits path and with chunks of 3 over N = 10: same loss, gradient norm and new params.
  decoder, params, (prompt, prompt_mask, completion, mask), g_logp, _ = _decoder_case(False)
  behaviour = np.asarray(logprobs.completion_logprobs(
      decoder, params, prompt, prompt_mask, completion, mask)) + 0.3 * g_logp
  batch = train.RolloutBatch(
      prompt_tokens=jnp.asarray(prompt, jnp.int32), prompt_mask=jnp.asarray(prompt_mask),
      loss=losses.Batch(tokens=jnp.asarray(completion, jnp.int32), mask=jnp.asarray(mask),
                        behaviour_logp=jnp.asarray(behaviour * mask, jnp.float32),
                        rewards=jnp.asarray([1.0, 0.0, 1.0]),
                        group_ids=jnp.zeros(3, jnp.int32),
                        ref_logp=jnp.asarray((behaviour - 0.2 * g_logp) * mask, jnp.float32)))
  transform = losses.from_config(losses.recipe_config("grpo"))
  optimizer = optax.adamw(1e-2, eps=1e-3)  # eps: rounding noise in tiny g stays tiny in the update

  def step(chunk):
    copy = jax.tree.map(jnp.copy, params)  # train_step donates the state
    state = train.TrainState(round=jnp.zeros((), jnp.int32), params=copy,
                             opt_state=optimizer.init(copy), loss_state=transform.init())
    state, metrics = train.train_step(state, batch, jnp.float32(0.9), decoder=decoder,
                                      transform=transform, optimizer=optimizer,
                                      logprob_chunk=chunk)
    return jax.device_get(state.params), jax.device_get(metrics)

  (want_params, want), (got_params, got) = step(0), step(3)
  assert got.keys() == want.keys() and want["grad_norm"] > 0
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for g, w in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _dot_precisions(jaxpr, inside: tuple = ()) -> list[tuple]:
  """(precision, enclosing primitives) of every dot_general in a jaxpr and the jaxprs inside it
  (scan, while, cond, pjit, custom_vjp, remat bodies)."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.append((eqn.params["precision"], inside))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if isinstance(inner, jax.extend.core.Jaxpr):
          out += _dot_precisions(inner, inside + (eqn.primitive.name,))
  return out


def test_every_matmul_of_sampler_and_train_step_is_full_precision():
  """decoder.PRECISION on every matmul the sampler, the scoring forward (plain and chunked) and
  its gradient trace, LoRA included: XLA's default precision on GPUs / TPUs rounds float32
  operands (TF32, bfloat16 passes), which put an H200's sampler and train-step log-probs of one
  rollout 3.7e-3 apart (benchmarks/README.md). The precision cannot show on CPU, where float32
  matmuls are always full: the traced programs are checked instead, under the default matmul
  precision a program gets outside these tests (conftest.py sets 'highest' for all of them)."""
  from rft_jax import sampling
  from rft_jax.models import lora

  full = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
  config = decoder_lib.ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2,
                                   n_kv_heads=1, head_dim=8, d_ff=32, tie_embeddings=True,
                                   attn_chunk=4, remat=True, lora_rank=2,
                                   lora_modules=("q", "o"))
  params = decoder_lib.init_params(config, jax.random.PRNGKey(0))
  adapters = lora.init_adapters(config, jax.random.PRNGKey(1))
  dec = decoder_lib.Decoder(config)
  prompt, mask = jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4), bool)
  completion, completion_mask = jnp.ones((2, 9), jnp.int32), jnp.ones((2, 9), bool)
  programs = {  # name -> a function tracing the program
      "sampler": lambda: jax.make_jaxpr(lambda p: sampling.sample(
          dec, p, prompt, mask, jax.random.PRNGKey(2), max_new_tokens=3, num_samples=2,
          eos_ids=jnp.full((1,), -1, jnp.int32)))(params)}
  for chunk in (0, 4):
    score = lambda a, chunk=chunk: logprobs.completion_logprobs(
        dec, lora.combine(params, a), prompt, mask, completion, completion_mask,
        chunk=chunk).sum()
    programs[f"gradient, chunk {chunk}"] = lambda score=score: jax.make_jaxpr(jax.grad(score))(
        adapters)
  # adapters folded into the weights (lora.merge): one A @ B per adapted module and layer
  programs["merge"] = lambda: jax.make_jaxpr(
      lambda a: lora.merge(config, lora.combine(params, a)))(adapters)
  for name, make in programs.items():
    with jax.default_matmul_precision("default"):
      dots = _dot_precisions(make().jaxpr)
    least = 2 if name == "merge" else 4 * config.n_layers  # the walk found the layers' matmuls
    assert len(dots) >= least, (name, len(dots))
    assert all(p == full for p, _ in dots), (name, {p for p, _ in dots})
    if name == "sampler":  # the walk reached the decode loop's body, not only the prefill
      assert sum("while" in inside for _, inside in dots) >= 4 * config.n_layers
