"""benchmarks/accelerator_check.py and accelerator_decode.py --smoke: the accelerator checks run
end to end on CPU (a tiny model, short lengths), so the scripts meant for a GPU are known to
work before a GPU session spends its minutes on them."""

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


def test_decode_check_smoke_run(tmp_path):
  """benchmarks/accelerator_decode.py --smoke: both parts run and write their figures; on CPU
  the sampler's log-probs are the teacher-forced forward's to float rounding."""
  p = subprocess.run([sys.executable, "benchmarks/accelerator_decode.py", "--smoke",
                      "--batches=1,4", "--new=16", f"--out={tmp_path}"], cwd=REPO_ROOT,
                     env=_env(), capture_output=True, text=True, timeout=900)
  assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
  result = json.loads((tmp_path / "accelerator_decode.json").read_text())
  assert [(r["batch"], r["tokens"]) for r in result["decode"]] == [(1, 16), (4, 64)]
  assert all(0 < r["fraction"] and r["tok_per_s"] > 0 for r in result["decode"])
  logp = result["logprobs"]
  assert logp["teacher-forced"]["tokens"] == 8 * 16
  for name in ("teacher-forced", "teacher-forced on the CPU backend"):
    assert 0 <= logp[name]["max_abs"] < 1e-4, (name, logp[name])
  # this sampler reads its whole cache every step: a lower ceiling than the filled part's
  assert all(r["limit_full_cache_tok_per_s"] < r["limit_tok_per_s"] for r in result["decode"])
  assert logp["sampler_mean_logp"] < -1.0  # a spread-out policy, not a one-hot one
