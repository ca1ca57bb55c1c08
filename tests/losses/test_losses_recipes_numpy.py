"""Each recipe against an independent NumPy implementation of its published formula (float64).

The references loop over groups, sequences and tokens as the papers write the objectives; they
share nothing with the library. Loss values agree to 1e-10 and gradients with respect to the
policy log-probs (central differences of the reference) to 1e-6.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from losses_testlib import finite_differences, random_batch

import rft_jax.losses as rl


def _groups(group_ids):
  out = {}
  for i, g in enumerate(group_ids):
    out.setdefault(int(g), []).append(i)
  return out


def _clip(x, lo, hi):
  return min(max(x, lo), hi)


def _tokens(mask, i):
  return [t for t in range(mask.shape[1]) if mask[i, t] > 0]


def ref_minimal(d, eps=0.2):
  """Hu et al. 2026: J = (1/|o|) sum_t min(r_t R, clip(r_t, 1-eps, 1+eps) R), token mean over the
  batch (DAPO-style token mean when there are several rollouts)."""
  total, count = 0.0, 0
  for i in range(len(d["R"])):
    for t in _tokens(d["mask"], i):
      r = math.exp(d["logp"][i, t] - d["old"][i, t])
      total += min(r * d["R"][i], _clip(r, 1 - eps, 1 + eps) * d["R"][i])
      count += 1
  return -total / count


def ref_reinforce(d):
  """Williams 1992: grad J = E[R grad log pi(o)], log pi(o) = sum_t log pi(o_t); sample mean."""
  n = len(d["R"])
  return -sum(d["R"][i] * sum(d["logp"][i, t] for t in _tokens(d["mask"], i)) for i in range(n)) / n


def ref_rloo(d):
  """Ahmadian et al. 2024: (1/k) sum_i [R_i - (1/(k-1)) sum_{j != i} R_j] grad log pi(y_i)."""
  n = len(d["R"])
  total = 0.0
  for members in _groups(d["gid"]).values():
    k = len(members)
    for i in members:
      baseline = sum(d["R"][j] for j in members if j != i) / (k - 1)
      total += (d["R"][i] - baseline) * sum(d["logp"][i, t] for t in _tokens(d["mask"], i))
  return -total / n


def _grpo_advantages(d, eps_std, use_std=True):
  adv = np.zeros(len(d["R"]))
  for members in _groups(d["gid"]).values():
    rs = [d["R"][j] for j in members]
    mean = sum(rs) / len(rs)
    std = math.sqrt(sum((x - mean) ** 2 for x in rs) / (len(rs) - 1))  # torch.std (unbiased)
    for j in members:
      adv[j] = (d["R"][j] - mean) / (std + eps_std) if use_std else d["R"][j] - mean
  return adv


def ref_grpo(d, eps=0.2, beta=0.04, eps_std=1e-6):
  """Shao et al. 2024, eq. 3: J = (1/G) sum_i (1/|o_i|) sum_t {min(r A_i, clip(r) A_i) - beta D_KL},
  A_i = (R_i - mean R) / std R, D_KL = pi_ref/pi - log(pi_ref/pi) - 1 (eq. 4)."""
  adv = _grpo_advantages(d, eps_std)
  total = 0.0
  for i in range(len(adv)):
    toks = _tokens(d["mask"], i)
    seq = 0.0
    for t in toks:
      r = math.exp(d["logp"][i, t] - d["old"][i, t])
      q = math.exp(d["ref"][i, t] - d["logp"][i, t])
      seq += min(r * adv[i], _clip(r, 1 - eps, 1 + eps) * adv[i]) - beta * (q - math.log(q) - 1)
    total += seq / len(toks)
  return -total / len(adv)


def ref_dr_grpo(d, eps=0.2, max_len=16):
  """Liu et al. 2025 (Dr. GRPO): A_i = R_i - mean R;
  J = (1/G) sum_i (1/L_max) sum_t min(r A, clip(r) A)."""
  adv = _grpo_advantages(d, 0.0, use_std=False)
  total = 0.0
  for i in range(len(adv)):
    for t in _tokens(d["mask"], i):
      r = math.exp(d["logp"][i, t] - d["old"][i, t])
      total += min(r * adv[i], _clip(r, 1 - eps, 1 + eps) * adv[i]) / max_len
  return -total / len(adv)


def ref_dapo(d, eps_low=0.2, eps_high=0.28, eps_std=1e-6):
  """Yu et al. 2025 (DAPO):
  J = 1/(sum_i |o_i|) sum_i sum_t min(r A, clip(r, 1-eps_low, 1+eps_high) A)."""
  adv = _grpo_advantages(d, eps_std)
  total, count = 0.0, 0
  for i in range(len(adv)):
    for t in _tokens(d["mask"], i):
      r = math.exp(d["logp"][i, t] - d["old"][i, t])
      total += min(r * adv[i], _clip(r, 1 - eps_low, 1 + eps_high) * adv[i])
      count += 1
  return -total / count


def ref_gspo(d, eps_low=3e-4, eps_high=4e-4, eps_std=1e-6):
  """Zheng et al. 2025 (GSPO): s_i = (pi(y_i)/pi_old(y_i))^(1/|y_i|);
  J = (1/G) sum_i min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i)."""
  adv = _grpo_advantages(d, eps_std)
  total = 0.0
  for i in range(len(adv)):
    toks = _tokens(d["mask"], i)
    s = math.exp(sum(d["logp"][i, t] - d["old"][i, t] for t in toks) / len(toks))
    total += min(s * adv[i], _clip(s, 1 - eps_low, 1 + eps_high) * adv[i])
  return -total / len(adv)


REFERENCES = {
    "minimal": (rl.minimal, ref_minimal, 0.3),
    "reinforce": (rl.reinforce, ref_reinforce, 0.3),
    "rloo": (rl.rloo, ref_rloo, 0.3),
    "grpo": (rl.grpo, ref_grpo, 0.3),
    "dr_grpo": (lambda: rl.dr_grpo(max_len=16), ref_dr_grpo, 0.3),
    "dapo": (rl.dapo, ref_dapo, 0.3),
    "gspo": (rl.gspo, ref_gspo, 1e-3),  # GSPO's clip range is ~1e-4: small policy changes
}


# The peers' recipes have their references in test_losses_peers.py (verl, TRL source).
PEER_RECIPES = {"verl_grpo", "verl_dr_grpo", "verl_gspo", "trl_grpo"}


def test_every_recipe_has_a_reference():
  assert set(REFERENCES) | PEER_RECIPES == set(rl.RECIPES)
  assert not set(REFERENCES) & PEER_RECIPES


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("seed", [0, 1])
def test_recipe_matches_numpy_reference(name, seed):
  make, reference, noise = REFERENCES[name]
  with jax.enable_x64(True):
    batch, logp, _ = random_batch(seed=seed, b=12, t=6, group_size=3, noise=noise, dtype=np.float64)
    assert logp.dtype == jnp.float64
    transform = make()
    loss_fn = jax.jit(lambda lp: rl.compute_loss(transform, lp, batch, transform.init())[0])
    loss = float(loss_fn(logp))
    grad = np.asarray(jax.jit(jax.grad(loss_fn))(logp))
    metrics = rl.compute_loss(transform, logp, batch, transform.init())[1]["metrics"]
  if "clip_frac" in metrics:  # both branches of the clip are exercised
    assert 0.05 < float(metrics["clip_frac"]) < 0.95, float(metrics["clip_frac"])

  fields = {"logp": logp, "old": batch.behaviour_logp, "ref": batch.ref_logp, "mask": batch.mask,
            "R": batch.rewards}
  d = {k: np.asarray(v, np.float64) for k, v in fields.items()}
  d["gid"] = np.asarray(batch.group_ids)
  expected = reference(d)
  assert abs(expected) > 1e-6, "a vanishing reference loss would make the comparison weak"
  assert loss == pytest.approx(expected, abs=1e-10, rel=1e-10)

  # Gradient: central differences of the reference, token by token.
  fd = finite_differences(reference, d, h=1e-6)
  assert np.abs(fd).max() > 1e-3
  np.testing.assert_allclose(grad, fd, atol=1e-6)
