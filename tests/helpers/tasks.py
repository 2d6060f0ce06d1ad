"""A minimal task for tests on the tiny random model: one newline per segment, "correct" when a 1 appears.

Subclasses set `name` and `load`; prompt, extraction and scoring are shared.
"""

from __future__ import annotations


class OneTask:
    name = "one"
    delimiter = "\n"

    def prompt(self, ex):
        return ex.question

    def extract(self, completion):
        return "1" if "1" in completion else None

    def score(self, completion, ex):
        return "1" in completion
