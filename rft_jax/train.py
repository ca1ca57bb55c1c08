"""The RFT loop: sample rollouts, grade, one jitted train step per round, evaluate, checkpoint.

    summary = run(config, workdir)

One round (DESIGN.md, "Data flow of one round"), each step a function of its own:
  1. rollout_phase: the round's questions (prompts_per_round of the training set) x G rollouts,
     sampled by the jitted sampler from the current params (rng = fold_in(seed, round):
     resumable bit for bit);
  2. grade_phase: the grader turns each completion into a reward;
  3. train_phase (`train_step`): the loss chain (config.loss) over the policy's log-probs of the
     rollouts, AdamW, `epochs x mini_batches` updates on the round's rollouts (1 x 1 =
     on-policy);
  4. evaluate_phase, every eval_every rounds: training Pass@1 (k samples of the training
     questions) and test Pass@1 (one sample per test question) plus greedy accuracy;
     metrics.jsonl and TensorBoard;
  5. checkpoint_phase: an orbax checkpoint every checkpoint_every rounds. A restart in the same
     workdir resumes (restore_phase).

Over several JAX processes (--multihost, rft_jax.distributed) every process runs the same
rounds on the global mesh: each grades the rollouts its devices hold and the results are
gathered (grade_phase), evaluations likewise; process 0 writes the files, every process its
checkpoint shards.

A run owns its workdir (rft_jax.workdir: a lock, the config's fingerprint checked before anything
is written); the config is validated first (validate_config). A non-finite loss or non-finite /
exploded parameters stop the run before the round is saved, so every checkpoint is good and the
message names the last one; `--resume_with=optimizer.learning_rate` goes on from it with another
learning rate. SIGINT / SIGTERM finish the round, save and stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rft_jax import (
  bandit,
  checkpoint as checkpoint_lib,
  distributed,
  errors,
  evaluation,
  fileio,
  logprobs,
  losses,
  metrics as metrics_lib,
  sampling,
  sharding,
  warm_start,
  workdir as workdir_lib,
)
from rft_jax.data import selection
from rft_jax.data.base import Example, Task
from rft_jax.models import lora
from rft_jax.models.decoder import ModelConfig
from rft_jax.models.policy import Policy

EVALS_DIR = "evals"  # per-sample rewards of each evaluation (rft_jax.evaluation.save_rewards)
ROLLOUTS_FILE = "rollouts.jsonl"  # rollouts' texts of some rounds (train.texts_every)

# Settings that may change between a run and its resumption (they do not change what a round
# computes); everything else of the config enters the checkpoint's fingerprint.
RESUMABLE_KEYS = ("train.rounds", "train.eval_every", "train.checkpoint_every",
                  "eval.batch_size", "eval.curve_test_size", "eval.shared_base", "warm_start.dir",
                  "example.table",
                  "diagnostics.p_correct_window",
                  "diagnostics.exact_arms", "diagnostics.max_arms")

# Keys added after runs had been checkpointed (dotted paths of any depth), with their default:
# left out of the fingerprint at that value, so a checkpoint from before the key existed resumes
# under the default. Any other value enters the fingerprint. train.logprob_chunk changes the
# step's float rounding only (as a code change does); an explicit change within a run is still
# refused. The loss options of 1781af7 (the verl / TRL conventions) are off at their defaults.
LATER_KEYS = {
    "train.logprob_chunk": 128,
    "loss.group_mean.singleton": "mean",
    "loss.group_std.singleton_std": -1.0,
    "loss.clipped_ratio.log_ratio_clamp": -1.0,
    "loss.dual_clip.log_ratio_clamp": -1.0,
    "loss.sequence_ratio.max_log_ratio": -1.0,
    "loss.kl_loss.clamp": -1.0,
    "loss.kl_loss.log_ratio_clamp": -1.0,
    "loss.kl_loss.ratio_weight": False,
    "loss.kl_reward.clamp": -1.0,
    "loss.kl_reward.log_ratio_clamp": -1.0,
    "loss.seq_mean_token_sum_norm.divide_by_seqs": True,
    # Memory options (issue 15): micro-batches and remat change the float rounding only;
    # compute_dtype "" keeps the loaded dtype; lora.rank 0 trains every parameter.
    "train.micro_batch_size": 0,
    "model.remat": False,
    "model.attn_chunk": 0,
    "model.compute_dtype": "",
    "model.lora.rank": 0,
    "model.lora.alpha": 16.0,
    "model.lora.modules": "q,k,v,o,gate,up,down",
    # Cost options (issue 13): the train step on the round's longest completion rounded up to a
    # multiple of completion_bucket (0 = all max_new_tokens positions; the same loss but where
    # a chain normalizes by the padded width); greedy test accuracy at the base and last
    # evaluations only when curve_greedy is off.
    "train.completion_bucket": 0,
    "eval.curve_greedy": True,
    "train.texts_every": 0,
}


def fingerprint_defaults() -> dict:
  """{dotted key: default} under which a stored fingerprint and a new one compare
  (checkpoint.fingerprint_diff): LATER_KEYS, and every loss transform setting at its factory
  default, so a loss option added later resumes runs stored before it (or by code that wrote
  the default out, as between 1781af7 and LATER_KEYS' loss entries)."""
  out = {f"loss.{name}.{k}": v for name, kwargs in losses.default_settings().items()
         for k, v in kwargs.items()}
  return {**out, **LATER_KEYS}


# Settings --resume_with may change on a resume (a checkpoint's state has the same structure under
# any value): a diverged run goes on from its last good checkpoint with a lower learning rate.
RESUME_WITH_KEYS = ("optimizer.learning_rate", "optimizer.clip_norm", "optimizer.weight_decay",
                    "rollout.temperature")

TASKS = ("arithmetic", "gsm8k", "math")

# Divergence: parameters whose global norm passes EXPLODED_NORM x the base policy's have blown up
# (a sane run moves it by percents; lr 1e30 by 1e30). Collapse guard: entropy at UNIFORM_ENTROPY
# x ln V is a policy turned to noise; below STUCK_ENTROPY nats its rollouts no longer vary.
EXPLODED_NORM = 1e3
UNIFORM_ENTROPY = 0.97
STUCK_ENTROPY = 1e-3

_NO_DEFAULT = object()
NonFiniteLossError = errors.DivergedError  # the name before non-finite parameters counted too


@flax.struct.dataclass
class TrainState:
  round: jax.Array  # [] int32, rounds completed
  params: Any
  opt_state: Any
  loss_state: Any


@flax.struct.dataclass
class RolloutBatch:
  """What the train step sees: the prompts (for the forward pass) and the loss chain's Batch."""

  prompt_tokens: jax.Array  # [B, P]
  prompt_mask: jax.Array    # [B, P]
  loss: losses.Batch        # completion tokens [B, N], behaviour logp, rewards, group ids, ...


# -- task and training questions -------------------------------------------------------------


def build_task(task_cfg) -> Task:
  if task_cfg.name == "arithmetic":
    from rft_jax.data import arithmetic

    task = arithmetic.arithmetic_task(task_cfg.seed, task_cfg.n_train, task_cfg.n_test,
                                      **arithmetic.ranges_from_config(task_cfg))
  elif task_cfg.name == "gsm8k":
    from rft_jax.data import gsm8k

    task = gsm8k.gsm8k_task(train_path=task_cfg.train_path or None,
                            test_path=task_cfg.test_path or None)
  elif task_cfg.name == "math":
    from rft_jax.data import math as math_data

    task = math_data.math_task(train_path=task_cfg.train_path or None,
                               test_path=task_cfg.test_path or None)
  else:
    raise errors.ConfigError(
        f"--config.task.name={task_cfg.name!r}: must be one of {', '.join(TASKS)}")
  if task_cfg.template:
    from rft_jax.data import prompts_text

    task.template = prompts_text.template(task_cfg.template)
  if task_cfg.get("grader"):  # another grader than the task's own (configs/smollm2.py)
    task.grader = task_cfg.grader
  return task


def grader_name(task_cfg) -> str:
  """The grader build_task's task uses: task.grader, else the task's own, which every task
  names after itself (arithmetic, gsm8k, math)."""
  return task_cfg.get("grader") or task_cfg.name


def grader_revision_key(task_cfg, revision: int | None = None) -> dict:
  """{'grader_revision': n} when the run's grader is past its first revision (rewards.REVISIONS;
  `revision` in its place: a file stored under an earlier one), else {}: a stored result's key
  names the rules it was graded by, and keys of graders never revised stay as they were, so
  their stored files keep their names."""
  from rft_jax import rewards

  n = rewards.revision(grader_name(task_cfg)) if revision is None else revision
  return {"grader_revision": n} if n > 1 else {}


def training_examples(config, task: Task, policy: Policy, workdir: str, mesh,
                      log=print) -> list[Example]:
  """The training question(s): by id, by index, or drawn from a difficulty bucket of the base.

  The difficulty table (base policy's pass rate on `candidates` questions from `samples`
  samples each) is saved as <workdir>/difficulty.json and reused on resume.
  """
  ex = config.example
  pool = list(task.train)
  if ex.selection == "id":
    try:
      return [selection.select_example(pool, example_id=ex.example_id)]
    except KeyError:
      raise errors.ConfigError(f"--config.example.example_id={ex.example_id!r}: not among the "
                               f"{len(pool)} training problems of task {task.name}") from None
  if ex.selection == "index":
    if ex.index + ex.num_examples > len(pool):
      raise errors.ConfigError(
          f"--config.example.index={ex.index}: with example.num_examples={ex.num_examples} it "
          f"must be <= {len(pool) - ex.num_examples} (task {task.name} has {len(pool)} training "
          "problems)")
    return [pool[i] for i in range(ex.index, ex.index + ex.num_examples)]
  if ex.selection not in selection.BUCKETS:
    raise ValueError(f"example.selection={ex.selection!r}; use id, index or a bucket "
                     f"{selection.BUCKETS}")
  path = os.path.join(workdir, "difficulty.json")
  if distributed.agree(os.path.exists(path)):  # process 0 may write it meanwhile
    table = selection.load_table(path)
  elif distributed.agree(bool(ex.table) and os.path.exists(ex.table)):  # another run's
    table = selection.load_table(ex.table)
    try:
      selection.check_table(table, pool[:ex.candidates], ex.samples, ex.table)
    except ValueError as e:
      raise errors.ConfigError(f"--config.example.table: {e}") from None
    if distributed.is_main():
      selection.save_table(path, table)
    log(f"difficulty table from {ex.table}: {table['counts']}")
  else:
    candidates = pool[:ex.candidates]

    def sample(chunk, n):
      return evaluation.sample_rewards(
          policy, task, chunk, jax.random.PRNGKey(ex.seed), num_samples=n,
          temperature=config.rollout.temperature, desc="difficulty", **_gen_kwargs(config, mesh))

    table = selection.estimate_difficulty(candidates, sample, ex.samples)
    if distributed.is_main():
      selection.save_table(path, table)
      if ex.table:  # for the other runs with these settings (rft_jax.pipeline.difficulty_path)
        os.makedirs(os.path.dirname(os.path.abspath(ex.table)), exist_ok=True)
        selection.save_table(ex.table, table)
    log(f"difficulty of {len(candidates)} candidate questions: {table['counts']}")
  ids = sorted(row["id"] for row in table["rows"] if row["bucket"] == ex.selection)
  if len(ids) < ex.num_examples:
    raise errors.ConfigError(
        f"bucket {ex.selection!r} holds {len(ids)} of the {len(table['rows'])} candidates, fewer "
        f"than example.num_examples={ex.num_examples}; raise example.candidates or pick another "
        "bucket")
  chosen = np.random.default_rng(ex.seed).choice(len(ids), ex.num_examples, replace=False)
  by_id = {e.id: e for e in pool}
  return [by_id[ids[i]] for i in sorted(chosen)]


def _gen_kwargs(config, mesh) -> dict:
  return dict(max_new_tokens=config.rollout.max_new_tokens, top_k=config.rollout.top_k,
              top_p=config.rollout.top_p, batch_size=config.eval.batch_size,
              prompt_bucket=config.rollout.prompt_bucket, mesh=mesh)


# -- the train step ---------------------------------------------------------------------------


def make_optimizer(opt_cfg) -> optax.GradientTransformation:
  lr = opt_cfg.learning_rate
  schedule = optax.linear_schedule(0.0, lr, opt_cfg.warmup_steps) if opt_cfg.warmup_steps else lr
  return optax.chain(
      optax.clip_by_global_norm(opt_cfg.clip_norm) if opt_cfg.clip_norm > 0 else optax.identity(),
      optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                  weight_decay=opt_cfg.weight_decay))


