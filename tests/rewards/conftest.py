"""Makes the checkout importable when rft_jax is not installed (e.g. a bare venv + pytest)."""

import pathlib
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))
