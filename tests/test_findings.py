"""experiments/smollm2/findings.py: the pre-registered rules on records written the way a run
writes them (summary.json, metrics.jsonl, evals/round_*.json)."""

import importlib.util
import json
import os
import pathlib
import warnings

import numpy as np
import pytest

from rft_jax import evaluation, pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("findings",
                                              ROOT / "experiments" / "smollm2" / "findings.py")
findings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(findings)

Q, K, ROUNDS = 200, 32, 100


def rewards(p: float, n: int, seed: int) -> np.ndarray:
  """n rewards with exactly round(p n) ones, in a seeded order."""
  out = np.zeros(n)
  out[:round(p * n)] = 1
  return np.random.default_rng(seed).permutation(out)


def write_run(root, spec, seed, *, train=(0.1, 0.1), test=(0.2, 0.2), greedy=(0.3, 0.3),
              mid=None, failed=False, collapse=False, entropy=(0.6, 0.6), markers=None,
              no_answer=None, truncated=None):
  """One run's record: base and final evaluations with these Pass@1s (train, test, greedy),
  an evaluation at round 50 (mid: (train, test), default halfway), per-round rows; markers
  (first, last): rollouts.jsonl with that many of 8 texts at rounds 1 and 100 writing '####';
  no_answer (base, final): the share of test samples flagged without a final answer;
  truncated (first 10 rounds, the rest): the rows' share of rollouts cut at the length limit
  (rows without it, as runs before the metric, where None)."""
  d = pathlib.Path(root) / pipeline.spec_dir(spec) / f"seed{seed}"
  os.makedirs(d / "evals")
  mid = mid or ((train[0] + train[1]) / 2, (test[0] + test[1]) / 2)
  ids = [f"t{i}" for i in range(Q)]
  rows = []
  for r, (tr, te, gr) in ((0, (train[0], test[0], greedy[0])), (50, (*mid, None)),
                          (ROUNDS, (train[1], test[1], greedy[1]))):
    saved = {"train": rewards(tr, K, seed + r)[None], "test": rewards(te, Q, seed + r + 1)}
    if gr is not None:
      saved["test_greedy"] = rewards(gr, Q, seed + r + 2)
    if no_answer is not None and r in (0, ROUNDS):
      saved["test_no_answer"] = rewards(no_answer[r == ROUNDS], Q, seed + r + 3)
    evaluation.save_rewards(str(d / "evals"), r, saved, ["q0"], ids)
    rows.append({"step": r, **{k: v for k, v in evaluation.summarize(saved).items()}})
  for r in range(1, ROUNDS + 1):
    row = {"step": r, "entropy": entropy[0] if r <= 10 else entropy[1], "length": 100.0,
           "outcome_correct": 1, "outcome_wrong": 6, "outcome_no_answer": 1}
    if truncated is not None:
      row["truncated"] = truncated[r > 10]
    if collapse and r == 60:
      row["collapse_stuck"] = True
    rows.append(row)
  with open(d / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  if markers is not None:
    with open(d / "rollouts.jsonl", "w") as f:
      for r, n in ((1, markers[0]), (50, 0), (ROUNDS, markers[1])):
        texts = ["so #### 7"] * n + ["the answer is 7"] * (8 - n)
        f.write(json.dumps({"step": r, "text": texts, "reward": [0.0] * 8}) + "\n")
  if failed:
    (d / "error.txt").write_text("Traceback\nrft_jax.errors.DivergedError: diverged at round 7")
    return
  (d / "summary.json").write_text(json.dumps({"wall_s": 1.0, "rounds": ROUNDS,
                                              "training_questions": ["q0"]}))


def judged(root, toy=None):
  per_layer = findings.load(str(root), pipeline.parse_layers("smollm2"))
  out = findings.judge(per_layer, toy, boots=300)
  return {f["finding"][0]: f for f in out}, per_layer


def test_without_records_every_finding_waits(tmp_path):
  out, _ = judged(tmp_path)
  assert {f["verdict"] for f in out.values()} == {"waiting (layers not run)"}


def write_scenario(root):
  """Every layer of the preset, 3 seeds, with verdicts known by construction (asserted in the
  test below)."""
  same = dict(train=(0.1, 0.1), test=(0.2, 0.2))
  for k in range(3):
    # L0 learns (0.9 by round 50 in two seeds, the third never) and its test rises 0.2 -> 0.5.
    write_run(root, "l0", k, train=(0.1, 1.0 if k < 2 else 0.5), test=(0.2, 0.5),
              mid=(0.95 if k < 2 else 0.3, 0.3))
    write_run(root, "l1:g=4", k, **same)
    # L1 smooth; L2 the same end point with a test curve that jumps: less stable, not higher.
    write_run(root, "l1", k, **same, markers=(0, 6 if k else 3),  # '####' taken up
              no_answer=(0.5, 0.1))
    write_run(root, "l2", k, train=(0.1, 0.1), test=(0.2, 0.2), mid=(0.6, 0.6))
    write_run(root, "l1:g=16", k, train=(0.1, 0.1), test=(0.2, 0.6))  # G=16 generalizes
    write_run(root, "l3", k, train=(0.1, 1.0), failed=k < 2)           # {-1,+1} diverges
    write_run(root, "l3:neg=m10", k, **same)                           # {-1,0} does not
    write_run(root, "l4:bucket=extremely_hard", k, test=(0.2, 0.05))
    write_run(root, "l4:bucket=medium", k, **same)


def test_the_rules_on_records_where_the_answers_are_known(tmp_path):
  write_scenario(tmp_path)
  out, per_layer = judged(tmp_path)
  assert out["1"]["verdict"] == "reproduced"
  assert out["1"]["claims"][0][1] == "2 of 3 seeds"
  assert out["2"]["verdict"] == "reproduced"
  assert out["3"]["verdict"] == "not shown"  # G=16's test gain over G=1 and G=4 is shown
  assert "G=16 - G=4 +0.400" in out["3"]["claims"][0][1]
  states = {claim: state for claim, _, state in out["4"]["claims"]}
  assert states == {"{-1, +1} (l3) fails": "shown", "{-1, 0} (l3:neg=m10) fails": "not shown"}
  assert out["4"]["verdict"] == "partly"
  assert out["5"]["verdict"] == "reproduced"
  # 6a needs the other base's records; 6b: no layer reaches 0.9 on average (L0: (1 + 1 +
  # 0.5) / 3) and every layer has ended (l3 by divergence, never 'ready'): untestable.
  assert out["6"]["claims"][0][2] == findings.NOT_RUN
  assert out["6"]["claims"][1][2] == findings.UNTESTABLE
  # l3's one finished seed reached 1.0: named, not judged.
  assert out["6"]["claims"][1][1].endswith("; with fewer, not judged: l3 (seed 2: 1.00)")
  mech = {m["spec"]: m for m in findings.mechanisms(per_layer, boots=300)}
  assert "l3" not in {s for s, m in mech.items() if m["seeds"] == 3}
  assert mech["l1"]["no_answer_last"] == pytest.approx(1 / 8)
  assert mech["l1"]["marker_first"] == 0 and mech["l1"]["marker_last"] == pytest.approx(5 / 8)
  assert mech["l2"]["marker_first"] is None  # no texts kept
  assert (mech["l1"]["test_no_answer_base"], mech["l1"]["test_no_answer_final"]) == (
      pytest.approx(0.5), pytest.approx(0.1))
  assert mech["l2"]["test_no_answer_base"] is None  # evaluations without the flags
  assert mech["l0"]["sampled"][0] == pytest.approx(0.3)
  text = findings.markdown(list(out.values()), list(mech.values()))
  assert "**reproduced**" in text and "| l1 | 3 |" in text and "| 0.00 -> 0.62 |" in text
  assert "| 0.50 -> 0.10 |" in text and "| – -> – |" in text


def test_truncation_share_uses_the_seeds_that_measured_it(tmp_path):
  """Seeds 0 and 1 log the share of rollouts cut at the length limit (0.0 -> 0.2 and 0.1 ->
  0.4 over the first and the last 10 rounds), seed 2 does not (run before the metric): the
  means are seeds 0 and 1's, and the table says so; a layer without it shows dashes."""
  for k, truncated in enumerate(((0.0, 0.2), (0.1, 0.4), None)):
    write_run(tmp_path, "l1", k, truncated=truncated)
    write_run(tmp_path, "l2", k)
  per_layer = findings.load(str(tmp_path), ["l1", "l2"])
  m, old = findings.mechanisms(per_layer, boots=100)
  assert m["truncated_seeds"] == 2 and old["truncated_seeds"] == 0
  assert (m["truncated_first"], m["truncated_last"]) == (pytest.approx(0.05), pytest.approx(0.3))
  assert old["truncated_first"] is None and old["truncated_last"] is None
  lines = findings.markdown([], [m, old]).splitlines()
  assert lines[-2].split(" | ")[5] == "0.05 -> 0.30 (2 seeds)"
  assert lines[-1].split(" | ")[5] == "– -> –"


def test_gain_difference_is_the_difference_of_mean_gains(tmp_path):
  """SmolLM2 gains 0.3 (0.2 -> 0.5), the other base 0.1 (0.4 -> 0.5): +0.2, shown."""
  for k in range(3):
    write_run(tmp_path / "a", "l1", k, test=(0.2, 0.5))
    write_run(tmp_path / "b", "l1", k, test=(0.4, 0.5))
  a = findings.load(str(tmp_path / "a"), ["l1"])["l1"]
  b = findings.load(str(tmp_path / "b"), ["l1"])["l1"]
  est, low, high = findings.gain_difference(a, b, boots=300)
  assert est == pytest.approx(0.2)
  assert 0 < low < 0.2 < high
  est, low, high = findings.gain_difference(a, a, boots=300)
  assert est == 0 and low <= 0 <= high


def test_6b_calls_the_absence_only_once_every_layer_has_ended(tmp_path):
  """L1 reaches training Pass@1 1.0 and its test Pass@1 rises: no layer learned without
  generalizing, so far; 6b waits (a later layer could be the one) until every layer ended."""
  for k in range(3):
    write_run(tmp_path, "l1", k, train=(0.1, 1.0), test=(0.2, 0.5))
  out, _ = judged(tmp_path)
  claim = out["6"]["claims"][1]
  assert claim[2] == findings.NOT_RUN and claim[1].endswith("none (so far)")
  assert out["6"]["verdict"].startswith("waiting")
  # one layer at 0.9 without a test gain shows it at once, the other layers still to run
  shown_root = tmp_path / "shown"
  for k in range(3):
    write_run(shown_root, "l1", k, train=(0.1, 1.0), test=(0.2, 0.5))
    write_run(shown_root, "l2", k, train=(0.1, 1.0), test=(0.2, 0.2))
  claim = judged(shown_root)[0]["6"]["claims"][1]
  assert claim[2] == findings.SHOWN and claim[1].endswith("not shown above base: l2")
  for spec in pipeline.parse_layers("smollm2"):
    for k in range(3 * (spec != "l1")):
      write_run(tmp_path, spec, k)
  out, _ = judged(tmp_path)
  claim = out["6"]["claims"][1]
  assert claim[2] == findings.NOT_SHOWN and claim[1].endswith("not shown above base: none")


def test_answered_accuracy_splits_format_from_correctness():
  """10 samples: 4 without a final answer, 3 of the 6 answered correct -> 0.5; Pass@1 0.3 =
  (1 - 0.4) x 0.5."""
  e = {"test": [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], "test_no_answer": [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]}
  assert findings.answered_accuracy(e) == pytest.approx(0.5)
  assert np.mean(e["test"]) == pytest.approx((1 - 0.4) * 0.5)
  assert findings.answered_accuracy({"test": [0, 0], "test_no_answer": [1, 1]}) is None
  with pytest.raises(ValueError, match="differ"):
    findings.answered_accuracy({"test": [1, 0], "test_no_answer": [[0, 0]]})


def test_answered_difference_and_its_table(tmp_path, capsys):
  """Base: 4 of 10 answered, 1 right (0.25); final: 8 answered, 4 right (0.5): +0.25. The
  same evaluation on both sides differs by exactly 0 in every resample."""
  ids = [f"t{i}" for i in range(10)]
  base = {"test": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], "test_no_answer": [0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
          "test_ids": ids}
  final = {"test": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0], "test_no_answer": [0] * 8 + [1, 1],
           "test_ids": ids}
  est, low, high = findings.answered_difference(final, base, boots=500)
  assert est == pytest.approx(0.25) and low < 0.25 < high
  assert findings.answered_difference(base, base, boots=200) == (0.0, 0.0, 0.0)
  with pytest.raises(ValueError, match="without any answer"):
    findings.answered_difference(final, {"test": [0] * 10, "test_no_answer": [1] * 10,
                                         "test_ids": ids})
  # question by question: the same questions in the same order, or no difference at all
  with pytest.raises(ValueError, match="cannot be paired"):
    findings.answered_difference(final, dict(base, test_ids=ids[::-1]))
  # the table: one line per flagged seed and kind (seed 2 has no flags; no greedy flags at all)
  for k, no_answer in enumerate(((0.5, 0.1), (0.3, 0.1), None)):
    write_run(tmp_path, "l1", k, no_answer=no_answer)
  assert findings.main(["--root", str(tmp_path), "--answered", "l1", "--boots", "100"]) == 0
  rows = capsys.readouterr().out.splitlines()[2:]
  assert [r.split(" | ")[:2] for r in rows] == [["| 0", "sampled"], ["| 1", "sampled"]]
  assert rows[0].split(" | ")[2].startswith("0.500 -> 0.100 (-0.400 [")


