"""rft_jax.plan: the per-device bytes it counts equal those of the real arrays it stands for."""

import os

import jax
import pytest

from configs import l0_minimal
from rft_jax import plan as plan_lib, sharding, train
from rft_jax.models import KVCache, ModelConfig, abstract_params, init_params, lora, shapes

TINY = ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                   d_ff=48, variant="qwen2", qkv_bias=True, tie_embeddings=True)


def config(g=8, **model):
  c = l0_minimal.get_config(None)
  c.rollout.num_samples, c.rollout.max_new_tokens = g, 8
  c.train.micro_batch_size = 2
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.model.update(model)
  return c


def device_bytes(tree) -> int:
  """Bytes of one device's shards of real, placed arrays."""
  return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("n_devices", [1, 8])
def test_params_optimizer_state_and_cache_are_the_real_arrays_bytes(n_devices):
  devices = jax.devices()[:n_devices]
  c = config()
  pl = plan_lib.plan(c, TINY, prompt_len=8, devices=devices)
  # Independently: the real params and AdamW state, placed with run()'s shardings.
  mesh = sharding.build_mesh(**c.mesh, devices=devices)
  params = jax.device_put(init_params(TINY, jax.random.PRNGKey(0)),
                          sharding.param_shardings(abstract_params(TINY), mesh))
  opt_state = train.init_optimizer(train.make_optimizer(c.optimizer), params, mesh)
  assert pl.params == device_bytes(params)
  assert pl.opt_state == device_bytes(opt_state)
  # AdamW: two moments split like the params, plus step counts.
  assert 0 <= pl.opt_state - 2 * device_bytes(params) <= 64
  assert pl.reference == 0  # l0's chain has no KL term
  whole = sum(x.nbytes for x in jax.tree.leaves(params))
  if n_devices > 1:  # the embedding and every [D, ...] weight are split 8 ways
    assert pl.params < whole / 4
  else:
    assert pl.params == whole
  cache = KVCache.zeros(TINY, 8, 8 + 8)  # 8 rollouts split over the devices
  assert pl.kv_cache == sum(x.nbytes for x in (*cache.k, *cache.v)) // n_devices
  assert pl.train > 0 and pl.sample > 0
  assert pl.peak == pl.params + pl.opt_state + max(pl.train, pl.sample)


def test_lora_plan_counts_adapters_only_in_the_optimizer_and_a_free_reference():
  c = config(lora=dict(rank=4, alpha=8.0, modules="q,v,down"))
  c.loss.chain = "group_mean,clipped_ratio,kl_loss,token_mean"
  devices = jax.devices()[:1]
  pl = plan_lib.plan(c, TINY, prompt_len=8, devices=devices)
  cfg = lora.configure(TINY, 4, 8.0, "q,v,down")
  adapters = lora.init_adapters(cfg, jax.random.PRNGKey(0))
  base = init_params(TINY, jax.random.PRNGKey(0))
  nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))
  assert pl.trained_count == sum(x.size for x in jax.tree.leaves(adapters))
  assert pl.params == nbytes(base) + nbytes(adapters)
  assert pl.opt_state == nbytes(jax.jit(train.make_optimizer(c.optimizer).init)(adapters))
  assert pl.reference == 0  # the base with adapters off
  c.model.lora.rank = 0  # full fine-tuning with a KL term keeps a copy of the params
  assert plan_lib.plan(c, TINY, prompt_len=8, devices=devices).reference == nbytes(base)


def test_paper_shapes_have_their_published_sizes():
  counts = {name: sum(x.value.size for x in jax.tree.leaves(
      abstract_params(shapes.model_config(name)), is_leaf=lambda x: hasattr(x, "names")))
      for name in shapes.CONFIGS}
  # The parameter counts the model cards state.
  assert round(counts["qwen2.5-0.5b"] / 1e9, 2) == 0.49
  assert round(counts["qwen2.5-1.5b"] / 1e9, 2) == 1.54
  assert round(counts["llama-3.2-1b"] / 1e9, 2) == 1.24
  assert round(counts["olmo-2-1b"] / 1e9, 2) == 1.48
  assert round(counts["smollm2-135m"] / 1e6, 1) == 134.5  # and the GGUF's (models/fetch.py)
  assert shapes.canonical("Qwen/Qwen2.5-1.5B-Instruct") == "qwen2.5-1.5b"
  with pytest.raises(ValueError, match="unknown model shape 'gpt2'.*known: qwen2.5-0.5b"):
    shapes.model_config("gpt2")


@pytest.mark.parametrize("argv", [["--devices=8"], ["--devices", "8"], ["--x", "--devices", "8"]])
def test_devices_flag_forces_host_devices_in_both_forms(argv, monkeypatch):
  """absl accepts --devices=8 and --devices 8; the second was ignored (the plan ran on 1)."""
  monkeypatch.setenv("XLA_FLAGS", "")
  plan_lib._force_devices(["plan.py", *argv])
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"


def test_a_round_plans_no_more_questions_than_the_training_set_has():
  """prompts_per_round 4 over one training question samples that question only (as the round
  does): 1 x G rollouts; with 4 questions, all 4 x G; by id, always one."""
  c = config(g=2)
  c.rollout.prompts_per_round = 4
  devices = jax.devices()[:1]
  assert plan_lib.plan(c, TINY, prompt_len=8, devices=devices).rows == 2
  c.example.num_examples = 4
  assert plan_lib.plan(c, TINY, prompt_len=8, devices=devices).rows == 8
  assert train.questions_per_round(4, "id", 4) == 1
  assert train.questions_per_round(3, "hard", 8) == 3
