"""Model loading in the background, with no Streamlit import (so the launcher can start it at once).

`start_loading(name, device, dtype)` loads a model, applies the thread policy, builds its engine and warms it
up, in one worker thread; it returns a future and is idempotent per (name, device, dtype). The first start of
the app spends most of its time importing TransformerLens: starting the load early lets the page draw (and
`python -m app` lets the server start) meanwhile. `app.state.get_model`/`get_engine` (st.cache_resource)
wait on these futures. `generation(...)` takes the model's turn (`stir_core.locks.model_lock`: one decode
per model at a time, first come first served, the queue position reported while waiting) and applies the
model's thread count in the decoding thread.

Per-request budget (so one visitor cannot hold the model for minutes): `STIR_APP_MAX_TOKENS` caps
max_new_tokens (default 512) and `STIR_APP_TIME_CAP_S` caps one Playground request (default 60 s, checked
between columns; each column releases the model, so other sessions' requests interleave).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from stir_core.engine import Engine
from stir_core.library import MANIFEST_FILE
from stir_core.locks import model_lock
from stir_core.model import DEFAULT_MODEL_DIR, LoadedModel, load_model

REPO = Path(__file__).resolve().parents[1]
DEMO_LIBRARY = REPO / "assets" / "demo-library"
MODEL_ENV, LIBRARY_ENV, RUNS_ENV = "STIR_MODEL", "STIR_LIBRARY", "STIR_RUNS"
MAX_TOKENS_ENV, TIME_CAP_ENV = "STIR_APP_MAX_TOKENS", "STIR_APP_TIME_CAP_S"


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError as err:
        raise ValueError(f"{name}={raw!r} is not a number") from err
    if v <= 0:
        raise ValueError(f"{name}={raw!r} must be > 0")
    return v


def max_tokens_cap() -> int:
    """The most new tokens one app request may decode per column."""
    return int(_env_number(MAX_TOKENS_ENV, 512))


def time_cap_s() -> float:
    """Seconds one Playground request may decode (checked between columns)."""
    return _env_number(TIME_CAP_ENV, 60.0)


def default_model() -> str:
    return os.environ.get(MODEL_ENV) or "embedded"


def default_library() -> str | None:
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return env
    return str(DEMO_LIBRARY) if (DEMO_LIBRARY / MANIFEST_FILE).is_file() else None


def runs_dir() -> Path:
    return Path(os.environ.get(RUNS_ENV) or REPO / "runs")


def embedded_model_present() -> bool:
    return (DEFAULT_MODEL_DIR / "config.json").is_file()


THREADS_ENV = "STIR_TORCH_THREADS"


def thread_policy() -> int | str | None:
    """The `threads` argument for `load_model`: `STIR_TORCH_THREADS` as an int (0: leave torch's default
    alone), else "auto" (stir_core.model.configure_threads: one thread for small models on CPU)."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if not env:
        return "auto"
    try:
        n = int(env)
    except ValueError as err:
        raise ValueError(f"{THREADS_ENV}={env!r} is not an integer") from err
    return n if n > 0 else None


# One future per (name, device, dtype); at most MAX_MODELS kept alive.
_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stir-model-load")
_LOADS: dict[tuple[str, str, str], Future] = {}
_LOADS_LOCK = threading.Lock()
MAX_MODELS = 2


_THREADS: dict[tuple[str, str, str], int] = {}  # torch thread count chosen when each model loaded


def _load(name: str, device: str, dtype: str) -> tuple[LoadedModel, Engine]:
    model = load_model(name, device=device, dtype=dtype, threads=thread_policy())
    _THREADS[(name, device, dtype)] = torch.get_num_threads()
    engine = Engine(model)
    with model_lock(model):  # warm-up: first-call allocations happen here, not in the user's first comparison
        engine.generate([model.format_prompt("1+1=")], 2)
    return model, engine


@contextlib.contextmanager
def generation(name: str, device: str = "auto", dtype: str = "auto",
               on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
    """Take the model's turn (FIFO; `on_wait(position)` while queued) and use the model's torch thread
    count in *this* thread.

    Why per thread: `torch.set_num_threads` (what load_model's thread policy calls) does not reach a thread
    whose OpenMP state already exists, and Streamlit decodes in its script threads, not the loader's.
    Measured on 2 shared cores: 64 tokens of the embedded model took 12-15 s in a thread left at 2 threads,
    0.4 s at 1."""
    model = start_loading(name, device, dtype).result()[0]
    with model_lock(model).turn(on_wait=on_wait):
        n = _THREADS.get((name, device, dtype))
        if n is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)
        yield


def use_model_threads(name: str, device: str = "auto", dtype: str = "auto") -> None:
    """Apply the model's torch thread count in this thread (a background job's), without taking its turn:
    jobs take the model's lock per batch, inside stir_core."""
    n = _THREADS.get((name, device, dtype))
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def start_loading(name: str, device: str = "auto", dtype: str = "auto") -> Future:
    """Start loading a model (and its warmed-up engine) in the background; idempotent. A failed load is
    retried on the next call."""
    key = (name, device, dtype)
    with _LOADS_LOCK:
        fut = _LOADS.get(key)
        if fut is None or (fut.done() and fut.exception() is not None):
            for old in [k for k, f in _LOADS.items() if k != key and f.done()][
                : max(0, len(_LOADS) - MAX_MODELS + 1)
            ]:
                del _LOADS[old]  # keep at most MAX_MODELS models alive
            fut = _LOADS[key] = _LOADER.submit(_load, name, device, dtype)
    return fut


def model_ready(name: str, device: str = "auto", dtype: str = "auto") -> bool:
    fut = _LOADS.get((name, device, dtype))
    return fut is not None and fut.done() and fut.exception() is None
