"""The base policy: a Hugging Face checkpoint, or the embedded default's supervised warm start.

The paper fine-tunes instruct models that already solve some of the problems. The embedded
default stands in for one: a small decoder trained by next-token prediction on generated worked
solutions, stopped as soon as its test Pass@1 (one temperature-1 sample per question, on a fixed
subset of the test set) reaches `warm_start.target_pass1`, so the base policy is middling (the
range the paper's bandit view needs: neither always right nor never).

The result (params, tokenizer, base.json) is written once, atomically, to `warm_start.dir`
(default <workdir>/base) and reused by every later run that points there with the same settings:
the pipeline shares one base across its layers and seeds, so every layer starts from one policy.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rft_jax import (
  checkpoint as checkpoint_lib,
  distributed,
  errors,
  evaluation,
  fileio,
  logprobs,
  metrics as metrics_lib,
  sampling,
  sharding,
)
from rft_jax.data import arithmetic, tokenizer as tokenizer_lib
from rft_jax.data.base import Task
from rft_jax.models import decoder as decoder_lib
from rft_jax.models.policy import Policy

PARAMS_FILE = "params.msgpack"
# model.* settings applied to the base after it is loaded or made (train.apply_model_options).
AFTER_BASE_KEYS = ("remat", "attn_chunk", "compute_dtype", "lora")
INFO_FILE = "base.json"


def embedded_model_config(model_cfg, vocab_size: int) -> decoder_lib.ModelConfig:
  return decoder_lib.ModelConfig(
      vocab_size=vocab_size, d_model=model_cfg.d_model, n_layers=model_cfg.n_layers,
      n_heads=model_cfg.n_heads, n_kv_heads=model_cfg.n_kv_heads, head_dim=model_cfg.head_dim,
      d_ff=model_cfg.d_ff, rope_theta=model_cfg.rope_theta, dtype=model_cfg.dtype,
      max_position_embeddings=512)


def _embedded_policy(tok, model_config, params) -> Policy:
  return Policy(config=model_config, params=params, tokenizer=tok, eos_ids=(tok.eos_token_id,),
                pad_id=tok.pad_token_id, chat=False)


def base_fingerprint(config) -> dict:
  """What the embedded base depends on: task, model shape, warm-start settings (not the options
  applied after it is made: remat, compute dtype, LoRA; train.apply_model_options)."""
  model = {k: v for k, v in config.model.to_dict().items() if k not in AFTER_BASE_KEYS}
  return {"task": config.task.to_dict(), "model": model,
          "warm_start": {k: v for k, v in config.warm_start.to_dict().items() if k != "dir"},
          "max_new_tokens": config.rollout.max_new_tokens}


def base_policy(config, task: Task, workdir: str, mesh=None, log=print) -> tuple[Policy, dict]:
  """(policy, info): the HF checkpoint of config.model.checkpoint, or the embedded warm start."""
  if config.model.checkpoint:
    from rft_jax import models  # HF import lives beside the decoder (models.hf)

    policy = models.load(config.model.checkpoint, dtype=config.model.dtype)
    return _place(policy, mesh), {"source": config.model.checkpoint}
  directory = config.warm_start.dir or os.path.join(workdir, "base")
  fingerprint = base_fingerprint(config)
  info_path = os.path.join(directory, INFO_FILE)
  if distributed.agree(os.path.exists(info_path)):  # process 0 may write it meanwhile
    try:
      with open(info_path) as f:
        info = json.load(f)
    except ValueError as e:  # an empty or cut file (a crash of the machine while it was written)
      raise errors.CheckpointReadError(f"the base policy's {info_path} cannot be read ({e}); "
                                       f"delete {directory} to warm-start again") from e
    diff = checkpoint_lib.fingerprint_diff(info.get("fingerprint") or {},
                                           json.loads(json.dumps(fingerprint)))
    if diff:
      raise checkpoint_lib.IncompatibleCheckpointError(
          f"the base policy in {directory} was made with other task/model/warm_start settings; "
          "differing settings:\n" + "\n".join(diff) + "\nPoint --config.warm_start.dir "
          "elsewhere or use a fresh --workdir.")
    tok = tokenizer_lib.load_tokenizer(os.path.join(directory, "tokenizer"))
    model_config = embedded_model_config(config.model, len(tok))
    template = jax.eval_shape(lambda: decoder_lib.init_params(model_config, jax.random.PRNGKey(0)))
    try:
      with open(os.path.join(directory, PARAMS_FILE), "rb") as f:
        params = flax.serialization.from_bytes(template, f.read())
    except (ValueError, KeyError, TypeError) as e:  # msgpack of another shape, truncated
      raise errors.CheckpointReadError(
          f"the base policy's {os.path.join(directory, PARAMS_FILE)} cannot be read "
          f"({type(e).__name__}: {e}); delete {directory} to warm-start again") from e
    log(f"base policy: reused {directory} (test Pass@1 {info['test_pass1']:.3f} after "
        f"{info['steps']} supervised steps)")
    return _place(_embedded_policy(tok, model_config, params), mesh), info
  _warm_start(config, task, directory, fingerprint, mesh, log)
  # Every run, the one that trained the base included, takes it from disk: one code path (quiet:
  # _warm_start has just said what it made).
  return base_policy(config, task, workdir, mesh, log=lambda msg: None)


def _place(policy: Policy, mesh) -> Policy:
  if mesh is None:
    return policy
  shardings = sharding.param_shardings(decoder_lib.abstract_params(policy.config), mesh)
  return policy.replace(params=jax.device_put(policy.params, shardings))


@functools.partial(jax.jit, static_argnames=("decoder", "optimizer"), donate_argnums=(0, 1))
def _sft_step(params, opt_state, batch, *, decoder, optimizer):
  """One next-token step on completions: loss = -mean over completion tokens of log p."""
  prompt, prompt_mask, completion, completion_mask = batch

  def loss_fn(p):
    logp = logprobs.completion_logprobs(decoder, p, prompt, prompt_mask, completion,
                                        completion_mask)
    return -jnp.sum(logp * completion_mask) / jnp.maximum(jnp.sum(completion_mask), 1.0)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def _sft_arrays(policy: Policy, examples, cfg, bucket: int):
  """Left-padded prompts and right-padded completions (+ EOS) of the warm-start corpus."""
  tok = policy.tokenizer
  prompts, completions = [], []
  for ex in examples:
    prompt, completion = arithmetic.sft_text(ex)
    prompts.append(policy.encode_prompt(prompt))
    completions.append(tok.encode(completion, add_special_tokens=False) + [tok.eos_token_id])
  n = cfg.rollout.max_new_tokens
  # The EOS may fall past the cut (a 2-token answer of a 2-token budget): the sampler stops there.
  if max(len(c) for c in completions) - 1 > n:
    raise ValueError(f"a worked solution is longer than rollout.max_new_tokens={n}")
  width = max(n, max(len(c) for c in completions))
  p_tokens, p_mask = sampling.left_pad(prompts, policy.pad_id, bucket=bucket)
  c_tokens = np.full((len(examples), width), policy.pad_id, np.int32)
  c_mask = np.zeros((len(examples), width), np.float32)
  for i, c in enumerate(completions):
    c_tokens[i, :len(c)] = c
    c_mask[i, :len(c)] = 1
  return p_tokens, p_mask, c_tokens, c_mask


def _warm_start(config, task: Task, directory: str, fingerprint: dict, mesh, log) -> None:
  ws = config.warm_start
  if task.name != "arithmetic":
    raise errors.ConfigError("the supervised warm start exists for the embedded arithmetic task "
                             "only; set --config.model.checkpoint to a Hugging Face model "
                             "directory")
  # The base replaces `directory` when it is made: never a folder holding something else (a
  # run's workdir named by mistake would be deleted). A crashed warm start leaves nothing there.
  if os.path.exists(directory) and not (os.path.isdir(directory) and not os.listdir(directory)):
    raise errors.ConfigError(
        f"--config.warm_start.dir: {directory} exists and is not a base policy (no {INFO_FILE}); "
        "name a new folder or a base made before")
  t0 = time.time()
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".base-", dir=parent)
  try:
    fileio.chmod_as_created(tmp, directory=True)  # mkdtemp's 0700 would become base/'s mode
    tok = tokenizer_lib.embedded_tokenizer(tmp)
    model_config = embedded_model_config(config.model, len(tok))
    params = decoder_lib.init_params(model_config, jax.random.PRNGKey(ws.seed))
    policy = _place(_embedded_policy(tok, model_config, params), mesh)
    test_expr = {e.meta["expression"] for e in task.test}
    # The task's own ranges and format; a small task may hold fewer problems than corpus_size.
    corpus = arithmetic.generate(ws.seed, ws.corpus_size, split="sft", exclude=test_expr,
                                 allow_fewer=True, **arithmetic.ranges_from_config(config.task))
    if not corpus:
      raise ValueError("the task's ranges leave no problem outside the test set for the warm "
                       "start: widen them or shrink task.n_test")
    if len(corpus) < ws.corpus_size:
      log(f"warm start: the task's ranges hold {len(corpus)} problems outside the test set, "
          f"fewer than corpus_size={ws.corpus_size}; training on those")
    arrays = _sft_arrays(policy, corpus, config, config.rollout.prompt_bucket)
    probe = list(task.test[:ws.probe_size])
    warmup = min(ws.warmup_steps, ws.max_steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, ws.learning_rate, warmup,
                                                  ws.max_steps, ws.learning_rate * 0.1)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule,
                                                                        weight_decay=0.0))
    params = policy.params
    opt_state = optimizer.init(params)
    if mesh is not None:
      params, opt_state = sharding.on_mesh((params, opt_state), mesh)
    rng = np.random.default_rng(ws.seed)
    bar = metrics_lib.progress(ws.max_steps, desc="warm start")
    pass1, step, loss = 0.0, 0, None
    for step in range(1, ws.max_steps + 1):
      idx = rng.choice(len(corpus), ws.batch_size, replace=len(corpus) < ws.batch_size)
      batch = tuple(a[idx] for a in arrays)
      if mesh is not None:
        batch = sharding.shard_batch(batch, mesh)
      if loss is not None:
        # One step in flight (the host makes the next batch while it runs). Unpaced, this is
        # the one loop that dispatches steps without reading anything back, and over several
        # processes on CPU that deadlocks: past XLA's limit of in-flight programs per device,
        # the dispatch waits on a thread of the client's pool (max(cores, local devices)
        # threads); a gloo all-reduce needs every local device's part running at once, so with
        # a pool that small (2 cores, 2 devices) none is left for it, and the processes wait on
        # each other for good (issue 14; tests/test_multihost.py).
        loss.block_until_ready()
      params, opt_state, loss = _sft_step(params, opt_state, batch, decoder=policy.decoder,
                                           optimizer=optimizer)
      bar.update(1)
      if step % ws.eval_every == 0 or step == ws.max_steps:
        r = evaluation.sample_rewards(
            policy.replace(params=params), task, probe, jax.random.PRNGKey(step), num_samples=1,
            temperature=1.0, max_new_tokens=config.rollout.max_new_tokens,
            batch_size=config.eval.batch_size, prompt_bucket=config.rollout.prompt_bucket,
            mesh=mesh)
        pass1 = float(r.mean())
        bar.set_postfix(loss=f"{float(loss):.3f}", probe_pass1=f"{pass1:.2f}")
        if pass1 >= ws.target_pass1:
          bar.total = step  # stopped early on purpose: the bar ends full, not at 35%
          bar.refresh()
          break
    bar.close()
    info = {"fingerprint": fingerprint, "steps": step, "test_pass1": pass1,
            "probe_size": len(probe), "wall_s": time.time() - t0,
            "params": decoder_lib.count_params(params)}
    host_params = distributed.to_host(params)
    if distributed.is_main():  # every process trained the same base; process 0 keeps it
      with open(os.path.join(tmp, PARAMS_FILE), "wb") as f:
        f.write(flax.serialization.to_bytes(host_params))
      with open(os.path.join(tmp, INFO_FILE), "w") as f:
        json.dump(info, f, indent=1)
      if os.path.isdir(directory):  # empty (checked above); rmdir fails on anything written since
        os.rmdir(directory)
      os.replace(tmp, directory)
    else:
      shutil.rmtree(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  distributed.barrier("warm_start")  # the others read what process 0 wrote
  log(f"base policy: {info['params']:,} params, {step} supervised steps in {info['wall_s']:.0f}s, "
      f"probe test Pass@1 {pass1:.3f} -> {directory}")
