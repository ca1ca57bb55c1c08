"""Sampler: cached decoding equals a full forward, log-probs equal the trainer's, masking, knobs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rft_jax import logprobs, sampling
from rft_jax.models import Decoder, KVCache, ModelConfig, init_params, positions_from_mask
from rft_jax.models.policy import Policy

CONFIG = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                     head_dim=8, d_ff=64)
EOS = 3


@pytest.fixture(scope="module")
def model():
  return Decoder(CONFIG), init_params(CONFIG, jax.random.PRNGKey(0))


def prompts():
  return sampling.left_pad([[1, 5, 6], [1, 7, 8, 9, 10, 11], [1, 12]], pad_id=0, bucket=8)


def run(model, **kw):
  decoder, params = model
  tokens, mask = prompts()
  args = dict(max_new_tokens=12, num_samples=2, temperature=1.0, top_k=0, top_p=1.0,
              eos_ids=np.array([EOS]), pad_id=0)
  args.update(kw)
  return sampling.sample(decoder, params, tokens, mask, jax.random.PRNGKey(1), **args)


def test_left_pad_and_buckets():
  tokens, mask = sampling.left_pad([[4, 5], [6, 7, 8]], pad_id=0, bucket=4)
  np.testing.assert_array_equal(tokens, [[0, 0, 4, 5], [0, 6, 7, 8]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 1, 1, 1]])
  assert sampling.bucket_length(17, 16) == 32 and sampling.bucket_length(1, 16) == 16
  with pytest.raises(ValueError, match="does not fit"):
    sampling.left_pad([[1] * 9], 0, length=8)
  with pytest.raises(ValueError, match="empty"):
    sampling.left_pad([[]], 0)


def test_cached_decode_equals_full_forward(model):
  """Prefill + one-token decode steps give the logits of one forward over the whole sequence."""
  decoder, params = model
  tokens, mask = prompts()
  b, p = tokens.shape
  extra = np.array(jax.random.randint(jax.random.PRNGKey(2), (b, 5), 4, 40))
  full_tokens = np.concatenate([tokens, extra], 1)
  full_mask = np.concatenate([mask, np.ones_like(extra, bool)], 1)
  want, _ = decoder.apply({"params": params}, full_tokens, positions_from_mask(full_mask),
                          full_mask)
  kv_valid = np.concatenate([mask, np.ones((b, 5), bool)], 1)
  cache = KVCache.zeros(CONFIG, b, p + 5)
  got, cache = decoder.apply({"params": params}, tokens, positions_from_mask(mask), kv_valid,
                             cache=cache, cache_index=0)
  np.testing.assert_allclose(got[mask], want[:, :p][mask], atol=1e-5)
  for t in range(5):
    pos = mask.sum(1) + t
    step, cache = decoder.apply({"params": params}, extra[:, t:t + 1], pos[:, None], kv_valid,
                                cache=cache, cache_index=p + t)
    np.testing.assert_allclose(step[:, 0], want[:, p + t], atol=1e-5)


def test_left_padding_does_not_change_logits(model):
  """A row's logits do not depend on how much left padding the batch gives it."""
  decoder, params = model
  row = [1, 7, 8, 9]
  a, ma = sampling.left_pad([row], 0, length=4)
  b, mb = sampling.left_pad([row], 0, length=9)
  la, _ = decoder.apply({"params": params}, a, positions_from_mask(ma), ma)
  lb, _ = decoder.apply({"params": params}, b, positions_from_mask(mb), mb)
  np.testing.assert_allclose(la[0], lb[0, 5:], atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=5, top_p=0.9),
                                dict(temperature=0.0)])
def test_sampler_logp_equals_trainer_logp(model, kw):
  decoder, params = model
  r = run(model, **kw)
  want = logprobs.completion_logprobs(decoder, params, r.prompt_tokens, r.prompt_mask, r.tokens,
                                      r.mask, kw.get("temperature", 1.0))
  assert float(jnp.sum(r.mask)) > 6  # something was generated
  assert float(jnp.max(jnp.abs((want - r.logp) * r.mask))) <= 1e-5


