"""One RL train step: rft_jax's jitted `train.train_step` against an eager PyTorch step.

    python benchmarks/train_step.py [--steps 3] [--reps 3] [--threads 2]

The model of benchmarks/sampler.py (Qwen2-shaped, 4 layers, hidden 512, vocab 32k, tied; the
same random weights, written through rft_jax's HF export and loaded by both). A batch of 16
rollouts (4 prompts x G = 4) of 64 prompt + 128 completion tokens, completion lengths 64 to 128,
{0, 1} rewards, behaviour and reference log-probs near the policy's (so the clip and the KL both
act). One step = forward, the loss chain of `recipe_config("grpo")`, backward, AdamW:

    A_i  = (R_i - mean_g R) / (std_g R + 1e-6)              std unbiased (torch.std)
    r_t  = exp(logp_t - logp_old_t)
    l_t  = -min(r_t A_i, clip(r_t, 0.8, 1.2) A_i) + beta (exp(ref_t - logp_t) - 1 - (ref_t - logp_t))
    L    = (1/N) sum_i (1/|o_i|) sum_t l_t                  beta = 0.04 (the recipe's kl_loss coef)

The PyTorch side writes that loss directly in torch on transformers' Qwen2ForCausalLM (logits of
the completion positions only, `logits_to_keep`), with the per-token entropy as a detached metric
as rft_jax's step reports it, and torch.optim.AdamW (same betas, eps, lr, no weight decay).
The losses and gradient norms of the first two steps are compared (the second after one AdamW
update on each side); then the two sides run alternately, `--reps` rounds of `--steps` steps,
and the best ms/step of each is kept.
"""

from __future__ import annotations

import argparse
import time

import bench_model
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from rft_jax import logprobs, losses, train

PROMPT, COMPLETION, PROMPTS, GROUP = 64, 128, 4, 4
LR, B1, B2, EPS = 1e-6, 0.9, 0.999, 1e-8  # a small step: the random model is very peaked


def make_batch(policy, seed: int = 0) -> dict[str, np.ndarray]:
  """Rollout arrays (numpy) shared by both sides."""
  rng = np.random.default_rng(seed)
  rows = PROMPTS * GROUP
  prompt = np.repeat(bench_model.random_prompts(PROMPTS, PROMPT, seed), GROUP, axis=0)
  completion = rng.integers(3, bench_model.VOCAB, (rows, COMPLETION)).astype(np.int32)
  lengths = rng.integers(COMPLETION // 2, COMPLETION + 1, rows)
  mask = (np.arange(COMPLETION)[None, :] < lengths[:, None]).astype(np.float32)
  completion = np.where(mask > 0, completion, bench_model.PAD).astype(np.int32)
  rewards = rng.integers(0, 2, rows).astype(np.float32)
  rewards[:GROUP] = [1, 0, 0, 1]  # at least one group with a learning signal
  logp = np.asarray(logprobs.completion_logprobs(
      policy.decoder, policy.params, jnp.asarray(prompt), jnp.ones(prompt.shape, bool),
      jnp.asarray(completion), jnp.asarray(mask), 1.0))
  # Old and reference policies a little away from the current one: ratios of about exp(+-0.3),
  # so the clip at 0.2 binds on some tokens and the KL term is not zero.
  behaviour = (logp + 0.3 * rng.standard_normal(logp.shape)).astype(np.float32) * mask
  reference = (logp + 0.1 * rng.standard_normal(logp.shape)).astype(np.float32) * mask
  return dict(prompt=prompt, completion=completion, mask=mask, rewards=rewards,
              group_ids=np.repeat(np.arange(PROMPTS), GROUP).astype(np.int32),
              behaviour=behaviour, reference=reference)


# -- rft_jax ---------------------------------------------------------------------------------


class JaxStep:
  def __init__(self, policy, arrays):
    config = losses.recipe_config("grpo")
    self.kl_coef = config["kl_loss"]["coef"]
    self.transform = losses.from_config(config)
    self.optimizer = optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=0.0)
    self.decoder = policy.decoder
    a = {k: jnp.asarray(v) for k, v in arrays.items()}
    self.batch = train.RolloutBatch(
        prompt_tokens=a["prompt"], prompt_mask=jnp.ones(a["prompt"].shape, bool),
        loss=losses.Batch(tokens=a["completion"], mask=a["mask"], behaviour_logp=a["behaviour"],
                          rewards=a["rewards"], group_ids=a["group_ids"],
                          ref_logp=a["reference"]))
    # The state is donated to each step: a fresh copy of the params, so `policy` stays valid.
    params = jax.tree.map(jnp.copy, policy.params)
    self.state = train.TrainState(round=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=self.optimizer.init(params),
                                  loss_state=self.transform.init())

  def __call__(self) -> tuple[float, float]:
    self.state, metrics = train.train_step(self.state, self.batch, jnp.float32(1.0),
                                           decoder=self.decoder, transform=self.transform,
                                           optimizer=self.optimizer)
    m = jax.device_get(metrics)
    return float(m["loss"]), float(m["grad_norm"])


# -- PyTorch eager ---------------------------------------------------------------------------