def init_optimizer(optimizer: optax.GradientTransformation, params, mesh=None):
  """optimizer.init(params) with every copy of the params tree inside the state (AdamW's mu,
  nu) placed like the params and the rest (step counts) replicated on `mesh`.

  jit alone would not: zeros_like(params) does not read the params, so XLA leaves the moments
  unsplit, and under fsdp each device would hold the whole optimizer state (twice the params).
  `params` may be real arrays or ShapeDtypeStructs with shardings (the planner's); mesh=None
  or params without NamedShardings: plain jit.
  """
  def spec(x):
    return getattr(x, "sharding", None)

  shardings = jax.tree.map(spec, params)
  if mesh is None or not all(isinstance(s, jax.sharding.NamedSharding)
                             for s in jax.tree.leaves(shardings)):
    return jax.jit(optimizer.init)(params)
  shape = jax.eval_shape(optimizer.init, params)
  out = optax.tree_map_params(optimizer, lambda _, s: s, shape, shardings,
                              transform_non_params=lambda _: sharding.replicated(mesh))
  init = jax.jit(optimizer.init, out_shardings=out)
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params)):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shape,
                        out)
  return init(params)


def configure_model(model_cfg, model_config: ModelConfig) -> ModelConfig:
  """`model_config` with the config's model.remat, attn_chunk, compute_dtype and lora (keys a
  config lacks keep their LATER_KEYS defaults)."""
  get = lambda key: model_cfg.get(key, LATER_KEYS[f"model.{key}"])
  opts = model_cfg.get("lora") or {}
  lget = lambda key: opts.get(key, LATER_KEYS[f"model.lora.{key}"])
  config = dataclasses.replace(model_config, remat=bool(get("remat")),
                               attn_chunk=int(get("attn_chunk")),
                               dtype=get("compute_dtype") or model_config.dtype)
  return lora.configure(config, lget("rank"), lget("alpha"), lget("modules"))


def apply_model_options(model_cfg, policy: Policy, seed: int = 0) -> tuple[Policy, Any]:
  """The config's memory and adapter options on the base policy -> (policy, frozen).

  model.remat: recompute each decoder block in the backward pass; model.compute_dtype: the
  activations' dtype (params keep theirs: float32 masters with bfloat16 compute); model.lora:
  rank-r adapters (models.lora) added to the params, fresh from `seed`. With adapters, frozen =
  the base params: not trained, not checkpointed, and the KL reference (adapters off);
  without, frozen = None and every param is trained. Keys a config lacks keep their defaults.
  """
  config = configure_model(model_cfg, policy.config)
  if not config.lora_rank:
    return policy.replace(config=config), None
  adapters = lora.init_adapters(config, jax.random.PRNGKey(seed))
  return policy.replace(config=config, params=lora.combine(policy.params, adapters)), \
      policy.params


# One object per distinct setting: the chain and the optimizer are static arguments of the jitted
# train step, so runs in one process (the pipeline) with equal settings share its compilation.
@functools.lru_cache(maxsize=64)
def _loss_chain(loss_json: str) -> losses.LossTransform:
  return losses.from_config(json.loads(loss_json))