def test_mask_stops_after_eos_and_pads(model):
  r = run(model, max_new_tokens=24, temperature=1.5)
  tokens, mask, logp = map(np.asarray, (r.tokens, r.mask, r.logp))
  ended = 0
  for row_t, row_m, row_l in zip(tokens, mask, logp):
    n = int(row_m.sum())
    assert np.all(row_m[:n] == 1) and np.all(row_m[n:] == 0)  # a prefix
    assert np.all(row_t[n:] == 0) and np.all(row_l[n:] == 0)
    assert EOS not in row_t[:max(n - 1, 0)]  # no EOS before the last kept token
    if n < 24:
      assert row_t[n - 1] == EOS
      ended += 1
  assert ended > 0  # the test exercised an EOS


def test_greedy_is_argmax_of_full_forward(model):
  decoder, params = model
  r = run(model, temperature=0.0)
  tokens = jnp.concatenate([r.prompt_tokens, r.tokens], 1)
  mask = jnp.concatenate([r.prompt_mask, r.mask > 0], 1)
  logits, _ = decoder.apply({"params": params}, tokens, positions_from_mask(mask), mask)
  p = r.prompt_tokens.shape[1]
  argmax = jnp.argmax(logits[:, p - 1:-1], -1)
  np.testing.assert_array_equal(np.where(r.mask > 0, argmax, 0), np.where(r.mask > 0, r.tokens, 0))
  # all G rollouts of a prompt are identical under greedy decoding
  np.testing.assert_array_equal(r.tokens[0::2], r.tokens[1::2])


def test_deterministic_given_rng_and_groups_differ(model):
  a, b = run(model), run(model)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logp, b.logp)
  assert not np.array_equal(a.tokens[0::2], a.tokens[1::2])  # G samples of a prompt differ


def test_truncate_logits_top_k_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keep = lambda k, p: np.isfinite(sampling.truncate_logits(logits, jnp.int32(k), jnp.float32(p)))
  np.testing.assert_array_equal(keep(2, 1.0), [[1, 1, 0, 0]])
  np.testing.assert_array_equal(keep(0, 0.8), [[1, 1, 0, 0]])   # 0.5 + 0.3 reaches 0.8
  np.testing.assert_array_equal(keep(0, 0.81), [[1, 1, 1, 0]])
  np.testing.assert_array_equal(keep(0, 0.1), [[1, 0, 0, 0]])   # the top token always stays
  np.testing.assert_array_equal(keep(3, 0.6), [[1, 1, 0, 0]])   # both apply
  # the nucleus on the whole distribution (HF renormalizes after top-k: 0.5 / 0.8 >= 0.6, 1 kept)
  np.testing.assert_array_equal(keep(2, 0.6), [[1, 1, 0, 0]])
  np.testing.assert_array_equal(keep(0, 1.0), [[1, 1, 1, 1]])
  np.testing.assert_array_equal(keep(0, 0.0), [[1, 0, 0, 0]])   # top_p <= 0: the top token
  np.testing.assert_array_equal(keep(0, -1.0), [[1, 0, 0, 0]])


def test_top_p_one_keeps_the_tail_float32_sums_past():
  # One token at 0, 19 at -1, 1980 distinct values near -30 (probabilities ~1e-13): float32's
  # running sum of the sorted probabilities reaches 1.0 within the first 20, so `mass before
  # < 1` alone cut the tail. top_p >= 1 keeps every token, with top_k too: k = 500 keeps 500.
  tail = -30.0 - 1e-3 * jnp.arange(1980)
  logits = jnp.concatenate([jnp.zeros(1), -jnp.ones(19), tail])[None]
  kept = lambda k, p: int(np.isfinite(sampling.truncate_logits(
      logits, jnp.int32(k), jnp.float32(p))).sum())
  assert kept(500, 1.0) == 500 and kept(0, 1.0) == 2000
  assert kept(500, 0.999) == 20  # a nucleus below 1 still cuts the tail


def test_top_p_zero_samples_the_top_token(model):
  r = run(model, top_p=0.0)
  g = run(model, temperature=0.0)
  np.testing.assert_array_equal(r.tokens, g.tokens)
  np.testing.assert_allclose(np.asarray(r.sampler_logp) * np.asarray(r.mask), 0.0, atol=1e-6)


def test_right_padded_prompts_are_refused():
  tokens, mask = prompts()
  sampling.check_left_padded(mask)
  right = mask[:, ::-1]  # the same rows, padding on the right
  with pytest.raises(ValueError, match=r"left-padded .* rows \[0, 1, 2\] are not"):
    sampling.check_left_padded(right)
  with pytest.raises(ValueError, match="left-padded"):
    sampling.check_left_padded(np.zeros((1, 4), bool))  # an empty row
  gap = mask.copy()
  gap[1, -2] = False  # a hole inside row 1
  with pytest.raises(ValueError, match=r"rows \[1\] are not"):
    sampling.check_left_padded(gap)


