"""L0 beside L0:paper_exact, seed by seed: the tables of experiments/paper_exact/README.md.

    python experiments/paper_exact/compare.py --root=/tmp/runs/paper_exact

Reads <root>/{l0,l0_paper_exact}/seed*/metrics.jsonl as rft_jax.pipeline wrote them (same seed =
same base policy, training question and sampler keys in both layers) and prints markdown:

  - per layer: final training and test Pass@1, mean over seeds with a 95% bootstrap interval over
    seeds (10,000 resamples) and a 95% Wilson interval of the pooled samples (64 per seed for
    training, 500 for test; it counts sampling noise only, not the seeds' spread); rounds to
    training Pass@1 >= 0.9; greedy test accuracy.
  - paired (paper_exact - L0, same seed): the difference of final test Pass@1 with a bootstrap
    interval over seeds; rounds whose rollouts got the same reward; evaluations that differ; the
    size of the KL term (mean k3 per token) and of the gradient on R = 0 rounds, where L0 has none.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

LAYERS = ("l0", "l0_paper_exact")
TRAIN_SAMPLES, TEST_SAMPLES = 64, 500


def wilson(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return centre - half, centre + half


def bootstrap(values, reps: int = 10_000, seed: int = 0) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  rng = np.random.default_rng(seed)
  means = values[rng.integers(0, len(values), size=(reps, len(values)))].mean(axis=1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def load(root: Path, layer: str) -> dict[int, list[dict]]:
  out = {}
  for path in sorted((root / layer).glob("seed*/metrics.jsonl")):
    out[int(path.parent.name[4:])] = [json.loads(line) for line in path.open()]
  return out


def final_eval(rows):
  return [r for r in rows if "test_pass1" in r][-1]


def rounds_to(rows, level=0.9):
  for r in rows:
    if r.get("train_pass1", -1) >= level and r["step"] > 0:
      return r["step"]
  return None


def fmt_ci(lo, hi):
  return f"[{lo:.3f}, {hi:.3f}]"


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--root", required=True)
  root = Path(p.parse_args().root)
  runs = {layer: load(root, layer) for layer in LAYERS}
  seeds = sorted(set(runs["l0"]) & set(runs["l0_paper_exact"]))
  print(f"{len(seeds)} seeds: {seeds}\n")

  print("| layer | final train (mean) | bootstrap 95% | Wilson 95% (pooled) | final test (mean) "
        "| bootstrap 95% | Wilson 95% (pooled) | greedy test | rounds to 0.9 |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for layer in LAYERS:
    finals = [final_eval(runs[layer][s]) for s in seeds]
    train = [f["train_pass1"] for f in finals]
    test = [f["test_pass1"] for f in finals]
    greedy = [f["test_greedy"] for f in finals]
    hit = [rounds_to(runs[layer][s]) for s in seeds]
    reached = [h for h in hit if h is not None]
    n = len(seeds)
    print(f"| {layer} | {np.mean(train):.3f} | {fmt_ci(*bootstrap(train))} | "
          f"{fmt_ci(*wilson(sum(train) * TRAIN_SAMPLES, n * TRAIN_SAMPLES))} | {np.mean(test):.3f} | "
          f"{fmt_ci(*bootstrap(test))} | {fmt_ci(*wilson(sum(test) * TEST_SAMPLES, n * TEST_SAMPLES))} "
          f"| {np.mean(greedy):.3f} | {np.mean(reached):.0f} ± {np.std(reached, ddof=1):.0f} "
          f"({len(reached)}/{n}) |")

  print("\n| seed | test L0 | test paper_exact | diff | same-reward rounds | evaluations that differ "
        "| KL (k3/token) round 50 / 100 | grad norm, R = 0 rounds (paper_exact; L0: 0) "
        "| grad norm, R = 1 rounds (L0) |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  diffs = []
  for s in seeds:
    a, b = runs["l0"][s], runs["l0_paper_exact"][s]
    ta, tb = [r for r in a if "loss" in r], [r for r in b if "loss" in r]
    same = sum(x["reward"] == y["reward"] for x, y in zip(ta, tb))
    evals = [(x, y) for x, y in zip(a, b) if "test_pass1" in x]
    keys = ("train_pass1", "test_pass1", "test_greedy")
    differ = sum(any(x[k] != y[k] for k in keys) for x, y in evals)
    fa, fb = final_eval(a)["test_pass1"], final_eval(b)["test_pass1"]
    diffs.append(fb - fa)
    g0 = [y["grad_norm"] for y in tb if y["reward"] == 0]
    g1 = [x["grad_norm"] for x in ta if x["reward"] == 1]
    kl = {r["step"]: r.get("kl", 0.0) for r in tb}
    g0_text = f"median {np.median(g0):.1e}, max {max(g0):.1e}" if g0 else "-"
    print(f"| {s} | {fa:.3f} | {fb:.3f} | {fb - fa:+.3f} | {same}/{len(ta)} | {differ}/{len(evals)} "
          f"| {kl.get(50, float('nan')):.3f} / {kl.get(100, float('nan')):.3f} | {g0_text} "
          f"| median {np.median(g1):.1e} |")
  lo, hi = bootstrap(diffs)
  print(f"\npaired difference of final test Pass@1 (paper_exact - L0): mean {np.mean(diffs):+.4f}, "
        f"bootstrap 95% [{lo:+.4f}, {hi:+.4f}], max |diff| {np.max(np.abs(diffs)):.3f}")


if __name__ == "__main__":
  main()
