"""The paper's base models (../shared/PAPER.md, layer L5), as settings for a config's `model`.

Download each once, on a machine with internet, into the models directory ($RFT_JAX_MODELS,
default ~/models), one folder per model named as below (M = the models directory):

  huggingface-cli download meta-llama/Llama-3.2-1B-Instruct --local-dir M/Llama-3.2-1B-Instruct
  huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct --local-dir M/Qwen2.5-0.5B-Instruct
  huggingface-cli download Qwen/Qwen2.5-1.5B-Instruct --local-dir M/Qwen2.5-1.5B-Instruct
  huggingface-cli download allenai/OLMo-2-0425-1B-Instruct --local-dir M/OLMo-2-0425-1B-Instruct

(`python -c "from configs import models; print(models.download_command('qwen2.5-0.5b-instruct'))"`
prints one with the directory filled in.)

(Llama is gated: accept its license on the Hub and `huggingface-cli login` first. Only
config.json, generation_config.json, *.safetensors and the tokenizer files are read; add
`--include "*.json" "*.safetensors"` to skip the rest.) Then either name the directory:

  python -m rft_jax.main --config=configs/l0_minimal.py --config.model.checkpoint=DIR ...

or, in a config file, `c.model.update(models.model_settings("qwen2.5-0.5b-instruct"))`.
Loading needs no network (`rft_jax.models.load`); docs/models.md has the details.
"""

from __future__ import annotations

import os

# name -> Hub repo, folder under the models directory, parameter count, notes.
MODELS = {
    "llama-3.2-1b-instruct": dict(
        repo="meta-llama/Llama-3.2-1B-Instruct", folder="Llama-3.2-1B-Instruct",
        params="1.24B", family="llama",
        note="tied embeddings, llama3 RoPE scaling; EOS <|eot_id|> (end of turn)"),
    "qwen2.5-0.5b-instruct": dict(
        repo="Qwen/Qwen2.5-0.5B-Instruct", folder="Qwen2.5-0.5B-Instruct", params="0.49B",
        family="qwen2", note="the companion code's model; q/k/v bias, tied; EOS <|im_end|>"),
    "qwen2.5-1.5b-instruct": dict(
        repo="Qwen/Qwen2.5-1.5B-Instruct", folder="Qwen2.5-1.5B-Instruct", params="1.54B",
        family="qwen2", note="q/k/v bias, tied; EOS <|im_end|>"),
    "olmo-2-0425-1b-instruct": dict(
        repo="allenai/OLMo-2-0425-1B-Instruct", folder="OLMo-2-0425-1B-Instruct",
        params="1.48B", family="olmo2",
        note="post-norms, q/k RMSNorm, untied; EOS <|endoftext|>"),
}

# Params in float32 (the trainer's masters, as DESIGN.md has it); "bfloat16" halves the memory
# of params and activations at some cost in update precision.
DEFAULT_DTYPE = "float32"


def models_dir() -> str:
  return os.path.expanduser(os.environ.get("RFT_JAX_MODELS", "~/models"))


def model_settings(name: str, dtype: str = DEFAULT_DTYPE) -> dict:
  """{"checkpoint": directory, "dtype": dtype} for a config's `model` field.

  name: a key of MODELS (case-insensitive) or its Hub repo id ("Qwen/Qwen2.5-0.5B-Instruct").
  The directory need not exist yet: loading names it if it is missing.
  """
  key = name.lower()
  for k, m in MODELS.items():
    if key in (k, m["repo"].lower(), m["folder"].lower()):
      return {"checkpoint": os.path.join(models_dir(), m["folder"]), "dtype": dtype}
  raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def download_command(name: str) -> str:
  """The shell command that fetches `name` into its folder under the models directory."""
  m = MODELS[name.lower()]
  return (f"huggingface-cli download {m['repo']} --local-dir "
          f"{os.path.join(models_dir(), m['folder'])}")
