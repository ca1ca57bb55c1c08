"""Evaluation through the sampler: training and test Pass@1, greedy accuracy, Pass@k.

  training Pass@1 = mean reward of k temperature-tau samples of each training question
  test Pass@1     = mean reward of one temperature-tau sample per test question (the paper's)
  greedy          = mean reward of the greedy completion of each test question

Prompts are processed in fixed-size batches (the last one padded with repeats and the padding
dropped), and prompt lengths are bucketed, so evaluation compiles once per length bucket.
The counting maths lives in evaluation_math (pure NumPy).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from rft_jax import (
  distributed,
  errors,
  evaluation_math,
  fileio,
  metrics as metrics_lib,
  sampling,
  sharding,
)
from rft_jax.data.base import Example, Task
from rft_jax.models.policy import Policy
from rft_jax.rewards.base import Outcome


def _rollouts(policy: Policy, prompts: Sequence[Sequence[int]], rng: jax.Array, *,
              num_samples: int = 1, max_new_tokens: int, temperature: float = 1.0,
              top_k: int = 0, top_p: float = 1.0, batch_size: int = 64,
              prompt_bucket: int = 16, mesh=None, desc: str | None = None):
  """Yields (prompt index of each row, whether the row is real, rollout) per sampler batch.

  Prompts go through the sampler `batch_size // num_samples` at a time (the last batch padded
  with repeats of its first prompt, so one compiled program serves every batch).
  """
  n = len(prompts)
  # batch_size counts rows (prompts x samples); never more prompts than there are.
  batch_size = min(max(1, batch_size // num_samples), n)
  unit = 1
  if mesh is not None:  # rows (prompts x samples) must split evenly over the mesh's batch axes
    unit = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    step = unit // math.gcd(unit, num_samples)
    batch_size = -(-batch_size // step) * step
  # Ended rows leave the batch (the same samples, sooner); the host must see every row.
  compact = jax.process_count() == 1
  length = sampling.bucket_length(max(len(p) for p in prompts), prompt_bucket)
  steps = -(-n // batch_size)
  # Transient: cleared when done, so evaluations do not pile bars up under the rounds' bar.
  bar = metrics_lib.progress(steps, desc=desc, leave=False) if desc and steps > 1 else None
  for i in range(steps):
    index = list(range(i * batch_size, min((i + 1) * batch_size, n)))
    real = len(index)
    index += [index[0]] * (batch_size - real)
    tokens, mask = sampling.left_pad([prompts[j] for j in index], policy.pad_id, length=length)
    if mesh is not None:
      tokens, mask = sharding.shard_batch((tokens, mask), mesh)
    rollout = policy.generate(tokens, max_new_tokens, temperature=temperature, top_k=top_k,
                              top_p=top_p, prompt_mask=mask, num_samples=num_samples,
                              rng=jax.random.fold_in(rng, i), compact=compact, row_multiple=unit,
                              mesh=mesh)
    yield (np.repeat(index, num_samples), np.repeat(np.arange(batch_size) < real, num_samples),
           rollout)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()


def generate_texts(policy: Policy, prompts: Sequence[Sequence[int]], rng: jax.Array,
                   **kwargs) -> list[list[str]]:
  """num_samples completions (decoded text) of each prompt: a list per prompt (every row on
  every process; keyword arguments as _rollouts')."""
  out: list[list[str]] = [[] for _ in prompts]
  if not prompts:
    return out
  for prompt_of, real, rollout in _rollouts(policy, prompts, rng, **kwargs):
    toks, msk = distributed.to_host((rollout.tokens, rollout.mask))
    for r in np.flatnonzero(real):
      out[prompt_of[r]].append(policy.decode_completion(toks[r], msk[r]))
  return out


def local_completions(policy: Policy, prompts: Sequence[Sequence[int]], rng: jax.Array, *,
                      num_samples: int = 1, **kwargs) -> list[tuple[int, str]]:
  """(row, text) of the completions this process's devices hold, row = prompt index x
  num_samples + sample: every row in one process, a share of them on each of several (keyword
  arguments as _rollouts')."""
  out = []
  if not prompts:
    return out
  for prompt_of, real, rollout in _rollouts(policy, prompts, rng, num_samples=num_samples,
                                            **kwargs):
    mine, toks = distributed.local_rows(rollout.tokens)
    _, msk = distributed.local_rows(rollout.mask)
    out += [(int(prompt_of[r]) * num_samples + int(r) % num_samples,
             policy.decode_completion(t, m)) for r, t, m in zip(mine, toks, msk) if real[r]]
  return out


def sample_rewards(policy: Policy, task: Task, examples: Sequence[Example], rng: jax.Array, *,
                   num_samples: int, no_answer: bool = False,
                   **kwargs) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """[Q, num_samples] rewards of sampled completions of each question; with no_answer, also
  [Q, num_samples] flags of the completions without an extractable final answer
  (Outcome.NO_ANSWER).

  Each process grades the rows its devices hold; the rewards are gathered, so every process
  returns the whole array.
  """
  prompts = [policy.encode_prompt(task.prompt_text(e)) for e in examples]
  done = local_completions(policy, prompts, rng, num_samples=num_samples, **kwargs)
  rows = np.asarray([row for row, _ in done], np.int64)
  texts, graded = [text for _, text in done], [examples[row // num_samples] for row in rows]
  shape, n = (len(examples), num_samples), len(examples) * num_samples
  if not no_answer:
    rewards, _ = task.grade_batch(texts, graded)
    return distributed.gather_rows(rows, np.asarray(rewards, np.float32), n).reshape(shape)
  outcomes = task.grade_outcomes(texts, graded)
  # rewards and flags as the two columns of one gather: one collective, not two
  both = np.asarray([(o.reward, o is Outcome.NO_ANSWER) for o in outcomes],
                    np.float32).reshape(-1, 2)
  both = distributed.gather_rows(rows, both, n)
  return both[:, 0].reshape(shape), both[:, 1].reshape(shape)


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion (95% at z = 1.96)."""
  if n == 0:
    return 0.0, 1.0
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def evaluation_rewards(policy: Policy, task: Task, train_examples: Sequence[Example],
                       test_examples: Sequence[Example], rng: jax.Array, *, train_samples: int,
                       temperature: float = 1.0, greedy: bool = True,
                       **kwargs) -> dict[str, np.ndarray]:
  """The 0/1 reward of every evaluation sample: 'train' [Q, train_samples], 'test' [N] (one
  sample each) and 'test_greedy' [N]; and which test samples have no final answer,
  'test_no_answer' and 'test_greedy_no_answer' [N] (format adoption, measured on the test set).
  Keys of empty sets are left out.

  The samples depend on `rng` and on each question's position only, so two policies evaluated
  with the same rng on the same questions are compared sample for sample (paired differences).
  """
  train_rng, test_rng = jax.random.split(rng)
  out: dict[str, np.ndarray] = {}
  if train_examples:
    out["train"] = sample_rewards(policy, task, train_examples, train_rng,
                                  num_samples=train_samples, temperature=temperature, **kwargs)
  if test_examples:
    for key, temp, desc in (("test", temperature, "test"), ("test_greedy", 0.0, "greedy")):
      if key == "test_greedy" and not greedy:
        continue
      rewards, no_answer = sample_rewards(policy, task, test_examples, test_rng, num_samples=1,
                                          temperature=temp, desc=desc, no_answer=True, **kwargs)
      out[key], out[f"{key}_no_answer"] = rewards[:, 0], no_answer[:, 0]
  return out


# evaluation_rewards' per-sample arrays; the test ones are what a shared base evaluation holds.
TEST_KEYS = ("test", "test_greedy", "test_no_answer", "test_greedy_no_answer")
SAMPLE_KEYS = ("train", *TEST_KEYS)


def rewards_path(directory: str, round_index: int) -> str:
  """<directory>/round_<r>.json: where save_rewards keeps round r's evaluation."""
  return os.path.join(directory, f"round_{round_index:06d}.json")


def save_rewards(directory: str, round_index: int, rewards: dict[str, np.ndarray],
                 train_ids: Sequence[str], test_ids: Sequence[str]) -> str:
  """Writes evaluation_rewards of round `round_index` to <directory>/round_<r>.json (atomically)
  with the questions' ids, for paired comparisons between runs; returns the path."""
  os.makedirs(directory, exist_ok=True)
  path = rewards_path(directory, round_index)
  fileio.write_json_atomic(path, {
      "round": round_index, "train_ids": list(train_ids), "test_ids": list(test_ids),
      **{k: np.asarray(v, np.float64).tolist() for k, v in rewards.items()}})
  return path


def load_rewards(path: str) -> dict:
  """save_rewards' file back: ids as lists, rewards as float arrays. Raises CheckpointReadError
  naming the file and key for a file that cannot be read, rewards that are not one finite row
  per question id (a damaged or hand-edited file: paired comparisons would misalign)."""
  try:
    with open(path) as f:
      d = json.load(f)
  except ValueError as e:
    raise errors.CheckpointReadError(f"{path}: not an evaluation file ({e})") from None
  out = {}
  for key, value in d.items():
    if key not in SAMPLE_KEYS:
      out[key] = value
      continue
    ids = d.get("train_ids" if key == "train" else "test_ids")
    try:
      rewards = np.asarray(value, np.float64)
    except ValueError:  # ragged rows
      rewards = None
    if (rewards is None or rewards.ndim == 0 or not np.isfinite(rewards).all()
        or (ids is not None and rewards.shape[0] != len(ids))):
      shape = "ragged" if rewards is None else f"shape {list(rewards.shape)}"
      raise errors.CheckpointReadError(
          f"{path}: {key!r} ({shape}) is not one finite row per question id "
          f"({'?' if ids is None else len(ids)} ids)")
    out[key] = rewards
  return out


def summarize(rewards: dict[str, np.ndarray], pass_k: Sequence[int] = ()) -> dict[str, float]:
  """evaluation_rewards -> training Pass@1 (with its Wilson 95% interval) and Pass@k, test
  Pass@1 and greedy accuracy, as the metrics rows hold them."""
  out: dict[str, float] = {}
  if "train" in rewards:
    r = np.asarray(rewards["train"], np.float32)
    out["train_pass1"] = evaluation_math.pass_at_1(r)
    out["train_pass1_low"], out["train_pass1_high"] = wilson_interval(float(r.sum()), r.size)
    for k in pass_k:
      if k <= r.shape[1]:
        out[f"train_pass{k}"] = evaluation_math.pass_at_k(r, k)
  if "test" in rewards:
    out["test_pass1"] = evaluation_math.pass_at_1(np.reshape(rewards["test"], (-1, 1)))
  if "test_greedy" in rewards:
    out["test_greedy"] = evaluation_math.pass_at_1(np.reshape(rewards["test_greedy"], (-1, 1)))
  return out


def evaluate(policy: Policy, task: Task, train_examples: Sequence[Example],
             test_examples: Sequence[Example], rng: jax.Array, *, train_samples: int,
             temperature: float = 1.0, greedy: bool = True, pass_k: Sequence[int] = (),
             **kwargs) -> dict[str, Any]:
  """Training Pass@1 (k samples each, Wilson 95% interval), test Pass@1, greedy, Pass@k."""
  return summarize(evaluation_rewards(policy, task, train_examples, test_examples, rng,
                                      train_samples=train_samples, temperature=temperature,
                                      greedy=greedy, **kwargs), pass_k)
