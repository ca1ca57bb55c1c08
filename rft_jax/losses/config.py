"""Builds a loss chain from a config: the chain's names, and each transform's settings.

A config names the chain and the settings separately, so every knob can be overridden from the
command line:

    config.loss = ml_collections.ConfigDict(rl.recipe_config("grpo"))  # chain + every default
    --config.loss.chain=group_mean,clipped_ratio,token_mean
    --config.loss.clipped_ratio.eps_high=0.28

`from_config` reads `loss_config.chain` (comma-separated registry names) and `loss_config.<name>`
(keyword arguments of that factory); settings of transforms that are not in the chain are ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rft_jax.losses import advantages, aggregation, regularizers, reward_maps, surrogates
from rft_jax.losses.base import LossTransform, named_chain

# name -> factory. Config files use these names; adding a transform = one line here.
REGISTRY: dict[str, Callable[..., LossTransform]] = {
    # reward maps (before the advantage)
    "affine_reward": reward_maps.affine_reward,
    "clip_reward": reward_maps.clip_reward,
    "kl_reward": reward_maps.kl_reward,
    # baselines and scalings
    "raw_reward": advantages.raw_reward,
    "group_mean": advantages.group_mean,
    "group_std": advantages.group_std,
    "batch_std": advantages.batch_std,
    "leave_one_out": advantages.leave_one_out,
    "history_baseline": advantages.history_baseline,
    "baseline_only": advantages.baseline_only,
    # surrogates
    "policy_gradient": surrogates.policy_gradient,
    "clipped_ratio": surrogates.clipped_ratio,
    "dual_clip": surrogates.dual_clip,
    "sequence_ratio": surrogates.sequence_ratio,
    "truncated_is": surrogates.truncated_is,
    # regularizers
    "kl_loss": regularizers.kl_loss,
    "entropy_bonus": regularizers.entropy_bonus,
    # aggregations
    "token_mean": aggregation.token_mean,
    "seq_mean_token_mean": aggregation.seq_mean_token_mean,
    "seq_mean_token_sum": aggregation.seq_mean_token_sum,
    "seq_mean_token_sum_norm": aggregation.seq_mean_token_sum_norm,
}

# What a chain needs (build_chain): a surrogate, then exactly one aggregation, at the end.
SURROGATES = ("policy_gradient", "clipped_ratio", "dual_clip", "sequence_ratio")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                "seq_mean_token_sum_norm")

_PLAIN = (bool, int, float, str)


def factory_defaults(name: str) -> dict[str, Any]:
  """{kwarg: default} of one registered factory, read from its signature."""
  out = {}
  for p in inspect.signature(REGISTRY[name]).parameters.values():
    if p.default is inspect.Parameter.empty or not isinstance(p.default, _PLAIN):
      raise TypeError(
          f"loss transform {name!r}: kwarg {p.name!r} has default {p.default!r}; configs need a "
          "plain bool/int/float/str default (use a sentinel such as -1 for 'unset')")
    out[p.name] = p.default
  return out


def default_settings() -> dict[str, dict[str, Any]]:
  """{name: {kwarg: default}} for every registered transform that has kwargs.

  Read from the factory signatures, so it never drifts from the code. Put it in the locked config
  (`config.loss.update(default_settings())`) to make every knob overridable from the command line.
  """
  out = {}
  for name in REGISTRY:
    d = factory_defaults(name)
    if d:
      out[name] = d
  return out


def parse_chain(chain: str | Iterable[str]) -> list[str]:
  names = [n.strip() for n in chain.split(",")] if isinstance(chain, str) else list(chain)
  names = [n for n in names if n]
  unknown = [n for n in names if n not in REGISTRY]
  if unknown:
    raise ValueError(f"unknown loss transform(s) {unknown}; known: {sorted(REGISTRY)}")
  if not names:
    raise ValueError("the loss chain is empty")
  return names


def _as_dict(x) -> dict:
  if x is None:
    return {}
  return dict(x.to_dict() if hasattr(x, "to_dict") else x)


def build(name: str, kwargs: Mapping[str, Any] | None = None) -> LossTransform:
  """One registered transform from its settings, with an error naming the transform."""
  kwargs = _as_dict(kwargs)
  allowed = inspect.signature(REGISTRY[name]).parameters
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(
        f"loss transform {name!r} has no setting(s) {unknown}; it takes {sorted(allowed)}")
  try:
    return REGISTRY[name](**kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"bad settings for loss transform {name!r}: {kwargs}: {e}") from e


def check_order(names: Sequence[str]) -> None:
  """A chain of registry names computes what it says: a surrogate, then one aggregation, last.
  A transform after the aggregation would never reach the loss (kl_loss there is paid for by a
  reference forward pass every round, and logged, but not trained on), a second aggregation
  would replace the first, and without a surrogate the gradient is zero."""
  where = [i for i, n in enumerate(names) if n in AGGREGATIONS]
  if len(where) != 1 or where[0] != len(names) - 1:
    raise ValueError(f"the loss chain {','.join(names)} must end in exactly one aggregation "
                     f"({', '.join(AGGREGATIONS)}); a transform after it never reaches the loss")
  if not any(n in SURROGATES for n in names):
    raise ValueError(f"the loss chain {','.join(names)} has no surrogate ({', '.join(SURROGATES)})"
                     ": its loss would carry no policy gradient")


def build_chain(spec: Iterable[tuple[str, Mapping[str, Any]]]) -> LossTransform:
  """named_chain from [(name, kwargs), ...], its order checked (check_order)."""
  spec = list(spec)
  names = parse_chain([n for n, _ in spec])
  check_order(names)
  return named_chain(*[(n, build(n, kw)) for n, kw in spec])


def from_config(loss_config: Mapping[str, Any]) -> LossTransform:
  """`loss_config.chain` names the transforms in order ("raw_reward,clipped_ratio,token_mean");
  `loss_config.<name>` (optional) holds that transform's keyword arguments."""
  names = parse_chain(loss_config["chain"])
  return build_chain((n, loss_config.get(n, None)) for n in names)
