"""Bandit diagnostics: p(correct | training questions) from rollouts, and exactly.

`CorrectRate` estimates it from each round's graded rollouts, with Wilson 95% intervals: the
round's own (one Bernoulli draw per rollout; wide when G is small) and pooled over the last
`window` rounds (narrower, lagging a changing policy). The rest of the module computes it exactly.

In the paper's multi-armed-bandit view a question is a bandit, each completion an arm, and the
arms the grader accepts are the optimal arm set. Sampling estimates the policy's mass on that set;
for a task whose completions are short enough to list, it can be computed exactly instead:

    P(optimal arms | q) = sum over completions y with grade(y) = 1 of  pi(y | q)
    pi(y | q)           = prod_t softmax(z_t / tau)[y_t]

`ArmSet` lists every completion the sampler can produce within `max_new_tokens` tokens: each
sequence of non-stop tokens of length N (cut off, as the sampler cuts it) and each sequence of
fewer non-stop tokens ended by a stop token. That set is the whole sample space, so the
probabilities sum to 1 (`total`, a float32 rounding check). The set and its grades depend on the
question only, not on the policy, so they are built once and each round costs one forward pass
per level over the prefixes: (V - |stop|)^l prefixes at level l. The embedded vocabulary (134
tokens, one stop) and N = 2 is 133 prefixes and 17,823 arms (configs/bandit_exact.py); N = 3
would be ~2.4M.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rft_jax import logprobs
from rft_jax.data.base import Example, Task
from rft_jax.evaluation import wilson_interval
from rft_jax.models.decoder import Decoder, positions_from_mask
from rft_jax.models.policy import Policy


class CorrectRate:
  """p(correct) of the rollouts of each round and pooled over the last `window` rounds."""

  def __init__(self, window: int):
    self._recent = collections.deque(maxlen=max(1, window))

  def resume(self, rows: Iterable[dict], round_index: int) -> None:
    """Refills the window from metrics rows of rounds up to `round_index` (a resumed run)."""
    for row in rows:
      if 0 < row["step"] <= round_index and row.get("rollouts"):  # older runs' rows lack it
        self._recent.append((row["correct_rollouts"], row["rollouts"]))

  def update(self, rewards) -> dict[str, float]:
    """rewards: the graders' raw rewards of the round (1 correct, 0 not) -> metrics."""
    correct = np.asarray(rewards) > 0
    k, n = int(correct.sum()), correct.size
    self._recent.append((k, n))
    pooled_k, pooled_n = (sum(x) for x in zip(*self._recent))
    out = {"p_correct": k / n, "p_correct_window": pooled_k / pooled_n, "rollouts": n,
           "correct_rollouts": k}
    out["p_correct_low"], out["p_correct_high"] = wilson_interval(k, n)
    out["p_correct_window_low"], out["p_correct_window_high"] = wilson_interval(pooled_k,
                                                                                pooled_n)
    return out


