"""rft_jax.models.load / save against transformers' PyTorch models, on tiny random checkpoints.

Each family's checkpoint is written by transformers itself (`save_pretrained`) with every weight
randomized (norm scales and biases too, so a swapped norm or a dropped bias shows), beside a tiny
word-level tokenizer with the family's special tokens and a chat template. Checked: logits of a
left-padded batch (float32, 1e-4), greedy generation token for token, export -> transformers,
both config.json layouts, sharded safetensors, bfloat16.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rft_jax import models, sampling  # noqa: E402
from rft_jax.models import hf as hf_lib  # noqa: E402

V, D, LAYERS, HEADS, KV_HEADS, FF = 128, 64, 2, 4, 2, 128

SPECIALS = {
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|eot_id|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "olmo2": ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"],
}
# Simplified versions of the families' templates (same special tokens, same shape of turn).
TEMPLATES = {
    "llama": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
              "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
              "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
              "{% endif %}"),
    "qwen2": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
              "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
              "{% endif %}"),
    "olmo2": ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
              "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"),
}
# (bos, eos, pad) token strings of each family's tokenizer; None = unset.
TOKEN_ROLES = {
    "llama": ("<|begin_of_text|>", "<|eot_id|>", None),
    "qwen2": (None, "<|im_end|>", "<|endoftext|>"),
    "olmo2": ("<|endoftext|>", "<|endoftext|>", "<|pad|>"),
}

# name -> (model_type, make_checkpoint options)
FAMILIES = {
    "llama": ("llama", {}),
    "llama_tied": ("llama", {"tie": True}),
    "llama3_rope": ("llama", {"rope_scaling": True, "head_dim": 32}),
    "qwen2_tied": ("qwen2", {"tie": True}),
    "olmo2": ("olmo2", {}),
}


def make_tokenizer(family: str, eos: bool = True, chat: bool = True):
  """A word-level PreTrainedTokenizerFast of V ids: the family's specials, then 'w0', 'w1', ..."""
  from tokenizers import AddedToken, Tokenizer, models as tok_models, pre_tokenizers

  specials = [s for s in SPECIALS[family] if eos or s not in hf_lib.END_OF_TURN_TOKENS]
  words = ["[UNK]", *specials, "user", "assistant", "system"]
  words += [f"w{i}" for i in range(V - len(words))]
  tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
  bos, eos_token, pad = TOKEN_ROLES[family] if eos else (None, None, None)
  if not eos and family == "olmo2":
    bos, pad = None, "<|pad|>"
  out = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                             bos_token=bos, eos_token=eos_token, pad_token=pad)
  if chat:
    out.chat_template = TEMPLATES[family]
  return out


def hf_config(family: str, tokenizer, *, tie=False, rope_scaling=False, head_dim=None,
              eos=True):
  vocab = tokenizer.get_vocab()
  eos_ids = {"llama": ["<|end_of_text|>", "<|eot_id|>"], "qwen2": ["<|im_end|>"],
             "olmo2": ["<|endoftext|>"]}[family]
  common = dict(vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=tie,
                eos_token_id=[vocab[t] for t in eos_ids] if eos else None,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                max_position_embeddings=256)
  if head_dim:
    common["head_dim"] = head_dim
  if family == "llama":
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if rope_scaling:  # original_max small enough that short positions hit all three bands
      rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    return transformers.LlamaConfig(rope_parameters=rope, rms_norm_eps=1e-5, **common)
  if family == "qwen2":
    return transformers.Qwen2Config(rope_parameters={"rope_type": "default",
                                                     "rope_theta": 1000000.0}, **common)
  return transformers.Olmo2Config(rope_parameters={"rope_type": "default",
                                                   "rope_theta": 500000.0}, **common)


def make_checkpoint(directory, family: str, *, seed: int = 0, torch_dtype=None,
                    max_shard_size=None, eos: bool = True, chat: bool = True, **options):
  """Writes a random transformers checkpoint + tokenizer to `directory`; returns the torch model.

  Every weight is random (std 0.1; embeddings std 1 so greedy choices have clear margins; norm
  scales 1 + 0.1 noise), including biases and norms that transformers initializes to constants.
  """
  tokenizer = make_tokenizer(family, eos=eos, chat=chat)
  config = hf_config(family, tokenizer, eos=eos, **options)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif "embed_tokens" in name:
        p.normal_(0.0, 1.0)
      else:
        p.normal_(0.0, 0.1)
  model.eval()
  saved = model.to(torch_dtype) if torch_dtype is not None else model
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  saved.save_pretrained(directory, **kwargs)
  tokenizer.save_pretrained(directory)
  return model


