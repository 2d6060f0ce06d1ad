"""Small Streamlit widgets shared by the pages: export menus and the per-method knob editors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import export
from stir_core.engine import POSITIONS

# Knobs each method reads (StirConfig fields); the Playground shows exactly these per column.
STIR_KNOBS = (
    "k_scale",
    "tau_null",
    "top_l",
    "probe_tokens",
    "positions",
    "layer",
    "center_keys",
    "beta",
    "rho",
)
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "vanilla": (),
    "no_memory": (),
    "static": ("static_scale", "positions", "layer"),
    "static_cp": ("static_scale", "positions", "layer"),
    "static_norm": ("static_scale", "positions", "layer"),
    "stir": STIR_KNOBS,
    "no_probing": tuple(k for k in STIR_KNOBS if k != "probe_tokens"),
    "random_vector": STIR_KNOBS,
    "random_choice": STIR_KNOBS,
}
KNOB_HELP = {
    "k_scale": "α = k_scale · Score of the winner",
    "tau_null": "τ_null: commit only when the best score ≥ τ_null",
    "top_l": "L: corrections previewed per control point",
    "probe_tokens": "tokens decoded per preview (discarded, counted)",
    "positions": "where the committed vector is added",
    "layer": "restrict to one library layer",
    "center_keys": "subtract the library's mean key before the cosine",
    "beta": "β: weight of the value Â in the score",
    "rho": "ρ: weight of the probe gain in the score",
    "static_scale": "α of the static vector",
}


def _export_menu(
    name: str, key: str, items: list[tuple[str, str, Callable[[], bytes]]], note: str | None = None
) -> None:
    """A popover of download buttons; each file is produced only when its button is clicked."""
    with st.popover("Export", icon=":material/download:"):
        if note:
            st.caption(note)
        for label, ext, data in items:
            st.download_button(
                label,
                data=data,
                file_name=f"{name}.{ext}",
                mime=export.MIME[ext],
                key=f"{key}_{ext}",
                on_click="ignore",
                width="stretch",
            )


def figure_exports(fig: go.Figure, name: str, key: str) -> None:
    """An "Export" menu for a figure: PNG/SVG/PDF at paper-column size (Kaleido + the system Chromium) and
    standalone HTML. Without a browser the menu says so and offers HTML only."""
    ok, why = export.image_export_status()
    items: list[tuple[str, str, Callable[[], bytes]]] = []
    if ok:
        items += [
            (f"{fmt.upper()} (paper column)", fmt, lambda fmt=fmt: export.figure_bytes(fig, fmt))
            for fmt in export.IMAGE_FORMATS
        ]
    items.append(("HTML (interactive, standalone)", "html", lambda: export.figure_html(fig)))
    _export_menu(name, key, items, None if ok else why)


def table_exports(df: pd.DataFrame, name: str, key: str) -> None:
    """An "Export" menu for a table: CSV and JSON records."""
    _export_menu(
        name,
        key,
        [("CSV", "csv", lambda: export.table_csv(df)), ("JSON", "json", lambda: export.table_json(df))],
    )


def knob_editor(method: str, prefix: str, layers: list[int], defaults: dict[str, Any]) -> dict[str, Any]:
    """Widgets for the knobs `method` reads; returns {knob: value} (widget keys `{prefix}_{knob}`)."""
    out: dict[str, Any] = {}
    for knob in METHOD_KNOBS.get(method, ()):
        key = f"{prefix}_{knob}"
        if key not in st.session_state:
            st.session_state[key] = _widget_value(knob, defaults.get(knob), layers)
        help_ = KNOB_HELP.get(knob)
        if knob in ("k_scale", "tau_null", "static_scale", "beta", "rho"):
            out[knob] = float(
                st.number_input(knob, step=0.05, format="%.3f", key=key, persist_state="session", help=help_)
            )
        elif knob in ("top_l", "probe_tokens"):
            out[knob] = int(
                st.number_input(
                    knob, min_value=1, max_value=64, step=1, key=key, persist_state="session", help=help_
                )
            )
        elif knob == "positions":
            out[knob] = st.selectbox(knob, POSITIONS, key=key, persist_state="session", help=help_)
        elif knob == "layer":
            options = ["all"] + [str(x) for x in layers]
            if st.session_state[key] not in options:
                st.session_state[key] = "all"
            choice = st.selectbox(knob, options, key=key, persist_state="session", help=help_)
            out[knob] = None if choice == "all" else int(choice)
        elif knob == "center_keys":
            out[knob] = bool(st.checkbox(knob, key=key, persist_state="session", help=help_))
    return out


def _widget_value(knob: str, value: Any, layers: list[int]) -> Any:
    """A StirConfig value in the form its widget holds."""
    if knob == "layer":
        return "all" if value is None else str(value)
    if knob in ("top_l", "probe_tokens"):
        return int(value)
    if knob == "center_keys":
        return bool(value)
    if knob == "positions":
        return str(value)
    return float(value)


def set_knob_widgets(prefix: str, knobs: dict[str, Any], layers: list[int]) -> None:
    """Put knob values into the widgets' session state (before they render), e.g. from a saved view."""
    for knob, value in knobs.items():
        st.session_state[f"{prefix}_{knob}"] = _widget_value(knob, value, layers)
