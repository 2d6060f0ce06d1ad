"""Cached loaders and the generation lock: everything the pages share across reruns and users.

- the model with its engine, and library directories: `app.loading`'s caches (one per process, shared by
  every browser session, filled in the background from the server's start); libraries are keyed by their
  manifest's content hash, so a rebuilt directory reloads. `st.cache_resource`: a library checked against a
  model.
- `st.cache_data`: projections, similarity matrices, lens readouts and generated traces (per arguments).
- `generation(...)`: every decode (Playground, Evaluate, Build) takes the model's FIFO turn
  (`stir_core.runtime.locks.model_lock`), so concurrent users never share a forward and are served in order; long
  jobs take it per batch (`stir_core.io.jobs`), so a Playground request waits at most one batch.

Zero configuration: the embedded model and the shipped demo library. Overrides (tests, other setups):
`STIR_MODEL` (model name or path), `STIR_LIBRARY` (library directory), `STIR_RUNS` (where Build and
Evaluate write, and where the library picker looks).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from app.loading import (  # noqa: F401 - re-exported: the pages use `state.*`
    DEMO_LIBRARY,
    LIBRARY_ENV,
    MAX_MODELS,
    MODEL_ENV,
    REPO,
    RUNS_ENV,
    default_library,
    default_model,
    embedded_model_present,
    generation,
    library_file,
    library_stamp,
    loaded,
    max_tokens_cap,
    model_ready,
    runs_dir,
    start_loading,
    time_cap_s,
    use_model_threads,
)
from stir_core.analysis import projection as geo
from stir_core.analysis.lens import lens_for_model
from stir_core.config import StirConfig, online_config
from stir_core.library.checks import fit_prompt, library_model_check
from stir_core.library.format import LibraryError, ToolLibrary, validate_for_model
from stir_core.online.methods import run_method
from stir_core.online.trace import Trace
from stir_core.runtime.engine import Engine
from stir_core.runtime.model import LoadedModel


def find_dirs(root: Path, marker: str, max_depth: int = 3) -> list[Path]:
    """Directories under `root` (to `max_depth`) that hold `marker`, newest first."""
    if not root.is_dir():
        return []
    found = []
    for depth in range(max_depth + 1):
        pattern = "/".join(["*"] * depth + [marker])
        found += [p.parent for p in root.glob(pattern) if not p.parent.name.startswith(".")]
    return sorted(set(found), key=lambda p: p.stat().st_mtime, reverse=True)


# --- resources (one per process) ---------------------------------------------------------------------


# The model cache is app.loading's (one future per (name, device, dtype)): no st.cache_resource here, so the
# model and its engine cannot be evicted separately or loaded twice.
def get_model(name: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    return loaded(name, device, dtype)[0]


def get_engine(name: str, device: str = "auto", dtype: str = "auto") -> Engine:
    """The model's engine, warmed up by a two-token decode."""
    return loaded(name, device, dtype)[1]


def get_library_file(path: str, stamp: str) -> ToolLibrary:
    """A library directory, read and content-validated (not yet checked against a model); app.loading's
    cache, which the server's start may already have filled."""
    return library_file(path, stamp).result()


@st.cache_resource(show_spinner="Loading the library…", max_entries=8)
def get_library(path: str, stamp: str, d_model: int, n_layers: int) -> ToolLibrary:
    """A validated library that fits the model (`stamp` only keys the cache)."""
    lib = get_library_file(path, stamp)
    validate_for_model(lib, d_model, n_layers)
    return lib


