"""Cold starts: Python's cyclic garbage collector paused while a process imports torch / transformers /
TransformerLens and loads a model.

Why: those imports create ~850k objects that all stay alive (modules, functions, classes), and the collector,
triggered by allocation counts, scans the growing heap over and over while they are made. Measured on the
2-core CI machine, `import streamlit, torch, pandas, transformers.modeling_utils` + the TransformerLens bridge:
3.3 s with the collector running, 2.3 s with it paused (`benchmarks/bench_app.py` prints the app's start).

The pause only defers work: when the last pause ends the collector is switched back on (if it was on
before the first), and its next runs find whatever garbage the load left (measured: 11k unreachable objects
of 850k). Not `gc.freeze()`: frozen objects are never collected, and a model evicted from the app's cache
sits in reference cycles (modules <-> hooks), so freezing would leak its weights.

    with gc_paused():                # one thread's load (load_model uses this)
        ...
    resume = pause_gc()              # a pause that ends in another thread (the app's background load)
    future.add_done_callback(lambda _: resume())
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator

_LOCK = threading.Lock()
_ACTIVE = [0]  # pauses not yet resumed
_RESTORE = [False]  # whether the collector was on when the first of them began


def pause_gc() -> Callable[[], None]:
    """Pause the collector; returns `resume()` (idempotent). Pauses nest and may overlap across threads:
    the collector comes back on when the last one resumes, and only if it was on before the first."""
    with _LOCK:
        if _ACTIVE[0] == 0:
            _RESTORE[0] = gc.isenabled()
            gc.disable()
        _ACTIVE[0] += 1
    done = [False]

    def resume() -> None:
        with _LOCK:
            if done[0]:
                return
            done[0] = True
            _ACTIVE[0] -= 1
            if _ACTIVE[0] == 0 and _RESTORE[0]:
                gc.enable()

    return resume


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The collector paused for the body (also when it raises)."""
    resume = pause_gc()
    try:
        yield
    finally:
        resume()