def test_kept_texts_at_the_limit_per_seed(tmp_path, capsys, monkeypatch):
  """Counted in words here (a stand-in tokenizer): each seed keeps 24 texts (rounds 1, 50 and
  100, 8 each), of which the 5 - k marker texts of round 100 have 3 words and the other 19 + k
  have 4; seed 1 has ended in an error, so it has no line."""
  for k in range(3):
    write_run(tmp_path, "l1", k, markers=(0, 5 - k), failed=k == 1)
  results = findings.load(str(tmp_path), ["l1"])["l1"]
  words = lambda text: len(text.split())
  assert findings.kept_at_limit(results, words, 4) == [(0, 19, 24), (2, 21, 24)]
  assert findings.kept_at_limit(results, words, 3) == [(0, 24, 24), (2, 24, 24)]
  monkeypatch.setattr(findings, "_smollm2_token_count", lambda: words)
  assert findings.main(["--root", str(tmp_path), "--at_limit", "l1", "--limit", "4"]) == 0
  assert capsys.readouterr().out.splitlines() == ["seed 0: 19 of 24 kept texts reach 4 tokens",
                                                  "seed 2: 21 of 24 kept texts reach 4 tokens"]


def test_the_per_seed_table_against_the_parent_layer(tmp_path, capsys):
  """Hand-set records: each Pass@1 is an exact share of the questions, so every value and
  every paired difference is known. L2 against L1 at the same seed: test 0.5 - 0.3 (seed 0)
  and 0.5 - 0.4 (seed 1), greedy 0.6 - 0.3; seed 2 of L1 has no record, so its L2 row has no
  difference."""
  for k in range(2):
    write_run(tmp_path, "l1", k, train=(0.25, 0.75), test=(0.2, 0.3 + 0.1 * k),
              greedy=(0.3, 0.3))
  for k in range(3):
    write_run(tmp_path, "l2", k, train=(0.25, 1.0), test=(0.2, 0.5), greedy=(0.3, 0.6),
              mid=(0.5, 0.35), entropy=(0.6, 0.2))
  assert findings.main(["--root", str(tmp_path), "--per_seed", "l2", "--boots", "200"]) == 0
  header, _, *rows = capsys.readouterr().out.splitlines()
  assert "- l1 (same seed), test" in header
  cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
  assert [c[0] for c in cells] == ["0", "1", "2", "mean"]
  assert cells[0][1:4] == ["1", "100 of 100", "0.25, 0.50, 1.00"]
  assert cells[0][4].startswith("0.250 -> 1.000 (+0.750 [")
  assert cells[0][5].startswith("0.200 -> 0.500 (+0.300 [")
  assert cells[0][6].startswith("0.300 -> 0.600 (+0.300 [")
  assert cells[0][7].startswith("+0.200 [") and cells[1][7].startswith("+0.100 [")
  assert not any("unpaired" in c for row in cells for c in row)  # same questions: paired
  assert cells[1][8].startswith("+0.300 [")
  low, high = map(float, cells[1][7].split("[")[1].rstrip("]").split(", "))
  assert low < 0.1 < high  # two different draws of the test questions: not exact
  assert cells[2][7:9] == ["–", "–"]
  assert cells[0][9:11] == ["0.60 -> 0.20", "100 -> 100"]
  assert cells[3][4:7] == ["0.250 -> 1.000", "0.200 -> 0.500", "0.300 -> 0.600"]
  assert cells[3][7:9] == ["+0.150 (2 of 3 seeds)", "+0.300 (2 of 3 seeds)"]  # (0.2 + 0.1) / 2
  assert len(cells[3]) == len(cells[0])
  # no finished seed yet: says so
  assert "no finished seed" in findings.seed_table(
      findings.load(str(tmp_path), ["l3"])["l3"])


