"""Beyond the paper, LoRA: L2 trained through rank-r adapters instead of every parameter.

Parent: L2 (configs/l2_advantage.py). Changes: model.lora.rank (default 8; the variants rank=1
and rank=64; L2 itself is the full fine-tuning it is compared with). Adapters y = x W +
(alpha / r) (x A) B sit on every attention and MLP projection (q, k, v, o, gate, up, down;
rft_jax/models/lora.py) with alpha = 16; only A and B are trained, optimized and checkpointed,
and a KL term's reference is the base with the adapters off (no second copy of the params).
The learning rate stays L2's, so the layer isolates the rank: does RL through a rank-r update
learn, and generalize, like updating every weight? (Adapters hold r (I + O) numbers per weight:
the embedded default's 2 x 7 adapted matrices have ~4.6k numbers at rank 8, against ~0.4M
parameters in full.)

Command (embedded default; 2-core CPU: ~1-2 min, + ~6 min for the warm start the first time):

  python -m rft_jax.main --config=configs/beyond_lora.py:rank=8 --workdir=runs/lora_r8

Expected: a rank-r update learns one training question too, more slowly than full fine-tuning
at the same learning rate, and changes the rest of the policy less.

Measured (docs/scale.md; pipeline --quick, 3 seeds): at L2's learning rate 3e-5 the adapters
barely move and nothing is learned in 60 rounds (L2 reaches training Pass@1 0.9 in 52 rounds);
at 3e-4 (--set optimizer.learning_rate=3e-4 for all four) every rank reaches it, in 50 / 30 / 40
rounds for rank 1 / 8 / 64 against 15 for full fine-tuning, and test Pass@1 falls less (0.31-0.32
against 0.29, from 0.34).
"""

from configs import l2_advantage, layers

ARGS = dict(rank=8)


def get_config(arg: str | None = None):
  own, rest = layers.split_arg(arg, ARGS)
  c = l2_advantage.get_config(rest)
  c.model.lora.rank = own.rank
  return c
