"""Grading throughput of the MATH grader, with and without the math-verify process pool.

    python benchmarks/grading.py [--data ../shared/data] [--n 1000] [--workers 2] [--seed 0]

Builds N responses from MATH reference solutions (MATH-500 first, then the 12k train file),
deterministically perturbed: about 40% unchanged (decided by the normalized-string fast path),
30% with the final box rewritten into an equivalent form the fast path does not catch
(math-verify must say correct: 5 -> \\frac{10}{2}, \\frac{a}{b} -> \\frac{2a}{2b}, x -> 2x/2 for
other answers), 30% with the final box replaced by another problem's answer (wrong). Then grades
them (1) through a fresh pool, first call (includes starting the workers), (2) the same pool
warm, (3) in this process, serially. Prints one table; checks that all modes agree.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from rft_jax.data.math import load_math
from rft_jax.rewards import math as math_grader
from rft_jax.rewards.base import Outcome
from rft_jax.rewards.extract import find_boxes
from rft_jax.rewards.normalize import normalize

# A scalar expression (no tuples, sets, relations, units, text, base subscripts).
_SCALAR = re.compile(r"^[-+0-9a-z.{}^ ]*(?:\\(?:sqrt|frac|dfrac|pi|cdot)[-+0-9a-z.{}^ ]*)*$")


def equivalent_form(answer: str) -> str | None:
  """An equivalent spelling that the normalized-string match does not recognise, or None."""
  a = answer.strip()
  if re.fullmatch(r"-?\d+", a):
    return f"\\frac{{{2 * int(a)}}}{{2}}"
  m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", a)
  if m:
    return f"{m.group(1)}\\frac{{{2 * int(m.group(2))}}}{{{2 * int(m.group(3))}}}"
  if _SCALAR.match(a):
    # '\cdot', not '2(...)': latex2sympy reads '2(\frac{4}{3})' as the mixed number 2 4/3.
    return f"\\frac{{2 \\cdot \\left({a}\\right)}}{{2}}"
  return None


def replace_last_box(solution: str, new: str) -> str:
  box = find_boxes(solution)[-1]
  open_brace = solution.index("{", box.start)
  close = open_brace + 1 + len(box.content)
  return solution[:open_brace + 1] + new + solution[close:]


def make_responses(data: pathlib.Path, n: int, seed: int):
  pool = load_math(data / "math/test.jsonl", "test") + load_math(data / "math/train.jsonl", "train")
  pool = [e for e in pool if len(find_boxes(e.solution)) == 1]  # one box: a clean rewrite
  examples = pool[:n]
  rng = np.random.default_rng(seed)
  kinds = rng.choice(["same", "equivalent", "wrong"], size=len(examples), p=[0.4, 0.3, 0.3])
  kinds = kinds.tolist()
  responses, golds = [], []
  for i, (ex, kind) in enumerate(zip(examples, kinds)):
    if kind == "equivalent" and equivalent_form(ex.answer) is None:
      kind = kinds[i] = "same"  # no safe rewrite for tuples, intervals, text...
    if kind == "equivalent":
      responses.append(replace_last_box(ex.solution, equivalent_form(ex.answer)))
    elif kind == "wrong":
      other = examples[(i + 1 + int(rng.integers(len(examples) - 1))) % len(examples)]
      if normalize(other.answer) == normalize(ex.answer):
        other = examples[(i + 1) % len(examples)]
      responses.append(replace_last_box(ex.solution, other.answer))
    else:
      responses.append(ex.solution)
    golds.append(ex.answer)
  return responses, golds, kinds


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
  parser.add_argument("--n", type=int, default=1000)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--timeout", type=float, default=5.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  responses, golds, kinds = make_responses(args.data, args.n, args.seed)
  undecided = sum(not isinstance(math_grader.prepare(r, g), Outcome) for r, g in zip(responses, golds))
  print(f"{len(responses)} MATH responses ({dict(collections.Counter(kinds))}); "
        f"{undecided} need math-verify, "
        f"{len(responses) - undecided} decided by the fast path and guards; "
        f"{os.cpu_count()} CPUs, {args.workers} pool workers, timeout {args.timeout:g} s\n")

  pool = math_grader.make_pool(num_workers=args.workers, timeout_s=args.timeout)
  rows = []
  cold, t_cold = timed(lambda: math_grader.grade_many(responses, golds, pool=pool))
  rows.append(("pool, first call (starts workers)", args.workers, t_cold, cold))
  warm, t_warm = timed(lambda: math_grader.grade_many(responses, golds, pool=pool))
  rows.append(("pool, warm", args.workers, t_warm, warm))
  pool.close()
  serial_cold, t_serial_cold = timed(
      lambda: math_grader.grade_many(responses, golds, pool=False, timeout_s=args.timeout))
  rows.append(("no pool, first call (imports)", 1, t_serial_cold, serial_cold))
  serial, t_serial = timed(
      lambda: math_grader.grade_many(responses, golds, pool=False, timeout_s=args.timeout))
  rows.append(("no pool, warm (in process, serial)", 1, t_serial, serial))

  names = [o.value for o in Outcome]
  header = f"| {'mode':34} | workers | seconds | responses/s | " + " | ".join(names) + " |"
  print(header)
  print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
  for mode, workers, seconds, outcomes in rows:
    counts = collections.Counter(o.value for o in outcomes)
    print(f"| {mode:34} | {workers:7d} | {seconds:7.2f} | {len(outcomes) / seconds:11.0f} | "
          + " | ".join(f"{counts[n]:{len(n)}d}" for n in names) + " |")
  expected = [Outcome.WRONG if k == "wrong" else Outcome.CORRECT for k in kinds]
  agree = cold == warm == serial_cold == serial
  print(f"\nverdicts as constructed (same/equivalent correct, wrong wrong): "
        f"{sum(o == e for o, e in zip(warm, expected))}/{len(expected)}")
  print(f"all modes agree: {agree}; pool speed-up over serial (both warm): {t_serial / t_warm:.2f}x")
  if not agree:
    sys.exit(1)


if __name__ == "__main__":
  main()
