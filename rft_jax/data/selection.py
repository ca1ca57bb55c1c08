"""Choosing the single training example by difficulty (pipeline layer L4, PAPER.md).

Difficulty is the base model's pass rate on a question, estimated from n samples: p = c / n.
Buckets (thresholds are module constants, recorded in every saved table):

  easy            p >= 0.7
  medium          0.3 <= p < 0.7
  hard            0 < p < 0.3
  extremely_hard  p == 0        (no correct sample among n: the paper's "pass rate ~ 0")

With n samples, 'extremely_hard' means "below about 1/n"; use n >= 16 for the split to mean much.
The sampler is the caller's: `estimate_difficulty` takes a function
`sample_rewards(examples, n) -> array [len(examples), n]` of 0/1 correctness.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rft_jax.data.base import Example
from rft_jax.evaluation_math import as_correct, save_results

EASY_MIN = 0.7    # p >= EASY_MIN: easy
MEDIUM_MIN = 0.3  # MEDIUM_MIN <= p < EASY_MIN: medium; 0 < p < MEDIUM_MIN: hard
BUCKETS = ("easy", "medium", "hard", "extremely_hard")

SampleRewards = Callable[[Sequence[Example], int], Any]


def bucket_of(pass_rate: float) -> str:
  """The difficulty bucket of a pass rate in [0, 1] (see the module doc)."""
  if not 0.0 <= pass_rate <= 1.0:
    raise ValueError(f"pass rate must be in [0, 1], got {pass_rate}")
  if pass_rate >= EASY_MIN:
    return "easy"
  if pass_rate >= MEDIUM_MIN:
    return "medium"
  if pass_rate > 0.0:
    return "hard"
  return "extremely_hard"


def difficulty_table(examples: Sequence[Example], rewards) -> dict[str, Any]:
  """The table for `rewards [len(examples), n]`: one row per example (id, n, num_correct,
  pass_rate, bucket, subject, level), the thresholds and the bucket counts."""
  r = as_correct(rewards)
  if r.shape[0] != len(examples):
    raise ValueError(f"{len(examples)} examples but rewards has {r.shape[0]} rows")
  if r.shape[1] == 0:
    raise ValueError("need at least one sample per example")
  rows = []
  for ex, row in zip(examples, r):
    c = int(row.sum())
    p = c / row.size
    rows.append({
        "id": ex.id, "n": int(row.size), "num_correct": c, "pass_rate": p, "bucket": bucket_of(p),
        "subject": ex.meta.get("subject"), "level": ex.meta.get("level"),
    })
  counts = {b: sum(row["bucket"] == b for row in rows) for b in BUCKETS}
  return {"thresholds": {"easy_min": EASY_MIN, "medium_min": MEDIUM_MIN},
          "counts": counts, "rows": rows}


def estimate_difficulty(
    examples: Sequence[Example], sample_rewards: SampleRewards, n: int, *, chunk_size: int | None = None
) -> dict[str, Any]:
  """Sample n responses per example with `sample_rewards` (in chunks of `chunk_size` examples,
  all at once by default) and return `difficulty_table`."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  chunk_size = chunk_size or max(1, len(examples))
  parts = []
  for start in range(0, len(examples), chunk_size):
    chunk = examples[start:start + chunk_size]
    r = np.asarray(sample_rewards(chunk, n))
    if r.shape != (len(chunk), n):
      raise ValueError(f"sample_rewards returned shape {r.shape}, expected {(len(chunk), n)}")
    parts.append(r)
  rewards = np.concatenate(parts) if parts else np.zeros((0, n))
  return difficulty_table(examples, rewards)


def save_table(path: str | os.PathLike, table: Mapping[str, Any]) -> None:
  """Write the table as JSON (atomically)."""
  save_results(path, table)


def load_table(path: str | os.PathLike) -> dict[str, Any]:
  with open(path) as f:
    table = json.load(f)
  if "rows" not in table:
    raise ValueError(f"{path}: not a difficulty table (no 'rows')")
  return table


def check_table(table: Mapping[str, Any], candidates: Sequence[Example], samples: int,
                path: str) -> None:
  """Raises ValueError unless `table` scores exactly `candidates` (ids, in any order) with
  `samples` samples each: a table made for another task, candidate list or sample count would
  pick the training question by other questions' difficulty."""
  want = {ex.id for ex in candidates}
  have = [row.get("id") for row in table["rows"]]
  if set(have) != want or len(have) != len(want):
    unknown = sorted(set(have) - want)[:3]
    raise ValueError(f"{path}: the difficulty table scores {len(have)} questions, not this run's "
                     f"{len(want)} candidates" + (f" (e.g. {', '.join(map(str, unknown))} is not "
                                                   "among them)" if unknown else ""))
  other = sorted({row.get("n") for row in table["rows"]} - {samples})
  if other:
    raise ValueError(f"{path}: the difficulty table has {other[0]} samples per question, not "
                     f"example.samples={samples}")


def select(
    table: Mapping[str, Any],
    *,
    bucket: str | None = None,
    example_id: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
  """One row of `table`: the one with `example_id`, or one drawn from `bucket`.

  The draw is deterministic: the bucket's ids are sorted and one is picked with
  numpy.random.default_rng(seed), so the same table and seed give the same example whatever the
  row order. Exactly one of `bucket` and `example_id` must be given.
  """
  if (bucket is None) == (example_id is None):
    raise ValueError("give exactly one of bucket= and example_id=")
  rows = table["rows"]
  if example_id is not None:
    for row in rows:
      if row["id"] == example_id:
        return dict(row)
    raise KeyError(f"example id {example_id!r} is not in the difficulty table ({len(rows)} rows)")
  if bucket not in BUCKETS:
    raise ValueError(f"unknown bucket {bucket!r}; known: {list(BUCKETS)}")
  candidates = sorted((row for row in rows if row["bucket"] == bucket), key=lambda row: row["id"])
  if not candidates:
    counts = {b: sum(row["bucket"] == b for row in rows) for b in BUCKETS}
    raise ValueError(f"no example in bucket {bucket!r} (bucket counts: {counts})")
  return dict(candidates[int(np.random.default_rng(seed).integers(len(candidates)))])


def select_example(
    examples: Sequence[Example],
    table: Mapping[str, Any] | None = None,
    *,
    bucket: str | None = None,
    example_id: str | None = None,
    seed: int = 0,
) -> Example:
  """The Example chosen by `select`, looked up by id among `examples`. With an explicit
  `example_id` no table is needed."""
  if table is None:
    if example_id is None:
      raise ValueError("choosing by bucket needs a difficulty table")
    wanted = example_id
  else:
    wanted = select(table, bucket=bucket, example_id=example_id, seed=seed)["id"]
  for ex in examples:
    if ex.id == wanted:
      return ex
  raise KeyError(f"example {wanted!r} is not among the given {len(examples)} examples")
