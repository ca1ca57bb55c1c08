"""Compilations: the sampler and the train step compile once per shape bucket, never per round.

Rewards, temperatures, top-k / top-p and prompt lengths change from round to round; all of them
are array arguments (or padded to a bucket), so only a new shape bucket may compile. Counted with
jax.monitoring's backend-compile events (one per XLA compilation, named after the jitted
function). Not with `_cache_size()`: that counts C++ dispatch-cache entries, and a call whose
inputs are laid out differently (the params a train step returns vs the ones placed on the mesh
before it) adds an entry that reuses the same executable.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from rft_jax import losses, metrics, sampling, train
from rft_jax.models import Decoder, ModelConfig, init_params

# A shape no other test uses, so the first round must compile (and the count is exact).
CONFIG = ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8,
                     d_ff=32)
EOS, PAD, BUCKET, G = 3, 0, 8, 3


@pytest.fixture(autouse=True)
def fresh_compilation_cache():
  """Each test counts its own compilations: an earlier test of the session (another run of the
  same runlocal config) may have compiled the same shapes, which would then not compile here."""
  jax.clear_caches()


def counts(names) -> tuple[int, int]:
  c = collections.Counter(names)
  return c["jit(sample)"], c["jit(train_step)"]


def one_round(state, prompts, r, *, decoder, transform, optimizer, rng):
  """Sample G rollouts of each prompt, grade at random, one train step; returns the state."""
  tokens, mask = sampling.left_pad(prompts, PAD, bucket=BUCKET)
  temperature = jnp.float32(0.6 + 0.2 * r)  # a new value every round
  rollout = sampling.sample(decoder, state.params, tokens, mask, jax.random.PRNGKey(r),
                            max_new_tokens=6, num_samples=G, temperature=temperature,
                            top_k=jnp.int32(r % 3), top_p=jnp.float32(1.0 - 0.1 * r),
                            eos_ids=np.array([EOS], np.int32), pad_id=PAD)
  rows = len(prompts) * G
  batch = train.RolloutBatch(
      prompt_tokens=rollout.prompt_tokens, prompt_mask=rollout.prompt_mask,
      loss=losses.Batch(tokens=rollout.tokens, mask=rollout.mask, behaviour_logp=rollout.logp,
                        rewards=jnp.asarray(rng.integers(0, 2, rows), jnp.float32),
                        group_ids=jnp.repeat(jnp.arange(len(prompts), dtype=jnp.int32), G),
                        ref_logp=rollout.logp + 0.01 * r))
  state, step_metrics = train.train_step(state, batch, temperature, decoder=decoder,
                                         transform=transform, optimizer=optimizer)
  assert np.isfinite(float(step_metrics["loss"]))
  return state


def test_rounds_compile_once_per_shape_bucket():
  decoder = Decoder(CONFIG)
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  transform = losses.from_config(losses.recipe_config("grpo"))
  optimizer = optax.adamw(1e-3)
  state = train.TrainState(round=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params), loss_state=transform.init())
  rng = np.random.default_rng(0)
  kw = dict(decoder=decoder, transform=transform, optimizer=optimizer, rng=rng)
  after = []
  with metrics.compile_log() as names:
    for r in range(5):  # prompts of 2 to 8 tokens: one bucket of 8
      prompts = [rng.integers(4, CONFIG.vocab_size, n).tolist() for n in rng.integers(2, 9, 2)]
      state = one_round(state, prompts, r, **kw)
      after.append(counts(names))
    assert after[0] == (1, 1), f"the first round compiles each function once: {names}"
    assert after == [(1, 1)] * 5, f"a later round compiled again: {after}"

    # A 9-token prompt is a new bucket (16): the sampler compiles once for it, the train step
    # once for its [B, 16] prompts; back in the first bucket nothing compiles.
    long = [rng.integers(4, CONFIG.vocab_size, 9).tolist(), [5, 6]]
    state = one_round(state, long, 5, **kw)
    state = one_round(state, long[::-1], 6, **kw)
    assert counts(names) == (2, 2), names
    one_round(state, [[5, 6, 7], [8]], 7, **kw)
    assert counts(names) == (2, 2), names


class Marked:
  """A jitted function that appends ("called", name) to `log` after each call."""

  def __init__(self, name, fn, log):
    self.name, self.fn, self.log = name, fn, log

  def __call__(self, *args, **kwargs):
    out = self.fn(*args, **kwargs)
    self.log.append(("called", self.name))
    return out

  def __getattr__(self, name):
    return getattr(self.fn, name)


@pytest.mark.slow
def test_train_run_compiles_nothing_after_the_first_round(tmp_path, monkeypatch):
  """train.run, 5 rounds with evaluations every 2: compilations happen before the loop (warm
  start, base evaluation) and in its first round; rounds 2 to 5 and their evaluations reuse
  them."""
  c = common.base_config("runlocal")
  c.train.update(rounds=5, eval_every=2, checkpoint_every=5)
  c.eval.update(test_size=8, batch_size=8, train_samples=1)
  c.warm_start.dir = str(tmp_path / "base")
  with metrics.compile_log() as names:
    log = _Timeline(names)
    monkeypatch.setattr(sampling, "sample", Marked("sample", sampling.sample, log))
    monkeypatch.setattr(train, "train_step", Marked("train_step", train.train_step, log))
    summary = train.run(c, str(tmp_path / "run"), log=lambda *_: None)
  assert summary["rounds"] == 5
  events = log.events()
  steps = [i for i, e in enumerate(events) if e == ("called", "train_step")]
  assert len(steps) == 5
  assert ("compiled", "jit(train_step)") in events[:steps[0]]
  late = [(i, e) for i, e in enumerate(events)
          if e[0] == "compiled" and e[1] in ("jit(sample)", "jit(train_step)") and i > steps[0]]
  assert not late, f"compiled after the first round's train step: {late} of {events}"


class _Timeline(list):
  """Call markers, merged in order with the compile log's names as ("compiled", name)."""

  def __init__(self, names):
    super().__init__()
    self.names = names

  def append(self, item):
    self.extend(("compiled", n) for n in self.names[self._seen():])
    super().append(item)

  def _seen(self) -> int:
    return sum(1 for e in self if e[0] == "compiled")

  def events(self) -> list:
    self.extend(("compiled", n) for n in self.names[self._seen():])
    return list(self)