@functools.lru_cache(maxsize=64)
def _optimizer(opt_json: str) -> optax.GradientTransformation:
  return make_optimizer(ml_collections.ConfigDict(json.loads(opt_json)))


def _split_rows(tree, parts: int):
  rows = tree.prompt_tokens.shape[0]
  if rows % parts:
    raise ValueError(f"{rows} rollouts do not split into train.mini_batches={parts}")
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else
                      x.reshape(parts, rows // parts, *x.shape[1:]), tree)


@functools.partial(jax.jit, static_argnames=("decoder", "transform", "optimizer", "epochs",
                                             "mini_batches", "logprob_chunk",
                                             "micro_batch_size"),
                   donate_argnums=(0,))
def train_step(state: TrainState, batch: RolloutBatch, temperature: jax.Array,
               frozen: Any = None, *, decoder, transform: losses.LossTransform,
               optimizer: optax.GradientTransformation, epochs: int = 1, mini_batches: int = 1,
               logprob_chunk: int = LATER_KEYS["train.logprob_chunk"],
               micro_batch_size: int = LATER_KEYS["train.micro_batch_size"]
               ) -> tuple[TrainState, dict]:
  """epochs x mini_batches AdamW updates on one round's rollouts; returns (state, metrics).

  The chain's advantage stage runs once over the whole round (losses.prepare_batch), so
  baselines see every rollout and stateful transforms update once per round; each update then
  differentiates the chain's loss stage over its mini-batch (normalized by its own tokens).
  logprob_chunk: completion positions scored at a time (logprobs.completion_logprobs; 0 = all
  at once), so the step's memory grows with it rather than with N x V.
  micro_batch_size (static; 0, or at least the mini-batch's rows = the whole mini-batch): rows
  whose forward and backward run at once; an update sums the gradients of its micro-batches
  (losses.accumulate_gradients, in a lax.scan), equal to the mini-batch's gradient up to float
  rounding, with the activations of one micro-batch in memory.
  frozen: params that are not trained (LoRA: the base, `lora.split`); the forward runs on
  lora.combine(frozen, state.params) and only state.params get gradients and optimizer state.
  Metrics of several updates: each averaged metric over all their tokens (weighted as
  micro-batches are, losses.accumulate_gradients), grad_norm the mean over updates,
  grad_norm_last and loss the final update's.
  """
  prepared, loss_state, pre_metrics = losses.prepare_batch(transform, batch.loss,
                                                           state.loss_state)
  if mini_batches > 1:  # each mini-batch normalizes by its own token / sequence counts
    prepared = prepared.replace(token_count=None, seq_count=None)
  full = batch.replace(loss=prepared)

  def loss_fn(params, loss_batch: losses.Batch, prompts):
    prompt_tokens, prompt_mask = prompts
    if frozen is not None:
      params = lora.combine(frozen, params)
    logp, ent = logprobs.completion_logprobs(decoder, params, prompt_tokens, prompt_mask,
                                             loss_batch.tokens, loss_batch.mask, temperature,
                                             with_entropy=True, chunk=logprob_chunk)
    loss, aux = losses.compute_loss(transform, logp, loss_batch, loss_state, entropy=ent)
    mask = loss_batch.mask
    aux["metrics"]["entropy"] = jnp.sum(ent * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    # over every generated token, not only the loss tokens (baseline_only): micro-batches
    # combine it by this count (accumulate_gradients)
    aux["metric_weights"] = {"entropy": jnp.sum(mask)}
    return loss, aux

  def update(carry, mb: RolloutBatch):
    params, opt_state = carry
    rows = mb.prompt_tokens.shape[0]
    prompts = (mb.prompt_tokens, mb.prompt_mask)
    if micro_batch_size and micro_batch_size < rows:
      if rows % micro_batch_size:
        raise ValueError(f"{rows} rollouts per update do not split into micro-batches of "
                         f"train.micro_batch_size={micro_batch_size}")
      loss, grads, aux = losses.accumulate_gradients(
          loss_fn, params, mb.loss, rows // micro_batch_size, transform=transform,
          state=loss_state, inputs=prompts)
    else:
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb.loss, prompts)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    metrics = {**aux["metrics"], "loss": loss, "grad_norm": optax.global_norm(grads)}
    # what each metric averages over (loss tokens unless it says otherwise), so that the
    # updates of a round combine as one batch would
    weights = losses.metric_weights(aux, metrics, jnp.sum(mb.loss.loss_mask))
    return (optax.apply_updates(params, updates), opt_state), (metrics, weights)

  if epochs * mini_batches == 1:
    (params, opt_state), (metrics, _) = update((state.params, state.opt_state), full)
  else:
    pieces = _split_rows(full, mini_batches)
    schedule = jax.tree.map(lambda x: jnp.concatenate([x] * epochs) if jnp.ndim(x) else x,
                            pieces)
    (params, opt_state), (metrics, weights) = jax.lax.scan(
        update, (state.params, state.opt_state), schedule)
    last = {k: v[-1] for k, v in metrics.items()}  # loss / grad norm of the final update
    # A token mean over every update's tokens (each at the params it was updated from); the
    # gradient norm a plain mean over updates, and the last one besides.
    grad_norm = jnp.mean(metrics["grad_norm"])
    metrics = losses.combine_metrics(metrics, weights)
    metrics.update(loss=last["loss"], grad_norm=grad_norm, grad_norm_last=last["grad_norm"])

  # Bandit diagnostics: how much of the round carries a learning signal.
  adv = prepared.advantages if prepared.advantages.ndim == 1 else jnp.max(
      jnp.abs(prepared.advantages) * batch.loss.mask, axis=-1)
  rows = (jnp.sum(batch.loss.mask, axis=-1) > 0).astype(jnp.float32)
  # param_norm: the divergence guard's input (non-finite or exploded params are never saved).
  metrics = {**{k: v for k, v in pre_metrics.items() if k not in metrics}, **metrics,
             "signal_frac": jnp.sum((jnp.abs(adv) > 0) * rows) / jnp.maximum(jnp.sum(rows), 1),
             "param_norm": optax.global_norm(params)}
  return TrainState(round=state.round + 1, params=params, opt_state=opt_state,
                    loss_state=loss_state), metrics


# The same chunking as the policy's log-probs: equal params give an exactly zero KL.
@functools.partial(jax.jit, static_argnames=("decoder", "chunk"))
def _reference_logp(decoder, params, prompt_tokens, prompt_mask, tokens, mask, temperature,
                    chunk):
  return logprobs.completion_logprobs(decoder, params, prompt_tokens, prompt_mask, tokens, mask,
                                      temperature, chunk=chunk)


def completion_width(lengths: np.ndarray, max_new_tokens: int, bucket: int) -> int:
  """Completion positions the train step needs: the longest rollout (lengths [BG], EOS included)
  rounded up to a multiple of `bucket`, at most max_new_tokens; all of them when bucket is 0.
  Positions past every row's end are masked out of every loss but a padded-width normalizer,
  so dropping them saves the step's work on them (a round whose rollouts all end early costs
  what their length does); each width compiles the step once."""
  if not bucket:
    return max_new_tokens
  return min(max_new_tokens, sampling.bucket_length(int(np.max(lengths, initial=0)), bucket))


@functools.partial(jax.jit, static_argnames=("width",))
def _trim_completions(rollout: sampling.Rollout, width: int) -> sampling.Rollout:
  """The rollout's completion arrays cut to their first `width` positions."""
  cut = lambda x: x[:, :width]
  return rollout.replace(tokens=cut(rollout.tokens), mask=cut(rollout.mask),
                         logp=cut(rollout.logp), sampler_logp=cut(rollout.sampler_logp))


def _uses_reference(transform_chain: str) -> bool:
  return any(name.strip() in ("kl_loss", "kl_reward") for name in transform_chain.split(","))


# -- the loop ---------------------------------------------------------------------------------


def _pop_path(d: dict, key: str, default=_NO_DEFAULT) -> None:
  """Removes dotted `key` from nested dict `d` (only if it equals `default`, when given) and the
  sections that leaves empty: a section that did not exist before the key did."""
  *parents, name = key.split(".")
  chain = [d]
  for part in parents:
    node = chain[-1].get(part)
    if not isinstance(node, dict):
      return
    chain.append(node)
  if name not in chain[-1] or (default is not _NO_DEFAULT and chain[-1][name] != default):
    return
  del chain[-1][name]
  for parent, part in zip(reversed(chain[:-1]), reversed(parents)):
    if parent[part]:
      break
    del parent[part]


def drop_later_defaults(d: dict) -> dict:
  """Nested config dict `d` without the LATER_KEYS that hold their default (in place), so a
  config from before a key existed and one with the key at its default compare equal."""
  for key, default in LATER_KEYS.items():
    _pop_path(d, key, default)
  return d


def fingerprint(config) -> dict:
  """The config minus the settings a resumed run may change (RESUMABLE_KEYS) and the later
  keys at their defaults (LATER_KEYS)."""
  d = drop_later_defaults(json.loads(config.to_json()))
  for key in RESUMABLE_KEYS:
    _pop_path(d, key)  # a section of resumable keys only goes too (runs from before it match)
  return d


def questions_per_round(prompts_per_round: int, selection_name: str, num_examples: int) -> int:
  """How many questions a round samples: prompts_per_round, at most the training set's size
  (1 question for example.selection=id, else example.num_examples, which training_examples
  returns exactly or refuses)."""
  return min(prompts_per_round, 1 if selection_name == "id" else num_examples)


def _round_questions(train_examples, round_index: int, seed: int, per_round: int):
  """The round's questions: all of them when they fit, else a seeded draw without replacement."""
  if per_round >= len(train_examples):
    return list(range(len(train_examples)))
  rng = np.random.default_rng([seed, round_index])
  return sorted(rng.choice(len(train_examples), per_round, replace=False).tolist())


def validate_config(config, resume_with: Sequence[str] = ()) -> None:
  """Every value range and cross-field constraint a run relies on, checked before any work.

  Raises ConfigError with one line per bad value: `--config.KEY=VALUE: what is allowed`.
  Keys a config lacks (a pipeline workdir's config.json from older code) are not checked.
  """
  bad = []

  def get(key):
    node = config
    for part in key.split("."):
      if part not in node:
        return _NO_DEFAULT
      node = node[part]
    return node

  def check(key, ok, allowed):
    value = get(key)
    if value is not _NO_DEFAULT and not ok(value):
      bad.append(f"--config.{key}={value!r}: {allowed}")

  def at_least(low, kind=int):
    name = "an integer" if kind is int else "a number"
    return (lambda v: isinstance(v, kind | int) and not isinstance(v, bool) and v >= low
            and math.isfinite(v)), f"must be {name} >= {low}"

  for key in ("rollout.num_samples", "rollout.prompts_per_round", "rollout.max_new_tokens",
              "rollout.prompt_bucket", "train.epochs", "train.mini_batches", "train.eval_every",
              "train.checkpoint_every", "eval.train_samples", "eval.batch_size",
              "example.num_examples", "example.candidates", "example.samples",
              "diagnostics.p_correct_window", "diagnostics.max_arms"):
    check(key, *at_least(1))
  for key in ("train.rounds", "train.logprob_chunk", "train.micro_batch_size",
              "train.completion_bucket", "train.texts_every", "model.attn_chunk",
              "model.lora.rank", "rollout.top_k", "eval.test_size", "eval.curve_test_size",
              "example.index", "optimizer.warmup_steps"):
    check(key, *at_least(0))
  for key in ("rollout.temperature", "eval.temperature", "optimizer.learning_rate",
              "optimizer.eps", "optimizer.weight_decay", "optimizer.clip_norm"):
    check(key, *at_least(0, float))
  check("rollout.top_p", lambda v: 0 < v <= 1, "must be a number in (0, 1]")
  for key in ("optimizer.b1", "optimizer.b2"):
    check(key, lambda v: 0 <= v < 1, "must be a number in [0, 1)")
  for axis in ("data", "fsdp", "tensor"):
    check(f"mesh.{axis}", lambda v: v == -1 or v >= 1, "must be -1 (the remaining devices) or >= 1")
  check("task.name", lambda v: v in TASKS, f"must be one of {', '.join(TASKS)}")
  check("model.compute_dtype", lambda v: v in ("", "float32", "bfloat16", "float16"),
        "must be empty (the loaded dtype), float32, bfloat16 or float16")
  from rft_jax.models.decoder import LORA_MODULES

  check("model.lora.modules", lambda v: isinstance(v, str) and bool(v.strip()) and all(
      m.strip() in LORA_MODULES for m in v.split(",")),
        f"must be a comma-separated list of the decoder's projections: {','.join(LORA_MODULES)}")
  check("model.lora.alpha", lambda v: isinstance(v, int | float) and v > 0 and math.isfinite(v),
        "must be a number > 0")
  if get("task.name") == "arithmetic":
    check("task.n_train", *at_least(1))
    check("task.n_test", *at_least(1))
    check("task.max_operand", *at_least(2))
  else:
    for key in ("task.train_path", "task.test_path"):
      check(key, lambda v: not v or os.path.isfile(v), "no such file")
  from rft_jax import rewards

  check("task.grader", lambda v: not v or v in rewards.GRADERS,
        f"must be empty (the task's own) or one of {', '.join(sorted(rewards.GRADERS))}")
  if get("task.template"):
    from rft_jax.data import prompts_text

    check("task.template", lambda v: v in prompts_text.TEMPLATES,
          f"must be empty or one of {', '.join(sorted(prompts_text.TEMPLATES))}")
  from rft_jax.models import fetch  # registered names ("smollm2") are fetched on first use

  check("model.checkpoint", lambda v: not v or os.path.exists(v) or v in fetch.MODELS,
        "no such directory (a Hugging Face model directory, a .gguf file or one of "
        f"{', '.join(fetch.MODELS)}; empty = the embedded default)")
  if not get("model.checkpoint"):
    check("task.name", lambda v: v == "arithmetic" or v not in TASKS,  # unknown: said above
          "the embedded model's warm start exists for the arithmetic task only; set "
          "--config.model.checkpoint to a Hugging Face model directory")
    for key in ("warm_start.corpus_size", "warm_start.batch_size", "warm_start.max_steps",
                "warm_start.eval_every", "warm_start.probe_size"):
      check(key, *at_least(1))
    check("warm_start.learning_rate", lambda v: v > 0 and math.isfinite(v), "must be a number > 0")
    check("warm_start.target_pass1", lambda v: 0 <= v <= 1, "must be a number in [0, 1]")
  selections = ("id", "index", *selection.BUCKETS)
  check("example.selection", lambda v: v in selections, f"must be one of {', '.join(selections)}")
  if get("example.selection") == "id":
    check("example.example_id", bool, "must name a training problem (example.selection=id)")
  # Rollouts per round: the round's questions x num_samples; the mini-batches split them.
  examples = 1 if get("example.selection") == "id" else get("example.num_examples")
  per_round, g, parts = (get(k) for k in ("rollout.prompts_per_round", "rollout.num_samples",
                                           "train.mini_batches"))
  if all(isinstance(v, int) and v >= 1 for v in (examples, per_round, g, parts)):
    questions = questions_per_round(per_round, get("example.selection"), examples)
    rows = questions * g
    check("train.mini_batches", lambda v: rows % v == 0,
          f"must divide the {rows} rollouts of a round ({questions} question(s) "
          f"x rollout.num_samples={g})")
    if rows % parts == 0:
      per_update = rows // parts
      check("train.micro_batch_size", lambda v: not isinstance(v, int) or v == 0 or (
          v >= per_update or per_update % v == 0), f"must be 0, at least, or divide the "
            f"{per_update} rollouts of an update ({rows} per round / train.mini_batches={parts})")
  if get("diagnostics.exact_arms"):
    for key, ok in (("rollout.temperature", lambda v: v > 0), ("rollout.top_k", lambda v: v == 0),
                    ("rollout.top_p", lambda v: v == 1.0)):
      check(key, ok, "diagnostics.exact_arms sums softmax(z / tau) over the arms: it needs "
            "rollout.temperature > 0 and no top-k / top-p truncation")
  if get("loss") is not _NO_DEFAULT:
    try:
      _loss_chain(config.loss.to_json())
    except (TypeError, ValueError) as e:
      bad.append(f"--config.loss: {e}")
    chain = [name.strip() for name in str(get("loss.chain")).split(",")]
    max_len = get("loss.seq_mean_token_sum_norm.max_len")
    if max_len is _NO_DEFAULT:  # a config holding the chain only: the factory's default
      max_len = losses.config.factory_defaults("seq_mean_token_sum_norm")["max_len"]
    check("train.completion_bucket", lambda v: not (
        v and "seq_mean_token_sum_norm" in chain and max_len <= 0),
          "must be 0 when the loss divides by the padded completion width "
          "(seq_mean_token_sum_norm with max_len <= 0); set "
          "--config.loss.seq_mean_token_sum_norm.max_len to rollout.max_new_tokens instead")
  for key in resume_with:
    if key not in RESUME_WITH_KEYS:
      bad.append(f"--resume_with={key}: must be one of {', '.join(RESUME_WITH_KEYS)} (settings a "
                 "checkpoint's state does not depend on)")
  if bad:
    raise errors.ConfigError("\n".join(bad))


def _check_task(config, task: Task) -> None:
  """A task without training or test problems (an empty file) stops before anything is written."""
  for split, path_key in (("train", "train_path"), ("test", "test_path")):
    if not getattr(task, split):
      path = config.task.get(path_key) or f"the default {task.name} {split} file"
      raise errors.ConfigError(f"{path}: no {split} problems in it (task {task.name}); give a "
                               f"file with at least one, --config.task.{path_key}=PATH")


def _divergence(loss: float, param_norm: float, limit: float) -> str | None:
  """What is wrong with a round's result, or None: a non-finite loss or parameters, or
  parameters blown up to EXPLODED_NORM x the base policy's norm."""
  if not math.isfinite(loss):
    return f"non-finite loss {loss}"
  if not math.isfinite(param_norm):
    return f"non-finite parameters (global norm {param_norm})"
  if param_norm > limit:
    return (f"exploded parameters (global norm {param_norm:.3g}, over {EXPLODED_NORM:g} x the "
            f"base policy's {limit / EXPLODED_NORM:.3g})")
  return None


def _diverged_message(problem: str, round_index: int, last_good: int | None, directory: str,
                      learning_rate: float) -> str:
  fix = (f"rerun the same command with a lower --config.optimizer.learning_rate (now "
         f"{learning_rate:g}) and --resume_with=optimizer.learning_rate")
  if last_good is None:
    where = (f"There is no checkpoint to go back to (none was saved before round "
             f"{round_index}): {fix} (keeps the base policy and difficulty table), or start over "
             "in a fresh --workdir")
  else:
    where = (f"The last good checkpoint is round {last_good} ({directory}/{last_good}); to go on "
             f"from it, {fix}")
  return f"diverged at round {round_index}: {problem}; stopped without saving. {where}"


def _collapse(row: dict, log_vocab: float, window: int, done: int) -> dict:
  """The collapse guard's flags for a round: the policy's entropy at the uniform value (it has
  turned to noise), or rollouts that stopped varying (entropy ~0) with no correct one in the
  last `window` rounds (nothing left to learn from)."""
  ent = row.get("entropy")
  out = {}
  if ent is None or not math.isfinite(ent):
    return out
  if ent >= UNIFORM_ENTROPY * log_vocab:
    out["collapse_uniform"] = 1.0
  if ent < STUCK_ENTROPY and done >= window and row.get("p_correct_window") == 0:
    out["collapse_stuck"] = 1.0
  return out


def _collapse_warning(kind: str, row: dict, log_vocab: float, window: int, done: int) -> str:
  if kind == "collapse_uniform":
    return (f"warning: round {done}: policy entropy {row['entropy']:.3f} nats per token is at "
            f"the uniform value ln V = {log_vocab:.3f}: the policy has collapsed to noise "
            "(learning rate too high?); metric collapse_uniform")
  return (f"warning: round {done}: the rollouts stopped varying (entropy {row['entropy']:.2g}) "
          f"and none was correct in the last {window} rounds: nothing left to learn from (an "
          "easier question, a higher temperature?); metric collapse_stuck")


def _stopped_before_the_rounds(signum: int) -> errors.RunInterrupted:
  return errors.RunInterrupted(f"stopped by {signal.Signals(signum).name} before the first "
                               "round of this process; run the same command to resume", signum)


class _Signals:
  """SIGINT / SIGTERM during a run (installed in the main thread only).

  During the rounds (`deferred`) the first signal lets the current round finish; the loop then
  saves a checkpoint and stops. Before them (warm start, base evaluation) it stops at once: each
  artifact there is written atomically, so nothing is lost. A second signal exits at once.
  """

  active: _Signals | None = None  # the run's, while it is running

  def __init__(self):
    self.signum: int | None = None
    self.deferred = False
    self._old: dict = {}

  def __enter__(self) -> _Signals:
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGINT, signal.SIGTERM):
        self._old[s] = signal.signal(s, self._handle)
      _Signals.active = self
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._old.items():
      signal.signal(s, handler)
    self._old = {}
    if _Signals.active is self:
      _Signals.active = None

  @staticmethod
  def raise_if_swallowed() -> None:
    """Raises RunInterrupted where a signal came before the rounds but its exception never
    arrived: some library code (math-verify's graders) catches every Exception. Called before
    a pre-round result is written, so that result is not one scored with the interruption."""
    stop = _Signals.active
    if stop is not None and stop.signum is not None and not stop.deferred:
      raise _stopped_before_the_rounds(stop.signum)

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    nl = "\n" if sys.stderr.isatty() else ""  # off a progress bar's line
    if self.signum is not None:
      sys.stderr.write(f"{nl}{name} again: exiting at once, without saving\n")
      sys.stderr.flush()
      os._exit(128 + signum)
    self.signum = signum
    if not self.deferred:
      raise _stopped_before_the_rounds(signum)
    sys.stderr.write(f"{nl}{name}: finishing the current round, then saving and stopping (send it "
                     "again to exit at once)\n")
    sys.stderr.flush()


