"""A pipeline layer end to end on the real SmolLM2-135M-Instruct (configs/smollm2.py).

`l0_minimal.py:base=smollm2,runlocal` (2 rounds of 16-token rollouts, tiny evaluations) through
the main command: the GGUF loads, prompts go through the chat template, the sampler, grader, train step,
evaluation, checkpoint and summary all run on the 30-layer model (about 2 minutes on 2 cores,
mostly compiling). Skips, saying why, when the GGUF cannot be had (conftest.smollm2_gguf).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from configs import l0_minimal, l2_advantage
from rft_jax import errors, metrics, train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_layer_accepts_base_smollm2():
  for module in (l0_minimal, l2_advantage):
    c = module.get_config("base=smollm2")
    assert (c.model.checkpoint, c.task.template, c.rollout.max_new_tokens) == ("smollm2",
                                                                               "gsm8k", 256)
  with pytest.raises(ValueError, match="unknown base 'nope'"):
    l0_minimal.get_config("base=nope")


def test_the_smollm2_preset_plans_every_layer_on_smollm2(tmp_path):
  """--layers=smollm2 --base=smollm2: every run on the GGUF, sharing one difficulty table."""
  from rft_jax import pipeline

  planned = pipeline.plan(pipeline.parse_layers("smollm2"), 3, str(tmp_path), base="smollm2")
  assert len(planned) == 27  # 9 layers x 3 seeds
  # L0..L3 train on a hard question; L4 on a medium and an extremely hard one (no easy exists).
  assert {c.example.selection for _, c in planned} == {"hard", "medium", "extremely_hard"}
  assert {c.model.checkpoint for _, c in planned} == {"smollm2"}
  assert {c.task.grader for _, c in planned} == {"final_answer"}
  assert not any(c.warm_start.dir for _, c in planned)  # no embedded warm start
  assert len({c.example.table for _, c in planned}) == 1
  assert {c.rollout.num_samples for _, c in planned} == {1, 4, 8, 16}


def test_smollm2_task_and_grader_override():
  """configs/smollm2.py's task: one-operation problems graded by 'final_answer' (task.grader)."""
  config = l0_minimal.get_config("base=smollm2")
  train.validate_config(config)
  task = train.build_task(config.task)
  assert task.grader == "final_answer" and len(task.test) == 500
  assert all(len(e.meta["expression"].split()) == 3 for e in task.test)
  example = task.test[0]
  assert task.grade(f"So, the answer is {example.answer}.", example) == 1.0
  assert task.grade(f"#### {int(example.answer) + 1}", example) == 0.0
  config.task.grader = "nope"
  with pytest.raises(errors.ConfigError, match="--config.task.grader='nope': must be empty"):
    train.validate_config(config)


@pytest.mark.slow
def test_l0_runs_on_smollm2(smollm2_gguf, tmp_path):
  """As a user runs it: `python -m rft_jax.main`, one CPU device (the tests' 8 forced devices
  would replicate the 134.5M params and their AdamW state 8 times over)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", RFT_PROGRESS="0")
  env.pop("XLA_FLAGS", None)
  done = subprocess.run(
      [sys.executable, "-m", "rft_jax.main", "--config=configs/l0_minimal.py:base=smollm2,runlocal",
       f"--config.model.checkpoint={smollm2_gguf}", f"--workdir={tmp_path}"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["rounds"] == 2
  rows = [r for r in metrics.read_metrics(tmp_path) if "loss" in r]
  assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
  assert all(0 < r["length"] <= 16 for r in rows)  # 16-token rollouts of the real model
  # one rollout a round: cut (1) only where it used all 16 tokens, else finished (0)
  assert all(r["truncated"] in (0.0, 1.0) for r in rows)
  assert all(r["length"] == 16 for r in rows if r["truncated"])
  # Entropy of a pretrained model's next-token distribution: far below uniform (ln 49152 = 10.8).
  assert all(0 < r["entropy"] < 8 for r in rows)