def test_the_rounds_check_counts_seeds_reaching_the_threshold(tmp_path, capsys):
  """run.sh l0_medium's rule on hand-set records: seed 0 reaches 0.9 at the end (round 100),
  seed 1 at round 50 and falls back to 0.5, seed 2 never; test Pass@1 0.1 -> 0.3 in every seed
  (a gain of exactly +0.200, shown), L4 medium ending at 0.2 (+0.100 against it)."""
  root, layers = tmp_path / "l0_medium", tmp_path / "layers"
  for k, (mid, end) in enumerate(((0.5, 0.95), (0.92, 0.5), (0.3, 0.2))):
    write_run(root, "l0", k, train=(0.06, end), mid=(mid, 0.2), test=(0.1, 0.3))
  for k in range(3):
    write_run(layers, "l4:bucket=medium", k, test=(0.1, 0.2))
  assert findings.main(["--root", str(layers), "--rounds_check", str(root),
                        "--boots", "200"]) == 0
  out = capsys.readouterr().out
  assert "at an evaluation: 2 of 3 seeds (first evaluated round per seed: 0: 100, 1: 50, " \
         "2: never); at the end: 1 of 3 (0: 0.938, 1: 0.500, 2: 0.188)" in out
  assert "(at least 2 of 3 reach it): met." in out
  assert "final - base test Pass@1: +0.200 [" in out and "t over the seeds +0.200 [" in out
  assert out.count(", shown") == 2
  assert "minus L4 medium's (same seeds and questions): +0.100 [" in out
  assert "unpaired" not in out
  assert "| 1 | 1 | 100 of 100 | 0.06, 0.91, 0.50 |" in out  # the per-seed table follows
  # one seed reaching it: not met
  fewer = tmp_path / "fewer"
  for k, end in enumerate((0.95, 0.5, 0.2)):
    write_run(fewer, "l0", k, train=(0.06, end), mid=(0.5, 0.2), test=(0.1, 0.3))
  results = findings.load(str(fewer), ["l0"])["l0"]
  judged = findings.rounds_check(results, boots=50)
  assert "at an evaluation: 1 of 3 seeds" in judged
  assert "(at least 2 of 3 reach it): not met." in judged
  # a seed still running: waits
  results[2] = {**results[2], "status": "partial"}
  assert findings.rounds_check(results, boots=50) == "waiting: 2 of 3 seeds ended, 2 finished"


