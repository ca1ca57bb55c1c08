"""Memory plan of a round at a model's real shape, from abstract arrays: no weights, no GPU.

    python -m rft_jax.plan --config=configs/l0_minimal.py --shape=qwen2.5-1.5b \\
        --prompt_len=512 --config.rollout.num_samples=8 --config.rollout.max_new_tokens=1024 \\
        --config.train.micro_batch_size=4 --config.model.compute_dtype=bfloat16 \\
        --config.model.remat=true [--devices=8 --config.mesh.data=1 --config.mesh.fsdp=-1]

XLA answers how much memory a jitted program needs when it compiles it: `compiled.memory_analysis()`
gives the bytes of its arguments, outputs (and how many of them alias donated arguments) and
temporaries per device. The planner builds the sampler and the train step exactly as
`train.run` calls them, for ShapeDtypeStructs carrying the shardings `run` uses (params split
by the logical rules of rft_jax.sharding, rollouts along the batch axes), compiles both and adds
up, per device:

  resident   params (+ LoRA adapters) + optimizer state + reference params (a KL chain without
             LoRA keeps a full copy; with LoRA the reference is the base with adapters off)
  sample     the sampler's temporaries (the KV cache [L x 2 x BG x K x (P+N) x E] among them)
             and outputs
  train      the train step's temporaries (activations kept for the backward pass, gradients,
             the optimizer's update) and its batch and outputs not aliased to the donated state

  peak = resident + max(sample, train)      (the phases of a round run one after the other)

The reference log-probs (kl_loss / kl_reward) are a forward pass on the same batch, smaller than
the train step's forward and backward, so they do not raise the peak. The numbers are XLA:CPU's
buffer assignment for the same program; an accelerator backend fuses differently (docs/scale.md
says what that means for the figures). --devices=N forces N CPU devices (the flag must come
before jax starts, so it is read here from the command line).
"""

from __future__ import annotations

import os
import sys


def _force_devices(argv: list[str]) -> None:
  """--devices=N -> N forced host devices (XLA reads this once, when jax initializes)."""
  for i, a in enumerate(argv):
    value = a.split("=", 1)[1] if a.startswith("--devices=") else (
        argv[i + 1] if a == "--devices" and i + 1 < len(argv) else None)  # absl takes both forms
    if value is not None:
      n = int(value)
      flag = f"--xla_force_host_platform_device_count={n}"
      os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


if __name__ == "__main__":
  _force_devices(sys.argv)

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from rft_jax import losses, sampling, sharding, train  # noqa: E402
from rft_jax.models import decoder as decoder_lib, lora, shapes  # noqa: E402

GB = 1e9
BUDGETS_GB = (40, 80, 141)  # A100 40GB, A100 / H100 80GB, H200 141GB


def _bytes_per_device(tree) -> int:
  """Bytes one device holds of abstract (ShapeDtypeStruct with sharding) or real arrays."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def _batch_struct(mesh, shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, shape))


def model_config_for(config, shape: str | decoder_lib.ModelConfig) -> decoder_lib.ModelConfig:
  """The paper model `shape` (or a ModelConfig) with the config's dtype (the params'), compute
  dtype, remat, attention chunk and LoRA."""
  if isinstance(shape, str):
    model = shapes.model_config(shape, dtype=config.model.dtype)
  else:
    model = dataclasses.replace(shape, param_dtype=config.model.dtype, dtype=config.model.dtype)
  return train.configure_model(config.model, model)


@dataclasses.dataclass
class Plan:
  """Per-device bytes of one round's programs (see the module docstring)."""

  shape: str
  devices: int
  mesh: dict
  rows: int            # rollouts per round (questions x G)
  prompt_len: int
  response_len: int
  micro_batch_size: int
  dtype: str
  compute_dtype: str
  remat: bool
  lora_rank: int
  param_count: int
  trained_count: int
  params: int          # per device, the frozen base and adapters included
  opt_state: int
  reference: int
  kv_cache: int        # inside `sample` (analytic, per device)
  sample: int          # sampler temporaries + outputs
  train: int           # train step temporaries + batch + non-aliased outputs
  sample_compile_s: float
  train_compile_s: float

  @property
  def resident(self) -> int:
    return self.params + self.opt_state + self.reference

  @property
  def peak(self) -> int:
    return self.resident + max(self.sample, self.train)

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "resident": self.resident, "peak": self.peak}


