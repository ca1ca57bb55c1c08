"""The Colab notebooks: quickstart runs headless in its tiny setting; the TPU one is well-formed."""

import ast
import os
import pathlib

import pytest

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
nbformat = pytest.importorskip("nbformat", reason="nbformat is needed to read the notebooks")


def code_of(cell) -> str:
  """A code cell's source without IPython magics and shell escapes (not Python syntax)."""
  return "\n".join(line for line in cell.source.splitlines()
                   if not line.lstrip().startswith(("%", "!")))


@pytest.mark.parametrize("name", ["quickstart.ipynb", "tpu_pipeline.ipynb"])
def test_notebook_is_valid_and_imports_rft_jax(name):
  nb = nbformat.read(COLAB / name, as_version=4)
  nbformat.validate(nb)
  code = [code_of(c) for c in nb.cells if c.cell_type == "code"]
  for source in code:
    ast.parse(source)
  text = "\n".join(code)
  assert "from rft_jax import pipeline" in text
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "clear outputs"


def test_quickstart_runs_headless(tmp_path):
  pytest.importorskip("nbclient", reason="nbclient is needed to execute notebooks")
  pytest.importorskip("ipykernel", reason="ipykernel is needed to execute notebooks")
  from nbclient import NotebookClient

  nb = nbformat.read(COLAB / "quickstart.ipynb", as_version=4)
  os.environ["RFT_QUICKSTART_TINY"] = "1"  # the kernel inherits it (runlocal configs, 2 rounds)
  try:
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
  finally:
    del os.environ["RFT_QUICKSTART_TINY"]
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 5
  for layer in ("l0", "l2"):
    assert (tmp_path / "runs/quickstart_tiny" / layer / "seed0" / "summary.json").exists()