def test_gain_difference_resamples_questions_not_samples():
  """[questions, samples] rewards whose samples agree within each question carry the
  information of one sample per question: the interval equals that of the [questions] means
  (flattening the 8 samples would narrow it about sqrt(8)-fold)."""
  rng = np.random.default_rng(0)

  def side(p_base, p_final, samples):
    runs = []
    for _ in range(3):
      base, final = (rng.random(20) < p for p in (p_base, p_final))
      wide = lambda v: np.repeat(v[:, None].astype(float), samples, axis=1)
      ids = [f"q{i}" for i in range(20)]
      runs.append({"status": "done", "evals": {"base": {"train": wide(base), "train_ids": ids},
                                               "final": {"train": wide(final), "train_ids": ids}}})
    return runs

  a, b = side(0.2, 0.6, 8), side(0.4, 0.5, 8)
  narrow = lambda runs: [{"status": "done", "evals": {
      when: {"train": r["evals"][when]["train"][:, 0], "train_ids": r["evals"][when]["train_ids"]}
      for when in ("base", "final")}} for r in runs]
  wide_iv = findings.gain_difference(a, b, key="train", boots=300)
  narrow_iv = findings.gain_difference(narrow(a), narrow(b), key="train", boots=300)
  assert wide_iv == pytest.approx(narrow_iv)
  assert wide_iv[2] - wide_iv[1] > 0.1
  wide_t = findings.gain_difference(a, b, key="train", seed_level=True)
  assert wide_t == pytest.approx(findings.gain_difference(narrow(a), narrow(b), key="train",
                                                          seed_level=True))


