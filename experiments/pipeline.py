"""The pipeline runner from experiments/: python -m experiments.pipeline --layers=quick --quick

Same flags as `python -m rft_jax.pipeline` (rft_jax/pipeline.py holds the runner and report).
"""

import sys

from rft_jax import pipeline

if __name__ == "__main__":
  sys.exit(pipeline.main())
