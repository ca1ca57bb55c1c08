"""SmolLM2-135M-Instruct's base Pass@1 on the candidate tasks, before any layer runs.

    python experiments/smollm2/base_rates.py [--n 64] [--max-new-tokens 256] [--out DIR]

For each task setting: the first n test questions through the chat template with the paper's
suffixes (GSM8K's '####' instruction, or MATH's \\boxed{} one: '_boxed'; the arithmetic
generator's two-operation problems as symbols or words; GSM8K test; MATH-500), one sample each at temperature 1 and one greedy; Pass@1 with a Wilson 95% interval,
the fraction truncated (no EOS within max_new_tokens) and the mean completion length. Each
setting's result is written to <out>/<setting>.json as soon as it is measured, and a setting
whose file exists is skipped, so a killed run continues where it stopped. A results.md table is
rewritten after each setting.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

from rft_jax import evaluation, fileio, models, rewards as rewards_lib, sampling
from rft_jax.data import arithmetic, gsm8k, math as math_data, prompts_text, selection

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def settings() -> dict:
  """name -> (task factory, template). The arithmetic generator's problems have two operations."""
  def arith(**ranges):
    return lambda: arithmetic.arithmetic_task(0, 64, 500, **ranges)

  def smollm2_task():  # exactly the task of configs/smollm2.py (its grader included)
    sys.path.insert(0, str(ROOT))  # configs/ is a folder of the repository, not a package
    from configs import l0_minimal
    from rft_jax import train

    return train.build_task(l0_minimal.get_config("base=smollm2").task)

  def one_op_50():  # the first choice of configs/smollm2.py, kept for its measured file
    task = arithmetic.arithmetic_task(0, 64, 500, num_ops=1, word_prob=0.0, mul_prob=0.0,
                                      max_operand=50, allow_negative=True)
    task.grader = "final_answer"
    return task

  def one_op(max_operand):  # configs/smollm2.py's task with smaller operands
    def make():
      # operands 1..10 make 155 distinct problems (+, and - without negatives): 64 + 64 here
      task = arithmetic.arithmetic_task(0, 64, 64, num_ops=1, word_prob=0.0, mul_prob=0.0,
                                        max_operand=max_operand)
      task.grader = "final_answer"
      return task
    return make

  return {
      "one_op_10": (one_op(10), prompts_text.GSM8K),
      "one_op_10_answer_is": (one_op(10), prompts_text.ANSWER_IS),
      "one_op_20": (one_op(20), prompts_text.GSM8K),
      "smollm2_one_op": (smollm2_task, prompts_text.GSM8K),
      "smollm2_one_op_answer_is": (smollm2_task, prompts_text.ANSWER_IS),
      "one_op_50": (one_op_50, prompts_text.GSM8K),
      "arith_symbol": (arith(word_prob=0.0, mul_prob=0.0), prompts_text.GSM8K),
      "arith_symbol_boxed": (arith(word_prob=0.0, mul_prob=0.0), prompts_text.GSM8K_BOXED),
      "arith_word_boxed": (arith(word_prob=1.0), prompts_text.GSM8K_BOXED),
      "gsm8k_boxed": (lambda: gsm8k.gsm8k_task(None, DATA / "gsm8k" / "test.jsonl"),
                      prompts_text.GSM8K_BOXED),
      "gsm8k": (lambda: gsm8k.gsm8k_task(None, DATA / "gsm8k" / "test.jsonl"), prompts_text.GSM8K),
      "math500": (lambda: math_data.math_task(None, DATA / "math" / "test.jsonl"),
                  prompts_text.MATH),
  }


def measure(policy, task, n: int, max_new_tokens: int, temperature: float, seed: int) -> dict:
  examples = list(task.test[:n])
  prompts = [policy.encode_prompt(task.prompt_text(e)) for e in examples]
  t = time.time()
  texts, lengths, truncated = [], [], 0
  batch = 32
  for i in range(0, len(prompts), batch):
    chunk = prompts[i:i + batch]
    tokens, mask = sampling.left_pad(chunk, policy.pad_id, bucket=32)
    out = policy.generate(tokens, max_new_tokens, temperature=temperature, prompt_mask=mask,
                          rng=jax.random.fold_in(jax.random.PRNGKey(seed), i))
    toks, msk = jax.device_get((out.tokens, out.mask))
    for row in range(len(chunk)):
      length = int(msk[row].sum())
      ended = length and int(toks[row][length - 1]) in policy.eos_ids
      truncated += not ended
      lengths.append(length)
      texts.append(policy.decode_completion(toks[row], msk[row]))
  rewards, outcomes = task.grade_batch(texts, examples)
  k = float(np.sum(rewards))
  low, high = evaluation.wilson_interval(k, len(examples))
  extra = {"grader": task.grader}
  if task.grader == "arithmetic":  # the embedded grader wants '#### N' at the very end
    lenient, _ = rewards_lib.grade_batch("gsm8k", texts, [e.answer for e in examples])
    extra["pass1_gsm8k_grader"] = float(np.mean(lenient))
  return {**extra, "pass1": k / len(examples), "low": low, "high": high, "n": len(examples),
          "truncated": truncated / len(examples), "mean_length": float(np.mean(lengths)),
          "outcomes": dict(outcomes), "wall_s": time.time() - t,
          "example": texts[0][:400]}


