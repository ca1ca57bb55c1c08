"""Which instruction lets SmolLM2-135M state an answer the 'final_answer' grader reads?

    python experiments/smollm2/prompt_variants.py

One-operation problems, operands 1..20, no negative answers; the first 32 test questions; one
sample at temperature 1 and one greedy, 128 new tokens; graded by 'final_answer'. Prints one line
per instruction (measured numbers: experiments/smollm2/README.md).
"""

from __future__ import annotations

import base_rates

from rft_jax import models
from rft_jax.data import arithmetic, prompts_text

VARIANTS = {
    "gsm8k_suffix": "{question} Let's think step by step and output the final answer after "
                    "\"####\".",
    "plain": "{question}",
    "answer_is": prompts_text.ANSWER_IS,
}


def main():
  policy = models.load("smollm2")
  for name, template in VARIANTS.items():
    task = arithmetic.arithmetic_task(0, 64, 500, num_ops=1, word_prob=0.0, mul_prob=0.0,
                                      max_operand=20)
    task.template, task.grader = template, "final_answer"
    sampled = base_rates.measure(policy, task, 32, 128, 1.0, 0)
    greedy = base_rates.measure(policy, task, 32, 128, 0.0, 0)
    print(f"{name}: T=1 {sampled['pass1']:.3f} {sampled['outcomes']} truncated "
          f"{sampled['truncated']:.2f} | greedy {greedy['pass1']:.3f} {greedy['outcomes']}",
          flush=True)


if __name__ == "__main__":
  main()
