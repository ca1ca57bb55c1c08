"""Several JAX processes (one per host) running one run: start-up and the host-side plumbing.

    distributed.initialize(coordinator, num_processes, process_id, timeout_s)  # --multihost

Every process runs the same loop on the global mesh (all processes' devices); arrays split along
their leading axis (rollouts) put some rows on each process. A process decodes and grades only
the rows it holds (`local_rows`) and the per-row results are gathered (`gather_rows`), so every
process sees the same rewards and metrics; files are written by process 0 (`is_main`) on a file
system all hosts share, and decisions taken from files (does a checkpoint exist?) are process
0's (`agree`), since another process may look after process 0 has written.

In one process every helper is the identity or a plain device_get, with no collective.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from rft_jax import errors

# Seconds the runtime's own start-up deadline waits past ours: our watchdog speaks first, with a
# message saying what to do, rather than the runtime's abort and stack trace.
_RUNTIME_GRACE_S = 30


class DistributedError(errors.RunError):
  """The processes of a multi-process run could not start together."""


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> None:
  """jax.distributed.initialize; every argument None where JAX detects the cluster (TPU pods,
  SLURM, Open MPI, or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables).

  A peer that never joins ends this process within `timeout_s` with one line saying so (exit 1)
  instead of waiting; a peer that dies later ends the others within about `timeout_s` (the
  runtime's heartbeat timeout: it aborts them, naming the task that stopped). On CPU the
  cross-process collectives go through gloo.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise DistributedError("--coordinator_address, --num_processes and --process_id go together "
                           "(or none of them, where JAX detects the cluster)")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise DistributedError(f"--process_id={process_id}: must be in [0, {num_processes})")
  if timeout_s < 1:
    raise DistributedError(f"--multihost_timeout={timeout_s}: must be >= 1 second")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  who = (f"process {process_id} of {num_processes} (coordinator {coordinator_address})"
         if num_processes is not None else "this process (cluster detected by JAX)")

  def give_up():
    sys.stderr.write(f"error: {who}: not every process joined within {timeout_s} s; start the "
                     "same command on every host (each with its own --process_id), with the "
                     "coordinator's address reachable from all of them\n")
    sys.stderr.flush()
    os._exit(1)  # the main thread is inside the runtime's connect call

  watchdog = threading.Timer(timeout_s, give_up)
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout_s + _RUNTIME_GRACE_S,
                               heartbeat_timeout_seconds=timeout_s)
  except (RuntimeError, ValueError) as e:  # no cluster detected, a malformed address
    raise DistributedError(f"jax.distributed.initialize failed for {who}: "
                           f"{errors.short_reason(str(e))}") from e
  finally:
    watchdog.cancel()


def is_main() -> bool:
  """Process 0: the one that writes the run's files."""
  return jax.process_index() == 0


def agree(value: int) -> int:
  """Process 0's `value` (an int or bool) on every process."""
  if jax.process_count() == 1:
    return value
  return type(value)(multihost_utils.broadcast_one_to_all(np.int64(value)))


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any of them (a signal one host received)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def barrier(name: str) -> None:
  """Waits until every process gets here (after process 0 wrote what the others read next)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _row_range(index, rows: int) -> tuple[int, int]:
  start, stop, _ = (index[0] if index else slice(None)).indices(rows)
  return start, stop


def local_rows(x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """(row indices, rows) of the leading axis of `x` that this process grades, ascending: the
  rows its devices hold, less those a lower-numbered process also holds (a batch too small to
  split is replicated; its rows then count once, on process 0). All rows in one process."""
  if x.is_fully_addressable:
    return np.arange(x.shape[0]), np.asarray(jax.device_get(x))
  if any(s.data.shape[1:] != x.shape[1:] for s in x.addressable_shards):
    whole = to_host(x)  # split along another axis too: gathered, and graded by process 0
    return (np.arange(x.shape[0]), whole) if is_main() else (np.zeros(0, np.int64), whole[:0])
  owner: dict[tuple[int, int], int] = {}
  for device, index in x.sharding.devices_indices_map(x.shape).items():
    block = _row_range(index, x.shape[0])
    owner[block] = min(owner.get(block, device.process_index), device.process_index)
  mine = {}
  for shard in x.addressable_shards:
    block = _row_range(shard.index, x.shape[0])
    if owner[block] == jax.process_index() and block not in mine:
      mine[block] = np.asarray(shard.data)
  blocks = sorted(mine)
  if not blocks:
    return np.zeros(0, np.int64), np.zeros((0, *x.shape[1:]), x.dtype)
  return (np.concatenate([np.arange(*b) for b in blocks]),
          np.concatenate([mine[b] for b in blocks]))


def gather_rows(rows: np.ndarray, values: np.ndarray, total: int) -> np.ndarray:
  """The [total, ...] array of the per-row `values` each process computed for its `rows`
  (local_rows': together they cover 0..total-1 once), on every process."""
  values = np.asarray(values)
  rows = np.asarray(rows, np.int64)
  out = np.zeros((total, *values.shape[1:]), values.dtype)
  if jax.process_count() == 1:
    if len(rows) != total:
      raise ValueError(f"{len(rows)} rows given, {total} expected")
    out[rows] = values
    return out
  # process_allgather stacks equal shapes: pad each process's rows to the longest (row -1).
  width = int(multihost_utils.process_allgather(np.int64(len(rows))).max())
  padded_rows = np.full(width, -1, np.int64)
  padded_rows[:len(rows)] = rows
  padded = np.zeros((width, *values.shape[1:]), values.dtype)
  padded[:len(rows)] = values
  all_rows, all_values = multihost_utils.process_allgather((padded_rows, padded))
  all_rows = all_rows.reshape(-1)
  keep = all_rows >= 0
  out[all_rows[keep]] = all_values.reshape(-1, *values.shape[1:])[keep]
  return out


def sum_counts(counts: dict[str, int], names: Sequence[str]) -> dict[str, int]:
  """`counts` summed over the processes (every process passes the same `names`)."""
  mine = np.asarray([counts.get(n, 0) for n in names], np.int64)
  if jax.process_count() > 1:
    mine = multihost_utils.process_allgather(mine).sum(0)
  return {n: int(c) for n, c in zip(names, mine)}


def to_host(tree):
  """Every array of `tree` as NumPy on every process (all of it, wherever its shards are)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