@dataclass
class Context:
    """What the sidebar picked this run; pages read it through `context()`. The model and engine are loaded
    on first use (waiting for the background load); `library` is read and content-validated, and
    `check_library()` checks it against the model."""

    model_name: str
    device: str
    dtype: str
    library_path: str | None = None
    library: ToolLibrary | None = None
    library_error: str | None = None
    allow_mismatch: bool = False  # the sidebar's "use a library mined on another model"
    library_warnings: tuple[str, ...] = ()

    @property
    def model_key(self) -> tuple[str, str, str]:
        return (self.model_name, self.device, self.dtype)

    @property
    def model(self) -> LoadedModel:
        return get_model(*self.model_key)

    @property
    def engine(self) -> Engine:
        return get_engine(*self.model_key)

    def online_config(self) -> StirConfig:
        """Where every page starts: the defaults, then the library's recommended settings."""
        return online_config(self.library)

    @property
    def ready(self) -> bool:
        return model_ready(*self.model_key)

    @property
    def library_key(self) -> tuple[str, str]:
        return (self.library_path or "", library_stamp(self.library_path) if self.library_path else "")

    def check_library(self) -> ToolLibrary | None:
        """The library if it fits the model (waits for the model); else None with `library_error` set."""
        if self.library is None:
            return None
        try:
            lib = get_library(*self.library_key, self.model.d_model, self.model.n_layers)
            self.library_warnings = tuple(library_model_check(lib, self.model.model_id, self.model.revision,
                                                              self.allow_mismatch))
            return lib
        except LibraryError as err:
            self.library_error = str(err)
            self.library = None
            return None


CONTEXT_KEY = "stir_context"


def exposure_notice() -> str | None:
    """What every page says when the server listens beyond this machine (None on 127.0.0.1)."""
    from stir_core.io.paths import allowed_roots, is_loopback

    address = st.get_option("server.address")
    if is_loopback(address):
        return None
    roots = ", ".join(f"`{r}`" for r in allowed_roots())
    return (f"This app is served on {address or 'every network interface'}: anyone who can reach it can run "
            f"the model. Libraries and models are read only under {roots} (STIR_ALLOWED_ROOTS adds folders).")


def context() -> Context:
    """The Context the entry script stored for this run; stops the page with a message if there is none."""
    ctx = st.session_state.get(CONTEXT_KEY)
    if ctx is None:
        st.error("No model is loaded: open the app through its entry script (`streamlit run app/Home.py`).")
        st.stop()
    return ctx


def library_of(path: str, stamp: str, model_key: tuple[str, str, str]) -> ToolLibrary:
    """The library at `path` (cached by `stamp`), checked against the model `model_key` names."""
    m = get_model(*model_key)
    return get_library(path, stamp, m.d_model, m.n_layers)


# --- cached data -------------------------------------------------------------------------------------


def _source_matrix(lib: ToolLibrary, source: str) -> tuple[torch.Tensor, np.ndarray]:
    """(rows of keys or vectors, their library row indices). Vectors: corrections only (anchors have none)."""
    if source == "keys":
        return lib.keys, np.arange(len(lib))
    if source == "vectors":
        rows = np.flatnonzero(lib.table["kind"].to_numpy() == "correction")
        return lib.vectors[torch.from_numpy(rows)], rows
    raise ValueError(f"unknown source {source!r}; use keys or vectors")