def plan(config, shape: str | decoder_lib.ModelConfig, prompt_len: int,
         log=lambda msg: None, devices=None) -> Plan:
  """Compiles the sampler and the train step of `config` at the paper model `shape` (a key of
  models.shapes, or a ModelConfig) for prompts of `prompt_len` tokens; returns the per-device
  memory. devices: the mesh's (default: all; config.mesh shapes them)."""
  mc = model_config_for(config, shape)
  mesh = sharding.build_mesh(**config.mesh, devices=devices)
  boxed = decoder_lib.abstract_params(mc)
  values = jax.tree.map(lambda x: x.value, boxed, is_leaf=lambda x: hasattr(x, "names"))
  params = _abstract(values, sharding.param_shardings(boxed, mesh))
  frozen, trained = (lora.split(params) if mc.lora_rank else (None, params))

  transform = train._loss_chain(config.loss.to_json())
  optimizer = train._optimizer(config.optimizer.to_json())
  rep = sharding.replicated(mesh)
  opt_state = train.init_optimizer(optimizer, trained, mesh)  # as run() places it
  loss_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.asarray(x).dtype,
                                                           sharding=rep), transform.init())
  state = train.TrainState(round=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
                           params=trained, opt_state=opt_state, loss_state=loss_state)

  ro = config.rollout
  questions = train.questions_per_round(ro.prompts_per_round, config.example.selection,
                                       config.example.num_examples)
  g, n, p = ro.num_samples, ro.max_new_tokens, prompt_len
  rows = questions * g
  uses_ref = train._uses_reference(config.loss.chain)
  f32 = jnp.float32
  loss_batch = losses.Batch(
      tokens=_batch_struct(mesh, (rows, n), jnp.int32), mask=_batch_struct(mesh, (rows, n), f32),
      behaviour_logp=_batch_struct(mesh, (rows, n), f32),
      rewards=_batch_struct(mesh, (rows,), f32), group_ids=_batch_struct(mesh, (rows,), jnp.int32),
      ref_logp=_batch_struct(mesh, (rows, n), f32) if uses_ref else None,
      prompt_ids=_batch_struct(mesh, (rows,), jnp.int32),
      sampler_logp=_batch_struct(mesh, (rows, n), f32))
  batch = train.RolloutBatch(prompt_tokens=_batch_struct(mesh, (rows, p), jnp.int32),
                             prompt_mask=_batch_struct(mesh, (rows, p), jnp.bool_),
                             loss=loss_batch)
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=rep)
  decoder = decoder_lib.Decoder(mc)
  micro = config.train.get("micro_batch_size", 0)

  log(f"compiling the train step ({shape}, {rows} rollouts x {p} + {n} tokens)")
  t0 = time.time()
  step = train.train_step.lower(
      state, batch, scalar(f32), frozen, decoder=decoder, transform=transform,
      optimizer=optimizer, epochs=config.train.epochs, mini_batches=config.train.mini_batches,
      logprob_chunk=config.train.logprob_chunk, micro_batch_size=micro).compile()
  train_s = time.time() - t0
  m = step.memory_analysis()
  batch_bytes = _bytes_per_device(batch) + _bytes_per_device(loss_state)
  train_bytes = m.temp_size_in_bytes + batch_bytes + max(
      0, m.output_size_in_bytes - m.alias_size_in_bytes)

  log(f"compiling the sampler ({questions} prompts x G={g})")
  full = params  # the sampler reads the adapted params (frozen base + adapters: no copy)
  t0 = time.time()
  old = sampling.CPU_HEAD_COPY
  sampling.CPU_HEAD_COPY = False  # plan the accelerator's program, not XLA:CPU's workaround
  try:
    sampler = sampling.sample.lower(
        decoder, full, _batch_struct(mesh, (questions, p), jnp.int32),
        _batch_struct(mesh, (questions, p), jnp.bool_), jax.random.PRNGKey(0),
        max_new_tokens=n, num_samples=g, temperature=scalar(f32), top_k=scalar(jnp.int32),
        top_p=scalar(f32), eos_ids=np.zeros((2,), np.int32), pad_id=0, mesh=mesh).compile()
  finally:
    sampling.CPU_HEAD_COPY = old
  sample_s = time.time() - t0
  ms = sampler.memory_analysis()
  sample_bytes = ms.temp_size_in_bytes + ms.output_size_in_bytes

  batch_shards = _batch_shards(mesh, rows)
  kv = (2 * mc.n_layers * rows * mc.n_kv_heads * (p + n) * mc.head_dim
        * jnp.dtype(mc.dtype).itemsize) // batch_shards
  params_bytes = _bytes_per_device(params)
  return Plan(
      shape=shape if isinstance(shape, str) else "custom", devices=mesh.size,
      mesh=dict(mesh.shape), rows=rows, prompt_len=p,
      response_len=n, micro_batch_size=micro, dtype=mc.param_dtype, compute_dtype=mc.dtype,
      remat=mc.remat, lora_rank=mc.lora_rank, param_count=decoder_lib.count_params(values),
      trained_count=decoder_lib.count_params(trained), params=params_bytes,
      opt_state=_bytes_per_device(opt_state),
      reference=params_bytes if uses_ref and not mc.lora_rank else 0, kv_cache=int(kv),
      sample=int(sample_bytes), train=int(train_bytes), sample_compile_s=sample_s,
      train_compile_s=train_s)


