"""How often the layer report's 95% intervals on a difference between two layers cover the truth,
with 3 seeds, by simulation; and how large the seed spread of the SmolLM2 layers is.

    python experiments/smollm2/coverage.py [--reps 200] [--boots 500]

Model (a stand-in for two layers evaluated on one test set): question q has a difficulty
d_q ~ N(-1.5, 1.5) on the logit scale (500 questions, fixed for a replicate); a seed s of a
layer adds e_s ~ N(0, tau) (seeds differ in what training did), the child layer adds `delta`;
sample q of seed s is correct when u_qs < sigmoid(d_q + delta + e_s), with the same uniforms
u_qs for both layers of a seed (the pipeline's paired evaluation draws). The truth is the
difference of the two layers' expected Pass@1 on these questions over infinitely many seeds
(the estimand of a layer-vs-parent claim). Intervals: pipeline.paired_difference (the
pre-registered two-level bootstrap) and pipeline.seed_difference (the t-interval over seeds).

The observed spread: per finished layer, the between-seed variance of final test Pass@1 less
the mean sampling variance, converted to the logit scale at the layer's mean (a moment
estimate; negative -> 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from rft_jax import pipeline  # noqa: E402


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def coverage(tau: float, *, seeds: int = 3, questions: int = 500, delta: float = 0.4,
             reps: int = 200, boots: int = 500, seed: int = 0) -> dict:
  """Share of replicates whose interval holds the truth, and the mean width, per method."""
  rng = np.random.default_rng(seed)
  hits = {"bootstrap": 0, "t": 0}
  widths = {"bootstrap": [], "t": []}
  ids = list(range(questions))
  for _ in range(reps):
    d = rng.normal(-1.5, 1.5, questions)
    many = rng.normal(0.0, tau, 4000)[:, None]  # the truth: the seed effect integrated out
    truth = sigmoid(d + delta + many).mean() - sigmoid(d + many).mean()
    child, parent = [], []
    for _ in range(seeds):
      u = rng.random(questions)
      child.append({"test_ids": ids,
                    "test": (u < sigmoid(d + delta + rng.normal(0, tau))).astype(float)})
      parent.append({"test_ids": ids, "test": (u < sigmoid(d + rng.normal(0, tau))).astype(float)})
    for name, iv in (("bootstrap", pipeline.paired_difference(child, parent, "test", boots=boots)),
                     ("t", pipeline.seed_difference(child, parent, "test"))):
      hits[name] += iv[1] <= truth <= iv[2]
      widths[name].append(iv[2] - iv[1])
  return {name: (hits[name] / reps, float(np.mean(widths[name]))) for name in hits}


def observed_spread(root: str) -> list[tuple[str, int, float, float]]:
  """(layer, finished seeds, mean final test Pass@1, tau estimate) of each published layer."""
  out = []
  for name in sorted(os.listdir(root)):
    finals = []
    for k in range(3):
      result = pipeline.seed_result(os.path.join(root, name, f"seed{k}"))
      if result["status"] == "done" and result["evals"]:
        finals.append(np.asarray(result["evals"]["final"]["test"], float))
    if len(finals) >= 2:
      out.append((name, len(finals), *tau_estimate(finals)))
  return out


def tau_estimate(finals: list[np.ndarray]) -> tuple[float, float]:
  """(mean Pass@1, seed sd on the logit scale) from each seed's [questions] 0/1 rewards: the
  variance of the seeds' means less their mean sampling variance (at least 0), its root divided
  by p (1 - p), the slope of the sigmoid at the mean."""
  means = np.array([np.mean(f) for f in finals])
  sampling = np.mean([np.var(f, ddof=1) / np.size(f) for f in finals])
  between = max(means.var(ddof=1) - sampling, 0.0)
  p = means.mean()
  if p in (0.0, 1.0):  # no slope to convert by: every seed at a bound
    return float(p), float("nan")
  return float(p), float(np.sqrt(between) / (p * (1 - p)))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--reps", type=int, default=200)
  ap.add_argument("--boots", type=int, default=500)
  ap.add_argument("--taus", default="0,0.1,0.25,0.5")
  ap.add_argument("--root", default=os.path.join(HERE, "layers"))
  args = ap.parse_args(argv)
  print("| tau (logit sd of a seed) | bootstrap: coverage | width | t over seeds: coverage "
        "| width |")
  print("|---|---|---|---|---|")
  for tau in (float(t) for t in args.taus.split(",")):
    t0 = time.time()
    c = coverage(tau, reps=args.reps, boots=args.boots)
    print(f"| {tau:g} | {c['bootstrap'][0]:.3f} | {c['bootstrap'][1]:.3f} | {c['t'][0]:.3f} "
          f"| {c['t'][1]:.3f} |", flush=True)
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
  if os.path.isdir(args.root):
    print("\n| layer | seeds | final test Pass@1 | tau estimate |\n|---|---|---|---|")
    for name, n, p, tau in observed_spread(args.root):
      print(f"| {name} | {n} | {p:.3f} | {tau:.2f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
