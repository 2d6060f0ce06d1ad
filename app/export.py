"""Exports: figures (PNG/SVG/PDF through Kaleido and the system Chromium; standalone HTML), tables
(CSV/JSON) and saved views (JSON files and URL query parameters that reopen the same Playground view).

Kaleido never downloads a browser here: `find_browser()` looks for an installed Chromium/Chrome (or
`BROWSER_PATH`), and when there is none image export raises `ExportUnavailable` with a plain message while
HTML, CSV and JSON keep working.
"""

from __future__ import annotations

import codecs
import copy
import json
import os
import shutil
import threading
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from stir_core import config as config_schema
from stir_core.io import atomic, jsonio
from stir_core.online.methods import METHODS, StirConfig

IMAGE_FORMATS = ("png", "svg", "pdf")
MIME = {
    "png": "image/png",
    "svg": "image/svg+xml",
    "pdf": "application/pdf",
    "html": "text/html",
    "csv": "text/csv",
    "json": "application/json",
}
# Paper sizes in CSS px (96 px = 1 in): one column of a two-column paper (3.4 in) and a full width (7 in).
PAPER_SIZES = {
    "column": (326, 245, 8),
    "page": (672, 320, 9),
    "screen": (900, 520, 12),
}  # width, height, font pt
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

_kaleido_lock = threading.Lock()
_kaleido_started = False


class ExportUnavailable(RuntimeError):
    """Image export cannot run (no browser); the message says why and what still works."""


def find_browser(names: tuple[str, ...] = BROWSER_NAMES) -> str | None:
    """An installed Chromium/Chrome: `BROWSER_PATH` when it points to an executable, else the first of
    `names` on PATH. None when there is none (nothing is downloaded)."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file() and os.access(env, os.X_OK):
        return env
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def image_export_status() -> tuple[bool, str]:
    """(available, a sentence for the UI)."""
    browser = find_browser()
    if browser is None:
        return False, (
            "Image export (PNG/SVG/PDF) needs Chromium or Chrome and none is installed "
            "(Debian: `apt-get install chromium`, or set BROWSER_PATH). HTML, CSV and JSON export still work."
        )
    return True, f"Image export through Kaleido with {browser}."


def _start_kaleido() -> None:
    global _kaleido_started
    if _kaleido_started:
        return
    browser = find_browser()
    if browser is None:
        raise ExportUnavailable(image_export_status()[1])
    import kaleido

    os.environ["BROWSER_PATH"] = browser  # Kaleido/choreographer use this browser instead of fetching one
    kaleido.start_sync_server(mathjax=False, silence_warnings=True)
    _kaleido_started = True


def paper_figure(fig: go.Figure, size: str = "column") -> go.Figure:
    """A copy sized and styled for a paper: fixed width/height in px, DejaVu Sans at a small size."""
    if size not in PAPER_SIZES:
        raise ValueError(f"unknown size {size!r}; use one of {sorted(PAPER_SIZES)}")
    w, h, pt = PAPER_SIZES[size]
    out = go.Figure(copy.deepcopy(fig.to_dict()))
    small = size != "screen"
    out.update_layout(
        width=w,
        height=h,
        font={"family": "DejaVu Sans", "size": pt},
        margin={"l": 48, "r": 12, "t": 28 if out.layout.title.text else 10, "b": 40} if small else None,
        legend={"font": {"size": pt - 1}},
    )
    out.update_annotations(font_size=pt)
    for (
        trace
    ) in out.data:  # text drawn inside cells (token labels): smaller, or dropped when cells get narrow
        if isinstance(trace.meta, dict) and trace.meta.get("role") == "cell-text":
            rng = out.layout.xaxis.range
            span = (rng[1] - rng[0]) if rng else max(1, len(set(trace.x)))
            if (w - 60) / span < 9:
                trace.visible = False
            else:
                trace.textfont.size = min(trace.textfont.size or pt, pt)
    return out


def figure_bytes(fig: go.Figure, fmt: str, size: str = "column", scale: float = 3.0) -> bytes:
    """PNG/SVG/PDF bytes of a figure at a paper size (PNG at `scale`× pixels: 3× ≈ 290 dpi)."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; use one of {IMAGE_FORMATS}")
    fig = paper_figure(fig, size)
    with _kaleido_lock:
        _start_kaleido()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "kopts ignored when using a server"
            return fig.to_image(format=fmt, scale=scale if fmt == "png" else 1.0)


