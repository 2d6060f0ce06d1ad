"""Cached computations behind the Library page's tool dashboard (all the work is `stir_core.analysis.dashboard`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from app.loading import generation, runs_dir
from app.state import find_dirs, get_engine, get_model, library_of
from stir_core.analysis import dashboard as dash
from stir_core.analysis.evaluate import load_results
from stir_core.online.methods import StirConfig


def eval_runs() -> list[Path]:
    """Saved evaluation runs (`stir eval --out` / the Evaluate page) under the runs directory, newest first."""
    return [p for p in find_dirs(runs_dir(), "examples.jsonl", max_depth=4) if (p / "summary.json").is_file()]


def run_stamp(run: str | None) -> str:
    """What changes when an evaluation run's examples are rewritten (a cache key); "" for none."""
    if not run:
        return ""
    f = Path(run) / "examples.jsonl"
    return f"{f.stat().st_mtime_ns}:{f.stat().st_size}" if f.is_file() else ""


@st.cache_data(max_entries=8, show_spinner="Reading the run…")
def run_examples(run: str, stamp: str) -> pd.DataFrame:
    return load_results(run).examples


@st.cache_data(max_entries=8, show_spinner="Decoding vanilla and STIR over the problems…")
def on_demand(model_key: tuple[str, str, str], library_key: tuple[str, str], task: str, n: int, split: str,
              seed: int, config_json: str) -> pd.DataFrame:
    lib = library_of(*library_key, model_key)
    with generation(*model_key):
        return dash.run_on_demand(get_engine(*model_key), lib, task, n, split, seed,
                                  StirConfig(**json.loads(config_json)))


@st.cache_data(max_entries=128, show_spinner="Building the tool dashboard…")
def tool_dashboard(model_key: tuple[str, str, str], library_key: tuple[str, str], tool_id: str,
                   source: str, source_stamp: str, _examples: pd.DataFrame | None, prompt: str | None,
                   scales: tuple[float, ...], positions: str, sweep_tokens: int) -> dash.ToolDashboard:
    """`source` + `source_stamp` key the cache on the run (the frame `_examples` is not hashed)."""
    lib = library_of(*library_key, model_key)
    model = get_model(*model_key)
    formatted = model.format_prompt(prompt) if prompt else None
    with generation(*model_key):
        return dash.build(lib, tool_id, model, get_engine(*model_key), _examples, source or None, formatted,
                          scales, sweep_tokens, positions)


@st.cache_data(max_entries=16, show_spinner="Comparing the libraries…")
def library_diff(path_a: str, stamp_a: str, path_b: str, stamp_b: str, source: str, min_cos: float):
    from stir_core.analysis.diff import diff_libraries
    from stir_core.library.format import ToolLibrary

    return diff_libraries(ToolLibrary.load(path_a), ToolLibrary.load(path_b), source, min_cos)


@st.cache_data(max_entries=32, show_spinner="Exporting…")
def export_file(path: str, stamp: str, fmt: str, ids: tuple[str, ...], rule: str, scale: float) -> tuple[bytes, str]:
    from stir_core.library.format import ToolLibrary
    from stir_core.library.interop.export import export_bytes

    return export_bytes(ToolLibrary.load(path), fmt, list(ids) or None, "correction", rule, scale)