@dataclasses.dataclass(frozen=True)
class ArmSet:
  """Every completion of one question within max_new_tokens tokens, with its grade.

  prompt    [P] int        the question's prompt ids
  prefixes  level l: [K_l, l] int, the non-stop prefixes expanded at level l (K_0 = 1)
  is_arm    level l: [K_l, V] bool, prefix + token v ends a completion (v a stop token, or l = N-1)
  correct   level l: [K_l, V] bool, that completion is graded correct (an optimal arm)
  """

  prompt: np.ndarray
  prefixes: tuple[np.ndarray, ...]
  is_arm: tuple[np.ndarray, ...]
  correct: tuple[np.ndarray, ...]

  @property
  def num_arms(self) -> int:
    return int(sum(a.sum() for a in self.is_arm))

  @property
  def num_optimal(self) -> int:
    return int(sum(c.sum() for c in self.correct))

  @classmethod
  def build(cls, policy: Policy, task: Task, example: Example, max_new_tokens: int,
            max_arms: int = 200_000) -> ArmSet:
    """Lists and grades every completion; ValueError when there are more than max_arms."""
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    vocab = policy.decoder.config.vocab_size
    stops = np.zeros(vocab, bool)
    stops[list(policy.eos_ids)] = True
    go_on = np.flatnonzero(~stops)
    counts = [len(go_on) ** level for level in range(max_new_tokens)]
    arms = sum(k * int(stops.sum()) for k in counts[:-1]) + counts[-1] * vocab
    if arms > max_arms:
      raise ValueError(
          f"{arms:,} completions of up to {max_new_tokens} tokens over a {vocab}-token vocabulary "
          f"exceed max_arms={max_arms:,}: the exact optimal-arm probability needs a task with "
          "shorter completions (configs/bandit_exact.py: 2 tokens)")
    prefixes, is_arm, correct = [], [], []
    level_prefixes = np.zeros((1, 0), np.int32)
    for level in range(max_new_tokens):
      last = level == max_new_tokens - 1
      arm = np.broadcast_to(np.ones(vocab, bool) if last else stops,
                            (len(level_prefixes), vocab)).copy()
      rows, cols = np.nonzero(arm)
      texts = [policy.decode_completion([*level_prefixes[r], c]) for r, c in zip(rows, cols)]
      rewards, _ = task.grade_batch(texts, [example] * len(texts))
      good = np.zeros_like(arm)
      good[rows, cols] = np.asarray(rewards) > 0
      prefixes.append(level_prefixes)
      is_arm.append(arm)
      correct.append(good)
      if not last:  # every prefix continues with every non-stop token, in (prefix, token) order
        level_prefixes = np.concatenate(
            [np.repeat(level_prefixes, len(go_on), axis=0),
             np.tile(go_on, len(level_prefixes))[:, None]], axis=1).astype(np.int32)
    prompt = np.asarray(policy.encode_prompt(task.prompt_text(example)), np.int32)
    return cls(prompt=prompt, prefixes=tuple(prefixes), is_arm=tuple(is_arm),
               correct=tuple(correct))

  def probability(self, decoder: Decoder, params, temperature: float = 1.0) -> dict[str, float]:
    """{'p_optimal': P(optimal arms), 'total': P(all arms) (1 up to rounding)} under pi at tau.

    The sampler draws from softmax(z / tau) without top-k / top-p here; tau must be > 0.
    """
    if not temperature > 0:
      raise ValueError(f"temperature={temperature}: greedy decoding has no arm distribution")
    p_optimal = total = 0.0
    prefix_logp = np.zeros(1)  # log pi(prefix | q) of each prefix of the current level
    for level, prefixes in enumerate(self.prefixes):
      next_logp = np.asarray(_next_token_logp(decoder, params, jnp.asarray(self.prompt),
                                              jnp.asarray(prefixes), jnp.float32(temperature)),
                             np.float64)                            # [K_l, V]
      arm_logp = prefix_logp[:, None] + next_logp
      p_optimal += float(np.exp(arm_logp[self.correct[level]]).sum())
      total += float(np.exp(arm_logp[self.is_arm[level]]).sum())
      if level + 1 < len(self.prefixes):
        # The next level's prefixes are (prefix, non-stop token) pairs in row-major order.
        prefix_logp = arm_logp[:, ~self.is_arm[level][0]].reshape(-1)
    return {"p_optimal": p_optimal, "total": total}


@functools.partial(jax.jit, static_argnames=("decoder",))
def _next_token_logp(decoder: Decoder, params, prompt, prefixes, temperature):
  """log softmax(z / tau) of the token after prompt + each prefix: [K, l] -> [K, V]."""
  k = prefixes.shape[0]
  tokens = jnp.concatenate([jnp.broadcast_to(prompt, (k, prompt.shape[0])), prefixes], axis=1)
  mask = jnp.ones(tokens.shape, bool)
  logits, _ = decoder.apply({"params": params}, tokens, positions_from_mask(mask), mask,
                            logits_from=tokens.shape[1] - 1)
  return jax.nn.log_softmax(logprobs.scale_logits(logits[:, 0], temperature), axis=-1)


def optimal_arm_probability(arm_sets: Sequence[ArmSet], decoder: Decoder, params,
                            temperature: float = 1.0) -> dict[str, float]:
  """Mean over questions of the exact P(optimal arms) and of the total mass (a check)."""
  results = [a.probability(decoder, params, temperature) for a in arm_sets]
  return {"p_optimal_arms": float(np.mean([r["p_optimal"] for r in results])),
          "arm_mass": float(np.mean([r["total"] for r in results]))}