def test_top_k_one_is_greedy_and_sampler_logp(model):
  r = run(model, top_k=1)
  g = run(model, temperature=0.0)
  np.testing.assert_array_equal(r.tokens, g.tokens)
  # sampling from a one-token distribution: log-prob 0 under the truncated distribution
  np.testing.assert_allclose(np.asarray(r.sampler_logp) * np.asarray(r.mask), 0.0, atol=1e-6)


def test_sampling_settings_do_not_recompile(model):
  decoder, params = model
  tokens, mask = prompts()
  before = sampling.sample._cache_size()
  for temp, k, p in ((1.0, 0, 1.0), (0.5, 3, 0.9), (0.0, 0, 1.0)):
    sampling.sample(decoder, params, tokens, mask, jax.random.PRNGKey(0), max_new_tokens=12,
                    num_samples=2, temperature=jnp.float32(temp), top_k=jnp.int32(k),
                    top_p=jnp.float32(p), eos_ids=np.array([EOS]), pad_id=0)
  assert sampling.sample._cache_size() - before <= 1


def test_rope_llama3_scaling_bands():
  """llama3 scaling: high frequencies kept, low divided by factor, the band between blended."""
  from rft_jax.models.decoder import rope_inv_freq
  base = ModelConfig(vocab_size=8, d_model=64, n_layers=1, n_heads=1, n_kv_heads=1,
                     head_dim=64, d_ff=8, rope_theta=500000.0)
  scaled = ModelConfig(**{**base.__dict__, "rope_scaling": ("llama3", 8.0, 1.0, 4.0, 8192)})
  inv, inv_s = np.asarray(rope_inv_freq(base)), np.asarray(rope_inv_freq(scaled))
  wavelen = 2 * np.pi / inv
  high = wavelen < 8192 / 4.0
  low = wavelen > 8192 / 1.0
  np.testing.assert_allclose(inv_s[high], inv[high], rtol=1e-6)
  np.testing.assert_allclose(inv_s[low], inv[low] / 8.0, rtol=1e-6)
  mid = ~high & ~low
  assert mid.any()
  smooth = (8192 / wavelen[mid] - 1.0) / (4.0 - 1.0)
  np.testing.assert_allclose(inv_s[mid], (1 - smooth) * inv[mid] / 8.0 + smooth * inv[mid],
                             rtol=1e-5)


def test_compacted_sizes():
  assert sampling._compacted_size(64, 40, 16, 1) == 64   # more than half still decoding
  assert sampling._compacted_size(64, 32, 16, 1) == 32
  assert sampling._compacted_size(64, 5, 16, 1) == 16    # not below min_rows
  assert sampling._compacted_size(64, 5, 1, 1) == 8
  assert sampling._compacted_size(12, 2, 1, 1) == 3      # halving stops at an odd size
  assert sampling._compacted_size(64, 5, 1, 16) == 16    # a multiple of the mesh's split
  assert sampling._compacted_size(8, 0, 1, 1) == 1


def test_row_uniforms_do_not_depend_on_the_batch():
  key = jax.random.PRNGKey(3)
  all_rows = np.asarray(sampling.row_uniforms(key, jnp.arange(8)))
  some = np.asarray(sampling.row_uniforms(key, jnp.array([6, 2])))
  np.testing.assert_array_equal(some, all_rows[[6, 2]])
  assert len(set(all_rows.tolist())) == 8 and np.all((all_rows >= 0) & (all_rows < 1))


# Many end-of-sequence ids: the toy's rows end after a few tokens each, at different steps.
MANY_EOS = np.arange(3, 12)


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=5, top_p=0.9),
                                dict(temperature=0.0)])
