"""Evaluation maths (pure NumPy): Pass@1, unbiased Pass@k, greedy accuracy, breakdowns, saving.

Inputs are correctness arrays `rewards [Q, n]` (Q questions, n samples each, values in {0, 1} or
bool), produced by whoever samples (rft_jax.evaluation runs the model; this module only counts).

  Pass@1 (the paper's metric) = mean over questions of (c_q / n): the expected reward of one
  sample at the sampling temperature, estimated from n samples per question.

  Pass@k, unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
  Code", eq. 1), for k <= n, with c correct among n samples:
      pass@k = 1 - C(n - c, k) / C(n, k)
  computed as 1 - prod_{i = n-c+1}^{n} (1 - k / i) (their numerically stable form: no huge
  binomials), and exactly 1 when n - c < k (every k-subset holds a correct sample).
"""

from __future__ import annotations

import collections
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rft_jax import fileio


def as_correct(rewards, ndim: int = 2) -> np.ndarray:
  """`rewards` as a bool array of `ndim` dimensions; values must be 0/1 (or bool)."""
  r = np.asarray(rewards)
  if r.ndim != ndim:
    raise ValueError(f"rewards must be {ndim}-D ([questions, samples]), got shape {r.shape}")
  if r.dtype != bool:
    if r.size and not np.all((r == 0) | (r == 1)):
      bad = r[~((r == 0) | (r == 1))].ravel()[:5]
      raise ValueError(f"rewards must be 0/1 correctness values, found {bad.tolist()}")
    r = r.astype(bool)
  return r


def pass_at_k_from_counts(num_samples, num_correct, k: int) -> np.ndarray:
  """Unbiased pass@k per question from counts (arrays broadcast; n may differ per question)."""
  n = np.atleast_1d(np.asarray(num_samples, dtype=np.int64))
  c = np.atleast_1d(np.asarray(num_correct, dtype=np.int64))
  n, c = np.broadcast_arrays(n, c)
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if np.any(c < 0) or np.any(c > n):
    raise ValueError("need 0 <= num_correct <= num_samples")
  if np.any(n < k):
    raise ValueError(f"pass@{k} needs at least k={k} samples per question, got n={int(n.min())}")
  out = np.empty(n.shape, dtype=np.float64)
  for idx in np.ndindex(n.shape):
    ni, ci = int(n[idx]), int(c[idx])
    if ni - ci < k:
      out[idx] = 1.0
    else:
      out[idx] = 1.0 - float(np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1, dtype=np.float64)))
  return out


def pass_at_k_per_question(rewards, k: int) -> np.ndarray:
  """[Q] unbiased pass@k of each question from its n samples (k <= n)."""
  r = as_correct(rewards)
  return pass_at_k_from_counts(r.shape[1], r.sum(axis=1), k)


def pass_at_k(rewards, k: int) -> float:
  """Mean over questions of the unbiased pass@k."""
  per_q = pass_at_k_per_question(rewards, k)
  return float(per_q.mean()) if per_q.size else float("nan")


def pass_rate(rewards) -> np.ndarray:
  """[Q] fraction of correct samples of each question (its Pass@1 estimate)."""
  r = as_correct(rewards)
  if r.shape[1] == 0:
    raise ValueError("rewards has no samples (shape [Q, 0])")
  return r.mean(axis=1)


def pass_at_1(rewards) -> float:
  """Pass@1 = mean over questions of the per-question fraction of correct samples."""
  rates = pass_rate(rewards)
  return float(rates.mean()) if rates.size else float("nan")


def greedy_accuracy(rewards) -> float:
  """Accuracy of one greedy (temperature 0) answer per question: rewards [Q] or [Q, 1]."""
  r = np.asarray(rewards)
  if r.ndim == 2 and r.shape[1] == 1:
    r = r[:, 0]
  r = as_correct(r, ndim=1)
  return float(r.mean()) if r.size else float("nan")


def metrics(rewards, ks: Sequence[int] = (1,)) -> dict[str, float]:
  """{'pass@1': ..., 'pass@k': ...} for each k <= n (larger k are skipped), plus the counts."""
  r = as_correct(rewards)
  out: dict[str, float] = {"num_questions": int(r.shape[0]), "num_samples": int(r.shape[1])}
  out["pass@1"] = pass_at_1(r)
  for k in ks:
    if k != 1 and k <= r.shape[1]:
      out[f"pass@{k}"] = pass_at_k(r, k)
  return out


def _meta(example: Any) -> Mapping[str, Any]:
  return example.meta if hasattr(example, "meta") else example


def breakdown(
    rewards, examples: Sequence[Any], keys: Iterable[str] = ("subject", "level"),
    ks: Sequence[int] = (1,),
) -> dict[str, dict[str, dict[str, float]]]:
  """Metrics per value of each meta key, e.g. {'subject': {'Algebra': {...}}, 'level': {'3': ...}}.

  `examples` are rft_jax Examples (their .meta is read) or plain mappings, one per row of
  `rewards`. A missing or None value is grouped under 'unknown' (MATH has two rows of unknown
  level). Values are strings so that the result is JSON with sorted, stable keys.
  """
  r = as_correct(rewards)
  if len(examples) != r.shape[0]:
    raise ValueError(f"{len(examples)} examples but rewards has {r.shape[0]} rows")
  out: dict[str, dict[str, dict[str, float]]] = {}
  for key in keys:
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, ex in enumerate(examples):
      value = _meta(ex).get(key)
      groups["unknown" if value is None or value == "" else str(value)].append(i)
    out[key] = {v: metrics(r[idx], ks) for v, idx in sorted(groups.items())}
  return out


def summarize(
    rewards, examples: Sequence[Any] | None = None, ks: Sequence[int] = (1,),
    keys: Iterable[str] = ("subject", "level"), greedy=None,
) -> dict[str, Any]:
  """Overall metrics, per-question pass rates (by id when examples are given), breakdowns by
  `keys` (when examples are given) and the greedy accuracy (when greedy rewards are given)."""
  r = as_correct(rewards)
  out: dict[str, Any] = {"overall": metrics(r, ks)}
  if greedy is not None:
    out["overall"]["greedy_accuracy"] = greedy_accuracy(greedy)
  rates = pass_rate(r) if r.shape[1] else np.zeros(r.shape[0])
  if examples is not None:
    out["per_question"] = {str(getattr(ex, "id", i)): float(p) for i, (ex, p) in
                           enumerate(zip(examples, rates))}
    keys = [k for k in keys if any(_meta(ex).get(k) not in (None, "") for ex in examples)]
    if keys:
      out["breakdown"] = breakdown(r, examples, keys, ks)
  else:
    out["per_question"] = [float(p) for p in rates]
  return out


def _jsonable(x):
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, np.generic):
    return _jsonable(x.item())
  if isinstance(x, float) and not math.isfinite(x):
    return None  # NaN / inf are not JSON
  return x


def save_results(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
  """Write `results` as indented JSON (NumPy values converted, NaN -> null), atomically: a
  temporary file in the same folder is renamed over `path`, so no half-written file is left."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # fileio's write: fsynced, and the umask's mode rather than mkstemp's 0600
  fileio.write_json_atomic(path, _jsonable(results), indent=2, sort_keys=True)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)
