"""Multi-digit addition with a short worked chain of thought and a final numeric answer.

Each problem carries every column the diagnostic and the TRL trainers need: a conversational `prompt`, the reference
`answer`, a worked `solution`, a `hint` (the first step), `messages` (prompt + solution, for GKD) and
`privileged_context` (for SDFT).
"""

import random
from dataclasses import dataclass


@dataclass
class ArithmeticTask:
    """
    Addition problems `a + b` with `digits`-digit operands.

    Args:
        digits (`int`, *optional*, defaults to `2`):
            Digits of each operand.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the problem generator.
    """

    digits: int = 2
    seed: int = 0

    def problem(self, rng: random.Random) -> dict:
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return self.row(a, b)

    @staticmethod
    def solution_text(a: int, b: int) -> str:
        """Column addition, least significant digit first, then `#### answer`."""
        steps, carry = [], 0
        da, db = str(a)[::-1], str(b)[::-1]
        for i in range(max(len(da), len(db))):
            x = int(da[i]) if i < len(da) else 0
            y = int(db[i]) if i < len(db) else 0
            s = x + y + carry
            steps.append(f"{x}+{y}+{carry}={s}" if carry else f"{x}+{y}={s}")
            carry = s // 10
        return " ".join(steps) + f" #### {a + b}"

    def row(self, a: int, b: int) -> dict:
        question = f"{a}+{b}=?"
        solution = self.solution_text(a, b)
        prompt = [{"role": "user", "content": question}]
        return {
            "prompt": prompt,
            "answer": str(a + b),
            "solution": solution,
            "hint": solution.split(" ")[0],
            "privileged_context": f"Reference solution: {solution}",
            "messages": prompt + [{"role": "assistant", "content": solution}],
        }


def make_dataset(num_problems: int, digits: int = 2, seed: int = 0):
    """A `datasets.Dataset` of `num_problems` addition problems (deterministic in `seed`)."""
    from datasets import Dataset

    task, rng = ArithmeticTask(digits, seed), random.Random(seed)
    return Dataset.from_list([task.problem(rng) for _ in range(num_problems)])
