"""Composable RL loss transforms over per-token log-probs (import as `rft_jax.losses as rl`).

A loss is a chain of (init, update) transforms, as an optax optimizer is a chain of gradient
transformations: reward maps -> baseline / scaling -> surrogate -> regularizers -> aggregation.
See docs/losses.md for the table of transforms and an example train step.

Light on purpose: importing this package pulls in jax, flax.struct and numpy only.
"""

from rft_jax.losses.accumulate import (
    accumulate_gradients,
    combine_metrics,
    metric_weights,
    prepare_batch,
    split_batch,
)
from rft_jax.losses.advantages import (
    baseline_only,
    batch_std,
    group_mean,
    group_std,
    history_baseline,
    leave_one_out,
    raw_reward,
)
from rft_jax.losses.aggregation import (
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
)
from rft_jax.losses.base import (
    Batch,
    LossTransform,
    Terms,
    chain,
    compute_loss,
    initial_terms,
    masked_mean,
    named_chain,
    require_advantages,
    stateless,
)
from rft_jax.losses.config import REGISTRY, build_chain, default_settings, from_config, parse_chain
from rft_jax.losses.filters import drop_zero_variance_groups
from rft_jax.losses.recipes import (
    RECIPES,
    dapo,
    dr_grpo,
    grpo,
    gspo,
    minimal,
    recipe_chain,
    recipe_config,
    reinforce,
    rloo,
    trl_grpo,
    verl_dr_grpo,
    verl_grpo,
    verl_gspo,
)
from rft_jax.losses.regularizers import entropy_bonus, kl_loss
from rft_jax.losses.reward_maps import affine_reward, clip_reward, kl_estimate, kl_reward
from rft_jax.losses.surrogates import (
    clipped_ratio,
    dual_clip,
    policy_gradient,
    sequence_ratio,
    truncated_is,
)

__all__ = [
    "RECIPES",
    "REGISTRY",
    "Batch",
    "LossTransform",
    "Terms",
    "accumulate_gradients",
    "affine_reward",
    "baseline_only",
    "batch_std",
    "build_chain",
    "chain",
    "clip_reward",
    "clipped_ratio",
    "combine_metrics",
    "compute_loss",
    "dapo",
    "default_settings",
    "dr_grpo",
    "drop_zero_variance_groups",
    "dual_clip",
    "entropy_bonus",
    "from_config",
    "group_mean",
    "group_std",
    "grpo",
    "gspo",
    "history_baseline",
    "initial_terms",
    "kl_estimate",
    "kl_loss",
    "kl_reward",
    "leave_one_out",
    "masked_mean",
    "metric_weights",
    "minimal",
    "named_chain",
    "parse_chain",
    "policy_gradient",
    "prepare_batch",
    "raw_reward",
    "recipe_chain",
    "recipe_config",
    "reinforce",
    "require_advantages",
    "rloo",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "sequence_ratio",
    "split_batch",
    "stateless",
    "token_mean",
    "trl_grpo",
    "truncated_is",
    "verl_dr_grpo",
    "verl_grpo",
    "verl_gspo",
]
