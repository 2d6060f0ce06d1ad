"""The plain task: chained 2-digit + and − (the negative control).

A problem is a 2-digit start and 3-4 operations with 2-digit operands, every running total kept in
10..199, e.g. `23+45-12+80`. The gold solution takes one operation per segment: `23+45=68\\n\\n68-12=56\\n\\n#### 56`.
Errors here are slips inside a step (carries, borrows), so contrasts at the delimiter carry no usable
"action" — the testbed's negative control.
"""

from __future__ import annotations

import hashlib
import random

from stir_core.tasks import register_task
from stir_core.tasks.base import Example
from stir_core.tasks.extract import extract_number
from stir_core.tasks.planted import DELIM, draw_split

MAX_TOTAL = 199


class PlainTask:
    """Chained 2-digit arithmetic with one operation per segment (no planted structure)."""

    name = "plain"
    delimiter = DELIM

    def _sample_problem(self, rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
        total = rng.randint(10, 99)
        start, ops = total, []
        for _ in range(rng.choice((3, 4))):
            sign = rng.choice("+-")
            hi = min(99, MAX_TOTAL - total if sign == "+" else total - 10)
            if hi < 10:  # no 2-digit operand fits this sign: take the other one
                sign = "-" if sign == "+" else "+"
                hi = min(99, MAX_TOTAL - total if sign == "+" else total - 10)
            b = rng.randint(10, hi)
            total = total + b if sign == "+" else total - b
            ops.append((sign, b))
        return start, ops

    def make_example(self, start: int, ops: list[tuple[str, int]]) -> Example:
        """The example for a start and operations; raises ValueError when a total leaves 10..MAX_TOTAL."""
        totals = [start]
        for s, b in ops:
            if s not in "+-" or not 10 <= b <= 99:
                raise ValueError(f"bad plain operation {s}{b}")
            totals.append(totals[-1] + b if s == "+" else totals[-1] - b)
        if any(not 10 <= t <= MAX_TOTAL for t in totals):
            raise ValueError(f"plain running totals must stay in 10..{MAX_TOTAL}, got {totals}")
        question = f"{start}" + "".join(f"{s}{b}" for s, b in ops)
        gold = [f"{totals[j]}{s}{b}={totals[j + 1]}" for j, (s, b) in enumerate(ops)] + [f"#### {totals[-1]}"]
        digest = hashlib.blake2b(question.encode(), digest_size=5).hexdigest()
        meta = {"start": start, "ops": [[s, b] for s, b in ops], "totals": totals}
        return Example(id=f"plain-{digest}", question=question, answer=str(totals[-1]),
                       solution=DELIM.join(gold), meta=meta)

    def load(self, split: str = "eval", n: int | None = None, seed: int = 0) -> list[Example]:
        """Up to `n` distinct problems of `split` (default size per split as for `planted`), seeded."""
        return draw_split(split, n, f"plain/{split}/{seed}", "plain:",
                          lambda rng: self.make_example(*self._sample_problem(rng)))

    def prompt(self, example: Example) -> str:
        return f"calc {example.question}\n"

    def extract(self, completion: str) -> str | None:
        return extract_number(completion)  # `#### d`, else the last number (the project's rule)

    def score(self, completion: str, example: Example) -> bool:
        return self.extract(completion) == example.answer

    def sample_completion(self, example: Example, rng: random.Random) -> str:
        """The training completion (the gold solution; `rng` unused, kept for a uniform interface)."""
        return example.solution or ""

    def check_prefix(self, example: Example, prefix: str) -> bool:
        """True while `prefix` is a prefix of the gold solution (the only correct form here)."""
        return (example.solution or "").startswith(prefix)


register_task("plain", PlainTask)