def test_gain_difference_on_one_sample_has_no_sampling_floor():
  """A test set of one question sampled once: each seed's sampling variance is 0 (nothing to
  measure it from; no NaN or warning), so the t-interval is the seeds' own: gains 1, 0, 1
  against 0, 0, 0 -> 2/3 +- t(0.975, 2 df) x sd / sqrt(3), its upper end 2.10 cut to 2 (a
  difference of two gains in [-1, 1])."""
  side = lambda gains: [{"status": "done", "evals": {
      "base": {"test": [0.0], "test_ids": ["q"]}, "final": {"test": [float(g)], "test_ids": ["q"]}}}
      for g in gains]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    est, low, high = findings.gain_difference(side((1, 0, 1)), side((0, 0, 0)),
                                              seed_level=True)[:3]
  half = 4.302653 * np.std([1, 0, 1], ddof=1) / np.sqrt(3)
  assert (est, low, high) == pytest.approx((2 / 3, 2 / 3 - half, 2.0), abs=1e-4)


def test_the_rules_edge_by_edge(tmp_path):
  """Branches the first scenario leaves alone: a one-sided G comparison (a smaller G ahead is
  no gain), 2b on separation rather than means, 4 through collapse flags and through L1's
  training Pass@1 (not the base's), 5a through L1 (not the base), a diverged seed (the layer
  still counts with 2 finished), 6b shown."""
  for k in range(3):
    write_run(tmp_path, "l0", k, train=(0.1, 1.0), test=(0.2, 0.4), mid=(0.95, 0.3))
    write_run(tmp_path, "l1:g=4", k, test=(0.2, 0.4))
    # L1: two calm seeds (instability ~0.2) and a jumpy one (~1.2); L2: three seeds at ~0.75,
    # above L1's mean (~0.53) but not above every L1 seed.
    write_run(tmp_path, "l1", k, train=(0.1, 0.5), test=(0.2, 0.2),
              mid=(0.9, 0.8) if k == 2 else (0.3, 0.2))
    write_run(tmp_path, "l2", k, train=(0.1, 1.0), test=(0.2, 0.2), mid=(0.3, 0.5))
    write_run(tmp_path, "l1:g=16", k, test=(0.2, 0.2))
    write_run(tmp_path, "l3", k, train=(0.1, 0.5), collapse=k < 2)
    write_run(tmp_path, "l3:neg=m10", k, train=(0.0, 0.0))
    write_run(tmp_path, "l4:bucket=extremely_hard", k, test=(0.1, 0.1))
    write_run(tmp_path, "l4:bucket=medium", k, failed=k == 2)
  out, per_layer = judged(tmp_path)
  assert out["1"]["verdict"] == "reproduced"
  l1, l2 = ([findings.instability(r) for r in per_layer[s]] for s in ("l1", "l2"))
  assert np.mean(l2) > np.mean(l1) and min(l2) < max(l1)
  assert out["2"]["claims"][1][2] == findings.NOT_SHOWN and out["2"]["verdict"] == "partly"
  assert out["3"]["verdict"] == "reproduced"  # G=8 - G=4 is -0.2: below, not a gain
  assert [state for _, _, state in out["4"]["claims"]] == ["shown", "shown"]
  assert "2 of 3 seeds stopped" in out["4"]["claims"][0][1]
  assert per_layer["l4:bucket=medium"][2]["status"] == "diverged"
  assert out["5"]["verdict"] == "reproduced"
  assert out["6"]["claims"][1][2] == findings.SHOWN and "none" not in out["6"]["claims"][1][1]
  assert "l2" in out["6"]["claims"][1][1].split("not shown above base: ")[1]


