"""The benchmarks' model: a Qwen2-shaped decoder with random weights, as an HF checkpoint.

    directory = write_checkpoint(tmp)             # through rft_jax.models.save
    policy = rft_jax.models.load(directory)       # rft_jax side
    model = load_torch(directory)                 # transformers side, the same weights

4 layers, hidden 512, 8 query heads and 2 KV heads of 64, SwiGLU 1408, vocab 32000, tied
embeddings, bias on q/k/v: about 26M parameters, 16M of them in the embedding / head.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp
import numpy as np

from rft_jax import models
from rft_jax.models import ModelConfig, Policy

VOCAB = 32000
EOS = 2
PAD = 0

CONFIG = ModelConfig(vocab_size=VOCAB, d_model=512, n_layers=4, n_heads=8, n_kv_heads=2,
                     head_dim=64, d_ff=1408, variant="qwen2", qkv_bias=True,
                     tie_embeddings=True, rope_theta=1e6, norm_eps=1e-6,
                     max_position_embeddings=1024)


def make_tokenizer():
  """A word-level fast tokenizer of VOCAB ids: <pad>, <bos>, <eos>, then 'w3', 'w4', ..."""
  from tokenizers import AddedToken, Tokenizer, models as tok_models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  specials = ["<pad>", "<bos>", "<eos>"]
  words = specials + [f"w{i}" for i in range(len(specials), VOCAB)]
  tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                 eos_token="<eos>")


EMBED_STD = 0.2  # tied logits of std ~4: sampling at tau = 1 is random, greedy margins clear


def random_params(seed: int = 0) -> dict:
  """init_params with embeddings of std EMBED_STD (init's 1.0 makes the tied head one-hot) and
  random q/k/v biases (init leaves them zero) so that they are exercised."""
  params = models.init_params(CONFIG, jax.random.PRNGKey(seed))
  key = jax.random.PRNGKey(seed + 1)

  def perturb(path, x):
    name = jax.tree_util.keystr(path)
    if "embedding" in name:
      return EMBED_STD * x
    if "bias" not in name:
      return x
    # A fixed fold per leaf name (not hash(): salted per process).
    salt = sum(map(ord, name))
    return 0.1 * jax.random.normal(jax.random.fold_in(key, salt), x.shape, x.dtype)

  return jax.tree_util.tree_map_with_path(perturb, params)


def write_checkpoint(directory: str | os.PathLike, seed: int = 0) -> str:
  """Random rft_jax params -> an HF directory, written by the project's export (models.save)."""
  policy = Policy(config=CONFIG, params=random_params(seed), tokenizer=make_tokenizer(),
                  eos_ids=(EOS,), pad_id=PAD)
  return models.save(policy, directory, overwrite=True)


def load_policy(directory, compute_dtype: str = "float32") -> Policy:
  return models.load(directory, "float32", compute_dtype=compute_dtype)


def load_torch(directory):
  """transformers' Qwen2ForCausalLM of the same directory, float32, eval mode."""
  import torch
  import transformers

  model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
  return model.eval()


def start(threads: int) -> None:
  """Sets torch's intra-op threads and prints the versions and the machine's load."""
  import torch

  torch.set_num_threads(threads)
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {load_average()}")


def load_models(*compute_dtypes: str):
  """Writes the checkpoint to a temporary directory and loads it: (one rft_jax Policy per
  compute dtype, transformers' model)."""
  with tempfile.TemporaryDirectory() as tmp:
    directory = write_checkpoint(f"{tmp}/qwen2_bench")
    policies = [load_policy(directory, compute_dtype=d) for d in compute_dtypes]
    return policies, load_torch(directory)


def random_prompts(batch: int, length: int, seed: int = 0) -> np.ndarray:
  """[batch, length] int32 ids drawn from the ordinary words (no special token)."""
  return np.random.default_rng(seed).integers(3, VOCAB, (batch, length)).astype(np.int32)


def load_average() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if isinstance(a, jnp.ndarray) else a, x)


def smollm2_layer_round():
  """What a SmolLM2 layer's round starts from: (L1's config on SmolLM2, the policy, the task,
  the layers' training question 'Compute 9 + 28.', its left-padded prompt tokens and mask)."""
  from configs import l1_rollouts
  from rft_jax import sampling, train

  config = l1_rollouts.get_config("base=smollm2")
  policy = models.load("smollm2")
  task = train.build_task(config.task)
  example = next(e for e in task.train if e.id == "arith/train/31")
  prompt, prompt_mask = sampling.left_pad([policy.encode_prompt(task.prompt_text(example))],
                                          policy.pad_id, bucket=config.rollout.prompt_bucket)
  return config, policy, task, example, prompt, prompt_mask


def spread_params(mc: ModelConfig, key) -> dict:
  """init_params(mc) for any shape (the accelerator checks), its tied embedding scaled by
  d_model ** -0.5: init's std-1 embedding gives logits of std ~sqrt(d_model), a near one-hot
  policy whose gradient is ~0; at logits of std ~1 the rollouts vary as a real model's do and a
  step learns. Pure in `key`, so it can be jitted with out_shardings."""
  params = models.init_params(mc, key)
  return {**params, "embedding": params["embedding"] * mc.d_model ** -0.5}


def full_length_sample(decoder, params, prompt, prompt_mask, key, *, rows: int, new: int):
  """`rows` rollouts of exactly `new` tokens (no EOS id, so none stops early) at temperature 1."""
  from rft_jax import sampling

  return sampling.sample(decoder, params, prompt, prompt_mask, key, max_new_tokens=new,
                         num_samples=rows, temperature=jnp.float32(1.0), top_k=jnp.int32(0),
                         top_p=jnp.float32(1.0), eos_ids=np.full((1,), -1, np.int32), pad_id=0)