# torch's intra-op threads contend with XLA's on a 2-core CPU (conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """name -> (directory, torch model), built once per module."""
  out = {}
  for name, (family, options) in FAMILIES.items():
    directory = str(tmp_path_factory.mktemp(name))
    out[name] = directory, make_checkpoint(directory, family, **options)
  return out


def padded_batch(seed: int = 0):
  """tokens [3, 12] with 0, 3 and 7 left pads, and the mask."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(10, V, size=(3, 12)).astype(np.int64)
  mask = np.ones_like(tokens, bool)
  for row, pads in enumerate((0, 3, 7)):
    mask[row, :pads] = False
    tokens[row, :pads] = 0
  return tokens, mask


def torch_logits(model, tokens, mask) -> np.ndarray:
  """transformers' logits with the position ids its generate() uses for left padding."""
  mask_t = torch.tensor(mask, dtype=torch.long)
  positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=mask_t, position_ids=positions)
  return out.logits.float().numpy()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers(checkpoints, name):
  directory, model = checkpoints[name]
  policy = models.load(directory)
  tokens, mask = padded_batch()
  ours = np.asarray(policy.logits(tokens, mask))
  theirs = torch_logits(model, tokens, mask)
  diff = np.abs(ours - theirs)[mask].max()
  print(f"{name}: max |logits diff| = {diff:.2e}")
  assert diff < 1e-4, diff


@pytest.mark.parametrize("name", list(FAMILIES))
def test_greedy_generation_matches_transformers(checkpoints, name):
  directory, model = checkpoints[name]
  policy = models.load(directory)
  assert policy.chat
  prompts = [policy.encode_prompt("w1 w2 w3"), policy.encode_prompt("w7 w50 w9 w11 w60 w5"),
             [*policy.encode_prompt("w3")[:-1], 30, 40, 50, 60]]
  tokens, mask = sampling.left_pad(prompts, policy.pad_id, bucket=16)
  n = 32
  ours = policy.generate(tokens, max_new_tokens=n, temperature=0.0, prompt_mask=mask)
  with torch.no_grad():
    theirs = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                            attention_mask=torch.tensor(mask, dtype=torch.long),
                            do_sample=False, max_new_tokens=n, eos_token_id=list(policy.eos_ids),
                            pad_token_id=policy.pad_id)
  theirs = theirs[:, tokens.shape[1]:].numpy()
  compared = 0
  for row in range(len(prompts)):
    ref = theirs[row].tolist()
    for i, t in enumerate(ref):  # transformers pads after EOS: compare up to and with EOS
      if t in policy.eos_ids:
        ref = ref[:i + 1]
        break
    got = np.asarray(ours.tokens[row])[np.asarray(ours.mask[row]) > 0].tolist()
    assert got == ref, (row, got, ref)
    compared += len(ref)
  print(f"{name}: {compared} tokens compared")
  assert compared >= 48  # at least some rows run the whole 32 tokens


@pytest.mark.parametrize("name", ["llama3_rope", "qwen2_tied", "olmo2"])
def test_export_reimports_through_transformers(checkpoints, tmp_path, name):
  directory, model = checkpoints[name]
  policy = models.load(directory)
  # A "fine-tuned" policy: params changed, so the export cannot pass by copying files.
  policy = policy.replace(params=jax.tree.map(lambda x: x * 1.01, policy.params))
  out = models.save(policy, tmp_path / "export")
  with open(os.path.join(out, "model.safetensors"), "rb") as f:
    header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
  assert ("lm_head.weight" in header) == (not policy.config.tie_embeddings)
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp dir left

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  assert type(reloaded) is type(model)
  tokens, mask = padded_batch(1)
  ours = np.asarray(policy.logits(tokens, mask))
  theirs = torch_logits(reloaded, tokens, mask)
  assert np.abs(ours - theirs)[mask].max() < 1e-4

  again = models.load(out)
  assert again.config == policy.config
  assert again.eos_ids == policy.eos_ids and again.pad_id == policy.pad_id and again.chat
  jax.tree.map(np.testing.assert_array_equal, again.params, policy.params)
  tok = transformers.PreTrainedTokenizerFast.from_pretrained(out)
  assert tok.encode("w1 w2 <|endoftext|> w3") == policy.tokenizer.encode("w1 w2 <|endoftext|> w3")


