#!/usr/bin/env bash
# Issue 13's experiments on SmolLM2-135M-Instruct, in the order they were planned; run it again
# to continue (finished runs are skipped: their records are in experiments/smollm2/, committed as
# each one finishes; an unfinished run resumes from its last checkpoint in runs/).
#
#   bash experiments/smollm2/run.sh            # everything still to run
#   bash experiments/smollm2/run.sh sweep      # only the L0 learning-rate sweep
#   bash experiments/smollm2/run.sh l0_medium  # only L0 on the medium question, 300 rounds
#
# Settings and their reasons: experiments/smollm2/README.md ("Choices made before the runs").
set -euo pipefail
cd "$(dirname "$0")/../.."
what="${1:-all}"

# 1. L0 learning-rate sweep: 2 seeds x 4 rates, seed 0 of every rate first (the first pass over
#    the rates is already a sweep); 100 rounds, 100 test questions (the sweep compares training
#    Pass@1, the 500-question test is for the layers).
if [[ "$what" == all || "$what" == sweep ]]; then
  for seeds in 1 2; do
    for lr in 1e-6 3e-6 1e-5 3e-5; do
      python -m rft_jax.pipeline --layers=l0 --base=smollm2 --seeds="$seeds" \
        --root="runs/smollm2/lr_sweep/lr$lr" --set optimizer.learning_rate="$lr" \
        --set train.rounds=100 --set train.eval_every=50 --set train.checkpoint_every=10 \
        --set eval.test_size=100 --set eval.train_samples=32 \
        --tables=experiments/smollm2/tables --publish="experiments/smollm2/lr_sweep/lr$lr" \
        --commit --drop_checkpoints
    done
  done
fi

# 2. The layers (preset smollm2: configs/layers.py) x 3 seeds at the sweep's rate (pick_lr.py
#    applies the rule written before the sweep; it stops this script until the sweep is done),
#    in the order completing findings soonest, the G sweep last (set 07:13, before any layer run
#    had finished). 100 rounds; evaluations every 25 rounds on 100 test questions, the base
#    and the last on 500; a checkpoint every 10 rounds (runs outlast a sitting); the base's
#    test evaluation sampled once per seed and shared (--tables). Cost options (set 2026-11-30,
#    before any layer ran; README "Cost on this CPU"): greedy accuracy at the base and the
#    last round only, train steps on the round's longest completion rounded up to 32
#    positions, rollouts through the step 4 at a time; texts of rounds 1, 10, ..., 100 kept
#    (rollouts.jsonl).
if [[ "$what" == all || "$what" == layers ]]; then
  lr="$(python experiments/smollm2/pick_lr.py --print)"
  python -m rft_jax.pipeline --base=smollm2 --seeds=3 \
    --layers=l0,l1,l2,l3,l3:neg=m10,l4:bucket=medium,l4:bucket=extremely_hard,l1:g=4,l1:g=16 \
    --root=runs/smollm2/layers --set optimizer.learning_rate="$lr" --set train.rounds=100 \
    --set train.checkpoint_every=10 --set train.completion_bucket=32 \
    --set train.micro_batch_size=4 --set train.texts_every=10 \
    --set eval.curve_greedy=false --tables=experiments/smollm2/tables \
    --publish=experiments/smollm2/layers --commit --drop_checkpoints
fi

# 3. The findings, by the rules fixed before the layers ran (experiments/smollm2/findings.py),
#    once every layer has its records, side by side with the embedded toy's run of the same
#    preset (experiments/bottom_up/README.md); written to findings.md and committed.
if [[ "$what" == all || "$what" == findings ]]; then
  out=experiments/smollm2/findings.md
  if ! python experiments/smollm2/findings.py --toy=experiments/bottom_up/layers > "$out.tmp"
  then
    rm -f "$out.tmp"
    exit 1
  fi
  mv "$out.tmp" "$out"
  git add "$out"
  # Findings still waiting for layers say so in the file; a commit only when it changed.
  git diff --cached --quiet -- "$out" || git commit -q -m \
    "experiments/smollm2/findings.md: the findings on the layer records" -- "$out"
fi

# 4. Added 2026-12-07, after the preset's results (not pre-registered with it): L0 on the medium
#    question for 300 rounds, issue 13's rule for the rounds ("enough that L0 reaches training
#    Pass@1 0.9 on the medium question in most seeds"), which the preset's 100 rounds on the hard
#    question did not meet. Graded by the layers' rules (final_answer_legacy), so that its
#    evaluations pair with theirs, its question drawn from their difficulty table (sampled with
#    the earlier draw scheme: README, "Sampler draws"). Choices and how it is judged: README,
#    "L0 on the medium question, 300 rounds".
if [[ "$what" == all || "$what" == l0_medium ]]; then
  lr="$(python experiments/smollm2/pick_lr.py --print)"
  python -m rft_jax.pipeline --base=smollm2 --seeds=3 --layers=l0 \
    --root=runs/smollm2/l0_medium --set optimizer.learning_rate="$lr" --set train.rounds=300 \
    --set example.selection=medium --set task.grader=final_answer_legacy \
    --set example.table=experiments/smollm2/tables/8fff97d576.json \
    --set train.eval_every=50 --set train.checkpoint_every=10 --set train.completion_bucket=32 \
    --set train.texts_every=50 --set eval.curve_greedy=false \
    --tables=experiments/smollm2/tables --publish=experiments/smollm2/l0_medium \
    --commit --drop_checkpoints
fi
