"""Config mapping: registry, default_settings, from_config, recipe_chain, command-line overrides;
and the lightness of `import rft_jax.losses`."""

import inspect
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from losses_testlib import random_batch

import rft_jax.losses as rl
from rft_jax.losses import config as losses_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_default_settings_values_and_types():
  s = rl.default_settings()
  assert s["clipped_ratio"] == {"eps_low": 0.2, "eps_high": -1.0, "log_ratio_clamp": -1.0}
  assert s["kl_loss"] == {"coef": 0.001, "estimator": "k3", "clamp": -1.0, "log_ratio_clamp": -1.0,
                          "ratio_weight": False}
  assert s["history_baseline"] == {"num_prompts": 1, "window": 8, "empty_value": 0.0}
  assert s["seq_mean_token_sum_norm"] == {"max_len": -1, "divide_by_seqs": True}
  assert s["group_mean"] == {"singleton": "mean"}
  # Transforms without knobs are absent; every other one is present with plain-typed defaults.
  assert "token_mean" not in s and "raw_reward" not in s
  for name, factory in rl.REGISTRY.items():
    params = inspect.signature(factory).parameters
    assert (name in s) == bool(params), name
    for k, v in s.get(name, {}).items():
      assert type(v) in (bool, int, float, str), (name, k, v)
      assert type(v) is type(params[k].default)


def test_default_settings_follow_the_signatures(monkeypatch):
  # A new knob on a factory shows up without touching the config code.
  def new_transform(alpha: float = 0.5, mode: str = "x"):
    return rl.raw_reward()

  monkeypatch.setitem(rl.REGISTRY, "new_transform", new_transform)
  assert rl.default_settings()["new_transform"] == {"alpha": 0.5, "mode": "x"}

  def bad(alpha=None):
    return rl.raw_reward()

  monkeypatch.setitem(rl.REGISTRY, "bad", bad)
  with pytest.raises(TypeError, match="plain bool/int/float/str default"):
    rl.default_settings()


def _loss(transform, seed=0):
  batch, logp, entropy = random_batch(seed=seed)
  return float(jax.jit(lambda lp: rl.compute_loss(transform, lp, batch, transform.init(),
                                                  entropy=entropy)[0])(logp))


@pytest.mark.parametrize("name", sorted(rl.RECIPES))
def test_recipe_chain_rebuilds_the_recipe(name):
  chain, settings = rl.recipe_chain(name)
  assert chain.split(",") == [n for n, _ in rl.RECIPES[name]()]
  assert _loss(rl.from_config({"chain": chain, **settings})) == _loss(getattr(rl, name)())
  # recipe_config: the same chain plus every transform's defaults, all overridable.
  config = rl.recipe_config(name)
  assert config["chain"] == chain and set(rl.default_settings()) <= set(config)
  assert _loss(rl.from_config(config)) == _loss(getattr(rl, name)())


def test_recipe_settings():
  chain, settings = rl.recipe_chain("grpo")
  assert chain == "group_mean,group_std,clipped_ratio,kl_loss,seq_mean_token_mean"
  assert settings["clipped_ratio"] == {"eps_low": 0.2, "eps_high": 0.2, "log_ratio_clamp": -1.0}
  assert settings["kl_loss"] == {"coef": 0.04, "estimator": "k3", "clamp": -1.0,
                                 "log_ratio_clamp": -1.0, "ratio_weight": False}
  assert settings["group_std"] == {"eps": 1e-6, "ddof": 1, "singleton_std": -1.0}
  chain, settings = rl.recipe_chain("dapo", eps_high=0.3)
  assert chain == "group_mean,group_std,clipped_ratio,token_mean"
  assert settings["clipped_ratio"] == {"eps_low": 0.2, "eps_high": 0.3, "log_ratio_clamp": -1.0}
  assert rl.recipe_chain("minimal") == (
      "raw_reward,clipped_ratio,token_mean",
      {"clipped_ratio": {"eps_low": 0.2, "eps_high": 0.2, "log_ratio_clamp": -1.0}})
  # The peers: verl's clamps and dual clip, its singleton convention; TRL's eps and KL weight.
  chain, settings = rl.recipe_chain("verl_grpo", kl_coef=0.001)
  assert chain == "group_mean,group_std,dual_clip,kl_loss,token_mean"
  assert settings["group_mean"] == {"singleton": "zero"}
  assert settings["group_std"] == {"eps": 1e-6, "ddof": 1, "singleton_std": 1.0}
  assert settings["dual_clip"] == {"eps_low": 0.2, "eps_high": -1.0, "c": 3.0,
                                   "log_ratio_clamp": 20.0}
  assert settings["kl_loss"] == {"coef": 0.001, "estimator": "k3", "clamp": 10.0,
                                 "log_ratio_clamp": 20.0, "ratio_weight": False}
  assert rl.recipe_chain("verl_grpo", kl_coef=0.1, kl_estimator="abs")[1]["kl_loss"] == {
      "coef": 0.1, "estimator": "abs", "clamp": -1.0, "log_ratio_clamp": -1.0,
      "ratio_weight": False}
  chain, settings = rl.recipe_chain("trl_grpo")
  assert chain == "group_mean,group_std,clipped_ratio,kl_loss,token_mean"
  assert settings["group_std"]["eps"] == 1e-4 and settings["kl_loss"]["ratio_weight"]
  assert rl.recipe_chain("verl_gspo", aggregation="token_mean")[0].endswith(",kl_loss,token_mean")
  with pytest.raises(ValueError, match="verl kl_loss_type 'k9'"):
    rl.recipe_chain("verl_grpo", kl_estimator="k9")
  with pytest.raises(ValueError, match="aggregation='mean'"):
    rl.recipe_chain("verl_gspo", aggregation="mean")
  with pytest.raises(ValueError, match="unknown loss recipe"):
    rl.recipe_chain("ppo2")


