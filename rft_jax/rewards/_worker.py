"""Entry point of a grading worker process: `python -m rft_jax.rewards._worker --job mod:fn ...`.

Started by rewards/pool.py with two inherited pipe descriptors; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
from multiprocessing.connection import Connection

from rft_jax.rewards.pool import worker_main


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--recv-fd", type=int, required=True)
  parser.add_argument("--send-fd", type=int, required=True)
  parser.add_argument("--job", required=True, help="job function, 'module:function'")
  parser.add_argument("--warm-up", default=None, help="called once before the first job")
  parser.add_argument("--parent", type=int, required=True, help="the pool's process id")
  args = parser.parse_args()
  worker_main(
      Connection(args.recv_fd, writable=False), Connection(args.send_fd, readable=False),
      args.job, args.warm_up, args.parent,
  )


if __name__ == "__main__":
  main()
