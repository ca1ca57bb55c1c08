"""MATH grader: the last \\boxed{} against the gold, by normalized strings, guards, then math-verify.

Order of decisions for one response (docs/tasks.md has the full rules and their reasons):
  1. Extraction: every outermost \\boxed{...} / \\fbox{...} / '\\boxed 5' after the last
     '</think>'. None (or only empty boxes) -> NO_ANSWER.
  2. Hedging: boxes are de-duplicated by normalized string; *every* distinct box must be
     equivalent to the gold, so the same value boxed twice (even in two spellings) is fine and two
     different values score 0. More than MAX_BOXES distinct boxes, a box longer than
     MAX_ANSWER_CHARS or with braces nested deeper than MAX_BRACE_DEPTH is WRONG without further
     work (math-verify's time grows steeply with nesting: 12 levels take a second, 16 hang).
  3. Fast path (in the calling process): normalized string equal to the normalized gold -> correct.
  4. Guards (in the calling process): base subscripts must match, interval brackets must match.
  5. math-verify (in a worker process with a hard timeout, rewards/pool.py): anything undecided.
     Timeout -> TIMEOUT, an exception or a dead worker -> ERROR, otherwise CORRECT / WRONG.

`grade(response, gold)` is the registry entry; `grade_many` grades a batch with one pool round
trip (only the undecided responses, de-duplicated, go to the pool).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Sequence

from rft_jax import errors
from rft_jax.rewards import pool as pool_lib
from rft_jax.rewards.base import Outcome
from rft_jax.rewards.extract import brace_depth, final_part, find_boxes, strip_trailing_punct
from rft_jax.rewards.normalize import guard_verdict, normalize, strip_braced_thousands

MAX_ANSWER_CHARS = 1000  # the longest gold in MATH is 159 characters
MAX_BOXES = 8
MAX_BRACE_DEPTH = 10  # golds in MATH nest at most 2 deep
JOB_FN = "rft_jax.rewards.mv:job"
WARM_UP_FN = "rft_jax.rewards.mv:warm_up"

_options = {"num_workers": None, "timeout_s": pool_lib.DEFAULT_TIMEOUT_S}


@dataclasses.dataclass(frozen=True)
class Pending:
  """A response the fast path could not decide: math-verify must compare these boxes to the gold."""

  gold: str
  preds: tuple[str, ...]


def configure_pool(num_workers: int | None = None, timeout_s: float | None = None) -> None:
  """Set the shared pool's size and per-response timeout (closes the current pool if running)."""
  if num_workers is not None:
    _options["num_workers"] = num_workers
  if timeout_s is not None:
    _options["timeout_s"] = float(timeout_s)
  pool_lib.shutdown_shared()


def get_pool() -> pool_lib.Pool:
  """The shared math-verify pool (created lazily; reused; closed at exit)."""
  return pool_lib.shared_pool(
      JOB_FN, warm_up_fn=WARM_UP_FN, num_workers=_options["num_workers"],
      timeout_s=_options["timeout_s"],
  )


def make_pool(num_workers: int | None = None, timeout_s: float | None = None) -> pool_lib.Pool:
  """A private pool (for tests and benchmarks); close it when done."""
  return pool_lib.Pool(
      JOB_FN, num_workers=num_workers, warm_up_fn=WARM_UP_FN,
      timeout_s=_options["timeout_s"] if timeout_s is None else timeout_s,
  )


def clean_gold(gold: str) -> str:
  """The gold as graded: trailing sentence punctuation removed; empty golds are refused."""
  g = strip_trailing_punct(gold)
  if not g:
    raise ValueError("empty MATH gold answer")
  return g


def boxed_answers(response: str) -> list[str]:
  """The non-empty contents of the response's boxes, trailing punctuation removed, in order."""
  boxes = (strip_trailing_punct(b.content) for b in find_boxes(final_part(response)))
  return [b for b in boxes if b]


