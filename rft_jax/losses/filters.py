"""Data-side filters: which rollouts enter the loss at all (applied before building the Batch)."""

from __future__ import annotations

import numpy as np


def drop_zero_variance_groups(rewards, group_ids, atol: float = 0.0) -> np.ndarray:
  """DAPO's dynamic sampling filter: keep[i] is False when every reward of i's group is equal.

  Such a group (all correct or all wrong) has zero group-normalised advantage and so gives no
  gradient; DAPO's dynamic sampling (Yu et al. 2025: keep 0 < |{correct}| < G) drops it and keeps
  sampling until the batch is full. This function is the filter; the over-sampling loop belongs to
  the data side. Works on NumPy or JAX arrays on the host (not under jit: the kept count is
  data-dependent).

    rewards: [B] float, group_ids: [B] int -> keep: [B] bool
  """
  rewards = np.asarray(rewards, dtype=np.float64)
  group_ids = np.asarray(group_ids)
  if rewards.ndim != 1 or group_ids.shape != rewards.shape:
    raise ValueError(
        f"rewards and group_ids must both be [B], got {rewards.shape} and {group_ids.shape}")
  _, inverse = np.unique(group_ids, return_inverse=True)
  inverse = inverse.reshape(-1)
  n = inverse.max(initial=-1) + 1
  lo = np.full(n, np.inf)
  hi = np.full(n, -np.inf)
  np.minimum.at(lo, inverse, rewards)
  np.maximum.at(hi, inverse, rewards)
  return (hi - lo)[inverse] > atol
