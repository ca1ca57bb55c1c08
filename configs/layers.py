"""The pipeline's layers: name -> (config module, parent layer, the fields it changes).

Each layer's config file builds its parent's config and changes only the fields declared here
(tests/test_layers.py checks it, for the default argument and for every listed variant). A
layer's own arguments are declared in its module as `ARGS`; the rest of the argument string goes
to the parent, so `l3_negative_reward.py:neg=m10,g=4,runlocal` hands `g=4` to L1 and `runlocal`
to configs/common.py.

Lineage (why these parents: see each file's docstring):

  l0 ─ l1 ─┬─ l2 ─┬─ kl, entropy, aggregation, history, baseline_only, lora
           │      ├─ offpolicy ─ clip_higher
           │      └─ trainset ─ batch
           ├─ l3   (an affine reward map is invisible under L2's (R - mean) / std)
           ├─ l4
           └─ l5
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from types import ModuleType

import ml_collections


@dataclasses.dataclass(frozen=True)
class Layer:
  name: str
  module: str                   # importable module (repository root on sys.path)
  parent: str | None
  changes: tuple[str, ...]      # dotted fields that differ from the parent, default argument
  # Other arguments worth running (the paper's sweeps) -> the fields each one changes.
  variants: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  def load(self) -> ModuleType:
    return importlib.import_module(self.module)

  def get_config(self, arg: str | None = None) -> ml_collections.ConfigDict:
    return self.load().get_config(arg)

  @property
  def args(self) -> dict:
    return dict(getattr(self.load(), "ARGS", {}))

  @property
  def title(self) -> str:
    """The config file's docstring up to its first sentence's end."""
    para = " ".join((self.load().__doc__ or self.name).strip().split("\n\n")[0].split())
    return para.split(". ")[0].rstrip(".")


_CHAIN = ("loss.chain",)

LAYERS: dict[str, Layer] = {layer.name: layer for layer in [
    # paper_exact: L0's objective as verl computes it (the paper ran verl); compared with the
    # default argument, not with a parent.
    Layer("l0", "configs.l0_minimal", None, (),
          {"paper_exact": _CHAIN + ("loss.group_mean.singleton", "loss.group_std.singleton_std",
                                    "loss.dual_clip.log_ratio_clamp", "loss.kl_loss.clamp",
                                    "loss.kl_loss.log_ratio_clamp")}),
    Layer("l1", "configs.l1_rollouts", "l0", ("rollout.num_samples",),
          {"g=4": ("rollout.num_samples",), "g=16": ("rollout.num_samples",)}),
    Layer("l2", "configs.l2_advantage", "l1", _CHAIN),
    Layer("l3", "configs.l3_negative_reward", "l1",
          _CHAIN + ("loss.affine_reward.scale", "loss.affine_reward.shift"),
          {"neg=m10": _CHAIN + ("loss.affine_reward.shift",)}),
    Layer("l4", "configs.l4_difficulty", "l1", ("example.selection",),
          {f"bucket={b}": ("example.selection",) for b in ("easy", "hard")}
          | {"bucket=medium": ()}),  # medium is L0's own bucket: L4 then equals L1
    Layer("l5", "configs.l5_base_model", "l1", ("warm_start.seed",),
          {"checkpoint=/path/to/hf_model": ("model.checkpoint",)}),
    # Beyond the paper: the choices its companion paper and the literature argue about.
    Layer("trainset", "configs.beyond_trainset", "l2",
          ("example.num_examples", "example.candidates"),
          {"n=4": ("example.num_examples",)}),
    Layer("batch", "configs.beyond_batch", "trainset", ("rollout.prompts_per_round",)),
    Layer("kl", "configs.beyond_kl", "l2", _CHAIN,
          {"coef=0.04": _CHAIN + ("loss.kl_loss.coef",),
           "estimator=k1": _CHAIN + ("loss.kl_loss.estimator",)}),
    Layer("entropy", "configs.beyond_entropy", "l2", _CHAIN,
          {"coef=0.01": _CHAIN + ("loss.entropy_bonus.coef",)}),
    Layer("aggregation", "configs.beyond_aggregation", "l2", _CHAIN,
          {"agg=seq_mean_token_sum_norm": _CHAIN}),
    Layer("offpolicy", "configs.beyond_offpolicy", "l2", ("train.epochs", "train.mini_batches"),
          {"epochs=1,mb=4": ("train.mini_batches",)}),
    Layer("clip_higher", "configs.beyond_clip_higher", "offpolicy",
          ("loss.clipped_ratio.eps_high",)),
    Layer("history", "configs.beyond_history", "l2", _CHAIN,
          {"window=32": _CHAIN + ("loss.history_baseline.window",)}),
    Layer("baseline_only", "configs.beyond_baseline_only", "l2", _CHAIN,
          {"grad=2": _CHAIN + ("loss.baseline_only.num_grad",)}),
    Layer("lora", "configs.beyond_lora", "l2", ("model.lora.rank",),
          {"rank=1": ("model.lora.rank",), "rank=64": ("model.lora.rank",)}),
]}

# Named layer lists for the runner (rft_jax.pipeline --layers=paper).
PRESETS = {
    "quick": ["l0", "l1", "l2", "l3", "l4"],
    "paper": ["l0", "l1:g=4", "l1", "l1:g=16", "l2", "l3", "l3:neg=m10", "l4:bucket=easy",
              "l4:bucket=hard", "l4", "l5"],
    # Issue 13's layers on a real LLM (run with --base=smollm2): L5's other base is the
    # embedded default's own pipeline (experiments/bottom_up), not a layer of this one. L0-L3
    # train on a 'hard' question (configs/smollm2.py), so L4 is hard (= L1) against medium and
    # extremely hard; no question is easy for SmolLM2-135M (experiments/smollm2/README.md).
    "smollm2": ["l0", "l1:g=4", "l1", "l1:g=16", "l2", "l3", "l3:neg=m10", "l4:bucket=medium",
                "l4:bucket=extremely_hard"],
    "beyond": ["l2", "trainset", "batch", "kl", "entropy", "aggregation",
               "aggregation:agg=seq_mean_token_sum_norm", "offpolicy", "clip_higher",
               "history", "baseline_only", "lora:rank=1", "lora", "lora:rank=64"],
}


def before_aggregation(chain: str, transform: str) -> str:
  """'a,b,token_mean' + 'kl_loss' -> 'a,b,kl_loss,token_mean': a chain ends with its aggregation,
  and a per-token regularizer goes right before it."""
  head, _, aggregation = chain.rpartition(",")
  return f"{head},{transform},{aggregation}"


def split_arg(arg: str | None, own: Mapping) -> tuple[ml_collections.ConfigDict, str]:
  """'neg=m10,g=4,runlocal' with own={'neg': 'pm1'} -> (ConfigDict(neg='m10'), 'g=4,runlocal').

  Values take the type of their default (bool: a bare word or 1/true/yes); words that are not
  this layer's go, in order, to the parent's get_config.
  """
  out, rest = dict(own), []
  for word in filter(None, (arg or "").split(",")):
    key, _, value = word.partition("=")
    if key not in own:
      rest.append(word)
      continue
    kind = type(own[key])
    if kind is bool:
      out[key] = not value or value.lower() in ("1", "true", "yes")
    else:
      out[key] = kind(value)
  return ml_collections.ConfigDict(out), ",".join(rest)


def get(name: str) -> Layer:
  if name not in LAYERS:
    raise ValueError(f"unknown layer {name!r}; known: {', '.join(LAYERS)}")
  return LAYERS[name]


def parent_arg(name: str, arg: str | None) -> str:
  """The argument a layer hands its parent (its own words removed)."""
  return split_arg(arg, get(name).args)[1]


def lineage(name: str) -> list[str]:
  """['l0', 'l1', 'l2'] for 'l2': the layer and its ancestors, root first."""
  out = []
  while name is not None:
    out.append(name)
    name = get(name).parent
  return out[::-1]
