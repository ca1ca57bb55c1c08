"""NumPy transcriptions of verl's and TRL's GRPO-family losses, for tests/losses/test_losses_peers.py.

Read from the released wheels (`pip download --no-deps verl==0.9.1 trl==1.16.0`), not imported:
  verl 0.9.1  verl/trainer/ppo/core_algos.py: compute_grpo_outcome_advantage, agg_loss,
              compute_policy_loss_vanilla, compute_policy_loss_gspo, kl_penalty_forward;
              verl/workers/utils/losses.py: ppo_loss (policy loss + kl_loss_coef * agg(kl)).
  verl 0.7.0  the same file: agg_loss's seq-mean-token-sum-norm without the 1/N (changed in 0.7.1).
  TRL 1.16.0  trl/trainer/grpo_trainer.py: _generate_and_score_completions (advantages),
              _compute_loss; trl/trainer/grpo_config.py (defaults); trl/trainer/utils.py: nanstd.

Everything is float64 and loops token by token in the peers' order of operations; nothing is
shared with rft_jax. Data: d = {"logp", "old", "ref", "mask": [B, T], "R": [B], "gid": [B]}.
"""

from __future__ import annotations

import math


def _tokens(mask, i):
  return [t for t in range(mask.shape[1]) if mask[i, t] > 0]


def _clamp(x, lo=None, hi=None):
  if lo is not None:
    x = max(x, lo)
  if hi is not None:
    x = min(x, hi)
  return x


def _torch_std(xs):
  """torch.std: unbiased (n - 1)."""
  m = sum(xs) / len(xs)
  return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# ---- verl 0.9.1 ------------------------------------------------------------------------------

def verl_grpo_advantages(R, gid, epsilon=1e-6, norm_adv_by_std_in_grpo=True):
  """compute_grpo_outcome_advantage: id2mean / id2std per index; a group of one gets mean 0,
  std 1; then (score - mean) / (std + epsilon), or score - mean without the std."""
  id2score = {}
  for i, g in enumerate(gid):
    id2score.setdefault(int(g), []).append(R[i])
  id2mean, id2std = {}, {}
  for idx, scores in id2score.items():
    if len(scores) == 1:
      id2mean[idx], id2std[idx] = 0.0, 1.0
    else:
      id2mean[idx], id2std[idx] = sum(scores) / len(scores), _torch_std(scores)
  out = []
  for i, g in enumerate(gid):
    g = int(g)
    if norm_adv_by_std_in_grpo:
      out.append((R[i] - id2mean[g]) / (id2std[g] + epsilon))
    else:
      out.append(R[i] - id2mean[g])
  return out


def verl_kl_penalty(logprob, ref_logprob, kl_penalty):
  """kl_penalty_forward, one token."""
  if kl_penalty in ("kl", "k1"):
    return logprob - ref_logprob
  if kl_penalty == "abs":
    return abs(logprob - ref_logprob)
  if kl_penalty in ("mse", "k2"):
    return 0.5 * (logprob - ref_logprob) ** 2
  if kl_penalty in ("low_var_kl", "k3"):
    kl = _clamp(ref_logprob - logprob, -20.0, 20.0)
    ratio = math.exp(kl)
    return _clamp(ratio - kl - 1, -10.0, 10.0)
  raise NotImplementedError(kl_penalty)


def verl_vanilla_token(log_prob, old_log_prob, adv, clip_low, clip_high, clip_ratio_c=3.0):
  """compute_policy_loss_vanilla, one token (pg_losses before agg_loss)."""
  negative_approx_kl = _clamp(log_prob - old_log_prob, -20.0, 20.0)
  ratio = math.exp(negative_approx_kl)
  pg_losses1 = -adv * ratio
  pg_losses2 = -adv * _clamp(ratio, 1 - clip_low, 1 + clip_high)
  clip_pg_losses1 = max(pg_losses1, pg_losses2)
  pg_losses3 = -adv * clip_ratio_c
  clip_pg_losses2 = min(pg_losses3, clip_pg_losses1)
  return clip_pg_losses2 if adv < 0 else clip_pg_losses1


