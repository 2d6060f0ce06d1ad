"""The task interface: a loader, a prompt template, an answer extractor and a scorer.

Every task is a small object; the registry in `stir_core.tasks` maps names to factories so the CLI,
the miner and the app can ask for `get_task("planted")` or `get_task("gsm8k", path=...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

SPLITS = ("train", "mine", "val", "eval")


@dataclass(frozen=True, kw_only=True)
class Example:
    """One problem.

    `answer` is the normalised gold final answer; `solution` is an optional gold worked solution whose
    segments are separated by the task's delimiter (used by the miner's `pos_source=gold`).
    `meta` holds task-specific ground truth (e.g. the planted task's boundary classes).
    """

    id: str
    question: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    name: str
    delimiter: str

    def load(self, split: str = "eval", n: int | None = None, seed: int = 0) -> list[Example]:
        """Return up to `n` examples of `split` (deterministic for a seed)."""
        ...

    def prompt(self, example: Example) -> str:
        """The raw prompt text (the model layer applies a chat template where there is one)."""
        ...

    def extract(self, completion: str) -> str | None:
        """The final answer in a completion, normalised; None when there is none."""
        ...

    def score(self, completion: str, example: Example) -> bool:
        """True when the completion's extracted answer equals the gold answer."""
        ...


# A step checker says whether a completion prefix is still error-free for an example.
StepChecker = Callable[[Example, str], bool]


def step_checker_of(task: Task) -> StepChecker | None:
    """The task's step checker, if it has one (`task.check_prefix(example, prefix) -> bool`)."""
    fn = getattr(task, "check_prefix", None)
    return fn if callable(fn) else None


def system_prompt_of(task: Task) -> str | None:
    """The system message a task sends through the chat template (file tasks: the reference's), if any."""
    value = getattr(task, "system_prompt", None)
    return value if isinstance(value, str) and value else None


def render_prompt(model: Any, task: Task, example: Example) -> str:
    """The prompt text a model decodes from: the task's user message through the model's chat template,
    with the task's system message when it has one (`model.format_prompt(text, system=...)`)."""
    text, system = task.prompt(example), system_prompt_of(task)
    return model.format_prompt(text, system=system) if system else model.format_prompt(text)