def _batch_shards(mesh, rows: int) -> int:
  s = sharding.batch_sharding(mesh, (rows,))
  assert isinstance(s, NamedSharding)
  return rows // s.shard_shape((rows,))[0]


def format_plan(pl: Plan) -> str:
  gb = lambda b: f"{b / GB:7.2f} GB"
  lines = [
      f"{pl.shape}: {pl.param_count / 1e9:.2f}B params ({pl.trained_count / 1e6:.1f}M trained), "
      f"params {pl.dtype}, compute {pl.compute_dtype}, remat {pl.remat}, "
      f"lora rank {pl.lora_rank}",
      f"round: {pl.rows} rollouts, prompt {pl.prompt_len} + response {pl.response_len} tokens, "
      f"micro-batch {min(pl.micro_batch_size or pl.rows, pl.rows)}; mesh {pl.mesh} "
      f"({pl.devices} device(s))",
      "per device:",
      f"  params            {gb(pl.params)}",
      f"  optimizer state   {gb(pl.opt_state)}",
      f"  reference params  {gb(pl.reference)}",
      f"  sampler temps     {gb(pl.sample)}   (KV cache {gb(pl.kv_cache).strip()} of it)",
      f"  train step temps  {gb(pl.train)}   (activations, gradients, batch)",
      f"  peak              {gb(pl.peak)}   = resident {gb(pl.resident).strip()} + max(sampler, "
      "train step)",
      "  fits: " + ", ".join(f"{b} GB {'yes' if pl.peak <= b * GB else 'no'}"
                             for b in BUDGETS_GB),
      f"compile time: train step {pl.train_compile_s:.0f} s, sampler {pl.sample_compile_s:.0f} s",
  ]
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  pl = plan(config, _SHAPE.value, _PROMPT_LEN.value, log=lambda m: print(m, flush=True))
  print(format_plan(pl))
  if _JSON.value:
    with open(_JSON.value, "a") as f:
      f.write(json.dumps(pl.to_dict()) + "\n")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (configs/).",
                                            lock_config=True)
  _SHAPE = flags.DEFINE_string("shape", "qwen2.5-0.5b",
                               f"Paper model shape: {', '.join(shapes.CONFIGS)}.")
  _PROMPT_LEN = flags.DEFINE_integer("prompt_len", 512, "Prompt length P (tokens, padded).")
  flags.DEFINE_integer("devices", 1, "Forced CPU devices (read before jax starts).")
  _JSON = flags.DEFINE_string("json", "", "Append the plan as one JSON line to this file.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
