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
from rft_jax.losses.config import AGGREGATIONS, build_chain, default_settings

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


# ---- peers: the losses of verl and TRL by name, as chains of the same transforms -------------
# Each matches the peer's code (versions named in the docstrings; tests/losses/test_losses_peers.py
# checks values and gradients against NumPy transcriptions of it). docs/losses.md, "Conventions",
# lists where the peers and rft_jax's own recipes differ.

# verl's kl_loss_type names -> rft_jax estimators.
VERL_KL = {"kl": "k1", "k1": "k1", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3",
           "abs": "abs"}


def _verl_kl(coef: float, estimator: str) -> tuple[str, dict[str, Any]]:
  if estimator not in VERL_KL:
    raise ValueError(f"verl kl_loss_type {estimator!r}; known: {sorted(VERL_KL)}")
  k = VERL_KL[estimator]
  # verl clamps low_var_kl only: log-ratio to [-20, 20] before exp, the estimate to [-10, 10].
  clamps = {"clamp": 10.0, "log_ratio_clamp": 20.0} if k == "k3" else {}
  return ("kl_loss", {"coef": coef, "estimator": k, **clamps})


def _verl_grpo_advantage(std_eps: float, norm_by_std: bool) -> Spec:
  # verl's grpo estimator: a group of one gets mean 0 and std 1, so A = R / (1 + eps).
  spec = [("group_mean", {"singleton": "zero"})]
  if norm_by_std:
    spec.append(("group_std", {"eps": std_eps, "ddof": 1, "singleton_std": 1.0}))
  return spec


@_recipe
def verl_grpo(eps: float = 0.2, eps_high: float = -1.0, clip_c: float = 3.0,
              std_eps: float = 1e-6, kl_coef: float = 0.0,
              kl_estimator: str = "low_var_kl") -> Spec:
  """verl's GRPO: adv_estimator=grpo, policy loss "vanilla", loss_agg_mode token-mean (verl
  0.9.1, verl/trainer/ppo/core_algos.py; the same formulas in 0.4.1 to 0.9.1).

      A_i = (R_i - mean_g R) / (std_g R + std_eps)     (a group of one: R_i / (1 + std_eps))
      r_t = exp(clip(log pi - log pi_old, -20, 20))
      l_t = -min(r A, clip(r, 1 - eps, 1 + eps_high) A);  for A < 0: l_t = min(l_t, -clip_c A)
      L   = sum_it m l_it / sum_it m  +  kl_coef * (the same token mean of kl_t)

  kl_coef = 0 (use_kl_loss=False, verl's default) drops the KL term; kl_estimator takes verl's
  names (low_var_kl = k3 with verl's clamps, log-ratio to [-20, 20] and k3 to [-10, 10]; kl / k1,
  mse / k2, abs unclamped). The dual clip (clip_ratio_c = 3) is always on in verl's vanilla loss.
  Hu et al.'s companion scripts: kl_coef=0.001, low_var_kl.
  """
  return _verl_grpo_advantage(std_eps, True) + [
      ("dual_clip", {"eps_low": eps, "eps_high": eps_high, "c": clip_c, "log_ratio_clamp": 20.0}),
      _verl_kl(kl_coef, kl_estimator),
      ("token_mean", {})]


