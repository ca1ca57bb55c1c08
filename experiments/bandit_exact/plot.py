"""Plot the exact optimal-arm probability of configs/bandit_exact.py runs against sampled Pass@1.

    python experiments/bandit_exact/plot.py RUN_DIR [RUN_DIR ...] --out experiments/bandit_exact/exact_vs_sampled.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rft_jax import metrics


def by_step(workdir):
  rows = {}
  for row in metrics.read_metrics(workdir):  # evaluation rows share a step with the round's row
    rows.setdefault(row["step"], {}).update(row)
  return [rows[s] for s in sorted(rows)]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("runs", nargs="+")
  ap.add_argument("--out", required=True)
  args = ap.parse_args()
  fig, ax = plt.subplots(figsize=(7, 4))
  for i, run in enumerate(args.runs):
    rows = by_step(run)
    color = f"C{i}"
    ax.plot([r["step"] for r in rows], [r["p_optimal_arms"] for r in rows], color=color,
            label=f"seed {i}: exact P(optimal arms)")
    evals = [r for r in rows if "train_pass1" in r]
    ax.errorbar([r["step"] for r in evals], [r["train_pass1"] for r in evals],
                yerr=[[r["train_pass1"] - r["train_pass1_low"] for r in evals],
                      [r["train_pass1_high"] - r["train_pass1"] for r in evals]],
                fmt="o", ms=3, color=color, alpha=0.6, capsize=2,
                label=f"seed {i}: sampled training Pass@1 (64 samples, Wilson 95%)")
  ax.set_xlabel("round")
  ax.set_ylabel("p(correct | training question)")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
  main()
