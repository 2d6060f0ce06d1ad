"""Shared helpers for the benchmark scripts: pick the model, time a callable."""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_bench_model(name: str | None = None):
    """The embedded testbed model when it exists, else a tiny random Llama built on the fly."""
    from stir_core.runtime.model import DEFAULT_MODEL_DIR, load_model

    if name:
        return load_model(name, device="cpu")
    if (DEFAULT_MODEL_DIR / "config.json").exists():
        return load_model(None, device="cpu")
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.tiny_model import build_tiny_model

    return load_model(str(build_tiny_model(Path("/tmp/stir-bench-tiny"))), device="cpu")


def emit(lines: list[str], out: str | None) -> None:
    """Print a report and, with `out`, write it there too."""
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def best_of(fn, repeats: int = 3) -> float:
    """Minimum wall time of `repeats` calls (the least noisy estimate on a shared machine)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