def run(config, workdir: str, log=print, resume_with: Sequence[str] = ()) -> dict:
  """Runs (or resumes) one pipeline layer in `workdir`; returns and writes summary.json.

  Before anything is written: the config is validated (ConfigError), the task read (an empty
  train or test file stops here), the workdir locked (WorkdirInUseError) and its fingerprint
  checked against the stored run's (IncompatibleCheckpointError names each differing key).
  resume_with: keys of RESUME_WITH_KEYS that may differ from the stored run's (a diverged run
  going on with a lower learning rate); the change is recorded in the metrics row of the round
  resumed from. SIGINT / SIGTERM finish the round, save and raise RunInterrupted.
  """
  t0 = time.time()
  resume_with = tuple(resume_with)
  validate_config(config, resume_with)
  task = build_task(config.task)
  _check_task(config, task)
  main_process = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    stop = stack.enter_context(_Signals())
    lock = stack.enter_context(workdir_lib.Lock(workdir)) if main_process else None
    changes = workdir_lib.claim(workdir, fingerprint(config), fingerprint_defaults(),
                                resume_with, RESUME_WITH_KEYS, write=main_process)
    if lock is not None:
      lock.record()
    # The others' checkpoint check (in _run) reads the fingerprint process 0 has just written
    # (rewritten under --resume_with): not before it is there.
    distributed.barrier("claim")
    return _run(config, workdir, task, log, changes, stop, t0)


