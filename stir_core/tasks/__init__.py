"""Task registry. `get_task(name, **kwargs)` builds a task; `register_task` adds one."""

from __future__ import annotations

from collections.abc import Callable

from stir_core.tasks.base import (
    SPLITS,
    Example,
    StepChecker,
    Task,
    render_prompt,
    step_checker_of,
    system_prompt_of,
)

_REGISTRY: dict[str, Callable[..., Task]] = {}
_BUILTINS_LOADED = False


def register_task(name: str, factory: Callable[..., Task]) -> None:
    _REGISTRY[name] = factory


def task_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_task(name: str, **kwargs) -> Task:
    """Build the task `name`; raises ValueError naming the known tasks when it is unknown."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def _load_builtin() -> None:
    # Imported lazily so that `stir_core.tasks.base` stays import-cycle free.
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from stir_core.tasks import files, plain, planted  # noqa: F401  (they register themselves)


__all__ = ["SPLITS", "Example", "StepChecker", "Task", "get_task", "register_task", "render_prompt",
           "step_checker_of", "system_prompt_of", "task_names"]
