"""L0 minimal on GSM8K with a real instruct model (the paper's setting; needs a GPU/TPU).

  python -m rft_jax.main --config=configs/gsm8k_l0.py:checkpoint=/models/Qwen2.5-0.5B-Instruct \
      --workdir=runs/gsm8k_l0

Data: ../shared/data/gsm8k/{train,test}.jsonl by default (`data=DIR` to change). Model: a local
Hugging Face directory (configs/models.py lists the paper's and how to download them). Expected
(paper, Qwen2.5 scale): training Pass@1 on the medium question -> ~1 within a few hundred rounds;
test Pass@1 may rise by up to tens of points and varies across seeds. Hours on one GPU; not
runnable on the 2-core CPU.
"""

from configs import common, l0_minimal, real_tasks


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, checkpoint="", data="../shared/data")
  config = l0_minimal.get_config("runlocal" if args.runlocal else None)
  return real_tasks.apply(config, "gsm8k", args.data, args.checkpoint)
