"""experiments/smollm2/base_no_answer.py on a tiny pipeline: flags added to a shared base test
evaluation only where sampling it again gives the same rewards."""

import importlib.util
import json
import pathlib

import pytest

from rft_jax import pipeline, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "base_no_answer", ROOT / "experiments" / "smollm2" / "base_no_answer.py")
base_no_answer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base_no_answer)


def test_flags_are_added_to_the_same_samples_only(tmp_path):
  root, tables = tmp_path / "layers", tmp_path / "tables"
  assert pipeline.main(["--layers=l0", "--seeds=1", "--runlocal", f"--root={root}",
                        f"--tables={tables}", "--set", "train.rounds=1",
                        "--set", "example.selection=extremely_hard"]) == 0
  [config] = base_no_answer.layer_configs(str(root), str(tables), str(root))
  path = pathlib.Path(train.base_test_path(config))
  made = json.loads(path.read_text())  # sampled with the flags by the run itself
  assert base_no_answer.add_flags(config).endswith("has the flags")
  # An evaluation stored before the flags existed: sampled again, the same rewards, flags added.
  old = {k: v for k, v in made.items() if k not in base_no_answer.FLAGS}
  path.write_text(json.dumps(old))
  assert "flags added (seed 0;" in base_no_answer.add_flags(config)
  assert config.eval.shared_base  # the caller's config is left as it was
  assert json.loads(path.read_text()) == made
  # Stored rewards that sampling again does not give: other samples, nothing written.
  old["test"][0] = 1.0 - old["test"][0]
  path.write_text(json.dumps(old))
  with pytest.raises(base_no_answer.BackfillError,
                     match="differs from the stored one in 1 'test' samples"):
    base_no_answer.add_flags(config)
  assert json.loads(path.read_text()) == old
  # main() reports a failing seed on one line and exits 1.
  assert base_no_answer.main([f"--layers={root}", f"--tables={tables}", f"--root={root}"]) == 1
  path.unlink()
  with pytest.raises(base_no_answer.BackfillError, match="no shared base evaluation of seed 0"):
    base_no_answer.add_flags(config)
