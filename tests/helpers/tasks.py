"""A minimal task for tests on the tiny random model: one newline per segment, "correct" when a 1 appears.

Subclasses set `name` and `load`; prompt, extraction and scoring are shared.
"""

from __future__ import annotations

from stir_core.config import MineConfig
from stir_core.tasks import Example


class OneTask:
    name = "one"
    delimiter = "\n"

    def prompt(self, ex):
        return ex.question

    def extract(self, completion):
        return "1" if "1" in completion else None

    def score(self, completion, ex):
        return "1" in completion


class EchoTask(OneTask):
    """A toy task for a random model: segments end at "\\n"; 'correct' when the completion has a '1'."""

    name = "echo"

    def load(self, split="mine", n=None, seed=0):
        exs = [Example(id=f"e{i}", question=f"{i}+{i}=", answer="1") for i in range(12)]
        return exs[:n]


def echo_config(**kw):
    """A small mining config for `EchoTask` on the tiny model; keywords override."""
    base = dict(task="echo", n_problems=6, k_rollouts=6, temperature=1.5, top_p=1.0, max_new_tokens=40,
                layers=[1, -1], require_correct_and_incorrect=False, problems_per_batch=3, top_c=50, seed=3)
    base.update(kw)
    return MineConfig(**base)