def figure_html(fig: go.Figure) -> bytes:
    """A standalone HTML page (plotly.js embedded, so it opens offline)."""
    return fig.to_html(full_html=True, include_plotlyjs=True, div_id="stir-figure").encode("utf-8")


def table_csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def table_json(df: pd.DataFrame) -> bytes:
    """JSON records (one object per row; NaN as null)."""
    return df.to_json(orient="records", indent=1, force_ascii=False).encode("utf-8")


def save_figure(fig: go.Figure, path: str | Path, size: str = "column") -> Path:
    """Write a figure to `path` atomically; the format comes from the suffix (png, svg, pdf, html)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    data = figure_html(fig) if fmt == "html" else figure_bytes(fig, fmt, size)
    return atomic.write_bytes(path, data)


# --- saved views ------------------------------------------------------------------------------------

VIEW_FORMAT = "stir-view"
VIEW_VERSION = 1
VIEW_GLOBAL_KNOBS = ("max_new_tokens", "delimiter", "seed")  # set once per view, not per column


def escape_delimiter(s: str) -> str:
    """ "\\n\\n" (two newlines) -> the visible text '\\\\n\\\\n' (for text boxes and URLs)."""
    return s.encode("unicode_escape").decode("ascii")


def unescape_delimiter(s: str) -> str:
    """Inverse of `escape_delimiter`; refuses an empty result."""
    try:
        out = codecs.decode(s, "unicode_escape")
    except UnicodeDecodeError as err:
        raise ValueError(f"bad delimiter {s!r}: {err}") from err
    if not out:
        raise ValueError("the delimiter must not be empty")
    return out


def cast_knob(name: str, value: Any) -> Any:
    """A per-column knob through the one schema caster (`stir_core.config.cast_value`)."""
    if name in VIEW_GLOBAL_KNOBS:
        raise ValueError(
            f"knob {name!r} is set once per view, not per column ({', '.join(VIEW_GLOBAL_KNOBS)})"
        )
    if isinstance(value, str) and value.strip().lower() == "all" and name == "layer":
        value = None  # the layer picker's "all"
    return config_schema.cast_value(StirConfig, name, value)


@dataclass
class ColumnSpec:
    """One Playground column: a method and its knob overrides (StirConfig fields)."""

    method: str
    knobs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        self.knobs = {k: cast_knob(k, v) for k, v in self.knobs.items()}


@dataclass
class SavedView:
    """Everything that reproduces a Playground view (decoding is greedy; `seed` feeds the random ablations)."""

    model: str = "embedded"
    device: str = "auto"
    dtype: str = "auto"
    library: str | None = None
    prompt: str = ""
    seed: int = 0
    max_new_tokens: int = 64
    delimiter: str = "\n\n"
    columns: list[ColumnSpec] = field(default_factory=lambda: [ColumnSpec("vanilla")])

    def __post_init__(self) -> None:
        cols = []
        for c in self.columns:
            if isinstance(c, dict):
                extra = set(c) - {"method", "knobs"}
                if extra or "method" not in c or not isinstance(c.get("knobs", {}), dict):
                    raise ValueError(f"a column must be {{method, knobs: {{...}}}}, got {c!r}")
                c = ColumnSpec(c["method"], dict(c.get("knobs", {})))
            cols.append(c)
        self.columns = cols
        for name in ("prompt", "model", "device", "dtype", "delimiter"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        try:
            self.seed, self.max_new_tokens = int(self.seed), int(self.max_new_tokens)
        except (TypeError, ValueError) as err:
            raise ValueError(f"seed and max_new_tokens must be integers ({err})") from err
        if not self.columns:
            raise ValueError("a view needs at least one column")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.delimiter:
            raise ValueError("the delimiter must not be empty")

    def config(self, column: int) -> StirConfig:
        """The StirConfig of one column."""
        c = self.columns[column]
        return StirConfig().with_overrides(
            max_new_tokens=self.max_new_tokens, delimiter=self.delimiter, seed=self.seed, **c.knobs
        )

    # JSON file ---------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return jsonio.dumps({"format": VIEW_FORMAT, "version": VIEW_VERSION, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> SavedView:
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"not a saved view: invalid JSON ({err})") from err
        if not isinstance(d, dict) or d.get("format") != VIEW_FORMAT:
            raise ValueError(f'not a saved view: expected "format": "{VIEW_FORMAT}"')
        if d.get("version") != VIEW_VERSION:
            raise ValueError(
                f"saved view version {d.get('version')!r} is not supported (this app reads {VIEW_VERSION})"
            )
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"format", "version"}
        if unknown:
            raise ValueError(f"saved view: unknown field(s) {sorted(unknown)}")
        cols = d.get("columns", [])
        if not isinstance(cols, list) or not all(isinstance(c, dict) for c in cols):
            raise ValueError("saved view: columns must be a list of {method, knobs} objects")
        return cls(**{k: v for k, v in d.items() if k in names})

    # URL query parameters ----------------------------------------------------------------------------
    def to_query(self) -> dict[str, str]:
        """Flat string parameters: model, lib, prompt, seed, tokens, delim, and c0, c1, ... per column as
        `method;knob=value;...`."""
        q = {
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "prompt": self.prompt,
            "seed": str(self.seed),
            "tokens": str(self.max_new_tokens),
            "delim": escape_delimiter(self.delimiter),
        }
        if self.library:
            q["lib"] = self.library
        for i, c in enumerate(self.columns):
            q[f"c{i}"] = ";".join(
                [c.method] + [f"{k}={'none' if v is None else v}" for k, v in c.knobs.items()]
            )
        return q

    @classmethod
    def from_query(cls, params: dict[str, str]) -> SavedView:
        """Inverse of `to_query`; missing parameters take the defaults."""
        cols = []
        i = 0
        while f"c{i}" in params:
            method, *parts = str(params[f"c{i}"]).split(";")
            knobs = {}
            for p in parts:
                if "=" not in p:
                    raise ValueError(f"query parameter c{i}: expected knob=value, got {p!r}")
                k, v = p.split("=", 1)
                knobs[k.strip()] = v.strip()
            cols.append(ColumnSpec(method.strip(), knobs))
            i += 1
        kw: dict[str, Any] = {}
        for key, name in (
            ("model", "model"),
            ("device", "device"),
            ("dtype", "dtype"),
            ("prompt", "prompt"),
            ("lib", "library"),
        ):
            if key in params:
                kw[name] = str(params[key])
        for key, name in (("seed", "seed"), ("tokens", "max_new_tokens")):
            if key in params:
                try:
                    kw[name] = int(params[key])
                except ValueError as err:
                    raise ValueError(f"query parameter {key}={params[key]!r} is not an integer") from err
        if "delim" in params:
            kw["delimiter"] = unescape_delimiter(str(params["delim"]))
        if cols:
            kw["columns"] = cols
        return cls(**kw)


def view_bytes(view: SavedView) -> bytes:
    return view.to_json().encode("utf-8")


def write_view(view: SavedView, path: str | Path) -> Path:
    return atomic.write_text(Path(path), view.to_json())


def read_view(path: str | Path) -> SavedView:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: saved view not found")
    return SavedView.from_json(p.read_bytes())