@st.cache_data(show_spinner="Projecting…", max_entries=64)
def projection(
    path: str,
    stamp: str,
    source: str,
    method: str,
    dims: int,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> dict[str, Any]:
    """{"coords" [n, dims], "rows" (library rows), "method", "note", "explained"} for one set of parameters."""
    lib = get_library_file(path, stamp)
    x, rows = _source_matrix(lib, source)
    if len(rows) == 0:
        return {
            "coords": np.zeros((0, dims)),
            "rows": rows,
            "method": method,
            "note": "no entries",
            "explained": None,
        }
    p = geo.project(x, method, dims, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist)
    return {"coords": p.coords, "rows": rows, "method": p.method, "note": p.note, "explained": p.explained}


@st.cache_data(max_entries=32)
def similarity(path: str, stamp: str, source: str, limit: int) -> dict[str, Any]:
    """Cosine matrix of up to `limit` entries, ordered by layer, control point, kind, then quality (best first)."""
    lib = get_library_file(path, stamp)
    x, rows = _source_matrix(lib, source)
    t = lib.table.iloc[rows].assign(_pos=np.arange(len(rows)))
    t = t.sort_values(["layer", "control_point", "kind", "quality"], ascending=[True, True, False, False])
    order = t["_pos"].to_numpy()
    keep = order[:limit]
    sims = (
        geo.cosine_matrix(x[torch.as_tensor(keep.tolist(), dtype=torch.long)])
        if len(keep)
        else np.zeros((0, 0))
    )
    return {"sims": sims, "rows": rows[keep], "total": len(rows)}


@st.cache_data(max_entries=256)
def neighbours(path: str, stamp: str, source: str, row: int, k: int = 5) -> list[tuple[int, float]]:
    """Nearest neighbours of library row `row` among the source rows, as (library row, cosine)."""
    lib = get_library_file(path, stamp)
    x, rows = _source_matrix(lib, source)
    where = np.flatnonzero(rows == row)
    if not len(where):
        return []
    return [(int(rows[j]), s) for j, s in geo.nearest_neighbors(x, int(where[0]), k)]


@st.cache_data(max_entries=256)
def lens(
    path: str, stamp: str, model_key: tuple[str, str, str], row: int, k: int = 10, final_norm: bool = True
) -> dict[str, Any]:
    lib = library_of(path, stamp, model_key)
    out = lens_for_model(get_model(*model_key), lib.vectors[row], k=k, final_norm=final_norm)
    return {
        "promoted": out.promoted,
        "suppressed": out.suppressed,
        "texts": out.texts,
        "final_norm": out.final_norm,
    }


@st.cache_data(max_entries=64, show_spinner=False)
def find_example(task_name: str, example_id: str, split_hint: str | None = None) -> dict[str, Any] | None:
    """The task example a tool was mined from (searching the mining split first), or None."""
    from stir_core.analysis.dashboard import find_example as find

    return find(task_name, example_id, split_hint)


@st.cache_data(max_entries=512, show_spinner=False)
def run_trace(
    model_key: tuple[str, str, str], library_key: tuple[str, str], prompt: str, method: str, config_json: str
) -> dict[str, Any]:
    """Decode one formatted prompt with one method (under the lock): {"trace": Trace dict, "wall_s"}."""
    engine = get_engine(*model_key)
    lib = library_of(*library_key, model_key) if library_key[0] else None
    cfg = StirConfig(**json.loads(config_json))
    with generation(*model_key):
        t0 = time.perf_counter()
        trace = run_method(engine, [prompt], method, lib, cfg)[0]
        wall = time.perf_counter() - t0
    return {"trace": trace.to_dict(), "wall_s": wall}


def generate(ctx: Context, prompt_text: str, method: str, config: StirConfig,
             on_wait=None) -> tuple[Trace, float]:
    """One column of the Playground: format the raw prompt for the model (truncated, with a warning in the
    trace, when it does not fit the context), wait for the model's turn (`on_wait(position)` while queued),
    decode (cached per arguments). The library's warnings (an allowed model mismatch) go into the trace."""
    model = ctx.model
    formatted, tokens, warning = fit_prompt(model, model.format_prompt(prompt_text), config.max_new_tokens)
    if tokens != config.max_new_tokens:
        config = config.with_overrides(max_new_tokens=tokens)
    with generation(*ctx.model_key, on_wait=on_wait):
        out = run_trace(
            ctx.model_key,
            ctx.library_key if ctx.library is not None else ("", ""),
            formatted,
            method,
            json.dumps(asdict(config), sort_keys=True),
        )
    trace = Trace.from_dict(out["trace"])
    trace.warnings += ([warning] if warning else []) + (list(ctx.library_warnings) if ctx.library else [])
    return trace, float(out["wall_s"])


def memory_in_use(device: torch.device | str) -> dict[str, float]:
    """Resident memory of this process (MiB), torch's thread count and, on CUDA, the GPU memory torch
    holds (MiB)."""
    out: dict[str, float] = {}
    try:
        import psutil

        out["process_mib"] = psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil ships with streamlit
        import resource

        out["process_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["torch_threads"] = torch.get_num_threads()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
        out["gpu_reserved_mib"] = torch.cuda.memory_reserved() / 2**20
    return out