def prepare(response: str, gold: str) -> Outcome | Pending:
  """Steps 1-4 of the module doc: a final Outcome, or the Pending work for math-verify."""
  gold = clean_gold(gold)
  boxes = boxed_answers(response)
  if not boxes:
    return Outcome.NO_ANSWER
  if any(len(b) > MAX_ANSWER_CHARS or brace_depth(b) > MAX_BRACE_DEPTH for b in boxes):
    return Outcome.WRONG
  gold_norm = normalize(gold)
  distinct: dict[str, str] = {}
  for b in boxes:
    distinct.setdefault(normalize(b), b)
  if len(distinct) > MAX_BOXES:
    return Outcome.WRONG
  pending = []
  for norm, raw in distinct.items():
    if not norm:
      return Outcome.WRONG  # e.g. '\boxed{\text{ }}'
    if norm == gold_norm:
      continue
    verdict = guard_verdict(gold_norm, norm)
    if verdict is False:
      return Outcome.WRONG
    if verdict is None:
      pending.append(raw)
  if not pending:
    return Outcome.CORRECT
  return Pending(strip_braced_thousands(gold), tuple(strip_braced_thousands(p) for p in pending))


class _Alarm(BaseException):
  """Raised by the in-process timer; a BaseException so math-verify's `except Exception` misses it."""


def _run_in_process(jobs: list[Pending], timeout_s: float) -> list[tuple[pool_lib.JobStatus, object]]:
  """math-verify in this process: no pool. The timeout needs the main thread (signal.setitimer);
  elsewhere jobs run without one, which a pathological answer can hang: prefer the pool."""
  from rft_jax.rewards import mv  # math-verify is imported only where it runs

  use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
  results = []
  for job in jobs:
    old = None
    try:
      if use_alarm:
        def _raise(signum, frame):
          raise _Alarm()
        old = signal.signal(signal.SIGALRM, _raise)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
      results.append((pool_lib.JobStatus.OK, mv.equivalent(job.gold, job.preds)))
    except _Alarm:
      results.append((pool_lib.JobStatus.TIMEOUT, f"no result within {timeout_s:g} s"))
    except errors.RunInterrupted:  # a SIGTERM before the rounds (train._Signals)
      raise
    except Exception as e:
      results.append((pool_lib.JobStatus.ERROR, f"{type(e).__name__}: {e}"))
    finally:
      if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
  return results


_STATUS_OUTCOME = {pool_lib.JobStatus.TIMEOUT: Outcome.TIMEOUT, pool_lib.JobStatus.ERROR: Outcome.ERROR}


def grade_many(
    responses: Sequence[str],
    golds: Sequence[str],
    *,
    pool: pool_lib.Pool | bool = True,
    timeout_s: float | None = None,
) -> list[Outcome]:
  """Outcome of each (response, gold) pair.

  The fast path runs here; the undecided pairs (de-duplicated) go to `pool` in one round trip:
  True = the shared pool, a Pool = that pool, False = in this process (no hard timeout off the main
  thread; for benchmarks and debugging). `timeout_s` is per pair (default: the pool's).
  """
  if len(responses) != len(golds):
    raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
  outcomes: list[Outcome | None] = [None] * len(responses)
  jobs: dict[Pending, list[int]] = {}
  for i, (response, gold) in enumerate(zip(responses, golds)):
    try:
      decided = prepare(response, gold)
    except errors.RunInterrupted:
      raise
    except Exception:
      decided = Outcome.ERROR
    if isinstance(decided, Pending):
      jobs.setdefault(decided, []).append(i)
    else:
      outcomes[i] = decided
  if jobs:
    pending = list(jobs)
    if pool is False:
      t = _options["timeout_s"] if timeout_s is None else timeout_s
      results = _run_in_process(pending, t)
    else:
      p = get_pool() if pool is True else pool
      results = p.map([(job.gold, job.preds) for job in pending], timeout_s)
    for job, (status, value) in zip(pending, results):
      if status is pool_lib.JobStatus.OK:
        outcome = Outcome.CORRECT if value else Outcome.WRONG
      else:
        outcome = _STATUS_OUTCOME[status]
      for i in jobs[job]:
        outcomes[i] = outcome
  return outcomes  # type: ignore[return-value]


def grade(response: str, gold: str) -> Outcome:
  """The registry entry: one response, through the shared pool if math-verify is needed."""
  return grade_many([response], [gold])[0]
