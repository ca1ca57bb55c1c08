"""The train step's memory with the log-probs over the vocabulary at once or in sequence chunks.

    python benchmarks/logprob_memory.py [--chunks 0,128] [--remat both] [--models smollm2]
    python benchmarks/logprob_memory.py --remat on --completion 256,512,1024 --chunks 0,32,128
    python benchmarks/logprob_memory.py --time-only       # the speed check alone

Memory: `train.train_step` (grpo chain: clipped ratio, KL to a reference, entropy metric;
AdamW) is lowered and compiled for abstract inputs (jax.ShapeDtypeStruct: no weights, no big
RAM) and XLA's buffer assignment is read back (`compiled.memory_analysis()`): arguments (params,
Adam moments, the batch), outputs, temporaries (activations kept for the backward pass, logits,
gradients) and their total (args + out - aliased + temp: the state is donated, so the outputs
reuse the arguments' buffers). XLA:CPU's `peak_memory_in_bytes` leaves out the temporaries, so it
is not shown. 8 rollouts x (64 prompt + 512 completion tokens) on random-weight
models of real shapes:

  smollm2  SmolLM2-135M: llama, vocab 49152, d 576, 30 layers, 9 / 3 heads of 64, SwiGLU 1536,
           tied embeddings
  qwen25   Qwen2.5-0.5B: qwen2, vocab 151936, d 896, 24 layers, 14 / 2 heads of 64, SwiGLU
           4864, tied embeddings

chunk 0 scores the [B, N, V] float32 logits at once; chunk > 0 scores that many completion
positions at a time (rft_jax.logprobs.head_logprobs_and_entropy). The [B, N, V] float32 logits
alone are B N V 4 bytes (8 x 512 x 49152 x 4 = 0.81 GB).

The second table compiles the log-prob head alone (d hidden, d W of sum(logp + H) from hidden
[B, N, D] and W [D, V]): the part this setting changes, without the rest of the step.

Speed (the rows under "time"): a small model (vocab 32000, d 128, 2 layers) run for real, the
jitted step with chunk 0 and chunk 128 alternately, best ms/step of each, and their ratio.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rft_jax import logprobs, losses, train
from rft_jax.models.decoder import Decoder, ModelConfig, _dense, abstract_params, init_params

MODELS = {
    "smollm2": dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                    head_dim=64, d_ff=1536, variant="llama", tie_embeddings=True,
                    rope_theta=100000.0, norm_eps=1e-5),
    "qwen25": dict(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
                   head_dim=64, d_ff=4864, variant="qwen2", qkv_bias=True, tie_embeddings=True,
                   rope_theta=1e6),
}
ROWS, PROMPT, COMPLETION = 8, 64, 512


def _batch(rows, prompt, completion, make):
  """A RolloutBatch of `make(shape, dtype)` leaves (abstract or concrete)."""
  f32 = jnp.float32
  return train.RolloutBatch(
      prompt_tokens=make((rows, prompt), jnp.int32), prompt_mask=make((rows, prompt), bool),
      loss=losses.Batch(tokens=make((rows, completion), jnp.int32),
                        mask=make((rows, completion), f32),
                        behaviour_logp=make((rows, completion), f32),
                        rewards=make((rows,), f32), group_ids=make((rows,), jnp.int32),
                        ref_logp=make((rows, completion), f32)))


def _step_kwargs(config: ModelConfig, chunk: int) -> dict:
  return dict(decoder=Decoder(config), transform=losses.from_config(losses.recipe_config("grpo")),
              optimizer=optax.adamw(1e-6), logprob_chunk=chunk)


def memory(config: ModelConfig, chunk: int, completion: int = COMPLETION) -> dict:
  """XLA's memory analysis of the compiled train step (nothing is run)."""
  kw = _step_kwargs(config, chunk)
  params = nn.unbox(abstract_params(config))
  state = train.TrainState(round=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                           opt_state=jax.eval_shape(kw["optimizer"].init, params),
                           loss_state=jax.eval_shape(kw["transform"].init))
  batch = _batch(ROWS, PROMPT, completion, jax.ShapeDtypeStruct)
  t = time.perf_counter()
  compiled = train.train_step.lower(state, batch, jax.ShapeDtypeStruct((), jnp.float32),
                                    **kw).compile()
  m = compiled.memory_analysis()
  return dict(args=m.argument_size_in_bytes, out=m.output_size_in_bytes,
              alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
              total=(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                     + m.temp_size_in_bytes), compile_s=time.perf_counter() - t)


def head_memory(config: ModelConfig, chunk: int, completion: int = COMPLETION) -> int:
  """Temporaries of the log-prob head alone: (hidden [B, N, D], W [D, V]) -> their gradients."""
  hidden = jax.ShapeDtypeStruct((ROWS, completion, config.d_model), jnp.dtype(config.dtype))
  head = jax.ShapeDtypeStruct((config.d_model, config.vocab_size), jnp.dtype(config.dtype))
  targets = jax.ShapeDtypeStruct((ROWS, completion), jnp.int32)

  def objective(h, w, t):
    if chunk:
      logp, ent = logprobs.head_logprobs_and_entropy(h, w, t, 1.0, chunk)
    else:  # the decoder's head, then the fused kernel: the trainer's chunk-0 path
      logp, ent = logprobs.token_logprobs_and_entropy(_dense(h, w).astype(jnp.float32), t)
    return jnp.sum(logp) + jnp.sum(ent)

  grad = jax.jit(jax.grad(objective, argnums=(0, 1)))
  return grad.lower(hidden, head, targets).compile().memory_analysis().temp_size_in_bytes


