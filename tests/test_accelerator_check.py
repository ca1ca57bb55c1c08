"""benchmarks/accelerator_check.py --smoke: the prepared accelerator check runs end to end on CPU
(a tiny model, 32 + 32 tokens), so the script waiting for a GPU is known to work."""

import json
import subprocess
import sys

from tests.test_main import REPO_ROOT, _env


def test_smoke_run_writes_every_figure(tmp_path):
  p = subprocess.run([sys.executable, "benchmarks/accelerator_check.py", "--smoke", "--steps=1",
                      f"--out={tmp_path}"], cwd=REPO_ROOT, env=_env(), capture_output=True,
                     text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  result = json.loads((tmp_path / "accelerator_check.json").read_text())
  assert result["shape"] == "smoke" and (result["prompt"], result["response"]) == (32, 32)
  assert result["decode_tokens"] == 8 * 32  # no EOS: every rollout runs the full length
  assert result["plan"]["peak"] > result["plan"]["params"] > 0
  assert result["train_step_s"] > 0 and result["sampler_s"] > 0
  # Random weights scaled to a spread-out policy: rollouts differ and the step has a gradient.
  assert result["entropy"] > 1.0 and result["grad_norm"] > 1e-3
  assert "memory:" in p.stdout and "total wall time" in p.stdout