class TorchStep:
  def __init__(self, model, arrays, kl_coef: float, eps_clip: float = 0.2):
    self.model = model.train()
    self.kl_coef, self.eps_clip = kl_coef, eps_clip
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    self.input_ids = torch.cat([t["prompt"], t["completion"]], dim=1).long()
    self.attention_mask = torch.cat([torch.ones_like(t["prompt"]), t["mask"].long()], dim=1)
    self.completion, self.mask = t["completion"].long(), t["mask"]
    self.rewards, self.group_ids = t["rewards"], t["group_ids"]
    self.behaviour, self.reference = t["behaviour"], t["reference"]
    self.optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS,
                                       weight_decay=0.0)

  def advantages(self) -> torch.Tensor:
    r, ids = self.rewards, self.group_ids
    adv = torch.empty_like(r)
    for g in torch.unique(ids):
      rows = ids == g
      adv[rows] = (r[rows] - r[rows].mean()) / (r[rows].std() + 1e-6)
    return adv

  def loss(self) -> tuple[torch.Tensor, torch.Tensor]:
    n = self.completion.shape[1]
    # Logits of the slots that predict the completion: the last N + 1, the final one unused.
    logits = self.model(input_ids=self.input_ids, attention_mask=self.attention_mask,
                        logits_to_keep=n + 1).logits[:, :-1].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, self.completion[..., None])[..., 0]
    mask = self.mask
    with torch.no_grad():  # the entropy metric rft_jax's step reports
      entropy = -(logp_all.exp() * logp_all).sum(-1)
      entropy = (entropy * mask).sum() / mask.sum().clamp(min=1.0)
    adv = self.advantages()[:, None]
    ratio = torch.exp(torch.where(mask > 0, logp - self.behaviour, 0.0))
    clipped = torch.clamp(ratio, 1.0 - self.eps_clip, 1.0 + self.eps_clip)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    d = torch.where(mask > 0, logp - self.reference, 0.0)
    kl = (torch.expm1(-d) + d) * mask
    token_loss = -surrogate * mask + self.kl_coef * kl
    per_seq = (token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    seqs = (mask.sum(-1) > 0).float().sum().clamp(min=1.0)
    return per_seq.sum() / seqs, entropy

  def __call__(self) -> tuple[float, float]:
    self.optimizer.zero_grad(set_to_none=True)
    loss, _ = self.loss()
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in self.model.parameters()
                               if p.grad is not None))
    self.optimizer.step()
    return float(loss.detach()), float(grad_norm)


def timed_steps(step, steps: int) -> tuple[float, float]:
  """(wall ms / step, CPU ms / step) over `steps` steps."""
  t, c = time.perf_counter(), time.process_time()
  for _ in range(steps):
    step()
  return 1e3 * (time.perf_counter() - t) / steps, 1e3 * (time.process_time() - c) / steps


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=3, help="steps per timed run")
  ap.add_argument("--reps", type=int, default=3, help="timed runs per side, alternating")
  ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  args = ap.parse_args()
  bench_model.start(args.threads)
  (policy,), model = bench_model.load_models("float32")
  arrays = make_batch(policy)
  ours = JaxStep(policy, arrays)
  theirs = TorchStep(model, arrays, ours.kl_coef)
  tokens = int(arrays["mask"].sum())
  print(f"batch {PROMPTS} prompts x G={GROUP}, {PROMPT} + {COMPLETION} tokens "
        f"({tokens} completion tokens), loss chain: {losses.recipe_config('grpo')['chain']}, "
        f"kl coef {ours.kl_coef}, AdamW lr {LR}\n")

  t = time.perf_counter()
  first = [ours()]
  compile_s = time.perf_counter() - t
  first_t = [theirs()]
  first.append(ours())
  first_t.append(theirs())
  print("| step | rft_jax loss | torch loss | |diff| | rft_jax grad norm | torch grad norm | "
        "rel diff |")
  print("|------|--------------|------------|--------|-------------------|-----------------|"
        "----------|")
  for i, ((lj, gj), (lt, gt)) in enumerate(zip(first, first_t)):
    print(f"| {i + 1:4d} | {lj:12.7f} | {lt:10.7f} | {abs(lj - lt):.1e} | {gj:17.6f} | "
          f"{gt:15.6f} | {abs(gj - gt) / gt:.1e} |")

  times = {"rft_jax": [], "torch": []}
  for _ in range(args.reps):  # alternate, so both sides see the same machine load
    times["rft_jax"].append(timed_steps(ours, args.steps))
    times["torch"].append(timed_steps(theirs, args.steps))
  torch_best = min(times["torch"])[0]
  print(f"\nbest of {args.reps} runs of {args.steps} steps (wall; CPU = ms of all the process's "
        f"threads per step); rft_jax first step incl. compile: {compile_s:.1f} s\n")
  print("| train step                          | ms/step | vs torch | CPU ms/step |")
  print("|-------------------------------------|---------|----------|-------------|")
  for name, label in (("torch", "PyTorch eager (transformers Qwen2)"),
                      ("rft_jax", "rft_jax train.train_step (jit)")):
    best, cpu = min(times[name])
    print(f"| {label:35s} | {best:7.0f} | {torch_best / best:7.2f}x | {cpu:11.0f} |")
  print("all runs (wall ms/step): " + "; ".join(
      f"{k}: " + ", ".join(f"{w:.0f}" for w, _ in v) for k, v in times.items()))
  print(f"\n{bench_model.load_average()}")


if __name__ == "__main__":
  main()