def speed(chunks=(0, 128), rows=4, prompt=16, completion=512, reps=5) -> dict:
  """Best wall ms/step of the jitted step, run for real on a small model, per chunk."""
  config = ModelConfig(vocab_size=32000, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                       head_dim=32, d_ff=384, tie_embeddings=True)
  params = init_params(config, jax.random.key(0))
  rng = np.random.default_rng(0)

  def make(shape, dtype):
    if dtype == jnp.int32:
      return jnp.asarray(rng.integers(3, config.vocab_size, shape), jnp.int32)
    if dtype is bool:
      return jnp.ones(shape, bool)
    return jnp.asarray(-rng.exponential(3.0, shape), jnp.float32)  # log-probs

  batch = _batch(rows, prompt, completion, make)
  batch = batch.replace(loss=batch.loss.replace(
      mask=jnp.ones((rows, completion), jnp.float32), group_ids=jnp.zeros(rows, jnp.int32),
      rewards=jnp.asarray(np.arange(rows) % 2, jnp.float32)))
  kws, states, times = {}, {}, {c: [] for c in chunks}
  for c in chunks:
    kws[c] = _step_kwargs(config, c)
    p = jax.tree.map(jnp.copy, params)  # the step donates its state
    states[c] = train.TrainState(round=jnp.zeros((), jnp.int32), params=p,
                                 opt_state=kws[c]["optimizer"].init(p),
                                 loss_state=kws[c]["transform"].init())
  for rep in range(reps + 1):  # alternating, so both see the same load; round 0 compiles
    for c in chunks:
      t = time.perf_counter()
      states[c], metrics = train.train_step(states[c], batch, jnp.float32(1.0), **kws[c])
      jax.block_until_ready(metrics)
      if rep:
        times[c].append(time.perf_counter() - t)
  return {c: 1e3 * min(ts) for c, ts in times.items()}, (rows, prompt, completion,
                                                         config.vocab_size)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--chunks", default="0,128", help="comma-separated logprob chunks (0 = off)")
  ap.add_argument("--remat", choices=("off", "on", "both"), default="both",
                  help="the model's per-layer rematerialization")
  ap.add_argument("--models", default="smollm2", help=f"comma-separated of {sorted(MODELS)}")
  ap.add_argument("--dtype", default="float32", help="compute dtype (params stay float32)")
  ap.add_argument("--completion", default=str(COMPLETION),
                  help="comma-separated completion lengths N")
  ap.add_argument("--time-only", action="store_true", help="only the speed check")
  ap.add_argument("--no-time", action="store_true", help="skip the speed check")
  args = ap.parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()} "
        f"({jax.devices()[0].device_kind})\n")
  if not args.time_only:
    gb = 1e9
    print(f"train step, {ROWS} rollouts x ({PROMPT} prompt + N completion tokens), grpo chain, "
          f"AdamW, compute dtype {args.dtype}; GB = 1e9 bytes\n")
    print("| model   | remat |    N | chunk | args GB | out GB | temp GB | total GB | [B,N,V] f32 GB "
          "| compile s |")
    print("|---------|-------|------|-------|---------|--------|---------|----------|----------------"
          "|-----------|")
    remats = {"off": (False,), "on": (True,), "both": (False, True)}[args.remat]
    for name in args.models.split(","):
      for remat in remats:
        config = ModelConfig(**MODELS[name], dtype=args.dtype, remat=remat)
        for n in map(int, args.completion.split(",")):
          logits = ROWS * n * config.vocab_size * 4 / gb
          for chunk in map(int, args.chunks.split(",")):
            m = memory(config, chunk, n)
            print(f"| {name:7s} | {'on' if remat else 'off':5s} | {n:4d} | {chunk:5d} | "
                  f"{m['args'] / gb:7.3f} | {m['out'] / gb:6.3f} | {m['temp'] / gb:7.3f} | "
                  f"{m['total'] / gb:8.3f} | {logits:14.3f} | {m['compile_s']:9.1f} |",
                  flush=True)
    print("\nthe log-prob head alone (hidden [B, N, D], W [D, V] -> logp, H -> d hidden, d W):\n")
    print("| model   |    N | chunk | temp GB | [B,N,V] f32 GB |")
    print("|---------|------|-------|---------|----------------|")
    for name in args.models.split(","):
      config = ModelConfig(**MODELS[name], dtype=args.dtype)
      for n in map(int, args.completion.split(",")):
        for chunk in map(int, args.chunks.split(",")):
          temp = head_memory(config, chunk, n)
          print(f"| {name:7s} | {n:4d} | {chunk:5d} | {temp / gb:7.3f} | "
                f"{ROWS * n * config.vocab_size * 4 / gb:14.3f} |", flush=True)
    print()
  if not args.no_time:
    ms, (rows, prompt, completion, vocab) = speed()
    print(f"time: {rows} x ({prompt} + {completion}) tokens, vocab {vocab}, d 128, 2 layers "
          "(run for real; best of 5 alternating steps)\n")
    print("| chunk | ms/step | vs chunk 0 |")
    print("|-------|---------|------------|")
    for c, t in ms.items():
      print(f"| {c:5d} | {t:7.1f} | {t / ms[0]:9.2f}x |")


if __name__ == "__main__":
  main()