def test_findings_3_and_5_wait_for_third_seeds_then_judge_absences_by_direction(tmp_path):
  """The order the SmolLM2 layers finish in: finding 3 and 5(a) wait while a seed of
  l1:g=16 / l4:bucket=extremely_hard is missing; 5(b) is judged meanwhile. Then: only L1
  (G = 8) beats a smaller G, so 3 is not shown with 'G=8 - G=1' named; the extremely hard
  question ends level with L1 (5a not shown) and the medium one falls below its base (5b not
  shown): an absence claim fails on a fall, not only on a rise."""
  for k in range(3):
    write_run(tmp_path, "l0", k, test=(0.2, 0.2))
    write_run(tmp_path, "l1:g=4", k, test=(0.2, 0.2))
    write_run(tmp_path, "l1", k, test=(0.2, 0.5))
    write_run(tmp_path, "l4:bucket=medium", k, test=(0.2, 0.05))
    if k < 2:
      write_run(tmp_path, "l1:g=16", k, test=(0.2, 0.2))
      write_run(tmp_path, "l4:bucket=extremely_hard", k, test=(0.2, 0.5))
  out, _ = judged(tmp_path)
  assert out["3"]["claims"][0][2] == findings.NOT_RUN
  assert out["3"]["verdict"] == "waiting (layers not run)"
  (_, _, state_a), (_, evidence_b, state_b) = out["5"]["claims"]
  assert (state_a, state_b) == (findings.NOT_RUN, findings.NOT_SHOWN)
  assert evidence_b.startswith("final - base -0.150 [") and evidence_b.endswith(findings.ABSENCE)
  assert out["5"]["verdict"] == "waiting (layers not run)"

  write_run(tmp_path, "l1:g=16", 2, test=(0.2, 0.2))
  write_run(tmp_path, "l4:bucket=extremely_hard", 2, test=(0.2, 0.5))
  out, _ = judged(tmp_path)
  claim, evidence, state = out["3"]["claims"][0]
  assert state == findings.NOT_SHOWN and out["3"]["verdict"] == "not shown"
  assert "G=8 - G=1 +0.300 [" in evidence and "G=8 - G=4 +0.300 [" in evidence
  assert "G=16 - G=8 -0.300 [" in evidence and evidence.endswith(findings.ABSENCE)
  (_, evidence_a, state_a), (_, _, state_b) = out["5"]["claims"]
  assert (state_a, state_b) == (findings.NOT_SHOWN, findings.NOT_SHOWN)
  assert "- L1's +0.000 [" in evidence_a and not evidence_a.endswith(findings.ABSENCE)
  assert out["5"]["verdict"] == "not shown"


