"""Tasks: the embedded arithmetic task, GSM8K and MATH; prompts and tokenizers."""

from rft_jax.data.base import Example, Task

__all__ = ["Example", "Task"]
