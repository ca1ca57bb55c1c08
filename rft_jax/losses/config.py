"""Builds a loss chain from a config: the chain's names, and each transform's settings."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from rft_jax.losses import advantages, aggregation, surrogates
from rft_jax.losses.base import LossTransform, named_chain

# name -> factory. Config files use these names; adding a transform = one line here.
REGISTRY: dict[str, Callable[..., LossTransform]] = {
    "raw_reward": advantages.raw_reward,
    "clipped_ratio": surrogates.clipped_ratio,
    "token_mean": aggregation.token_mean,
}


def parse_chain(chain: str | list[str] | tuple[str, ...]) -> list[str]:
  names = [n.strip() for n in chain.split(",")] if isinstance(chain, str) else list(chain)
  names = [n for n in names if n]
  unknown = [n for n in names if n not in REGISTRY]
  if unknown:
    raise ValueError(f"unknown loss transform(s) {unknown}; known: {sorted(REGISTRY)}")
  if not names:
    raise ValueError("the loss chain is empty")
  return names


def from_config(loss_config: Mapping[str, Any]) -> LossTransform:
  """`loss_config.chain` names the transforms in order ("raw_reward,clipped_ratio,token_mean");
  `loss_config.<name>` (optional) holds that transform's keyword arguments."""
  names = parse_chain(loss_config["chain"])
  built = []
  for name in names:
    kwargs = dict(loss_config.get(name, None) or {})
    try:
      built.append((name, REGISTRY[name](**kwargs)))
    except TypeError as e:
      raise ValueError(f"bad settings for loss transform {name!r}: {kwargs}: {e}") from e
  return named_chain(*built)
