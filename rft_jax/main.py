"""Runs one pipeline layer: python -m rft_jax.main --config=configs/l0_minimal.py --workdir=DIR

Any config field can be overridden, e.g. --config.rollout.num_samples=8; the config is locked,
so a misspelled key stops the run with a message naming it. Prints the summary at the end (also
written to <workdir>/summary.json).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary.")
flags.mark_flags_as_required(["config", "workdir"])


def format_summary(summary: dict) -> str:
  return (f"base:  training Pass@1 {summary['base_train_pass1']:.3f}  "
          f"test Pass@1 {summary['base_test_pass1']:.3f}\n"
          f"final: training Pass@1 {summary['final_train_pass1']:.3f}  "
          f"test Pass@1 {summary['final_test_pass1']:.3f}\n"
          f"rounds {summary['rounds']}, wall time {summary['wall_s']:.0f} s")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a one-line error for an override of a key the config lacks.

  ml_collections reports `--config.train.roundz=3` as a KeyError / AttributeError (a stack dump),
  not a flags error; name the flag and the key instead, and exit before anything is written.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    err = e
    while err.args and isinstance(err.args[0], BaseException):  # AttributeError(KeyError(...))
      err = err.args[0]
    lines = str(err.args[0] if err.args else err).splitlines() or [""]
    key = lines[0].strip("'\"")
    names = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    bad = [n for n in names if key in n.split(".")[1:]]
    if not key or not bad:
      raise
    hint = " ".join(line.strip() for line in lines[1:])
    sys.stderr.write(f"FATAL Flags parsing error: --{bad[0]}: the config has no key {key!r}"
                     f"{'. ' + hint if hint else ''}\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every step at INFO
  from rft_jax import train  # after flag parsing: a bad flag fails before jax starts

  summary = train.run(_CONFIG.value, _WORKDIR.value)
  print(format_summary(summary))
  print(json.dumps({k: summary[k] for k in ("base_train_pass1", "base_test_pass1",
                                            "final_train_pass1", "final_test_pass1", "rounds",
                                            "wall_s")}))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
