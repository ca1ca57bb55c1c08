"""LoRA (rft_jax.models.lora): the adapted forward, its gradient, training, merging and export."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rft_jax import logprobs, losses, sampling, train
from rft_jax.models import Decoder, ModelConfig, init_params, lora, positions_from_mask

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                   d_ff=48, variant="qwen2", qkv_bias=True, tie_embeddings=True)
ALL = "q,k,v,o,gate,up,down"
CONFIG = lora.configure(BASE, rank=4, alpha=8.0, modules=ALL)


def base_params():
  return init_params(BASE, jax.random.PRNGKey(0))


def trained_adapters(seed=3):
  """Adapters with nonzero B (as after training)."""
  a = lora.init_adapters(CONFIG, jax.random.PRNGKey(1))
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(a))))
  return jax.tree.map(lambda x: x + 0.2 * jax.random.normal(next(keys), x.shape), a)


def batch():
  tokens = jax.random.randint(jax.random.PRNGKey(7), (3, 9), 1, 64)
  mask = jnp.arange(9)[None] >= jnp.array([0, 3, 1])[:, None]
  return tokens, mask


def logits(config, params):
  tokens, mask = batch()
  out, _ = jax.jit(Decoder(config).apply)({"params": params}, tokens, positions_from_mask(mask),
                                          mask)
  return np.asarray(out)


def test_fresh_adapters_leave_the_logits_unchanged_and_train_only_a_few_numbers():
  base = base_params()
  adapters = lora.init_adapters(CONFIG, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(logits(CONFIG, lora.combine(base, adapters)), logits(BASE, base))
  a = adapters["layer_0"]["attn"]
  assert a["q_lora_a"].shape == (32, 4) and a["q_lora_b"].shape == (4, 4 * 8)
  assert a["o_lora_a"].shape == (4 * 8, 4) and a["o_lora_b"].shape == (4, 32)
  assert not np.any(a["q_lora_b"]) and np.std(np.asarray(a["q_lora_a"])) > 0.05
  # r (I + O) per weight: far fewer than the I x O of the base.
  n = sum(x.size for x in jax.tree.leaves(adapters))
  assert n == 2 * 4 * sum(i + o for i, o in [(32, 32), (32, 16), (32, 16), (32, 32), (32, 48),
                                              (32, 48), (48, 32)])
  # split and combine are inverse and share the leaves.
  b2, a2 = lora.split(lora.combine(base, adapters))
  assert jax.tree.structure(b2) == jax.tree.structure(base)
  assert all(x is y for x, y in zip(jax.tree.leaves(a2), jax.tree.leaves(adapters)))


def test_adapted_forward_is_the_merged_weights_and_the_base_tree_is_adapters_off():
  base, adapters = base_params(), trained_adapters()
  adapted = logits(CONFIG, lora.combine(base, adapters))
  assert np.abs(adapted - logits(BASE, base)).max() > 0.1  # the adapters do something
  np.testing.assert_allclose(logits(BASE, lora.merge(CONFIG, lora.combine(base, adapters))),
                             adapted, atol=2e-5)
  # The KL reference: the adapted config over the base tree runs with the adapters off.
  np.testing.assert_array_equal(logits(CONFIG, base), logits(BASE, base))


def test_adapter_gradient_is_the_chain_rule_through_the_merged_weight():
  """W' = W + s A B  =>  dL/dA = s (dL/dW') B^T,  dL/dB = s A^T (dL/dW'), with dL/dW' from
  the merged model (no adapter code on that path)."""
  base, adapters = base_params(), trained_adapters()
  tokens, mask = batch()
  pos = positions_from_mask(mask)
  weights = jax.random.normal(jax.random.PRNGKey(9), (3, 9, 64))

  def loss(config, params):
    out, _ = Decoder(config).apply({"params": params}, tokens, pos, mask)
    return jnp.sum(jax.nn.log_softmax(out) * weights)

  g_adapters = jax.jit(jax.grad(lambda a: loss(CONFIG, lora.combine(base, a))))(adapters)
  merged = lora.merge(CONFIG, lora.combine(base, adapters))
  g_merged = jax.jit(jax.grad(lambda p: loss(BASE, p)))(merged)
  s = CONFIG.lora_alpha / CONFIG.lora_rank
  for layer, module, name in [("layer_0", "attn", "q"), ("layer_1", "attn", "o"),
                              ("layer_1", "mlp", "down"), ("layer_0", "mlp", "gate")]:
    a = adapters[layer][module][f"{name}_lora_a"]
    b = adapters[layer][module][f"{name}_lora_b"]
    gw = g_merged[layer][module][name].reshape(a.shape[0], b.shape[1])
    for got, want in [(g_adapters[layer][module][f"{name}_lora_a"], s * gw @ b.T),
                      (g_adapters[layer][module][f"{name}_lora_b"], s * a.T @ gw)]:
      # float32 rounding of two different summation orders, relative to the largest entry
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))


def test_sampler_logp_equals_trainer_logp_with_adapters():
  base, adapters = base_params(), trained_adapters()
  params = lora.combine(base, adapters)
  tokens, mask = sampling.left_pad([[1, 5, 6], [1, 7, 8, 9, 10], [2]], pad_id=0, bucket=8)
  r = sampling.sample(Decoder(CONFIG), params, tokens, mask, jax.random.PRNGKey(1),
                      max_new_tokens=10, num_samples=2, temperature=1.0, eos_ids=np.array([3]),
                      pad_id=0)
  want = logprobs.completion_logprobs(Decoder(CONFIG), params, r.prompt_tokens, r.prompt_mask,
                                      r.tokens, r.mask, 1.0)
  assert float(jnp.sum(r.mask)) > 6
  assert float(jnp.max(jnp.abs((want - r.logp) * r.mask))) <= 1e-5


@pytest.mark.slow
def test_a_step_changes_only_the_adapters_and_the_kl_reference_is_the_base():
  base, adapters = base_params(), lora.init_adapters(CONFIG, jax.random.PRNGKey(1))
  tokens, mask = sampling.left_pad([[1, 5, 6], [1, 7, 8, 9]], pad_id=0, bucket=4)
  params = lora.combine(base, adapters)
  r = sampling.sample(Decoder(CONFIG), params, tokens, mask, jax.random.PRNGKey(2),
                      max_new_tokens=6, num_samples=4, temperature=1.0, eos_ids=np.array([3]),
                      pad_id=0)
  ref = logprobs.completion_logprobs(Decoder(CONFIG), base, r.prompt_tokens, r.prompt_mask,
                                     r.tokens, r.mask, 1.0)
  np.testing.assert_allclose(ref, r.logp * r.mask, atol=1e-5)  # B = 0: policy = reference
  transform = losses.from_config({"chain": "group_mean,clipped_ratio,kl_loss,token_mean"})
  optimizer = train.make_optimizer(train.ml_collections.ConfigDict(dict(
      learning_rate=1e-2, warmup_steps=0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      clip_norm=1.0)))
  state = train.TrainState(round=jnp.zeros((), jnp.int32), params=adapters,
                           opt_state=optimizer.init(adapters), loss_state=transform.init())
  rb = train.RolloutBatch(prompt_tokens=r.prompt_tokens, prompt_mask=r.prompt_mask,
                          loss=losses.Batch(tokens=r.tokens, mask=r.mask, behaviour_logp=r.logp,
                                            rewards=jnp.array([1.0, 0, 0, 1, 0, 1, 0, 0]),
                                            group_ids=jnp.repeat(jnp.arange(2), 4),
                                            ref_logp=ref))
  base_copy = jax.tree.map(np.array, base)
  new, metrics = train.train_step(state, rb, jnp.float32(1.0), base, decoder=Decoder(CONFIG),
                                  transform=transform, optimizer=optimizer)
  assert jax.tree.structure(new.params) == jax.tree.structure(adapters)
  assert jax.tree.structure(new.opt_state) == jax.tree.structure(optimizer.init(adapters))
  assert np.any(np.asarray(new.params["layer_1"]["mlp"]["down_lora_b"]))  # B moved
  for x, y in zip(jax.tree.leaves(base), jax.tree.leaves(base_copy)):  # base untouched
    np.testing.assert_array_equal(x, y)
  assert float(metrics["grad_norm"]) > 0


def test_configure_and_config_errors():
  assert lora.configure(BASE, 0, 8.0, ALL).lora_modules == ()
  with pytest.raises(ValueError, match=r"lora modules \['qkv'\] are not projections"):
    lora.configure(BASE, 4, 8.0, "q,qkv")
  with pytest.raises(ValueError, match="with no lora_modules"):
    dataclasses.replace(BASE, lora_rank=2)
  cfg = ModelConfig.from_dict(CONFIG.to_dict())
  assert cfg == CONFIG


def test_merged_export_loads_as_a_plain_model(tmp_path):
  from rft_jax import models
  from rft_jax.models.policy import Policy
  from tests.models.test_hf_parity import make_tokenizer

  tok = make_tokenizer("qwen2")
  config = dataclasses.replace(CONFIG, vocab_size=len(tok.get_vocab()))
  base_cfg = dataclasses.replace(BASE, vocab_size=config.vocab_size)
  base = init_params(base_cfg, jax.random.PRNGKey(0))
  adapters = lora.init_adapters(config, jax.random.PRNGKey(1))
  adapters = jax.tree.map(lambda x: x + 0.1, adapters)
  params = lora.combine(base, adapters)
  policy = Policy(config=config, params=params, tokenizer=tok, eos_ids=(1,), pad_id=0)
  loaded = models.load(models.save(policy, tmp_path / "merged"))
  assert loaded.config.lora_rank == 0
  assert not lora.split(loaded.params)[1]
  want = logits(config, params)
  # W + s A B merged in float32 against x W + s (x A) B: other rounding, which grows with the
  # logits' scale (about 8 here; 2 layers); a wrong merge moves them by O(1).
  np.testing.assert_allclose(logits(loaded.config, loaded.params)[..., :config.vocab_size],
                             want, atol=2e-5 * np.abs(want).max())
