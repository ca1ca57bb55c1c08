"""Prompt templates of the GSM8K and MATH tasks (plain text; chat wrapping happens elsewhere).

Each template is a `str.format` string with one field, `{question}`; literal braces are doubled,
so `MATH.format(question=q)` ends in '\\boxed{}.'. The instructions are the paper's (PAPER.md,
"Experimental setup"), appended to the question after one space as verl's preprocessing does.
"""

from __future__ import annotations

GSM8K_INSTRUCTION = "Let's think step by step and output the final answer after \"####\"."
BOXED_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

# The paper's GSM8K prompt: the model ends with '#### <number>' (graded by rewards 'gsm8k').
GSM8K = "{question} " + GSM8K_INSTRUCTION
# GSM8K with the MATH instruction (GRADING.md recommends one \boxed{} answer for both tasks);
# the 'gsm8k' grader reads either form.
GSM8K_BOXED = "{question} " + BOXED_INSTRUCTION.replace("{}", "{{}}")
# The paper's MATH prompt (graded by rewards 'math').
MATH = "{question} " + BOXED_INSTRUCTION.replace("{}", "{{}}")

# Not the paper's: an instruction small instruct models follow (SmolLM2-135M ends its answers with
# 'The answer is N.' but never writes '####' or \boxed{}; experiments/smollm2/README.md). Graded
# by 'final_answer'.
ANSWER_IS = "{question} End your answer with \"The answer is N.\""

TEMPLATES = {"gsm8k": GSM8K, "gsm8k_boxed": GSM8K_BOXED, "math": MATH, "answer_is": ANSWER_IS}


def template(name: str) -> str:
  """The template called `name` ('gsm8k', 'gsm8k_boxed', 'math', 'answer_is')."""
  try:
    return TEMPLATES[name]
  except KeyError:
    raise ValueError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}") from None
