"""Named chains for the common algorithms: each recipe is one list of (transform, settings).

A recipe is written once, as a spec function returning [(registry name, kwargs), ...]; from it
come both the ready chain (`grpo(...)` -> LossTransform) and the config form
(`recipe_chain("grpo")` -> (chain string, settings)), so code and configs cannot disagree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from rft_jax.losses.base import LossTransform
from rft_jax.losses.config import build_chain, default_settings

Spec = list[tuple[str, dict[str, Any]]]
RECIPES: dict[str, Callable[..., Spec]] = {}


def _recipe(spec_fn: Callable[..., Spec]) -> Callable[..., LossTransform]:
  RECIPES[spec_fn.__name__] = spec_fn

  @functools.wraps(spec_fn)
  def make(*args, **kwargs) -> LossTransform:
    return build_chain(spec_fn(*args, **kwargs))

  make.spec = spec_fn
  return make


@_recipe
def minimal(eps: float = 0.2) -> Spec:
  """The paper's L0 (Hu et al. 2026): raw {0,1} reward, clipped ratio (eps 0.2), token mean.

  J = (1/|o|) sum_t min(r_t R, clip(r_t, 1-eps, 1+eps) R); with one on-policy update its gradient
  is R grad log pi averaged over tokens: REINFORCE without a baseline.
  """
  return [("raw_reward", {}),
          ("clipped_ratio", {"eps_low": eps, "eps_high": eps}),
          ("token_mean", {})]


@_recipe
def reinforce() -> Spec:
  """REINFORCE without baseline (Williams 1992): L = -(1/N) sum_i R_i sum_t log pi(o_it)."""
  return [("raw_reward", {}), ("policy_gradient", {}), ("seq_mean_token_sum", {})]


@_recipe
def rloo() -> Spec:
  """RLOO (Ahmadian et al. 2024): L = -(1/N) sum_i (R_i - mean_{j != i} R_j) log pi(o_i)."""
  return [("leave_one_out", {}), ("policy_gradient", {}), ("seq_mean_token_sum", {})]


@_recipe
def grpo(eps: float = 0.2, kl_coef: float = 0.04, kl_estimator: str = "k3",
         std_eps: float = 1e-6) -> Spec:
  """GRPO (Shao et al. 2024, DeepSeekMath, eq. 3):

      A_i = (R_i - mean_g R) / (std_g R + std_eps)
      L   = -(1/G) sum_i (1/|o_i|) sum_t [min(r A_i, clip(r, 1-eps, 1+eps) A_i) - beta KL_k3]

  kl_coef = beta (0.04 in the paper; 0 drops the term and the need for ref_logp).
  """
  return [("group_mean", {}),
          ("group_std", {"eps": std_eps}),
          ("clipped_ratio", {"eps_low": eps, "eps_high": eps}),
          ("kl_loss", {"coef": kl_coef, "estimator": kl_estimator}),
          ("seq_mean_token_mean", {})]


@_recipe
def dr_grpo(eps: float = 0.2, max_len: int = -1) -> Spec:
  """Dr. GRPO (Liu et al. 2025): A_i = R_i - mean_g R (no std), clipped ratio, and
  L = -(1/(G L_max)) sum_i sum_t min(r A_i, clip(r) A_i); max_len = L_max (<= 0: padded T)."""
  return [("group_mean", {}),
          ("clipped_ratio", {"eps_low": eps, "eps_high": eps}),
          ("seq_mean_token_sum_norm", {"max_len": max_len})]


@_recipe
def dapo(eps_low: float = 0.2, eps_high: float = 0.28, std_eps: float = 1e-6) -> Spec:
  """DAPO (Yu et al. 2025): GRPO's advantage, clip-higher (0.2 / 0.28), token mean, no KL.

  Dynamic sampling (drop groups whose rewards are all equal) is a data-side filter:
  `rft_jax.losses.drop_zero_variance_groups(rewards, group_ids) -> keep`.
  """
  return [("group_mean", {}),
          ("group_std", {"eps": std_eps}),
          ("clipped_ratio", {"eps_low": eps_low, "eps_high": eps_high}),
          ("token_mean", {})]


@_recipe
def gspo(eps_low: float = 3e-4, eps_high: float = 4e-4, std_eps: float = 1e-6) -> Spec:
  """GSPO (Zheng et al. 2025): group-normalised advantage, sequence-level clipped ratio
  s_i = exp(mean_t log r_it), L = -(1/G) sum_i min(s_i A_i, clip(s_i, 1-eps_lo, 1+eps_hi) A_i)."""
  return [("group_mean", {}),
          ("group_std", {"eps": std_eps}),
          ("sequence_ratio", {"eps_low": eps_low, "eps_high": eps_high}),
          ("seq_mean_token_mean", {})]


def recipe_chain(name: str, **kwargs) -> tuple[str, dict[str, dict[str, Any]]]:
  """(chain string, {transform: full settings}) of a recipe, for a config.

  The settings hold every kwarg of every transform in the chain (factory defaults overlaid with
  the recipe's choices), so each is overridable from the command line.
  """
  if name not in RECIPES:
    raise ValueError(f"unknown loss recipe {name!r}; known: {sorted(RECIPES)}")
  spec = RECIPES[name](**kwargs)
  defaults = default_settings()
  settings = {n: {**defaults[n], **kw} for n, kw in spec if n in defaults}
  return ",".join(n for n, _ in spec), settings


def recipe_config(name: str, **kwargs) -> dict[str, Any]:
  """A whole `config.loss` dict: {"chain": ..., <every registered transform>: its settings}.

  Defaults for all transforms (not only the recipe's), so a command line may also change the
  chain and set the knobs of the transforms it adds:
      config.loss = ml_collections.ConfigDict(recipe_config("grpo"))
  """
  chain, settings = recipe_chain(name, **kwargs)
  return {"chain": chain, **default_settings(), **settings}
