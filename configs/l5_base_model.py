"""L5, base model: the same layer-L1 fine-tuning from a different base policy.

Parent: L1 (configs/l1_rollouts.py: G = 8 rollouts, raw reward), the layer the paper's model
comparison builds on. Two ways to change the base (argument):

  checkpoint=DIR  a Hugging Face model directory (config.json, safetensors, tokenizer with chat
                  template): Llama 3.2 1B Instruct, OLMo 2 1B Instruct, Qwen2.5 0.5B/1.5B
                  Instruct (rft_jax/models/hf.py; configs/models.py, where present, names them).
                  Changes model.checkpoint only. Such a run also wants its real task and lengths,
                  e.g. --config.task.name=gsm8k --config.task.train_path=...
                  --config.task.test_path=... --config.rollout.max_new_tokens=512
                  --config.model.dtype=bfloat16, and an accelerator (colab/tpu_pipeline.ipynb).
  (no checkpoint) falls back, so that the layer runs on the embedded default: a second embedded
                  base, warm-started by the same recipe from another seed (base_seed, default 1:
                  another initialization and another supervised corpus). Changes warm_start.seed
                  only; the pipeline gives it its own shared base directory.

Either way the training question is the parent's bucket (medium) as judged by the new base.

Command (embedded fallback; 2-core CPU: ~1-2 min, + ~6 min for its own warm start the first time):

  python -m rft_jax.main --config=configs/l5_base_model.py --workdir=runs/l5
  python -m rft_jax.main \
      --config=configs/l5_base_model.py:checkpoint=/models/Qwen2.5-0.5B-Instruct \
      --workdir=runs/l5_qwen ...   # on an accelerator

Expected (the paper): base models differ in how fast they learn the training question and in
whether test Pass@1 follows; high training Pass@1 need not mean generalization. Between two
embedded bases, expect differences of the size of the seed-to-seed spread of L1.
"""

from configs import l1_rollouts, layers

ARGS = dict(checkpoint="", base_seed=1)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = l1_rollouts.get_config(rest)
  if own.checkpoint:
    c.model.checkpoint = own.checkpoint
  else:
    c.warm_start.seed = own.base_seed
  return c
