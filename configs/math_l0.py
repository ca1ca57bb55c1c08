"""L0 minimal on MATH (train: MATH 12k, test: MATH-500) with a real instruct model.

  python -m rft_jax.main --config=configs/math_l0.py:checkpoint=/models/Qwen2.5-1.5B-Instruct \
      --workdir=runs/math_l0

Graded by rft_jax.rewards 'math' (normalized match, then math-verify in a process pool with a
hard timeout). Expected as for GSM8K: the training question learned; test Pass@1 on MATH-500 may
move by a few to tens of points. Hours on one GPU; not runnable on the 2-core CPU.
"""

from configs import common, l0_minimal, real_tasks


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, checkpoint="", data="../shared/data")
  config = l0_minimal.get_config("runlocal" if args.runlocal else None)
  return real_tasks.apply(config, "math", args.data, args.checkpoint)