@dataclasses.dataclass(frozen=True)
class Loop:
  """What every round of a run reads and never changes (built once, by make_loop)."""

  config: Any
  workdir: str
  task: Task
  policy: Policy            # the base policy: tokenizer, decoder, pad / EOS ids, base params
  frozen: Any               # params not trained (LoRA: the base, models.lora.split), or None
  mesh: Any
  train_examples: list[Example]
  test_examples: list[Example]
  prompts: list[list[int]]  # the encoded training questions
  prompt_len: int
  transform: losses.LossTransform
  optimizer: optax.GradientTransformation
  ref_params: Any           # the reference policy of KL terms, or None
  arm_sets: list            # bandit.ArmSet per training question (diagnostics.exact_arms)
  norm_limit: float         # the divergence guard's parameter norm
  log_vocab: float
  base_info: dict           # where the base policy came from (summary.json)

  def full(self, params):
    """The forward's params from the trained ones (LoRA: the frozen base plus the adapters)."""
    return params if self.frozen is None else lora.combine(self.frozen, params)


@dataclasses.dataclass(frozen=True)
class Graded:
  """A round's rollouts graded: every row's result, the same on every process."""

  rewards: np.ndarray       # [B] float32
  lengths: np.ndarray       # [B] completion tokens (float32)
  truncated: np.ndarray     # [B] 1.0 where max_new_tokens ran out before an end token
  outcomes: dict[str, int]  # outcome name -> rollouts, summed over the processes
  rows: list[int] = dataclasses.field(default_factory=list)   # this process's rows ...
  texts: list[str] = dataclasses.field(default_factory=list)  # ... and their decoded texts


