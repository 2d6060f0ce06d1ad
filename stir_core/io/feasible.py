"""Feasibility at the door: sizes checked against what the task can produce and the machine's memory,
before anything is written to `--out` and before any model loads (no torch needed).

    check_problems(task, split, n, name)      n distinct problems must exist in the split
    check_memory(need_bytes, what)            an estimate above the machine's physical memory is refused
    eval_bytes(n, n_methods, max_new_tokens)  host memory an evaluation's traces take, at least
    kv_cache_bytes(rows, positions, ...)      a decode batch's key/value cache, at least

The estimates are lower bounds (what must be held at once), so a refusal means the run cannot fit;
passing the check does not promise that it will.
"""

from __future__ import annotations

import os
from typing import Any

from stir_core.io.bounded import InputError

# One generated token as an evaluation keeps it, at least: a TokenRecord alone is ~290 bytes in CPython
# (tracemalloc over 100k records); the trace's JSON copy in the examples table comes on top.
TOKEN_RECORD_BYTES = 250


def physical_memory() -> int | None:
    """Bytes of physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.3g} GiB"


def check_memory(need: int, what: str, hint: str = "") -> None:
    """Refuse when `need` bytes (a lower bound) exceed the machine's physical memory."""
    have = physical_memory()
    if have is not None and need > have:
        raise InputError(f"{what} needs at least {_gib(need)} of memory, more than this machine has "
                         f"({_gib(have)}){'; ' + hint if hint else ''}; nothing was written")


def eval_bytes(n: int, n_methods: int, max_new_tokens: int) -> int:
    """Host memory the traces of an evaluation hold at the end (every method's tokens), at least."""
    return n * n_methods * max_new_tokens * TOKEN_RECORD_BYTES


def kv_cache_bytes(rows: int, positions: int, n_layers: int, d_model: int, bytes_per_value: int = 2) -> int:
    """A decode batch's key/value cache: rows × positions × layers × (K and V) × d_model values, at the
    narrowest dtype (2 bytes; grouped-query attention can make it smaller: callers pass the KV width)."""
    return rows * positions * n_layers * 2 * d_model * bytes_per_value


def check_problems(task: Any, split: str, n: int, name: str) -> None:
    """Refuse `n` problems of `split` when the task cannot produce that many distinct ones (its
    `capacity(split)`, where it has one; file tasks are counted when they are read)."""
    capacity = getattr(task, "capacity", None)
    if capacity is None:
        return
    cap = capacity(split)
    if n > cap:
        raise InputError(f"{name}={n}: task {task.name!r} can produce at most about {cap} distinct "
                         f"{split!r} problems; lower it")