def test_save_refuses_existing_dir_and_overwrites_on_request(checkpoints, tmp_path):
  policy = models.load(checkpoints["qwen2_tied"][0])
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  with pytest.raises(FileExistsError, match="overwrite=True"):
    models.save(policy, out)
  assert (out / "keep.txt").exists()
  models.save(policy, out, overwrite=True)
  assert not (out / "keep.txt").exists() and (out / "config.json").exists()
  assert sorted(os.listdir(tmp_path)) == ["out"]


def _write_4x_config(directory):
  """Rewrites config.json in the transformers 4.x layout (rope_theta, rope_scaling, torch_dtype)."""
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    c = json.load(f)
  rope = c.pop("rope_parameters")
  c["rope_theta"] = rope.pop("rope_theta")
  rope_type = rope.pop("rope_type")
  c["rope_scaling"] = None if rope_type == "default" else {"rope_type": rope_type, **rope}
  c["torch_dtype"] = c.pop("dtype")
  c["transformers_version"] = "4.46.0"
  with open(path, "w") as f:
    json.dump(c, f)


@pytest.mark.parametrize("name", ["llama3_rope", "qwen2_tied"])
def test_both_config_layouts_load(checkpoints, tmp_path, name):
  directory, _ = checkpoints[name]
  new = models.load(directory)
  old_dir = tmp_path / "old"
  family, options = FAMILIES[name]
  make_checkpoint(old_dir, family, **options)
  _write_4x_config(old_dir)
  with open(old_dir / "config.json") as f:
    assert "rope_parameters" not in json.load(f)
  old = models.load(old_dir)
  assert old.config == new.config
  if name == "llama3_rope":
    assert old.config.rope_scaling == ("llama3", 8.0, 1.0, 4.0, 64)
  jax.tree.map(np.testing.assert_array_equal, old.params, new.params)


def test_sharded_checkpoint_loads(checkpoints, tmp_path):
  directory, model = checkpoints["llama"]
  model.save_pretrained(tmp_path, max_shard_size="40KB")
  make_tokenizer("llama").save_pretrained(tmp_path)
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 3
  sharded, single = models.load(tmp_path), models.load(directory)
  jax.tree.map(np.testing.assert_array_equal, sharded.params, single.params)


def test_bfloat16(tmp_path):
  model = make_checkpoint(tmp_path / "bf16", "llama", torch_dtype=torch.bfloat16)
  with open(tmp_path / "bf16" / "config.json") as f:
    assert json.load(f)["dtype"] == "bfloat16"
  policy = models.load(tmp_path / "bf16", dtype="bfloat16")
  assert policy.config.param_dtype == policy.config.dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(policy.params)} == {jnp.dtype(jnp.bfloat16)}
  as_f32 = models.load(tmp_path / "bf16", dtype="float32")
  assert {x.dtype for x in jax.tree.leaves(as_f32.params)} == {jnp.dtype(jnp.float32)}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a, np.float32), b),
               policy.params, as_f32.params)
  embed = model.model.embed_tokens.weight.detach().float().numpy()
  np.testing.assert_array_equal(np.asarray(policy.params["embedding"], np.float32), embed)

  tokens, mask = padded_batch()
  logits = np.asarray(policy.logits(tokens, mask))
  ref = np.asarray(as_f32.logits(tokens, mask))
  assert logits.dtype == np.float32 and np.abs(logits - ref)[mask].max() < 0.5

  out = models.save(policy, tmp_path / "export")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert reloaded.dtype == torch.bfloat16
  np.testing.assert_array_equal(reloaded.model.embed_tokens.weight.detach().float().numpy(), embed)


def test_save_gathers_sharded_params(checkpoints, tmp_path):
  """Params spread over the 8 test devices (as after training on a mesh) export the same."""
  policy = models.load(checkpoints["qwen2_tied"][0])
  mesh = jax.make_mesh((8,), ("fsdp",))
  place = lambda x: jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("fsdp" if x.shape[0] % 8 == 0 else None)))
  sharded = policy.replace(params=jax.tree.map(place, policy.params))
  assert len(sharded.params["embedding"].sharding.device_set) == 8
  again = models.load(models.save(sharded, tmp_path / "out"))
  jax.tree.map(np.testing.assert_array_equal, again.params, policy.params)
