"""Model and library loading in the background, with no Streamlit and no torch import at module level (so
the launcher can start it at once and the first page can paint before torch is imported).

`start_loading(name, device, dtype)` imports torch/TransformerLens, loads a model, applies the thread policy,
builds its engine and warms it up, in one worker thread; it returns a future and is idempotent per (name,
device, dtype). `_LOADS` is THE model cache of the process (at most MAX_MODELS): `app.state.get_model` and
`get_engine` only wait on these futures, so the model and its engine can never be evicted separately or
loaded twice. `library_file(path, stamp)` is the one cache of library directories read from disk.
`start_defaults()` starts both for the zero-configuration defaults: the launcher (`python -m app`) and
app/serve.py's start hook call it as the server starts, before any browser connects; app/Home.py calls it
too (a no-op then). The first start of the app spends most of its time importing torch and TransformerLens
(several seconds on 2 cores): doing that in the loader thread lets the server come up and the page paint
meanwhile.

Decode graphs (issue #20): with graphs on (CUDA, or `STIR_GRAPHS=eager`), a loaded engine decodes eagerly
while one daemon thread per load captures the steps the Playground's methods use
(`stir_core.online.warmup.warm_graphs`: one short decode per method, each in its own turn on the model);
`graph_status(...)` is what the sidebar shows, the capture time on its own line (also in the server's log).

`generation(...)` takes the model's turn (`stir_core.runtime.locks.model_lock`: one decode per model at a time,
first come first served, the queue position reported while waiting) and applies the model's thread count in
the decoding thread.

Per-request budget (so one visitor cannot hold the model for minutes): `STIR_APP_MAX_TOKENS` caps
max_new_tokens (default 512) and `STIR_APP_TIME_CAP_S` caps one Playground request (default 60 s, checked
between columns; each column releases the model, so other sessions' requests interleave).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from stir_core.io.layout import DEFAULT_MODEL_DIR, DEMO_LIBRARY, MANIFEST_FILE

if TYPE_CHECKING:  # heavy (torch): imported inside the functions that need them, in the loader thread
    from stir_core.library.format import ToolLibrary
    from stir_core.online.warmup import GraphStatus
    from stir_core.runtime.engine import Engine
    from stir_core.runtime.model import LoadedModel

REPO = Path(__file__).resolve().parents[1]
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
    alone), else "auto" (stir_core.runtime.model.configure_threads: one thread for small models on CPU)."""
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

# The app's heavy modules (torch, pandas, plotly, stir_core, through these), imported first by the loader
# thread. Two threads importing overlapping module graphs at once can see a partially initialised module
# (Python's import deadlock avoidance: "partially initialized module 'pandas' has no attribute 'Series'",
# seen here), so the script thread (app/Home.py) and the library reader wait for this before importing them;
# after it, only the model load (TransformerLens) imports in the background, over modules already complete.
APP_MODULES = ("app.state", "app.export", "app.figures", "app.ui")
_IMPORTED = threading.Event()
_IMPORTS: list[Future] = []


def _import_app_modules() -> None:
    try:
        for name in APP_MODULES:
            importlib.import_module(name)
    finally:  # on failure the waiters go on and their own import raises the real error
        _IMPORTED.set()


def start_imports() -> None:
    """Queue the import of APP_MODULES on the loader thread (once), ahead of any model load."""
    with _LOADS_LOCK:
        if not _IMPORTS:
            _IMPORTS.append(_LOADER.submit(_import_app_modules))


def imports_done() -> bool:
    return _IMPORTED.is_set()


def wait_imports() -> None:
    """Start the app's heavy imports in the loader thread if needed, and wait until they are done."""
    start_imports()
    _IMPORTED.wait()


_THREADS: dict[tuple[str, str, str], int] = {}  # torch thread count chosen when each model loaded
READY_LINE = "stir-workbench: model ready:"