def verl_gspo_seq(d, i, adv, clip_low, clip_high):
  """compute_policy_loss_gspo: the value of every token's loss of sequence i (they are equal:
  s_it = sg[s_i] pi / sg[pi] has the value s_i), and s_i after the clamp at log 10."""
  toks = _tokens(d["mask"], i)
  seq_len = max(len(toks), 1)
  log_s = sum(d["logp"][i, t] - d["old"][i, t] for t in toks) / seq_len
  s = math.exp(min(log_s, 10.0))
  pg_losses1 = -adv * s
  pg_losses2 = -adv * _clamp(s, 1 - clip_low, 1 + clip_high)
  return max(pg_losses1, pg_losses2), s, log_s


def verl_agg_loss(loss_rows, mask, loss_agg_mode, version="0.9.1", loss_scale_factor=None,
                  count_eps=1e-8):
  """agg_loss (dp_size 1, global counts = this batch's). loss_rows[i][t] is read on mask only.

  version "0.7.0": seq-mean-token-sum-norm = sum / horizon (no division by the sequences).
  count_eps: the 1e-8 that seq-mean-token-mean adds to each sequence's token count.
  """
  rows = range(mask.shape[0])
  sums = [sum(loss_rows[i][t] for t in _tokens(mask, i)) for i in rows]
  counts = [len(_tokens(mask, i)) for i in rows]
  n_seq = sum(1 for c in counts if c > 0)
  if loss_agg_mode == "token-mean":
    return sum(sums) / sum(counts)
  if loss_agg_mode == "seq-mean-token-sum":
    return sum(s for s, c in zip(sums, counts) if c > 0) / n_seq
  if loss_agg_mode == "seq-mean-token-sum-norm":
    horizon = mask.shape[1] if loss_scale_factor is None else loss_scale_factor
    if version == "0.7.0":
      return sum(sums) / horizon
    return sum(s for s, c in zip(sums, counts) if c > 0) / n_seq / horizon
  if loss_agg_mode == "seq-mean-token-mean":
    return sum(s / (c + count_eps) for s, c in zip(sums, counts) if c > 0) / n_seq
  raise ValueError(loss_agg_mode)


def verl_ppo_loss(d, *, policy="vanilla", norm_adv_by_std_in_grpo=True, epsilon=1e-6,
                  clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0, loss_agg_mode="token-mean",
                  use_kl_loss=False, kl_loss_coef=0.001, kl_loss_type="low_var_kl",
                  version="0.9.1", loss_scale_factor=None, count_eps=1e-8):
  """ppo_loss with adv_estimator=grpo: pg_loss + kl_loss_coef * agg_loss(kl), entropy_coeff 0.

  GSPO in verl 0.6.0 to 0.8.0 aggregates with seq-mean-token-mean whatever loss_agg_mode says;
  pass that mode explicitly to model them.
  """
  mask = d["mask"]
  adv = verl_grpo_advantages(d["R"], d["gid"], epsilon, norm_adv_by_std_in_grpo)
  b, t = mask.shape
  pg = [[0.0] * t for _ in range(b)]
  for i in range(b):
    if policy == "gspo":
      value, _, _ = verl_gspo_seq(d, i, adv[i], clip_low, clip_high)
    for k in _tokens(mask, i):
      if policy == "vanilla":
        pg[i][k] = verl_vanilla_token(d["logp"][i, k], d["old"][i, k], adv[i], clip_low,
                                      clip_high, clip_ratio_c)
      elif policy == "gspo":
        pg[i][k] = value
      else:
        raise ValueError(policy)
  loss = verl_agg_loss(pg, mask, loss_agg_mode, version, loss_scale_factor, count_eps)
  if use_kl_loss:
    kld = [[verl_kl_penalty(d["logp"][i, k], d["ref"][i, k], kl_loss_type) if mask[i, k] else 0.0
            for k in range(t)] for i in range(b)]
    loss += verl_agg_loss(kld, mask, loss_agg_mode, version, loss_scale_factor,
                          count_eps) * kl_loss_coef
  return loss


