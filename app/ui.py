"""Small Streamlit widgets shared by the pages: export menus and the per-method knob editors."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import export
from stir_core import config as config_schema
from stir_core.config import StirConfig, groups, knobs

# Knobs each method reads (StirConfig fields); the Playground shows exactly these per column. Types, ranges,
# help and groups come from the one schema (stir_core.config); the view-wide knobs are set once per view.
_PER_COLUMN = tuple(k for k in knobs(StirConfig) if k not in export.VIEW_GLOBAL_KNOBS)
STIR_KNOBS = tuple(k for k in _PER_COLUMN if k != "static_scale")
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "vanilla": (),
    "no_memory": (),
    "static": ("static_scale", "positions", "layer"),
    "static_cp": ("static_scale", "positions", "layer"),
    "static_norm": ("static_scale", "positions", "layer"),
    "stir": STIR_KNOBS,
    "no_probing": tuple(k for k in STIR_KNOBS if k not in ("probe_tokens", "probe_scale", "preview")),
    "random_vector": STIR_KNOBS,
    "random_choice": STIR_KNOBS,
}


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~$])")


def md_text(text: object) -> str:
    """`text` (a library-, model- or user-supplied string: a path, an error, a tool id) escaped for
    Streamlit's Markdown, so it shows literally: `__init__.py` stays `__init__.py`, not a bold "init.py",
    and `:red[x]` or `$x$` are not styled. Use it for every such string passed to st.markdown/error/…"""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def md_code(text: object) -> str:
    """`text` as one inline code span that it cannot leave: the fence is one backtick longer than the longest
    run of backticks inside (CommonMark), so a library's `id` holding a backtick stays code, and nothing in a
    code span is read as Markdown or HTML (an `![x](url)` or `<img>` stays text; tests/test_browser.py)."""
    text = str(text).replace("\n", " ")
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def export_menu(
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
    export_menu(name, key, items, None if ok else why)


def table_exports(df: pd.DataFrame, name: str, key: str) -> None:
    """An "Export" menu for a table: CSV and JSON records."""
    export_menu(
        name,
        key,
        [("CSV", "csv", lambda: export.table_csv(df)), ("JSON", "json", lambda: export.table_json(df))],
    )


def knob_editor(method: str, prefix: str, layers: list[int], defaults: dict[str, Any]) -> dict[str, Any]:
    """Widgets for the knobs `method` reads (see `config_editor`)."""
    return config_editor(StirConfig, METHOD_KNOBS.get(method, ()), prefix, defaults, layers)


def config_editor(cls: Any, wanted: tuple[str, ...] | list[str], prefix: str, defaults: dict[str, Any],
                  layers: list[int] | None = None) -> dict[str, Any]:
    """Widgets for the fields `wanted` of a config dataclass, grouped as in its schema, with its help;
    returns {field: value} (widget keys `{prefix}_{field}`), each value through the schema's caster (bad
    values raise one ValueError naming each bad field, after every widget has rendered)."""
    schema = knobs(cls)
    out: dict[str, Any] = {}
    errors: list[str] = []
    for group, names in groups(cls).items():
        names = [n for n in names if n in wanted]
        if not names:
            continue
        st.caption(group.capitalize())
        for knob in names:
            k, key = schema[knob], f"{prefix}_{knob}"
            if key not in st.session_state:
                st.session_state[key] = _widget_value(knob, defaults.get(knob), layers, cls)
            help_ = f"{k.help} ({k.describe()})"
            if k.layer and layers is not None:
                options = ["all"] + [str(x) for x in layers]
                if st.session_state[key] not in options:
                    # e.g. a link or saved view naming a layer this library has no tools at: say so
                    st.session_state.setdefault("ui_notices", []).append(
                        f"{knob}={st.session_state[key]}: the library has no tools at that layer "
                        f"(its layers: {layers}); using all layers"
                    )
                    st.session_state[key] = "all"
                value = st.selectbox(knob, options, key=key, persist_state="session", help=help_)
            elif k.type is bool:
                value = st.checkbox(knob, key=key, persist_state="session", help=help_)
            elif k.choices is not None:
                value = st.selectbox(knob, list(k.choices), key=key, persist_state="session", help=help_)
            elif k.type is int:
                # No min/max on the widget: the browser would keep an out-of-range entry to itself (red
                # field) and the run would go on with the previous value; the schema's caster refuses it
                # below with a line naming the knob.
                value = st.number_input(knob, step=1, key=key, persist_state="session", help=help_,
                                        placeholder="none" if k.optional else None)
            elif k.type is float:
                value = st.number_input(knob, step=0.05, format="%.3f", key=key, persist_state="session",
                                        help=help_, placeholder="none" if k.optional else None)
            else:  # text, and lists of layer specs ("2, 3")
                value = st.text_input(knob, key=key, persist_state="session", help=help_)
            try:  # every widget still renders (its state is kept); the errors are raised together below
                out[knob] = config_schema.cast_value(cls, knob, None if k.layer and value == "all" else value)
            except ValueError as err:
                errors.append(str(err))
    if errors:
        raise ValueError("; ".join(errors))
    return out


def show_notices() -> None:
    """Warnings the editors recorded this run (a value they could not keep), shown once."""
    for msg in st.session_state.pop("ui_notices", []):
        st.warning(msg)


def _widget_value(knob: str, value: Any, layers: list[int] | None, cls: Any = StirConfig) -> Any:
    """A config value in the form its widget holds."""
    k = knobs(cls)[knob]
    if k.layer and layers is not None:
        return "all" if value is None else str(value)
    if value is None:
        return None
    if k.type is list:
        return ", ".join(str(v) for v in value)
    return {bool: bool, int: int, float: float}.get(k.type, str)(value)


def set_knob_widgets(prefix: str, knobs_: dict[str, Any], layers: list[int]) -> None:
    """Put knob values into the widgets' session state (before they render), e.g. from a saved view."""
    for knob, value in knobs_.items():
        st.session_state[f"{prefix}_{knob}"] = _widget_value(knob, value, layers)


def job_panel(job_key: str, title: str) -> None:
    """Progress, Cancel and the outcome of the background job whose id is in `st.session_state[job_key]`;
    refreshes itself every second while the job runs (a fragment: the rest of the page does not rerun),
    and reruns the page once when it ends. The job keeps running across reruns and page switches."""
    from stir_core.io.jobs import get_job

    @st.fragment(run_every=1.0)
    def panel() -> None:
        job = get_job(st.session_state.get(job_key))
        if job is None:
            return
        if job.active:
            st.progress(job.fraction, text=f"{title}: {job.text} {job.done}/{job.total}".strip())
            if job.info:
                st.caption(" · ".join(f"{k} {v}" for k, v in job.info.items() if not isinstance(v, dict)))
            if job.cancel_requested:
                st.caption("Cancelling after the current batch…")
            elif st.button("Cancel", key=f"x_{job_key}_cancel"):
                job.cancel()
            return
        if st.session_state.get(f"{job_key}_seen") != job.id:
            st.session_state[f"{job_key}_seen"] = job.id
            st.rerun()  # the page redraws with the finished job's results
        if job.status == "done":
            st.success(f"{title}: done in {(job.finished or job.started) - job.started:.1f} s.")
        elif job.status == "cancelled":
            st.warning(f"{title}: cancelled ({job.error}); what was finished is kept.")
        else:
            st.error(f"{title} failed: {job.error}")
            if job.detail:
                with st.expander("Details"):
                    st.code(job.detail)

    panel()
