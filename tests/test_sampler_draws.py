"""The sampler's draw (inverse CDF in blocks): frequencies match softmax, truncated tokens never."""

import jax
import jax.numpy as jnp
import numpy as np

from rft_jax import sampling


def draws(logits, n, seed=0):
  """n draws from each row of logits [R, V] -> [n, R]."""
  logits = jnp.asarray(logits, jnp.float32)
  draw = jax.jit(jax.vmap(lambda k: sampling._inverse_cdf_sample(k, logits)))
  return np.asarray(draw(jax.random.split(jax.random.PRNGKey(seed), n)))


def test_frequencies_match_softmax_across_blocks():
  # V = 300: three blocks of 128, the last one padded; mass in every block, some truncated.
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 1.5, (2, 300)).astype(np.float32)
  logits[0, ::7] = -np.inf
  logits[1, 250:] = -np.inf
  n = 40000
  got = draws(logits, n)
  for row in range(2):
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits[row])))
    freq = np.bincount(got[:, row], minlength=300) / n
    assert np.all(freq[p == 0] == 0), "a truncated token was drawn"
    # every token within 5 standard errors of its probability
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9)


def test_single_token_and_vocabulary_edges():
  v = 257  # not a multiple of the block
  for only in (0, 127, 128, v - 1):
    logits = np.full((1, v), -np.inf, np.float32)
    logits[0, only] = 3.0
    assert set(draws(logits, 64)[:, 0]) == {only}
  # two tokens, far apart, of very different mass: both drawn, nothing else
  logits = np.full((1, v), -np.inf, np.float32)
  logits[0, [1, v - 1]] = [0.0, np.log(3.0)]
  got = draws(logits, 8000)[:, 0]
  assert set(got) == {1, v - 1}
  assert abs(np.mean(got == v - 1) - 0.75) < 0.03


def test_small_vocabulary_below_one_block():
  logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))
  freq = np.bincount(draws(logits, 20000)[:, 0], minlength=4) / 20000
  np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.02)


def test_tied_head_logp_equals_trainer_logp():
  """The sampler gives a tied model its own [D, V] head on CPU: same log-probs as the trainer's
  (which multiplies by the embedding's transpose), with G = 2 rollouts sharing one prefill."""
  from rft_jax import logprobs
  from rft_jax.models import Decoder, ModelConfig, init_params

  config = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       head_dim=8, d_ff=64, variant="qwen2", qkv_bias=True, tie_embeddings=True)
  decoder, params = Decoder(config), init_params(config, jax.random.PRNGKey(0))
  tokens, mask = sampling.left_pad([[1, 5, 6], [1, 7, 8, 9, 10, 11]], pad_id=0, bucket=8)
  for kw in (dict(temperature=1.0), dict(temperature=0.7, top_k=5, top_p=0.9),
             dict(temperature=0.0)):
    r = sampling.sample(decoder, params, tokens, mask, jax.random.PRNGKey(1), max_new_tokens=12,
                        num_samples=2, eos_ids=np.array([3]), pad_id=0, **kw)
    want = logprobs.completion_logprobs(decoder, params, r.prompt_tokens, r.prompt_mask,
                                        r.tokens, r.mask, kw["temperature"])
    assert float(jnp.sum(r.mask)) > 6
    assert float(jnp.max(jnp.abs((want - r.logp) * r.mask))) <= 1e-5, kw
