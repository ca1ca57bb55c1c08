"""Runs one pipeline layer: python -m rft_jax.main --config=configs/l0_minimal.py --workdir=DIR

Any config field can be overridden, e.g. --config.rollout.num_samples=8; the config is locked,
so a misspelled key stops the run with a message naming it. Prints the summary at the end (also
written to <workdir>/summary.json, with the run's curves in <workdir>/curves.png).

Errors a person can act on (a bad config value, a missing file, a workdir in use or holding
another run, a diverged run, a read-only or full disk) end in their message alone and exit
status 1; --debug shows the traceback. Ctrl-C or SIGTERM finishes the round, saves and exits
130 / 143 ("stopped at round k; run the same command to resume"); a second one exits at once.
--resume_with=optimizer.learning_rate goes on from the workdir's last checkpoint with a new
--config.optimizer.learning_rate (a diverged run), recorded in metrics.jsonl.

--multihost: one JAX process per host, the same command on each (README, "Several hosts"):
    python -m rft_jax.main --config=... --workdir=SHARED_DIR --multihost \
      [--coordinator_address=HOST0:PORT --num_processes=N --process_id=I]
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
_RESUME_WITH = flags.DEFINE_list(
    "resume_with", [], "Settings that may differ from the workdir's stored run on this resume "
    "(optimizer.learning_rate, optimizer.clip_norm, optimizer.weight_decay, "
    "rollout.temperature), e.g. a lower learning rate after a divergence.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show tracebacks of errors a person can act on.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "One of several JAX processes (one per host) running this run: calls "
    "jax.distributed.initialize, with the three flags below or, where they are not given, "
    "with what JAX detects (TPU pod slices, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS ...).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "--multihost: host:port of process 0, reachable by all.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--multihost: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--multihost: this process's index.")
_MULTIHOST_TIMEOUT = flags.DEFINE_integer(
    "multihost_timeout", 300, "--multihost: seconds to wait for every process to join, and "
    "after which a process that stopped answering ends the others.")
flags.mark_flags_as_required(["config", "workdir"])


def format_summary(summary: dict) -> str:
  return (f"base:  training Pass@1 {summary['base_train_pass1']:.3f}  "
          f"test Pass@1 {summary['base_test_pass1']:.3f}\n"
          f"final: training Pass@1 {summary['final_train_pass1']:.3f}  "
          f"test Pass@1 {summary['final_test_pass1']:.3f}\n"
          f"rounds {summary['rounds']}, wall time {summary['wall_s']:.0f} s")


def _fatal(message: str) -> None:
  sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one-line errors for a config file that fails to load and for an
  override of a key the config lacks.

  ml_collections reports `--config.train.roundz=3` as a KeyError / AttributeError (a stack dump),
  not a flags error, and an exception in the config file's get_config (an unknown `:arg`) as a
  flags error quoting its whole traceback; name the flag and the problem instead, and exit before
  anything is written. --debug keeps the full text.
  """
  debug = any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv[1:])
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Error whilst parsing config file" in text and not debug:
      first = text.splitlines()[0].split(": Error whilst", 1)[0]
      last = [line.strip() for line in text.splitlines() if line.strip()][-1]
      text = f"{first}: {last}"
    _fatal(f"{text}\nPass --helpshort or --helpfull to see help on flags.")
  except (AttributeError, KeyError) as e:
    err = e
    while err.args and isinstance(err.args[0], BaseException):  # AttributeError(KeyError(...))
      err = err.args[0]
    lines = str(err.args[0] if err.args else err).splitlines() or [""]
    key = lines[0].strip("'\"")
    names = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    bad = [n for n in names if key in n.split(".")[1:]]
    # Of several overrides naming the key (--config.train.rounds, --config.rollout.rounds), the
    # one the loaded config cannot resolve.
    unresolved = [n for n in bad if not _resolves(_loaded_config(), n.split(".")[1:])]
    bad = unresolved or bad
    if not key or not bad:
      raise
    hint = " ".join(line.strip() for line in lines[1:])
    _fatal(f"--{bad[0]}: the config has no key {key!r}{'. ' + hint if hint else ''}")


def _loaded_config():
  """The config file's ConfigDict as far as flag parsing got, or None. During parsing the
  --config flag has no value yet; its per-field override flags hold the loaded dict."""
  try:
    for name in flags.FLAGS:
      config = getattr(flags.FLAGS[name], "_config", None) if name.startswith("config.") else None
      if config is not None:
        return config
  except Exception:  # only a better error message depends on it
    pass
  return None


def _resolves(config, path: list[str]) -> bool:
  """Whether config.<path> exists (True when there is no config to ask)."""
  if config is None:
    return True
  node = config
  for part in path:
    try:
      if part not in node:
        return False
      node = node[part]
    except TypeError:  # a leaf value: nothing below it
      return False
  return True


def _load_config():
  """The parsed config; a config file that could not be read fails here (ml_collections defers
  that error to the first use), as one line naming the file."""
  config = _CONFIG.value
  try:
    config.keys()
  except OSError as e:
    last = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    raise OSError(f"--config={flags.FLAGS['config'].config_filename}: cannot load it ({last})"
                  ) from e
  return config


def main(argv):
  if len(argv) > 1:
    sys.stderr.write(f"error: unexpected arguments {argv[1:]} (flags are --name=value)\n")
    return 2
  logging.set_verbosity(logging.WARNING)  # orbax logs every step at INFO
  from rft_jax import errors

  errors.quiet_closed_loop_noise()
  log = print
  given = [f"--{flag.name}" for flag in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)
           if flag.value is not None]
  if given and not _MULTIHOST.value:  # else a one-process run would start, ignoring them
    sys.stderr.write(f"error: {', '.join(given)} given without --multihost\n")
    return 2
  try:
    config = _load_config()
    if _MULTIHOST.value:
      from rft_jax import distributed

      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                             timeout_s=_MULTIHOST_TIMEOUT.value)
      if not distributed.is_main():  # one log: process 0's (errors still show on every host)
        log = lambda message: None
    from rft_jax import train  # after flag parsing: a bad flag fails before jax starts

    summary = train.run(config, _WORKDIR.value, resume_with=_RESUME_WITH.value, log=log)
  except (Exception, KeyboardInterrupt) as e:
    message = errors.actionable(e) if not isinstance(e, KeyboardInterrupt) else "interrupted"
    if _DEBUG.value or message is None:
      raise  # a bug (or --debug): the traceback is the useful part
    if isinstance(e, errors.RunInterrupted | KeyboardInterrupt):
      sys.stderr.write(f"{message}\n")
    elif isinstance(e, errors.ConfigError):  # one bad value per line
      sys.stderr.write("".join(f"error: {line}\n" for line in message.splitlines()))
    else:
      sys.stderr.write(f"error: {message}\n")
    return getattr(e, "exit_code", 130 if isinstance(e, KeyboardInterrupt) else 1)
  import jax

  if jax.process_index() != 0:  # process 0 prints and plots the run's results
    return 0
  print(format_summary(summary))
  print(json.dumps({k: summary[k] for k in ("base_train_pass1", "base_test_pass1",
                                            "final_train_pass1", "final_test_pass1", "rounds",
                                            "wall_s")}))
  try:
    from rft_jax import metrics

    print(f"curves: {metrics.plot_curves(_WORKDIR.value)}", file=sys.stderr)
  except Exception as e:  # a plot is not worth failing a finished run over
    print(f"warning: no curves.png ({type(e).__name__}: {e})", file=sys.stderr)
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
