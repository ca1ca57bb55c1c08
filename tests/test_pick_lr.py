"""experiments/smollm2/pick_lr.py: the sweep's rule on hand-made run records."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "smollm2" / "pick_lr.py"
_spec = importlib.util.spec_from_file_location("pick_lr", SCRIPT)
pick_lr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pick_lr)


def done(gain: float, collapse: tuple[str, ...] = ()) -> dict:
  return {"status": "done", "gain": gain, "base": 0.0, "final": gain, "collapse": list(collapse)}


def test_the_largest_mean_gain_among_stable_rates():
  outcomes = {"1e-6": [done(0.0), done(0.1)], "3e-6": [done(0.3), done(0.1)],
              "1e-5": [done(0.5), done(0.5, ("collapse_stuck",))],  # not stable
              "3e-5": [done(0.1), {"status": "diverged"}]}
  rate, reason = pick_lr.choose(outcomes)
  assert rate == "3e-6" and "+0.200" in reason and "stable: 1e-6, 3e-6" in reason


def test_a_tie_goes_to_the_larger_rate_and_no_gain_to_the_largest_stable():
  assert pick_lr.choose({"1e-6": [done(0.2)], "3e-6": [done(0.2)]})[0] == "3e-6"
  rate, reason = pick_lr.choose({"1e-6": [done(0.0)], "3e-6": [done(-0.1)],
                                 "1e-5": [{"status": "diverged"}]})
  assert rate == "3e-6" and "largest stable" in reason
  with pytest.raises(SystemExit, match="no learning rate"):
    pick_lr.choose({"1e-6": [{"status": "diverged"}]})


def write_run(root: pathlib.Path, rate: str, seed: int, base: float, final: float,
              rows: list[dict]) -> None:
  workdir = root / f"lr{rate}" / "l0" / f"seed{seed}"
  workdir.mkdir(parents=True)
  (workdir / "summary.json").write_text(json.dumps(
      {"base_train_pass1": base, "final_train_pass1": final}))
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_outcomes_from_published_records_and_failed_runs(tmp_path):
  published, runs = tmp_path / "published", tmp_path / "runs"
  write_run(published, "1e-6", 0, 0.0625, 0.25, [{"step": 0}, {"step": 1, "reward": 1.0}])
  write_run(runs, "1e-6", 1, 0.0625, 0.0, [{"step": 1, "collapse_stuck": 1.0}])
  failed = runs / "lr3e-6" / "l0" / "seed0"
  failed.mkdir(parents=True)
  (failed / "error.txt").write_text("Traceback ...\nrft_jax.errors.DivergedError: round 7\n")
  get = lambda rate, seed: pick_lr.seed_outcome(rate, seed, str(published), str(runs))
  assert get("1e-6", 0) == {"status": "done", "gain": 0.1875, "base": 0.0625, "final": 0.25,
                            "collapse": []}
  assert get("1e-6", 1)["collapse"] == ["collapse_stuck"]
  assert get("3e-6", 0)["status"] == "diverged"
  assert get("3e-6", 1) == {"status": "missing"}
  # A published divergence (another checkout's sitting) counts as well.
  elsewhere = published / "lr3e-5" / "l0" / "seed1"
  elsewhere.mkdir(parents=True)
  (elsewhere / "error.txt").write_text("rft_jax.errors.DivergedError: diverged at round 9\n")
  assert get("3e-5", 1) == {"status": "diverged",
                            "error": "rft_jax.errors.DivergedError: diverged at round 9"}
