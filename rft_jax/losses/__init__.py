"""Composable RL loss transforms over per-token log-probs (import as `rft_jax.losses as rl`).

Light on purpose: importing this package pulls in jax and flax.struct only.
"""

from rft_jax.losses.advantages import raw_reward
from rft_jax.losses.aggregation import token_mean
from rft_jax.losses.base import (
    Batch,
    LossTransform,
    Terms,
    chain,
    compute_loss,
    initial_terms,
    named_chain,
    stateless,
)
from rft_jax.losses.config import REGISTRY, from_config
from rft_jax.losses.recipes import minimal
from rft_jax.losses.surrogates import clipped_ratio