def test_compacting_sampler_equals_the_sampler(model, kw):
  """Dropping ended rows mid-decode (12 rows -> 6 -> 3, stages of 2 tokens) changes no token;
  log-probs agree to float rounding."""
  decoder, params = model
  tokens, mask = prompts()
  args = dict(max_new_tokens=12, num_samples=4, eos_ids=MANY_EOS, pad_id=0, **kw)
  want = sampling.sample(decoder, params, tokens, mask, jax.random.PRNGKey(1), **args)
  stages = []
  got = sampling.sample_compacting(decoder, params, tokens, mask, jax.random.PRNGKey(1),
                                   stage_tokens=2, min_rows=1,
                                   on_stage=lambda *a: stages.append(a), **args)
  lengths = np.asarray(want.lengths)
  assert len(set(lengths.tolist())) > 2  # rows end at different steps
  assert [rows for _, rows, _ in stages][-1] < 12, stages  # the batch did shrink
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.mask, want.mask)
  np.testing.assert_array_equal(got.prompt_tokens, want.prompt_tokens)
  np.testing.assert_allclose(got.logp, want.logp, atol=1e-5)
  np.testing.assert_allclose(got.sampler_logp, want.sampler_logp, atol=1e-5)


def test_one_prompts_rollouts_split_over_the_mesh(model):
  """One question's G = 8 rollouts start from a replicated prompt row (a batch of 1 cannot
  split); with the mesh each of its 8 devices decodes one of them (conftest forces 8 CPU
  devices), the tokens the unsplit sampler draws, log-probs to float rounding."""
  from rft_jax import sharding

  if jax.device_count() < 8:
    pytest.skip(f"needs 8 devices (conftest forces 8 CPU devices), have {jax.device_count()}")
  decoder, params = model
  mesh = sharding.build_mesh()
  tokens, mask = sampling.left_pad([[1, 5, 6]], pad_id=0, bucket=8)
  tokens, mask = sharding.shard_batch((tokens, mask), mesh)
  assert tokens.sharding.shard_shape(tokens.shape) == tokens.shape  # replicated
  args = dict(max_new_tokens=6, num_samples=8, eos_ids=np.array([EOS]), pad_id=0)
  want = sampling.sample(decoder, params, tokens, mask, jax.random.PRNGKey(1), **args)
  got = sampling.sample(decoder, params, tokens, mask, jax.random.PRNGKey(1), mesh=mesh, **args)
  for name in ("tokens", "logp", "prompt_tokens"):
    assert getattr(want, name).sharding.shard_shape((8, 6))[0] == 8, name  # all rows on each
    assert getattr(got, name).sharding.shard_shape(getattr(got, name).shape)[0] == 1, name
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.mask, want.mask)
  np.testing.assert_allclose(got.logp, want.logp, atol=1e-5)
  # the prefill's state (the KV cache too) and each compaction's batch split the same way
  state, _, _ = sampling._prefill_jit(decoder, params, tokens, mask, jax.random.PRNGKey(1), 6, 8,
                                      0, mesh)
  assert state.cache.k[0].sharding.shard_shape(state.cache.k[0].shape)[0] == 1
  kept = sampling._take_rows(state, jnp.arange(8)[::-1], mesh)
  assert kept.cache.v[1].sharding.shard_shape(kept.cache.v[1].shape)[0] == 1
  # 2 prompts x 16 rows, stages of 2 tokens: the batch halves while rows end, in multiples of 8
  tokens, mask = sharding.shard_batch(sampling.left_pad([[1, 5, 6], [1, 7]], pad_id=0, bucket=8),
                                      mesh)
  args = dict(max_new_tokens=12, num_samples=16, eos_ids=MANY_EOS, pad_id=0)
  want = sampling.sample(decoder, params, tokens, mask, jax.random.PRNGKey(1), **args)
  stages = []
  compacted = sampling.sample_compacting(decoder, params, tokens, mask, jax.random.PRNGKey(1),
                                         stage_tokens=2, min_rows=1, row_multiple=8, mesh=mesh,
                                         on_stage=lambda *a: stages.append(a), **args)
  assert min(rows for _, rows, _ in stages) < 32, stages  # it did compact
  np.testing.assert_array_equal(compacted.tokens, want.tokens)


def test_generate_pads_only_the_leading_pad_tokens(model):
  """pad_id inside a prompt is a real token (SmolLM2's pad is its end-of-turn token, in every
  chat prompt): without prompt_mask, generate masks only each row's leading pad tokens."""
  _, params = model
  policy = Policy(config=CONFIG, params=params, tokenizer=None, eos_ids=(EOS,), pad_id=0)
  rows = [[1, 0, 6, 7], [1, 5, 0, 0, 9]]  # pads inside both, and after the start of row 1
  tokens, mask = sampling.left_pad(rows, pad_id=0, bucket=8)
  want = policy.generate(tokens, max_new_tokens=6, prompt_mask=mask)
  got = policy.generate(tokens, max_new_tokens=6)
  np.testing.assert_array_equal(got.prompt_mask, mask)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  with pytest.raises(ValueError, match="left-padded"):
    policy.generate(tokens, max_new_tokens=6, prompt_mask=mask[:, ::-1])
  with pytest.raises(ValueError, match="left-padded"):  # the compacting path checks too
    policy.generate(tokens, max_new_tokens=6, prompt_mask=mask[:, ::-1], compact=True)