def make_loop(config, workdir: str, task: Task, mesh, log=print) -> Loop:
  """The base policy, the training questions and everything else the rounds share."""
  policy, base_info = warm_start.base_policy(config, task, workdir, mesh, log=log)
  policy, frozen = apply_model_options(config.model, policy, config.seed)
  train_examples = training_examples(config, task, policy, workdir, mesh, log=log)
  log("training question(s): " + "; ".join(f"{e.id}: {e.question!r} (answer {e.answer})"
                                           for e in train_examples))
  ro = config.rollout
  prompts = [policy.encode_prompt(task.prompt_text(e)) for e in train_examples]
  arm_sets = []
  if config.diagnostics.exact_arms:
    arm_sets = [bandit.ArmSet.build(policy, task, e, ro.max_new_tokens,
                                    config.diagnostics.max_arms) for e in train_examples]
    log(f"exact optimal-arm probability over {sum(a.num_arms for a in arm_sets):,} arms "
        f"({sum(a.num_optimal for a in arm_sets):,} optimal) of {len(arm_sets)} question(s)")
  return Loop(
      config=config, workdir=workdir, task=task, policy=policy, frozen=frozen, mesh=mesh,
      train_examples=train_examples,
      test_examples=list(task.test[:config.eval.test_size] if config.eval.test_size
                         else task.test),
      prompts=prompts, prompt_len=sampling.bucket_length(max(map(len, prompts)),
                                                         ro.prompt_bucket),
      transform=_loss_chain(config.loss.to_json()),
      optimizer=_optimizer(config.optimizer.to_json()),
      # A copy: train_step donates (frees) state.params. With LoRA the reference is the frozen
      # base (adapters off): no copy, never donated.
      ref_params=(None if not _uses_reference(config.loss.chain) else
                  frozen if frozen is not None else jax.tree.map(jnp.copy, policy.params)),
      arm_sets=arm_sets,
      # Divergence guard: parameters past EXPLODED_NORM x the base policy's norm are blown up.
      norm_limit=EXPLODED_NORM * float(optax.global_norm(policy.params)),
      log_vocab=math.log(policy.config.vocab_size),
      base_info={k: v for k, v in base_info.items() if k != "fingerprint"})


def initial_state(loop: Loop) -> TrainState:
  params = loop.policy.params
  trained = params if loop.frozen is None else lora.split(params)[1]
  state = TrainState(round=jnp.zeros((), jnp.int32), params=trained,
                     opt_state=init_optimizer(loop.optimizer, trained, loop.mesh),
                     loss_state=loop.transform.init())
  return sharding.on_mesh(state, loop.mesh)


def restore_phase(loop: Loop, ckpt: checkpoint_lib.Checkpointer, state: TrainState
                  ) -> tuple[TrainState, dict]:
  """The newest checkpoint's state on the current mesh (every process reads its shards) and
  its extra; (state, {}) when there is none. A checkpoint that cannot be read, or holds
  diverged parameters, stops with the way back named."""
  step = distributed.agree(ckpt.latest_step() if ckpt.latest_step() is not None else -1)
  if step < 0:
    return state, {}
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                        if isinstance(x, jax.Array) else x, state)
  try:
    state, extra = ckpt.restore(target, step)
  except errors.RunInterrupted:  # a SIGTERM during the restore, not a bad checkpoint
    raise
  except Exception as e:  # a corrupt or partly deleted step folder
    _Signals.raise_if_swallowed()  # or a SIGTERM that orbax's threads turned into another error
    raise errors.CheckpointReadError(
        f"checkpoint round {step} in {ckpt.directory} cannot be read ({type(e).__name__}: "
        f"{errors.short_reason(str(e))}); delete "
        f"{ckpt.directory}/{step} to resume from the one before it "
        f"({ckpt.all_steps()[:-1] or 'none'}), or start over in a fresh --workdir") from e
  problem = _divergence(0.0, float(optax.global_norm(state.params)), loop.norm_limit)
  if problem:  # written before the divergence guard existed
    raise errors.CheckpointReadError(
        f"checkpoint round {step} in {ckpt.directory} holds {problem}; delete that folder to "
        "resume from the one before it, or start over in a fresh --workdir")
  return state, extra


def rollout_phase(loop: Loop, params, round_index: int) -> tuple[list[int], sampling.Rollout]:
  """The round's questions and num_samples rollouts of each from `params`: global arrays split
  over the mesh's batch axes (rng = fold_in(seed, round): a resumed round samples the same)."""
  config, ro, policy = loop.config, loop.config.rollout, loop.policy
  questions = _round_questions(loop.train_examples, round_index, config.seed,
                               ro.prompts_per_round)
  p_tokens, p_mask = sampling.left_pad([loop.prompts[i] for i in questions], policy.pad_id,
                                       length=loop.prompt_len)
  p_tokens, p_mask = sharding.shard_batch((p_tokens, p_mask), loop.mesh)
  rollout = sampling.sample(policy.decoder, loop.full(params), p_tokens, p_mask,
                            jax.random.fold_in(jax.random.PRNGKey(config.seed), round_index),
                            max_new_tokens=ro.max_new_tokens, num_samples=ro.num_samples,
                            temperature=jnp.float32(ro.temperature), top_k=jnp.int32(ro.top_k),
                            top_p=jnp.float32(ro.top_p),
                            eos_ids=np.asarray(policy.eos_ids, np.int32), pad_id=policy.pad_id,
                            mesh=loop.mesh)
  return questions, rollout


def truncated_rows(tokens: np.ndarray, mask: np.ndarray, eos_ids) -> np.ndarray:
  """[B] 1.0 for the completions cut off by the length limit: every one of the N positions
  generated (mask [B, N] all ones) and the last token not an end token. A completion whose end
  token lands on the last position finished, so it is not cut."""
  full = np.asarray(mask).sum(-1) >= np.asarray(mask).shape[-1]
  return (full & ~np.isin(np.asarray(tokens)[:, -1], np.asarray(eos_ids))).astype(np.float32)