def test_command_line_overrides_reach_the_chain():
  ml_collections = pytest.importorskip("ml_collections")
  from absl import flags
  from ml_collections import config_flags

  config = ml_collections.ConfigDict({"loss": rl.recipe_config("grpo")})
  argv = ["prog", "--config.loss.chain=group_mean,clipped_ratio,seq_mean_token_sum_norm",
          "--config.loss.clipped_ratio.eps_high=0.28",
          "--config.loss.seq_mean_token_sum_norm.max_len=512"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config, flag_values=fv, sys_argv=argv)
  fv(argv)
  loss_config = fv.config.loss
  assert loss_config.clipped_ratio.eps_high == 0.28
  assert loss_config.seq_mean_token_sum_norm.max_len == 512
  built = rl.from_config(loss_config)
  direct = rl.named_chain(("group_mean", rl.group_mean()),
                          ("clipped_ratio", rl.clipped_ratio(0.2, 0.28)),
                          ("seq_mean_token_sum_norm", rl.seq_mean_token_sum_norm(512)))
  assert _loss(built) == _loss(direct)
  assert _loss(built) != _loss(rl.from_config({"chain": loss_config.chain}))  # the knobs mattered


def test_from_config_errors():
  with pytest.raises(ValueError, match="unknown loss transform"):
    rl.from_config({"chain": "group_mean,clipped_ratoi,token_mean"})
  with pytest.raises(ValueError, match="the loss chain is empty"):
    rl.from_config({"chain": " , "})
  with pytest.raises(ValueError, match=r"clipped_ratio' has no setting\(s\) \['eps'\]"):
    rl.from_config({"chain": "raw_reward,clipped_ratio,token_mean", "clipped_ratio": {"eps": 0.1}})
  with pytest.raises(ValueError, match="bad settings for loss transform 'kl_loss'"):
    rl.from_config({"chain": "raw_reward,clipped_ratio,kl_loss,token_mean",
                    "kl_loss": {"estimator": "k9"}})
  with pytest.raises(ValueError, match="duplicate transform names"):
    rl.from_config({"chain": "raw_reward,clipped_ratio,clipped_ratio,token_mean"})


def test_from_config_ignores_settings_of_transforms_not_in_the_chain():
  config = {"chain": "raw_reward,clipped_ratio,token_mean", **rl.default_settings()}
  config["kl_loss"] = {"coef": 123.0, "estimator": "k1"}
  assert _loss(rl.from_config(config)) == _loss(rl.minimal())


def test_import_is_light():
  code = ("import sys, json; import rft_jax.losses; "
          "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
          "{m for m in sys.modules if m.startswith('rft_jax')})))")
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, check=True)
  modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
  assert "jax" in modules and "rft_jax.losses" in modules
  heavy_modules = ("transformers", "orbax", "torch", "rft_jax.models", "optax", "ml_collections",
                   "tensorflow")
  for heavy in heavy_modules:
    assert heavy not in modules, heavy


@pytest.mark.parametrize("chain, message", [
    ("group_mean,clipped_ratio,token_mean,kl_loss", "must end in exactly one aggregation"),
    ("group_mean,clipped_ratio,token_mean,seq_mean_token_sum", "must end in exactly one"),
    ("group_mean,clipped_ratio", "must end in exactly one aggregation"),
    ("raw_reward,kl_loss,token_mean", "has no surrogate"),
])
def test_chains_that_would_not_compute_what_they_name_are_refused(chain, message):
  """A KL term after the aggregation never reached the loss (its reference pass was paid for
  and its value logged), a second aggregation replaced the first, and a chain without a
  surrogate trained on a zero gradient; all built without a word."""
  with pytest.raises(ValueError, match=re.escape(f"the loss chain {chain} ") + ".*" + message):
    rl.from_config({"chain": chain})
  rl.from_config({"chain": "group_mean,clipped_ratio,kl_loss,token_mean"})  # the right order


def test_every_registered_transform_builds_with_its_defaults():
  for name in rl.REGISTRY:
    t = rl.named_chain((name, losses_config.build(name, rl.default_settings().get(name))))
    assert isinstance(t, rl.LossTransform)
    state = t.init()
    assert set(state) == {name}
  assert np.isfinite(_loss(rl.from_config({"chain": "history_baseline,clipped_ratio,token_mean",
                                           "history_baseline": {"num_prompts": 4}})))