@_recipe
def verl_dr_grpo(eps: float = 0.2, eps_high: float = -1.0, clip_c: float = 3.0,
                 max_len: int = -1, divide_by_seqs: bool = True, kl_coef: float = 0.0,
                 kl_estimator: str = "low_var_kl") -> Spec:
  """verl's Dr. GRPO setting: adv_estimator=grpo with norm_adv_by_std_in_grpo=False, policy loss
  "vanilla", loss_agg_mode seq-mean-token-sum-norm (verl 0.9.1):

      A_i = R_i - mean_g R                              (a group of one: R_i)
      l_t as verl_grpo (dual clip, log-ratio clamp)
      L   = sum_it m l_it / (N L_max)                    (+ kl_coef times the same of kl_t)

  L_max = max_len (verl's loss_scale_factor; <= 0: the padded response length, verl's default).
  divide_by_seqs=False reproduces verl <= 0.7.0, whose seq-mean-token-sum-norm was
  sum_it m l_it / L_max (no 1/N).
  """
  return _verl_grpo_advantage(0.0, False) + [
      ("dual_clip", {"eps_low": eps, "eps_high": eps_high, "c": clip_c, "log_ratio_clamp": 20.0}),
      _verl_kl(kl_coef, kl_estimator),
      ("seq_mean_token_sum_norm", {"max_len": max_len, "divide_by_seqs": divide_by_seqs})]


VERL_AGGREGATIONS = AGGREGATIONS


@_recipe
def verl_gspo(eps_low: float = 3e-4, eps_high: float = 4e-4, std_eps: float = 1e-6,
              kl_coef: float = 0.0, kl_estimator: str = "low_var_kl",
              aggregation: str = "seq_mean_token_mean") -> Spec:
  """verl's GSPO: adv_estimator=grpo, policy loss "gspo" (verl 0.9.1):

      A_i = (R_i - mean_g R) / (std_g R + std_eps)     (a group of one: R_i / (1 + std_eps))
      s_it = exp(min(sg[log s_i] + log pi(o_it) - sg[log pi(o_it)], 10)),
             log s_i = (1/|o_i|) sum_t (log pi - log pi_old)
      l_it = -min(s_it A_i, clip(s_it, 1 - eps_low, 1 + eps_high) A_i)    (no dual clip)

  aggregated by `aggregation` (verl's loss_agg_mode; its GSPO example scripts use
  seq-mean-token-mean, the default here). verl 0.6.0 to 0.8.0 always aggregated GSPO by
  seq-mean-token-mean whatever loss_agg_mode said; 0.9 honours it. sequence_ratio with
  max_log_ratio=10 gives the same values and gradients under every aggregation.
  """
  if aggregation not in VERL_AGGREGATIONS:
    raise ValueError(f"verl_gspo: aggregation={aggregation!r}; choose one of {VERL_AGGREGATIONS}")
  return _verl_grpo_advantage(std_eps, True) + [
      ("sequence_ratio", {"eps_low": eps_low, "eps_high": eps_high, "max_log_ratio": 10.0}),
      _verl_kl(kl_coef, kl_estimator),
      (aggregation, {})]


@_recipe
def trl_grpo(eps: float = 0.2, eps_high: float = -1.0, beta: float = 0.0,
             std_eps: float = 1e-4) -> Spec:
  """TRL's GRPOTrainer with its default loss (TRL 1.16.0: loss_type="dapo", scale_rewards="group",
  epsilon 0.2, beta 0.0, importance_sampling_level="token", use_bias_correction_kl=True):

      A_i = (R_i - mean_g R) / (std_g R + 1e-4)        (std unbiased; a group of one: 0)
      r_t = exp(log pi - log pi_old)                    (no clamp, no dual clip)
      l_t = -min(r A, clip(r, 1 - eps, 1 + eps_high) A) + beta r_t k3_t
      L   = sum_it m l_it / sum_it m                    (loss_type "dapo": the generation batch's
                                                         tokens, over accumulation and processes)

  k3_t = exp(log ref - log pi) - (log ref - log pi) - 1, unclamped, weighted by the
  differentiable ratio r_t (use_bias_correction_kl). TRL refuses num_generations < 2 in training;
  a group of one (evaluation) has std 0 and gets A = 0, as here.
  """
  return [("group_mean", {}),
          ("group_std", {"eps": std_eps, "ddof": 1}),
          ("clipped_ratio", {"eps_low": eps, "eps_high": eps_high}),
          ("kl_loss", {"coef": beta, "estimator": "k3", "ratio_weight": True}),
          ("token_mean", {})]


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
