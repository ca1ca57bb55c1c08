"""The pipeline's layer configs: each differs from its parent in exactly its declared fields."""

import pathlib

import ml_collections
import pytest

from configs import layers
from rft_jax import losses

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def flatten(c, prefix="") -> dict:
  out = {}
  for key, value in c.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def changed(a, b) -> set:
  fa, fb = flatten(a), flatten(b)
  return {k for k in fa.keys() | fb.keys() if fa.get(k, KeyError) != fb.get(k, KeyError)}


CASES = [(name, "") for name in layers.LAYERS] + [
    (name, arg) for name, layer in layers.LAYERS.items() for arg in layer.variants]


@pytest.mark.parametrize(("name", "arg"), CASES, ids=[f"{n}:{a}" for n, a in CASES])
def test_layer_changes_exactly_its_declared_fields(name, arg):
  layer = layers.get(name)
  declared = layer.variants[arg] if arg else layer.changes
  config = layer.get_config(arg)
  if layer.parent is None:  # the root's variants differ from its default argument
    assert not declared if not arg else changed(config, layer.get_config()) == set(declared)
    return
  parent = layers.get(layer.parent).get_config(layers.parent_arg(name, arg))
  assert changed(config, parent) == set(declared)


@pytest.mark.parametrize("name", list(layers.LAYERS))
def test_layer_builds_loss_chain_and_locks(name):
  for arg in ("", "runlocal"):
    config = layers.get(name).get_config(arg)
    losses.from_config(config.loss)
    config.lock()
    config.train.rounds = 3  # an existing field stays overridable
    with pytest.raises(AttributeError):
      config.train.roundz = 3  # a misspelled one stops
    for section in ("rollout", "example", "loss", "train", "eval", "warm_start"):
      assert section in config


def test_registry_covers_every_layer_file_and_lineage_is_a_tree():
  files = {p.stem for p in CONFIGS.glob("l[0-9]_*.py")} | {
      p.stem for p in CONFIGS.glob("beyond_*.py")}
  assert files == {layer.module.split(".")[-1] for layer in layers.LAYERS.values()}
  for name in layers.LAYERS:
    chain = layers.lineage(name)
    assert chain[0] == "l0" and chain[-1] == name and len(set(chain)) == len(chain)
    # An argument word must reach one layer only: no layer reuses an ancestor's argument name.
    seen = set()
    for ancestor in chain:
      args = set(layers.get(ancestor).args)
      assert not args & seen, (name, ancestor, args & seen)
      seen |= args
    assert "runlocal" not in seen
  for preset in layers.PRESETS.values():
    for spec in preset:
      layers.get(spec.partition(":")[0])


def test_layer_docstrings_give_command_and_expectation():
  for layer in layers.LAYERS.values():
    doc = layer.load().__doc__
    assert "python -m rft_jax.main --config=configs/" in doc, layer.name
    assert "Expected" in doc, layer.name
    if layer.parent:
      assert "Parent" in doc, layer.name


def test_arguments_flow_to_their_layer():
  c = layers.get("l3").get_config("neg=m10,g=4,runlocal")
  assert c.rollout.num_samples == 4 and c.loss.affine_reward.scale == 1.0
  assert c.loss.affine_reward.shift == -1.0 and c.train.rounds == 4  # runlocal reached common
  own, rest = layers.split_arg("a=3,b,c=x,flag", {"a": 1, "flag": False})
  assert (own.a, own.flag, rest) == (3, True, "b,c=x")
  with pytest.raises(ValueError, match="unknown config argument"):
    layers.get("l2").get_config("bogus=1")
  with pytest.raises(ValueError, match="neg="):
    layers.get("l3").get_config("neg=zero")
  with pytest.raises(ValueError, match="bucket="):
    layers.get("l4").get_config("bucket=tiny")


def test_l3_is_invisible_under_a_group_advantage():
  """Why L3's parent is L1: (aR + b - mean) / std = (R - mean) / std for a > 0."""
  import jax.numpy as jnp

  rewards = jnp.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
  batch = losses.Batch(tokens=jnp.zeros((8, 3), jnp.int32), mask=jnp.ones((8, 3)),
                       behaviour_logp=jnp.zeros((8, 3)), rewards=rewards,
                       group_ids=jnp.zeros(8, jnp.int32))

  def advantages(config):
    prepared, _, _ = losses.prepare_batch(losses.from_config(config.loss), batch,
                                          losses.from_config(config.loss).init())
    return prepared.advantages

  l2 = layers.get("l2").get_config()
  l3_over_l2 = layers.get("l2").get_config()
  l3_over_l2.loss.chain = "affine_reward," + l3_over_l2.loss.chain
  l3_over_l2.loss.affine_reward.update(scale=2.0, shift=-1.0)
  assert jnp.allclose(advantages(l2), advantages(l3_over_l2), atol=1e-5)
  l1, l3 = layers.get("l1").get_config(), layers.get("l3").get_config()
  assert jnp.allclose(advantages(l1), rewards)
  assert jnp.allclose(advantages(l3), 2 * rewards - 1)


def test_history_windows_follow_the_training_set_size():
  c = layers.get("history").get_config()
  c.example.num_examples = 5
  assert c.loss.history_baseline.num_prompts == 5
  # ... and an override of the windows alone leaves the training set as it was (a two-way
  # reference wrote it through to example.num_examples)
  c = layers.get("history").get_config()
  before = c.example.num_examples
  c.loss.history_baseline.num_prompts = before + 3
  assert c.example.num_examples == before and c.loss.history_baseline.num_prompts == before + 3
