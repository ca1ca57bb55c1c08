"""The paper's models as shapes only: their published config.json values, no weights.

    config = shapes.model_config("qwen2.5-1.5b", dtype="float32", compute_dtype="bfloat16")

For planning memory (rft_jax.plan) and for random-weight benchmarks at the real sizes
(benchmarks/accelerator_check.py) without downloading anything. The values are those of each
model's config.json on the Hugging Face Hub (the keys `models.hf.model_config_from_hf` reads),
so the same converter that loads the real checkpoint builds the shape.
"""

from __future__ import annotations

from rft_jax.models.decoder import ModelConfig

# name -> the published config.json keys that fix the architecture.
CONFIGS = {
    "qwen2.5-0.5b": dict(  # Qwen/Qwen2.5-0.5B-Instruct
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(  # Qwen/Qwen2.5-1.5B-Instruct
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768),
    "llama-3.2-1b": dict(  # meta-llama/Llama-3.2-1B-Instruct
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192)),
    "olmo-2-1b": dict(  # allenai/OLMo-2-0425-1B-Instruct
        model_type="olmo2", vocab_size=100352, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
        tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-6,
        max_position_embeddings=4096),
    "smollm2-135m": dict(  # HuggingFaceTB/SmolLM2-135M-Instruct (the GGUF's metadata agrees)
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
        max_position_embeddings=8192),
}

# Other spellings: the configs/models.py keys and the Hub repo names.
ALIASES = {
    "qwen2.5-0.5b-instruct": "qwen2.5-0.5b", "qwen/qwen2.5-0.5b-instruct": "qwen2.5-0.5b",
    "qwen2.5-1.5b-instruct": "qwen2.5-1.5b", "qwen/qwen2.5-1.5b-instruct": "qwen2.5-1.5b",
    "llama-3.2-1b-instruct": "llama-3.2-1b", "meta-llama/llama-3.2-1b-instruct": "llama-3.2-1b",
    "olmo-2-0425-1b-instruct": "olmo-2-1b", "allenai/olmo-2-0425-1b-instruct": "olmo-2-1b",
    "smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
}


def canonical(name: str) -> str:
  key = name.lower()
  key = ALIASES.get(key, key)
  if key not in CONFIGS:
    raise ValueError(f"unknown model shape {name!r}; known: {', '.join(CONFIGS)}")
  return key


def model_config(name: str, dtype: str = "float32", compute_dtype: str | None = None
                 ) -> ModelConfig:
  """The decoder config of a paper model: params in `dtype`, activations in `compute_dtype`
  (default: `dtype`)."""
  from rft_jax.models import hf  # hf imports the policy; keep this module light

  return hf.model_config_from_hf(CONFIGS[canonical(name)], dtype, f"<{name} shape>",
                                 compute_dtype)