def test_side_by_side_judges_the_toy_by_the_same_rules(tmp_path, capsys):
  """--toy with the whole preset: a column of its own, each cell the verdict and the sub-claims
  shown; SmolLM2 with L1 alone waits, and 6a is judged from both L1s in each direction."""
  write_scenario(tmp_path / "toy")
  for k in range(3):
    write_run(tmp_path / "smollm2", "l1", k, test=(0.2, 0.5))
  assert findings.main(["--root", str(tmp_path / "smollm2"), "--toy", str(tmp_path / "toy"),
                        "--boots", "200"]) == 0
  text = capsys.readouterr().out
  assert text.startswith("## Side by side")
  table = text.split("## SmolLM2-135M-Instruct")[0]
  rows = {line.split(" | ")[0][2:4]: line.split(" | ")[1:] for line in table.splitlines()
          if line.startswith("| ") and line[2].isdigit()}
  # finding -> [paper, toy, toy with the seeds' t-intervals, SmolLM2, SmolLM2 with them]
  # (the scenario's seeds agree exactly, so the t-intervals judge alike)
  waiting = "waiting (layers not run)"
  assert rows["1."] == ["reported: the optimal arm is learned; test Pass@1 rises by up to +0.5; "
                        "seeds vary a lot", "reproduced (a; b)", "reproduced (a; b)", waiting,
                        waiting + " |"]
  assert rows["3."][1:] == ["not shown", "not shown", waiting, waiting + " |"]
  assert rows["4."][1] == rows["4."][2] == "partly ({-1, +1}; not {-1, 0})"
  # 6a on the toy's side: gain 0 against SmolLM2's +0.3, shown; 6b: no toy layer at 0.9.
  assert rows["6."][1] == "partly (a; not b)"
  assert "toy gain - SmolLM2 gain -0.300" in text and "SmolLM2 gain - toy gain +0.300" in text
  assert "## The embedded toy" in text
  assert "### The embedded toy, the same rules with the seeds' t-intervals" in text


def test_toy_records_of_l1_alone_serve_6a_only(tmp_path, capsys):
  for k in range(3):
    write_run(tmp_path / "toy", "l1", k, test=(0.2, 0.2))
    write_run(tmp_path / "smollm2", "l1", k, test=(0.2, 0.5))
  findings.main(["--root", str(tmp_path / "smollm2"), "--toy", str(tmp_path / "toy"),
                 "--boots", "200"])
  text = capsys.readouterr().out
  assert "Side by side" not in text and "The embedded toy" not in text
  assert "SmolLM2 gain - toy gain +0.300" in text


def test_seed_level_is_stricter_where_the_seeds_disagree(tmp_path):
  """L0's test gains +0.6, +0.6, +0.15: the two-level bootstrap's seed level spans about
  [+0.15, +0.6] and shows the rise; the t-interval over the three gains (mean 0.45, sd 0.26,
  half-width 4.30 x 0.15 = 0.65) holds 0: not shown."""
  for k, final in enumerate((0.8, 0.8, 0.35)):
    write_run(tmp_path, "l0", k, test=(0.2, final))
  per_layer = findings.load(str(tmp_path), pipeline.parse_layers("smollm2"))
  shown = {level: dict((c, s) for c, _, s in
                       findings.judge(per_layer, boots=300, seed_level=level)[0]["claims"])
           for level in (False, True)}
  claim = "(b) L0's test Pass@1 rises above its base's"
  assert shown[False][claim] == findings.SHOWN and shown[True][claim] == findings.NOT_SHOWN
  est, low, high = findings.difference(per_layer, "l0", None, seed_level=True)
  assert est == pytest.approx(0.45) and est - low == pytest.approx(
      4.3027 * np.std([0.6, 0.6, 0.15], ddof=1) / np.sqrt(3), abs=1e-3)
  assert high == 1.0  # 0.45 + 0.65, cut to the largest possible difference