def naive_decode(decoder, params, tokens, mask, rng, n, g, temperature, top_k, top_p, eos):
  """An independent reference: a full forward over the whole sequence at every step (no cache),
  truncation and the inverse CDF in float64 numpy at the sampler's per-row uniforms. Returns
  (tokens, mask, logp, sampler_logp) as numpy [B G, n]."""
  tokens, mask = np.repeat(tokens, g, 0), np.repeat(mask, g, 0)
  rows = tokens.shape[0]
  out = np.zeros((rows, n), np.int32)
  out_mask, logp, sampler_logp = (np.zeros((rows, n)) for _ in range(3))
  done = np.zeros(rows, bool)
  for t in range(n):
    rng, key = jax.random.split(rng)  # the sampler's key schedule: one split per step
    seq = np.concatenate([tokens, out[:, :t]], 1)
    valid = np.concatenate([mask, np.ones((rows, t), bool)], 1)
    logits, _ = decoder.apply({"params": params}, seq, positions_from_mask(valid), valid)
    z = np.asarray(logits[:, -1], np.float64) / (temperature if temperature > 0 else 1.0)
    u = np.asarray(sampling.row_uniforms(key, jnp.arange(rows)), np.float64)
    for r in np.flatnonzero(~done):
      prob = np.exp(z[r] - z[r].max())
      prob /= prob.sum()
      order = np.argsort(-z[r], kind="stable")
      keep = np.ones_like(prob, bool)
      if top_k > 0:
        keep &= z[r] >= z[r][order[top_k - 1]]
      if top_p < 1:
        before = np.cumsum(prob[order]) - prob[order]
        keep &= z[r] >= z[r][order][(before < top_p) | (np.arange(len(order)) == 0)].min()
      q = np.where(keep, prob, 0.0) / prob[keep].sum()
      tok = (int(np.searchsorted(np.cumsum(q), u[r], side="right")) if temperature > 0
             else int(np.argmax(z[r])))
      out[r, t], out_mask[r, t], logp[r, t] = tok, 1.0, np.log(prob[tok])
      sampler_logp[r, t] = np.log(q[tok]) if temperature > 0 else 0.0
      done[r] = tok in eos
  return out, out_mask, logp, sampler_logp


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 0.9),
                                                     (1.3, 0, 0.8), (0.0, 0, 1.0)])
def test_sampled_tokens_equal_a_naive_recompute_decode(temperature, top_k, top_p):
  """Cached decoding, truncation, the blocked inverse CDF and the end-token handling against
  naive_decode: the same tokens, log-probs to float32 rounding. Weights x 2 sharpen the
  distributions so that truncation cuts and end tokens are drawn."""
  decoder = Decoder(CONFIG)
  params = jax.tree.map(lambda x: 2 * x, init_params(CONFIG, jax.random.PRNGKey(0)))
  tokens, mask = sampling.left_pad([[1, 5, 6], [1, 7, 8, 9, 10, 11, 12, 13], [1]], 0, bucket=8)
  eos = (EOS, 4)
  rng = jax.random.PRNGKey(7)
  got = sampling.sample(decoder, params, tokens, mask, rng, max_new_tokens=9, num_samples=2,
                        temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_ids=np.array(eos), pad_id=0)
  want = naive_decode(decoder, params, tokens, mask, rng, 9, 2, temperature, top_k, top_p, eos)
  np.testing.assert_array_equal(got.mask, want[1])
  np.testing.assert_array_equal(np.asarray(got.tokens) * want[1], want[0] * want[1])
  np.testing.assert_allclose(got.logp, want[2], atol=1e-4)
  np.testing.assert_allclose(got.sampler_logp, want[3], atol=1e-4)
  lengths = want[1].sum(1)
  assert lengths.min() < 9 and lengths.max() == 9  # some rows end early, some run to the limit
