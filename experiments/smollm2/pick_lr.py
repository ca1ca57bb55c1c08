"""The layers' learning rate from the L0 sweep, by the rule written before the sweep ran.

    python experiments/smollm2/pick_lr.py            # the table and the choice, with reasons
    python experiments/smollm2/pick_lr.py --print    # the chosen rate alone (for run.sh)

The rule (experiments/smollm2/README.md, "Choices made before the runs"): the largest rate whose
runs stay stable and move training Pass@1 the most; if none moves it, the largest stable one.
Made precise here before any rate but 1e-6 had finished (lr 1e-6, seed 0: 0.062 -> 0.031):
  stable   every seed of the rate finished all its rounds: no divergence stop (error.txt in its
           workdir), no collapse flag in any metrics row;
  gain     the mean over seeds of final minus base training Pass@1 (32 samples each);
  choice   the stable rate of the largest gain, the larger rate on a tie; if no stable rate has a
           gain above 0, the largest stable rate.
Exit status 1, saying what is missing, while the sweep has not finished (SEEDS seeds of every
rate, in the published records or the runs folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from rft_jax import pipeline  # noqa: E402

RATES = ("1e-6", "3e-6", "1e-5", "3e-5")
SEEDS = 2
PUBLISHED = os.path.join(HERE, "lr_sweep")                     # committed records of finished runs
RUNS = os.path.join(HERE, "..", "..", "runs", "smollm2", "lr_sweep")  # where runs fail or go on


def seed_outcome(rate: str, seed: int, published: str = PUBLISHED, runs: str = RUNS) -> dict:
  """{'status': 'done' | 'diverged' | 'failed' | 'missing', 'gain', 'collapse'} of one run."""
  for root in (published, runs):
    workdir = os.path.join(root, f"lr{rate}", "l0", f"seed{seed}")
    summary = os.path.join(workdir, "summary.json")
    if os.path.exists(summary):
      with open(summary) as f:
        s = json.load(f)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
      collapse = sorted({k for r in rows for k in r if k.startswith("collapse")})
      return {"status": "done", "gain": s["final_train_pass1"] - s["base_train_pass1"],
              "base": s["base_train_pass1"], "final": s["final_train_pass1"],
              "collapse": collapse}
  for root in (published, runs):  # a diverged run is published too
    workdir = os.path.join(root, f"lr{rate}", "l0", f"seed{seed}")
    if error := pipeline.last_error(workdir):
      return {"status": "diverged" if pipeline.diverged(workdir) else "failed", "error": error}
  return {"status": "missing"}


def choose(outcomes: dict[str, list[dict]]) -> tuple[str, str]:
  """(rate, reason) by the rule above; outcomes: rate -> one outcome per seed, none missing."""
  stable = {rate: sum(o["gain"] for o in runs) / len(runs) for rate, runs in outcomes.items()
            if all(o["status"] == "done" and not o["collapse"] for o in runs)}
  if not stable:
    raise SystemExit("no learning rate of the sweep is stable: the rule picks none; lower the "
                     "rates and sweep again")
  by_rate = sorted(stable, key=float)
  best = max(by_rate, key=lambda rate: (stable[rate], float(rate)))
  if stable[best] > 0:
    return best, (f"the largest mean gain in training Pass@1 among the stable rates "
                  f"({stable[best]:+.3f}; stable: {', '.join(by_rate)})")
  return by_rate[-1], (f"no stable rate raised training Pass@1 (best mean gain "
                       f"{stable[best]:+.3f}): the largest stable rate")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--print", action="store_true", help="print only the chosen rate")
  args = p.parse_args(argv)
  outcomes = {rate: [seed_outcome(rate, k) for k in range(SEEDS)] for rate in RATES}
  missing = [f"lr {rate} seed {k}" for rate, runs in outcomes.items()
             for k, o in enumerate(runs) if o["status"] in ("missing", "failed")]
  if not args.print:
    print("| rate | seed | status | training Pass@1 base -> final | gain |")
    print("|---|---|---|---|---|")
    for rate, runs in outcomes.items():
      for k, o in enumerate(runs):
        numbers = (f"{o['base']:.3f} -> {o['final']:.3f} | {o['gain']:+.3f}"
                   if o["status"] == "done" else "- | -")
        status = o["status"] + (f" ({', '.join(o['collapse'])})" if o.get("collapse") else "")
        print(f"| {rate} | {k} | {status} | {numbers} |")
  if missing:
    print(f"the sweep has not finished: {', '.join(missing)} (bash experiments/smollm2/run.sh "
          "sweep)", file=sys.stderr)
    return 1
  rate, reason = choose(outcomes)
  print(rate if args.print else f"learning rate for the layers: {rate}: {reason}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