def verl_gspo_grad(d, *, epsilon=1e-6, clip_low=3e-4, clip_high=4e-4,
                   loss_agg_mode="seq-mean-token-mean", count_eps=0.0):
  """The gradient verl's GSPO gives through its stop-gradient form (not a finite difference):

      d l_it / d log pi(o_it) = -A_i s_i   where the unclipped branch is taken and log s_i < 10,
                                 0           otherwise (clipped, or clamped at 10),

  times the aggregation's weight of token (i, t); a token does not move another token's loss.
  """
  mask = d["mask"]
  adv = verl_grpo_advantages(d["R"], d["gid"], epsilon)
  b, t = mask.shape
  counts = [len(_tokens(mask, i)) for i in range(b)]
  n_seq = sum(1 for c in counts if c > 0)
  grad = [[0.0] * t for _ in range(b)]
  for i in range(b):
    if not counts[i]:
      continue
    value, s, log_s = verl_gspo_seq(d, i, adv[i], clip_low, clip_high)
    unclipped = value == -adv[i] * s and log_s < 10.0
    if loss_agg_mode == "token-mean":
      weight = 1.0 / sum(counts)
    elif loss_agg_mode == "seq-mean-token-mean":
      weight = 1.0 / ((counts[i] + count_eps) * n_seq)
    else:
      raise ValueError(loss_agg_mode)
    for k in _tokens(mask, i):
      grad[i][k] = weight * (-adv[i] * s if unclipped else 0.0)
  return grad


# ---- TRL 1.16.0 ------------------------------------------------------------------------------

def trl_advantages(R, num_generations, scale_rewards="group"):
  """_generate_and_score_completions, one reward function, sum_then_normalize: groups are
  consecutive blocks of num_generations; std by nanstd (Bessel); A = (R - mean) / (std + 1e-4);
  num_generations == 1 (evaluation only) uses std 0."""
  out = []
  for start in range(0, len(R), num_generations):
    block = list(R[start:start + num_generations])
    mean = sum(block) / len(block)
    std = _torch_std(block) if num_generations > 1 else 0.0
    for r in block:
      a = r - mean
      if scale_rewards != "none":
        a = a / (std + 1e-4)
      out.append(a)
  return out


def trl_grpo_loss(d, num_generations, *, epsilon=0.2, epsilon_high=None, beta=0.0,
                  use_bias_correction_kl=True):
  """_compute_loss with loss_type="dapo", importance_sampling_level="token", no vLLM, one process,
  one accumulation step: the normalizer is the generation batch's completion-token count."""
  mask = d["mask"]
  eps_low = epsilon
  eps_high = epsilon if epsilon_high is None else epsilon_high
  adv = trl_advantages(d["R"], num_generations)
  total, items = 0.0, 0
  for i in range(mask.shape[0]):
    for k in _tokens(mask, i):
      log_ratio = d["logp"][i, k] - d["old"][i, k]
      coef_1 = math.exp(log_ratio)
      coef_2 = _clamp(coef_1, 1 - eps_low, 1 + eps_high)
      per_token_loss = -min(coef_1 * adv[i], coef_2 * adv[i])
      if beta != 0.0:
        x = d["ref"][i, k] - d["logp"][i, k]
        per_token_kl = math.exp(x) - x - 1
        if use_bias_correction_kl:
          per_token_kl = per_token_kl * coef_1
        per_token_loss = per_token_loss + beta * per_token_kl
      total += per_token_loss
      items += 1
  return total / max(items, 1)
