"""Models: the one decoder (Llama, Qwen2, OLMo 2 variants), the Policy, HF import / export."""

from rft_jax.models.decoder import (
    Decoder,
    KVCache,
    ModelConfig,
    abstract_params,
    count_params,
    init_params,
    positions_from_mask,
)
from rft_jax.models.policy import Policy

__all__ = ["Decoder", "KVCache", "ModelConfig", "Policy", "abstract_params", "count_params",
           "init_params", "positions_from_mask"]

# Hugging Face checkpoints: load(path, dtype) -> Policy, save(policy, out_dir).
from rft_jax.models.hf import SUPPORTED_MODEL_TYPES, load, save

__all__ += ["SUPPORTED_MODEL_TYPES", "load", "save"]