def grade_phase(loop: Loop, questions: list[int], rollout: sampling.Rollout) -> Graded:
  """Each process decodes and grades the rollouts its devices hold; the per-row results and
  the outcome counts are gathered, so every process has the whole round's."""
  g = loop.config.rollout.num_samples
  total = len(questions) * g
  rows, tokens = distributed.local_rows(rollout.tokens)
  _, mask = distributed.local_rows(rollout.mask)
  texts = [loop.policy.decode_completion(t, m) for t, m in zip(tokens, mask)]
  cut = truncated_rows(tokens, mask, loop.policy.eos_ids)
  rewards, outcomes = loop.task.grade_batch(
      texts, [loop.train_examples[questions[row // g]] for row in rows])
  return Graded(
      rewards=distributed.gather_rows(rows, np.asarray(rewards, np.float32), total),
      lengths=distributed.gather_rows(rows, mask.sum(-1), total),
      truncated=distributed.gather_rows(rows, cut, total),
      outcomes=distributed.sum_counts(outcomes, list(outcomes)),
      rows=[int(row) for row in rows], texts=texts)


def _texts_row(loop: Loop, questions: list[int], graded: Graded) -> dict:
  """A round's rollouts as rollouts.jsonl keeps them: row, question id, reward, text (this
  process's rows: all of them on one process)."""
  g = loop.config.rollout.num_samples
  return {"row": graded.rows,
          "question": [loop.train_examples[questions[row // g]].id for row in graded.rows],
          "reward": [float(graded.rewards[row]) for row in graded.rows], "text": graded.texts}


def train_phase(loop: Loop, state: TrainState, questions: list[int], rollout: sampling.Rollout,
                graded: Graded) -> tuple[TrainState, dict]:
  """train_step on the round's global batch (rewards, group ids from the graded rows); returns
  the new state and the round's metrics row (step metrics, reward, length, outcomes)."""
  config, mesh = loop.config, loop.mesh
  g = config.rollout.num_samples
  temperature = jnp.float32(config.rollout.temperature)
  rollout = _trim_completions(rollout, completion_width(
      graded.lengths, config.rollout.max_new_tokens, config.train.get("completion_bucket", 0)))
  ref_logp = None
  if loop.ref_params is not None:
    ref_logp = _reference_logp(loop.policy.decoder, loop.ref_params, rollout.prompt_tokens,
                               rollout.prompt_mask, rollout.tokens, rollout.mask, temperature,
                               chunk=config.train.logprob_chunk)
  loss_batch = losses.Batch(
      tokens=rollout.tokens, mask=rollout.mask, behaviour_logp=rollout.logp,
      rewards=sharding.shard_batch(graded.rewards, mesh),
      group_ids=sharding.shard_batch(np.repeat(np.arange(len(questions)), g).astype(np.int32),
                                     mesh),
      ref_logp=ref_logp,
      prompt_ids=sharding.shard_batch(np.repeat(np.asarray(questions, np.int32), g), mesh),
      sampler_logp=rollout.sampler_logp)
  batch = RolloutBatch(prompt_tokens=rollout.prompt_tokens, prompt_mask=rollout.prompt_mask,
                       loss=loss_batch)
  state, step_metrics = train_step(state, batch, temperature, loop.frozen,
                                   decoder=loop.policy.decoder, transform=loop.transform,
                                   optimizer=loop.optimizer, epochs=config.train.epochs,
                                   mini_batches=config.train.mini_batches,
                                   logprob_chunk=config.train.logprob_chunk,
                                   micro_batch_size=config.train.get("micro_batch_size", 0))
  row = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  row.update(reward=float(np.mean(graded.rewards)), length=float(graded.lengths.mean()),
             truncated=float(graded.truncated.mean()),
             **{f"outcome_{k}": v for k, v in graded.outcomes.items()})
  return state, row


def evaluate_phase(loop: Loop, params, round_index: int, *, all_questions: bool = True,
                   known_test: dict | None = None) -> dict:
  """Training and test Pass@1 (and greedy accuracy) of `params`, the samples split over the
  processes and their rewards gathered; every sample's reward goes to evals/round_<r>.json
  (process 0). Evaluations between the base and the last round (all_questions=False) may use
  the first eval.curve_test_size test questions only (a curve), and without greedy accuracy
  unless eval.curve_greedy; the base and final ones all of test_size (the layer comparison).
  known_test: these params' test rewards (evaluation.TEST_KEYS) from an earlier identical
  evaluation (base_eval_phase), so only the training question is sampled; the rng split makes
  that the same as sampling both. The exact optimal-arm probability is separate
  (exact_arms_phase)."""
  config = loop.config
  examples = (loop.test_examples if all_questions else
              loop.test_examples[:config.eval.curve_test_size or len(loop.test_examples)])
  rewards = evaluation.evaluation_rewards(
      loop.policy.replace(params=loop.full(params)), loop.task, loop.train_examples,
      [] if known_test else examples,
      jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), round_index),
      train_samples=config.eval.train_samples, temperature=config.eval.temperature,
      greedy=config.eval.greedy and (all_questions or config.eval.get("curve_greedy", True)),
      **_gen_kwargs(config, loop.mesh))
  rewards.update(known_test or {})
  _Signals.raise_if_swallowed()
  if distributed.is_main():
    evaluation.save_rewards(os.path.join(loop.workdir, EVALS_DIR), round_index, rewards,
                            [e.id for e in loop.train_examples], [e.id for e in examples])
  return evaluation.summarize(rewards)


def exact_arms_phase(loop: Loop, params) -> dict:
  """Bandit diagnostics: the exact probability of the optimal arm set (diagnostics.exact_arms)."""
  if not loop.arm_sets:
    return {}
  return bandit.optimal_arm_probability(loop.arm_sets, loop.policy.decoder, loop.full(params),
                                        loop.config.rollout.temperature)


def checkpoint_phase(loop: Loop, ckpt: checkpoint_lib.Checkpointer, state: TrainState,
                     done: int, stop: _Signals, wall_s: float) -> bool:
  """Saves round `done` when it is due, or when any process was signalled (every process saves
  its shards); returns whether the run stops here."""
  train_cfg = loop.config.train
  stopping = distributed.any_process(stop.signum is not None)
  if done % train_cfg.checkpoint_every == 0 or done == train_cfg.rounds or stopping:
    ckpt.save(done, state, extra={"round": done, "wall_s": wall_s})
  return stopping


# Bumped by hand when the evaluation or grading code changes what a stored base evaluation
# would hold (sampling.DRAWS names the sampler's draw scheme separately).
BASE_TEST_VERSION = 1


def base_test_key(config, grader_revision: int | None = None) -> dict:
  """What the base policy's test rewards depend on: the base (warm_start.base_fingerprint, the
  whole model section: dtype and LoRA options too), the task and test set, the evaluation rng
  (seed), every sampling setting, the devices the batches split over (the mesh's data=-1 and the
  batch rounding follow them), the sampler's draw scheme (sampling.DRAWS), the
  grader's revision (grader_revision_key) and BASE_TEST_VERSION. Not the loss, optimizer, training question or rollouts per round, so every
  layer of one seed has the same key."""
  ev, ro = config.eval, config.rollout
  return {"version": BASE_TEST_VERSION, "draws": sampling.DRAWS,
          "base": warm_start.base_fingerprint(config), "model": config.model.to_dict(),
          "seed": config.seed, "test_size": ev.test_size,
          "eval": {k: ev[k] for k in ("temperature", "greedy", "batch_size")},
          "rollout": {k: ro[k] for k in ("max_new_tokens", "top_k", "top_p", "prompt_bucket")},
          "mesh": config.mesh.to_dict(),
          "runtime": {"backend": jax.default_backend(), "devices": jax.device_count(),
                      "processes": jax.process_count()},
          **grader_revision_key(config.task, grader_revision)}


def base_test_path(config, grader_revision: int | None = None) -> str:
  """<eval.shared_base>/<hash of base_test_key>.json, or '' when eval.shared_base is unset."""
  if not config.eval.get("shared_base"):
    return ""
  key = json.dumps(base_test_key(config, grader_revision), sort_keys=True)
  return os.path.join(config.eval.shared_base,
                      hashlib.sha256(key.encode()).hexdigest()[:12] + ".json")


def _shared_base_test(loop: Loop, path: str) -> dict | None:
  """The base's test rewards another run stored at `path`, or None (no file yet). A file of
  another key or other test questions is an error: its name says it holds these."""
  if not distributed.agree(os.path.exists(path)):
    return None
  try:
    with open(path) as f:
      stored = json.load(f)
  except ValueError as e:  # written atomically, so only a damaged or hand-edited file
    raise errors.CheckpointReadError(
        f"{path} cannot be read ({e}); delete it (the next run samples it again)") from e
  key = json.loads(json.dumps(base_test_key(loop.config)))
  ids = [e.id for e in loop.test_examples]
  if stored.get("key") != key or stored.get("test_ids") != ids:
    raise errors.CheckpointReadError(
        f"{path} holds the base evaluation of other settings or test questions than this run's; "
        "delete it (the next run samples it again) or unset --config.eval.shared_base")
  return {k: np.asarray(stored[k], np.float64) for k in evaluation.TEST_KEYS if k in stored}


def _share_base_test(loop: Loop, path: str) -> None:
  """Copies this run's base test rewards (evals/round_000000.json) to `path` (process 0)."""
  if not distributed.is_main():
    return
  rewards = evaluation.load_rewards(evaluation.rewards_path(os.path.join(loop.workdir,
                                                                        EVALS_DIR), 0))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fileio.write_json_atomic(path, {
      "key": base_test_key(loop.config), "test_ids": rewards["test_ids"],
      **{k: rewards[k].tolist() for k in evaluation.TEST_KEYS if k in rewards}})


def base_eval_phase(loop: Loop, params, workdir: str, writer, fresh: bool, log=print) -> dict:
  """The base policy's evaluation (row 0 of metrics.jsonl), stored in base_eval.json: made on a
  fresh run, else read back. With eval.shared_base the test rewards come from the first run of
  the same key (base_test_path) and only the training question is sampled. A resumed run whose
  base_eval.json is gone rebuilds it from its evals/round_000000.json (`params` are trained
  by then: they are not the base)."""
  path = os.path.join(workdir, "base_eval.json")
  if fresh:
    shared = base_test_path(loop.config)
    known = _shared_base_test(loop, shared) if shared else None
    if known:
      log(f"base test rewards from {shared} (the same evaluation in another run)")
    base = {**evaluate_phase(loop, params, 0, known_test=known),
            **exact_arms_phase(loop, params)}
    if shared and not known:
      _share_base_test(loop, shared)
  elif not distributed.agree(os.path.exists(path)):
    rewards = evaluation.rewards_path(os.path.join(workdir, EVALS_DIR), 0)
    if not distributed.agree(os.path.exists(rewards)):
      raise errors.CheckpointReadError(
          f"{path} and {rewards} are both missing: the resumed run's base evaluation cannot be "
          "remade from its trained state; start over in a fresh --workdir")
    base = evaluation.summarize(evaluation.load_rewards(rewards))
    log(f"base evaluation rebuilt from {rewards} (without the exact optimal-arm probability)")
  else:
    with open(path) as f:
      return json.load(f)
  if distributed.is_main():
    fileio.write_json_atomic(path, base)
  if fresh:
    writer.write(0, base)
  return json.loads(json.dumps(base))  # as read back from the file: the same floats


def _run(config, workdir: str, task: Task, log, changes: dict, stop: _Signals, t0: float) -> dict:
  """The rounds: rollout -> grade -> train step -> (evaluate) -> metrics -> (checkpoint)."""
  mesh = sharding.build_mesh(**config.mesh)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     fingerprint=fingerprint(config),
                                     defaults=fingerprint_defaults())
  loop = make_loop(config, workdir, task, mesh, log)
  state, extra = restore_phase(loop, ckpt, initial_state(loop))
  start, wall_before = int(state.round), float(extra.get("wall_s", 0.0))
  if start:
    log(f"resumed from round {start} in {workdir}")
  writer = metrics_lib.MetricWriter(workdir, resume_step=start if start else -1)
  texts_every = config.train.get("texts_every", 0)
  texts = metrics_lib.MetricWriter(workdir, resume_step=start if start else -1,
                                   name=ROLLOUTS_FILE, tensorboard=False) if texts_every else None
  # Bandit diagnostics: p(correct | training questions) from each round's rollouts (that round,
  # and the last `p_correct_window` rounds pooled).
  diag = config.diagnostics
  correct_rate = bandit.CorrectRate(diag.p_correct_window)
  if start:  # the resumed window goes on where the checkpointed run left it
    correct_rate.resume(metrics_lib.read_metrics(workdir), start)
  base = base_eval_phase(loop, state.params, workdir, writer, fresh=start == 0, log=log)
  _Signals.raise_if_swallowed()
  stop.deferred = True  # from here on a signal lets the round finish and saves it
  log(f"base: training Pass@1 {base['train_pass1']:.3f}, test Pass@1 {base['test_pass1']:.3f}")
  if changes:  # --resume_with: recorded on the row of the round the run goes on from
    said = "; ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in changes.items())
    log(f"resumed with {said}")
    writer.annotate(start, {"resumed_with": said, **{
        k: b for k, (_, b) in changes.items() if isinstance(b, int | float)}})

  rounds = config.train.rounds
  last_eval = dict(base) if start == 0 else {}
  warned = set()
  bar = metrics_lib.progress(rounds, initial=start, desc="rounds")
  try:
    for r in range(start, rounds):
      done = r + 1
      questions, rollout = rollout_phase(loop, state.params, r)
      graded = grade_phase(loop, questions, rollout)
      state, row = train_phase(loop, state, questions, rollout, graded)
      # Sampled from the policy before this round's update; p_optimal_arms and evaluations in
      # the same row are of the policy after it.
      row.update(correct_rate.update(graded.rewards))
      # Checked before anything of this round is saved: no checkpoint ever holds such a state.
      problem = _divergence(row["loss"], row["param_norm"], loop.norm_limit)
      if problem:
        writer.write(done, row)
        raise errors.DivergedError(_diverged_message(
            problem, done, ckpt.latest_step(), ckpt.directory, config.optimizer.learning_rate))
      flags = _collapse(row, loop.log_vocab, diag.p_correct_window, done)
      row.update(flags)
      for kind in flags.keys() - warned:
        warned.add(kind)
        log(_collapse_warning(kind, row, loop.log_vocab, diag.p_correct_window, done))
      row.update(exact_arms_phase(loop, state.params))
      if done % config.train.eval_every == 0 or done == rounds:
        last_eval = evaluate_phase(loop, state.params, done, all_questions=done == rounds)
        row.update(last_eval)
        bar.set_postfix(train=f"{last_eval['train_pass1']:.2f}",
                        test=f"{last_eval['test_pass1']:.2f}")
      writer.write(done, row)
      if texts is not None and (done == 1 or done % texts_every == 0 or done == rounds):
        texts.write(done, _texts_row(loop, questions, graded))
      stopping = checkpoint_phase(loop, ckpt, state, done, stop,
                                  wall_s=wall_before + time.time() - t0)
      bar.update(1)
      if stopping:
        raise errors.RunInterrupted(f"stopped at round {done}; run the same command to resume",
                                    stop.signum or signal.SIGTERM)
  finally:
    stop.deferred = False
    bar.close()
    writer.close()
    if texts is not None:
      texts.close()
    ckpt.close()

  if not last_eval or "train_pass1" not in last_eval:  # resumed after the final round
    last_eval = evaluate_phase(loop, state.params, int(state.round))
  summary = {
      "base_train_pass1": base["train_pass1"], "base_test_pass1": base["test_pass1"],
      "final_train_pass1": last_eval["train_pass1"], "final_test_pass1": last_eval["test_pass1"],
      "base_test_greedy": base.get("test_greedy"), "final_test_greedy": last_eval.get(
          "test_greedy"),
      # Summed over the run's sessions (each one's time up to its last checkpoint).
      "rounds": int(state.round), "wall_s": wall_before + time.time() - t0,
      "training_questions": [e.id for e in loop.train_examples],
      "base_policy": loop.base_info,
  }
  if distributed.is_main():
    fileio.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  return summary