def test_seed_level_floors_the_spread_and_never_shows_an_absence_without_an_interval(tmp_path):
  """Three seeds with the same difference: the interval is as wide as their sampling noise,
  not zero. Layers with one finished seed in common: no interval, so L2's absence (2a) is
  untestable, not shown."""
  # Each seed's difference has sampling variance 0.0025 (standard error 0.05).
  est, low, high = pipeline.seed_interval([0.2] * 3, sampling=[0.0025] * 3)
  assert est == pytest.approx(0.2) and high - est == pytest.approx(4.3027 * np.sqrt(0.0025 / 3),
                                                                   abs=1e-4)
  assert pipeline.seed_interval([0.2] * 3)[1] == pytest.approx(0.2)  # no floor: zero width
  for k in range(3):
    write_run(tmp_path, "l1", k, failed=k == 2)
    write_run(tmp_path, "l2", k, failed=k == 0)
  per_layer = findings.load(str(tmp_path), pipeline.parse_layers("smollm2"))
  states = {level: findings.judge(per_layer, boots=200, seed_level=level)[1]["claims"][0]
            for level in (False, True)}
  # Neither interval judges it (since 2026-12-01; the bootstrap's would be question noise
  # alone): untestable under both.
  for level in (True, False):
    assert states[level][2] == findings.UNTESTABLE and "no interval: one seed" in states[level][1]
  assert findings.fmt((0.1, 0.0, 0.2, "unpaired")) == "+0.100 [+0.000, +0.200] (unpaired)"
  assert findings.fmt(pipeline.seed_interval([0.5])) == "+0.500 (no interval: one seed)"


def test_the_report_adds_the_seeds_t_intervals(tmp_path):
  """The pipeline's report (records as runs write them): beside the bootstrap table, the same
  differences with seed_difference; L0's test gain is +0.3 in each seed."""
  for k in range(3):
    write_run(tmp_path, "l0", k, test=(0.2, 0.5))
  text = open(pipeline.write_report(str(tmp_path), ["l0"], 3)).read()
  t_table = text.split("The same differences with a t-interval")[1]
  row = next(line for line in t_table.splitlines() if line.startswith("| l0 |"))
  per_layer = findings.load(str(tmp_path), ["l0"])
  iv = findings.difference(per_layer, "l0", None, seed_level=True)
  assert iv[0] == pytest.approx(0.3) and iv[1] < 0.3 < iv[2]  # the sampling floor's width
  assert row.split(" | ")[3] == f"+0.300 [{iv[1]:+.3f}, {iv[2]:+.3f}]"
  assert "| Δ greedy vs parent | Δ greedy vs base | training Pass@1 |" in text  # bootstrap's


def test_answerless_test_share_uses_the_seeds_flagged_at_both_ends(tmp_path):
  """Seeds 0 and 1 flag answerless test samples (0.5 -> 0.1 and 0.3 -> 0.1), seed 2 does not
  (evaluated before the flags existed): base and final average seeds 0 and 1 only, and say so."""
  for k, no_answer in enumerate(((0.5, 0.1), (0.3, 0.1), None)):
    write_run(tmp_path, "l1", k, no_answer=no_answer)
  per_layer = findings.load(str(tmp_path), ["l1"])
  [m] = findings.mechanisms(per_layer, boots=100)
  assert m["test_no_answer_seeds"] == 2
  assert (m["test_no_answer_base"], m["test_no_answer_final"]) == (pytest.approx(0.4),
                                                                   pytest.approx(0.1))
  assert "| 0.40 -> 0.10 (2 seeds) |" in findings.markdown([], [m])
  # correct among answered: each flagged seed's own ratio, then their mean (seed 2 left out)
  for when in ("base", "final"):
    ratios = []
    for r in per_layer["l1"][:2]:
      e = r["evals"][when]
      answered = [1 - x for x in e["test_no_answer"]]
      ratios.append(sum(c * a for c, a in zip(e["test"], answered)) / sum(answered))
    assert m[f"test_answered_{when}"] == pytest.approx(sum(ratios) / 2)
  cells = findings.markdown([], [m]).splitlines()[-1].split(" | ")
  assert cells[8] == f"{m['test_answered_base']:.2f} -> {m['test_answered_final']:.2f} (2 seeds)"


def test_gains_over_the_base_pair_question_by_question(tmp_path):
  """A gain over the base subtracts question by question: records whose base and final hold
  other questions (or another order) are refused, not paired by position."""
  for k in range(3):
    write_run(tmp_path, "l1", k)
    write_run(tmp_path, "l2", k)
  per_layer = findings.load(str(tmp_path), ["l1", "l2"])
  assert findings.gain_difference(per_layer["l1"], per_layer["l2"], boots=50)[0] == 0.0
  results = per_layer["l1"]
  results[1]["evals"]["base"]["test_ids"] = results[1]["evals"]["base"]["test_ids"][::-1]
  with pytest.raises(ValueError, match="cannot be paired"):
    findings.gain_difference(results, per_layer["l2"], boots=50)