def difficulty(policy, task, questions: int, samples: int, max_new_tokens: int,
               temperature: float = 1.0) -> dict:
  """The difficulty buckets of L4 (rft_jax.data.selection) over the first `questions` training
  questions, `samples` each at `temperature`, and the fraction of those rollouts truncated."""
  examples = list(task.train[:questions])
  prompts = [policy.encode_prompt(task.prompt_text(e)) for e in examples]
  per_batch = max(1, 32 // samples)
  t = time.time()
  texts, truncated = [], 0
  for i in range(0, questions, per_batch):
    tokens, mask = sampling.left_pad(prompts[i:i + per_batch], policy.pad_id, bucket=32)
    out = policy.generate(tokens, max_new_tokens, temperature=temperature, prompt_mask=mask,
                          num_samples=samples, rng=jax.random.fold_in(jax.random.PRNGKey(1), i))
    toks, msk = jax.device_get((out.tokens, out.mask))
    for row in range(toks.shape[0]):
      length = int(msk[row].sum())
      truncated += not (length and int(toks[row][length - 1]) in policy.eos_ids)
      texts.append(policy.decode_completion(toks[row], msk[row]))
    print(f"  difficulty: {min(i + per_batch, questions)}/{questions} questions", flush=True)
  rewards, outcomes = task.grade_batch(texts, [e for e in examples for _ in range(samples)])
  table = selection.difficulty_table(examples, np.reshape(rewards, (questions, samples)))
  return {"counts": table["counts"], "pass1": float(np.mean(rewards)),
          "truncated": truncated / len(texts), "outcomes": dict(outcomes),
          "questions": questions, "samples": samples, "wall_s": time.time() - t,
          "pass_rates": [row["pass_rate"] for row in table["rows"]]}


def write_table(out: pathlib.Path) -> None:
  rows = ["Sampled at temperature 1 unless the setting's name ends in _T<t>.", "",
          "| setting | sampled Pass@1 [95% CI] | greedy Pass@1 [95% CI] | n | "
          "truncated (sampled / greedy) | mean tokens (sampled) |", "|---|---|---|---|---|---|"]
  for path in sorted(out.glob("*.json")):
    if path.name.endswith(".difficulty.json"):
      continue
    name = path.stem
    r = json.loads(path.read_text())
    s, g = r["sampled"], r["greedy"]
    rows.append(f"| {name} | {s['pass1']:.3f} [{s['low']:.3f}, {s['high']:.3f}] | "
                f"{g['pass1']:.3f} [{g['low']:.3f}, {g['high']:.3f}] | {s['n']} | "
                f"{s['truncated']:.2f} / {g['truncated']:.2f} | {s['mean_length']:.0f} |")
  rows += ["", "Difficulty buckets (L4's thresholds) of training questions (temperature as "
           "above):", "",
           "| setting | questions x samples | easy / medium / hard / extremely hard | Pass@1 | "
           "truncated |", "|---|---|---|---|---|"]
  for path in sorted(out.glob("*.difficulty.json")):
    r = json.loads(path.read_text())
    c = r["counts"]
    rows.append(f"| {path.name[:-len('.difficulty.json')]} | {r['questions']} x {r['samples']} "
                f"| {c['easy']} / {c['medium']} / {c['hard']} / {c['extremely_hard']} "
                f"| {r['pass1']:.3f} | {r['truncated']:.2f} |")
  fileio.write_atomic(out / "results.md", "\n".join(rows) + "\n")


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=64)
  ap.add_argument("--max-new-tokens", type=int, default=256)
  ap.add_argument("--out", default=str(ROOT / "experiments" / "smollm2" / "base_rates"))
  ap.add_argument("--only", default="", help="comma-separated settings (default: all)")
  ap.add_argument("--difficulty", type=int, default=0, metavar="Q",
                  help="also the L4 buckets: Q training questions x --samples at temperature 1")
  ap.add_argument("--samples", type=int, default=8)
  ap.add_argument("--temperature", type=float, default=1.0,
                  help="of the sampled column and the difficulty buckets (files get _T<t>)")
  args = ap.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  policy = models.load("smollm2")
  only = [w for w in args.only.split(",") if w]
  unknown = sorted(set(only) - set(settings()))
  if unknown:
    ap.error(f"unknown settings {unknown}; known: {', '.join(settings())}")
  for name, (make_task, template) in settings().items():
    if only and name not in only:
      continue
    tag = "" if args.temperature == 1.0 else f"_T{args.temperature:g}"
    path = out / f"{name}{tag}{'.difficulty' if args.difficulty else ''}.json"
    if path.exists():
      print(f"{path.name}: done, skipped")
      continue
    task = make_task()
    task.template = template
    if args.difficulty:
      measured = difficulty(policy, task, args.difficulty, args.samples, args.max_new_tokens,
                            args.temperature)
      said = f"buckets {measured['counts']}, truncated {measured['truncated']:.2f}"
    else:
      measured = {"sampled": measure(policy, task, args.n, args.max_new_tokens,
                                     args.temperature, 0),
                  "greedy": measure(policy, task, args.n, args.max_new_tokens, 0.0, 0)}
      said = (f"T={args.temperature:g} {measured['sampled']['pass1']:.3f}, greedy "
              f"{measured['greedy']['pass1']:.3f}, truncated "
              f"{measured['sampled']['truncated']:.2f}")
    fileio.write_json_atomic(str(path), {
        "setting": name, "template": template, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, **measured, "load": os.getloadavg()})
    write_table(out)
    print(f"{path.name}: {said}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
