"""A policy: the decoder, its params and its tokenizer, with the few calls everyone needs.

    policy = rft_jax.models.load("/path/to/hf_dir")          # or the embedded default's base
    logits = policy.logits(tokens, attention_mask)            # [B, T, V]
    out = policy.generate(prompt_tokens, max_new_tokens=32)   # greedy through the sampler

Training updates `params` functionally; `policy.replace(params=new)` gives the updated policy.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rft_jax.models.decoder import Decoder, ModelConfig, positions_from_mask


@dataclasses.dataclass(frozen=True)
class Policy:
  """decoder + params + tokenizer.

  eos_ids: every token that ends a completion (EOS and the chat template's end-of-turn tokens).
  chat:    prompts go through the tokenizer's chat template (instruct models); else plain text,
           prefixed by BOS when the tokenizer has one.
  """

  config: ModelConfig
  params: Any
  tokenizer: Any
  eos_ids: tuple[int, ...]
  pad_id: int
  chat: bool = False

  @property
  def decoder(self) -> Decoder:
    return Decoder(self.config)

  def replace(self, **changes) -> Policy:
    return dataclasses.replace(self, **changes)

  # -- text ------------------------------------------------------------------------------------

  def encode_prompt(self, text: str) -> list[int]:
    """Prompt ids: the chat template with a generation prompt, or BOS + plain text."""
    tok = self.tokenizer
    if self.chat:
      ids = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                    add_generation_prompt=True)
      if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in some versions
        ids = ids["input_ids"]
      return list(ids)
    ids = tok.encode(text, add_special_tokens=False)
    return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + list(ids)

  def decode_completion(self, tokens: Sequence[int], mask: Sequence[float] | None = None) -> str:
    """Text of one completion: tokens where mask is set, up to the first EOS, no specials."""
    ids = [int(t) for i, t in enumerate(tokens) if mask is None or mask[i]]
    for i, t in enumerate(ids):
      if t in self.eos_ids:
        ids = ids[:i]
        break
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  # -- arrays ----------------------------------------------------------------------------------

  def logits(self, tokens, attention_mask=None) -> jax.Array:
    """tokens [B, T] (left- or right-padded), attention_mask [B, T] -> logits [B, T, V]."""
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = jnp.ones_like(tokens, bool) if attention_mask is None else jnp.asarray(
        attention_mask, bool)
    return _logits(self.decoder, self.params, tokens, mask)

  def generate(self, prompt_tokens, max_new_tokens: int, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, prompt_mask=None, num_samples: int = 1,
               rng: jax.Array | None = None, compact: bool = False, row_multiple: int = 1,
               mesh=None):
    """Completions of left-padded prompts [B, P] (temperature 0 = greedy) via the sampler;
    compact: rows that have ended leave the decode batch as it goes (sample's draws, one
    process only: sampling.sample_compacting; row_multiple = the mesh's batch split).
    Without prompt_mask a row's padding is its leading pad_id tokens only: pad_id can occur
    inside a prompt (SmolLM2's pad is its end-of-turn token, twice in every chat prompt).
    mesh: the rows (prompts x samples) split over its batch axes (sampling.sample)."""
    from rft_jax import sampling  # sampling imports the decoder: import at call time

    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    if prompt_mask is None:
      prompt_mask = jnp.cumsum(prompt_tokens != self.pad_id, axis=-1) > 0
    rng = jax.random.PRNGKey(0) if rng is None else rng
    kwargs = dict(max_new_tokens=max_new_tokens, num_samples=num_samples,
                  temperature=temperature, top_k=top_k, top_p=top_p,
                  eos_ids=np.asarray(self.eos_ids, np.int32), pad_id=self.pad_id, mesh=mesh)
    if compact:
      return sampling.sample_compacting(self.decoder, self.params, prompt_tokens,
                                        jnp.asarray(prompt_mask), rng, row_multiple=row_multiple,
                                        **kwargs)
    sampling.check_left_padded(prompt_mask)  # sample_compacting checks its own
    return sampling.sample(self.decoder, self.params, prompt_tokens, jnp.asarray(prompt_mask),
                           rng, **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _logits(decoder, params, tokens, mask):
  logits, _ = decoder.apply({"params": params}, tokens, positions_from_mask(mask), mask)
  return logits
