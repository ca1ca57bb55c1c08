"""GSM8K and MATH settings for any pipeline layer on a real instruct model (PAPER.md setup).

    from configs import real_tasks
    config = real_tasks.apply(l0_minimal.get_config(), "gsm8k", data_dir, checkpoint)

The data are the JSONL files of ../shared/data (or the HF versions' field names, see
docs/tasks.md); the model is a local Hugging Face directory (configs/models.py says what to
download). Settings follow the paper's companion code: response up to 1024 tokens, temperature
1.0, AdamW at 1e-6 with gradient clip 1.0, one on-policy update per round.
"""

from __future__ import annotations

import os

TASKS = {
    "gsm8k": {"template": "gsm8k"},
    "gsm8k_boxed": {"template": "gsm8k_boxed"},
    "math": {"template": "math"},
}


def apply(config, task: str, data_dir: str, checkpoint: str):
  """`config` switched to `task` ('gsm8k', 'gsm8k_boxed' or 'math') on `checkpoint`."""
  if task not in TASKS:
    raise ValueError(f"unknown real task {task!r}; known: {sorted(TASKS)}")
  folder = "math" if task == "math" else "gsm8k"
  config.task.name = "math" if task == "math" else "gsm8k"
  config.task.template = TASKS[task]["template"]
  config.task.train_path = os.path.join(data_dir, folder, "train.jsonl")
  config.task.test_path = os.path.join(data_dir, folder, "test.jsonl")
  config.model.checkpoint = checkpoint
  config.model.dtype = "bfloat16"
  config.rollout.max_new_tokens = 1024
  config.rollout.prompt_bucket = 64
  config.optimizer.learning_rate = 1e-6
  config.eval.batch_size = 64
  config.example.candidates = 128
  config.example.samples = 16
  return config