def _load(name: str, device: str, dtype: str) -> tuple[LoadedModel, Engine]:
    import torch

    from stir_core.io.paths import PathNotAllowed, is_path_like
    from stir_core.online.warmup import start_status
    from stir_core.runtime.engine import Engine
    from stir_core.runtime.locks import model_lock
    from stir_core.runtime.model import ModelLoadError, load_model
    from stir_core.runtime.scheduler import generate

    if name != "embedded" and is_path_like(name):
        try:
            allowed(name, "model")
        except PathNotAllowed as err:
            raise ModelLoadError(str(err)) from None
    t0 = time.perf_counter()
    model = load_model(name, device=device, dtype=dtype, threads=thread_policy())
    _THREADS[(name, device, dtype)] = torch.get_num_threads()
    engine = Engine(model)
    # Decode graphs: capture off from here (this warm-up too, so every capture is timed in the status);
    # a background thread captures them once the load is done. Before the engine is handed to anyone.
    _GRAPHS[(name, device, dtype)] = start_status(engine)
    with model_lock(model):  # warm-up: first-call allocations happen here, not in the user's first comparison
        generate(engine, [model.format_prompt("1+1=")], 2)
    _start_graph_warmup((name, device, dtype), model, engine)
    # one line in the server's log: when the model became usable (tests/test_app_start.py waits for it)
    print(f"{READY_LINE} {name} {device} {dtype} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return model, engine


# Decode graphs captured in the background after a load (`stir_core.online.warmup`): the latest status per
# (name, device, dtype), and the one warm-up thread per load (tests join it).
GRAPH_WARM_TOKENS = 16  # new tokens per warm-up decode: short, so a request waits at most one of them
GRAPH_WARM_PROMPT = "1+1="
GRAPHS_LINE = "stir-workbench:"
_GRAPHS: dict[tuple[str, str, str], GraphStatus] = {}
_GRAPH_THREADS: dict[tuple[str, str, str], threading.Thread] = {}


def _graph_runs(model: LoadedModel, engine: Engine) -> list[Callable[[], object]]:
    """One short decode per Playground method, with the default library (when it fits the model) and its
    default config: the pools, steer hooks and capture layers the app's default requests use."""
    from stir_core.config import online_config
    from stir_core.library.format import LibraryError, validate_for_model
    from stir_core.online.methods import run_method
    from stir_core.online.warmup import offered_methods

    lib, path = None, default_library()
    if path is not None:
        try:
            lib = library_file(path, library_stamp(path)).result()
            validate_for_model(lib, model.d_model, model.n_layers)
        except LibraryError:  # the sidebar says why; the Playground then offers vanilla and no_memory only
            lib = None
    cfg = online_config(lib)
    cfg = cfg.with_overrides(max_new_tokens=min(GRAPH_WARM_TOKENS, cfg.max_new_tokens))
    prompt = model.format_prompt(GRAPH_WARM_PROMPT)
    return [functools.partial(run_method, engine, [prompt], m, lib, cfg) for m in offered_methods(lib)]


def _start_graph_warmup(key: tuple[str, str, str], model: LoadedModel, engine: Engine) -> None:
    """With graphs on (capture already switched off by `start_status`: eager decoding meanwhile), one daemon
    thread captures the graphs and switches capture back on (`warm_graphs`). With graphs off: no thread."""
    from stir_core.online.warmup import GraphPhase, warm_graphs

    if _GRAPHS[key].phase is GraphPhase.OFF:
        return

    def report(s: GraphStatus) -> None:
        if _GRAPH_THREADS.get(key) is not threading.current_thread():
            return  # this model was dropped and loaded again meanwhile: the status is the new load's
        _GRAPHS[key] = s
        if s.phase is not GraphPhase.CAPTURING:  # the capture time on its own line of the server's log
            print(f"{GRAPHS_LINE} {key[0]}: {s.line()}", file=sys.stderr, flush=True)

    def warm() -> None:
        try:
            use_model_threads(*key)
            runs = _graph_runs(model, engine)
        except Exception as err:  # noqa: BLE001 - shown in the status; decoding stays eager
            from stir_core.online.warmup import failed

            report(failed(engine, err))
            return
        warm_graphs(engine, runs, report)

    thread = _GRAPH_THREADS[key] = threading.Thread(target=warm, name="stir-graph-warmup", daemon=True)
    thread.start()


def graph_status(name: str, device: str = "auto", dtype: str = "auto") -> GraphStatus | None:
    """Where the model's decode graphs stand (None before its load got that far); `.line()` is the text."""
    return _GRAPHS.get((name, device, dtype))


def graph_warmup(name: str, device: str = "auto", dtype: str = "auto") -> threading.Thread | None:
    """The model's background capture thread (None with graphs off, or before its load finished)."""
    return _GRAPH_THREADS.get((name, device, dtype))


@contextlib.contextmanager
def generation(name: str, device: str = "auto", dtype: str = "auto",
               on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
    """Take the model's turn (FIFO; `on_wait(position)` while queued) and use the model's torch thread
    count in *this* thread.

    Why per thread: `torch.set_num_threads` (what load_model's thread policy calls) does not reach a thread
    whose OpenMP state already exists, and Streamlit decodes in its script threads, not the loader's.
    Measured on 2 shared cores: 64 tokens of the embedded model took 12-15 s in a thread left at 2 threads,
    0.4 s at 1."""
    import torch

    from stir_core.runtime.locks import model_lock

    model = start_loading(name, device, dtype).result()[0]
    with model_lock(model).turn(on_wait=on_wait):
        n = _THREADS.get((name, device, dtype))
        if n is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)
        yield


def use_model_threads(name: str, device: str = "auto", dtype: str = "auto") -> None:
    """Apply the model's torch thread count in this thread (a background job's), without taking its turn:
    jobs take the model's lock per batch, inside stir_core."""
    import torch

    n = _THREADS.get((name, device, dtype))
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def start_loading(name: str, device: str = "auto", dtype: str = "auto") -> Future:
    """Start loading a model (and its warmed-up engine) in the background; idempotent. A failed load is
    retried on the next call."""
    return _cached(_LOADS, MAX_MODELS, (name, device, dtype), _LOADER, _load, name, device, dtype)


def _cached(cache: dict, limit: int, key: tuple, pool: ThreadPoolExecutor, fn: Callable, *args) -> Future:
    """`cache[key]`, or `pool.submit(fn, *args)` stored there when absent or failed (so a failure is retried
    on the next call); finished entries beyond `limit` are dropped, oldest first (a model and its engine
    leave together: they are one entry)."""
    start_imports()
    with _LOADS_LOCK:
        fut = cache.get(key)
        if fut is None or (fut.done() and fut.exception() is not None):
            for old in [k for k, f in cache.items() if k != key and f.done()][: max(0, len(cache) - limit + 1)]:
                del cache[old]
            fut = cache[key] = pool.submit(fn, *args)
    return fut


def model_ready(name: str, device: str = "auto", dtype: str = "auto") -> bool:
    fut = _LOADS.get((name, device, dtype))
    return fut is not None and fut.done() and fut.exception() is None


def load_error(name: str, device: str = "auto", dtype: str = "auto") -> str | None:
    """The one-line error of this model's last load if it failed, else None (does not wait, starts nothing):
    the pages disable Run on it, and the sidebar shows it instead of "Loading the model…"."""
    fut = _LOADS.get((name, device, dtype))
    if fut is None or not fut.done() or fut.exception() is None:
        return None
    err = fut.exception()
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def loaded(name: str, device: str = "auto", dtype: str = "auto") -> tuple[LoadedModel, Engine]:
    """The model and its warmed-up engine (waits for the load; a failed load raises its error)."""
    return start_loading(name, device, dtype).result()


# Library directories read from disk, keyed by (path, stamp): the stamp (`library_stamp`) changes
# when the directory is rebuilt. At most MAX_LIBRARIES kept; a failed read is retried on the next call.
_LIBS: dict[tuple[str, str], Future] = {}
MAX_LIBRARIES = 8
# Its own thread: a library is read in a fraction of a second once torch is imported, and the page needs it
# before it draws, so it must not queue behind a model load (TransformerLens' import alone takes seconds).
_LIB_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stir-library-load")


def allowed(path: str, what: str) -> None:
    """Refuse a path outside the allowed roots (`stir_core.io.paths`: a link's `?lib=`/`?model=` or a path
    box is the page visitor's choice); the defaults this server was started with are always allowed."""
    from stir_core.io.paths import check_allowed

    if path in (default_model(), default_library()):
        return
    check_allowed(path, what, extra=(runs_dir(),))  # the runs folder: where Build writes libraries


def _read_library(path: str) -> ToolLibrary:
    _IMPORTED.wait()  # see APP_MODULES
    from stir_core.io.paths import PathNotAllowed
    from stir_core.library.format import LibraryError, ToolLibrary

    try:
        allowed(path, "library")
    except PathNotAllowed as err:
        raise LibraryError(str(err)) from None
    return ToolLibrary.load(path)


def library_file(path: str, stamp: str) -> Future:
    """Start reading (and content-validating) a library directory in the loader thread; idempotent."""
    return _cached(_LIBS, MAX_LIBRARIES, (path, stamp), _LIB_LOADER, _read_library, path)


def library_stamp(path: str | Path) -> str:
    """The manifest's content hash and recommended settings (cheap to read): the cache key of a library
    directory's contents (the hash covers tensors and table; the recommendations live in the manifest)."""
    from stir_core.config import RECOMMENDED_KEY  # light: no torch
    from stir_core.io.bounded import read_json

    try:  # bounded (a manifest nested 200k deep), and nothing read outside the allowed roots
        allowed(str(path), "library")
        m = read_json(Path(path) / MANIFEST_FILE, "manifest", max_bytes=64 << 20)
        return str(m.get("content_hash", "")) + json.dumps(m.get(RECOMMENDED_KEY), sort_keys=True)
    except (OSError, ValueError, AttributeError):
        return ""


LOADING_SWITCH_S = 0.0005
_SAVED_SWITCH: list[float] = []  # Python's switch interval while a default load runs (empty otherwise)


def _responsive_while(fut: Future) -> None:
    """Until `fut` is done: (1) hand the GIL between threads every 0.5 ms (Python's default: 5 ms): the
    loader thread's imports hold the GIL for seconds, and the server thread needs it for every file and
    message it sends the first browser. Measured with bench_app's server part, twice each on 2 loaded cores
    (load average 6): first paint 2.7 s after healthy instead of 3.5 s, model ready 12.6 s instead of 14.7 s.
    (2) Pause Python's garbage collector (`stir_core.runtime.startup`; the app modules' imports too, not only the
    model load): torch + transformers + TransformerLens import ~30% faster."""
    from stir_core.runtime.startup import pause_gc  # light: no torch

    with _LOADS_LOCK:
        if _SAVED_SWITCH or fut.done():
            return
        _SAVED_SWITCH.append(sys.getswitchinterval())
        sys.setswitchinterval(LOADING_SWITCH_S)
        resume_gc = pause_gc()

    def restore(_: Future) -> None:
        with _LOADS_LOCK:
            sys.setswitchinterval(_SAVED_SWITCH.pop())
        resume_gc()

    fut.add_done_callback(restore)


def start_defaults() -> Future | None:
    """Start loading the default model (sidebar defaults: device and dtype "auto", the same cache entry) and
    then the default library, without waiting; returns the model's future (None: the embedded model is
    missing)."""
    name = default_model()
    fut = None
    if name != "embedded" or embedded_model_present():
        fut = start_loading(name, "auto", "auto")
        _responsive_while(fut)
    lib = default_library()
    if lib is not None:
        library_file(lib, library_stamp(lib))
    return fut
