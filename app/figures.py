"""Pure Plotly figure builders (data in, `go.Figure` out) and the Playground's token HTML.

Every figure is export-safe: SVG-rendered traces only (no WebGL `scattergl`; heatmaps are drawn as vector
cells, not as a raster image), one fixed font (DejaVu Sans). 3-D scatters are the exception: Plotly draws
them with WebGL, so their SVG/PDF exports embed a raster image (the app says so).
"""

from __future__ import annotations

import html
import math
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from stir_core.analysis.outcomes import pareto_front
from stir_core.analysis.tokens import (
    COLOR_MODE_LABELS,
    COLOR_MODES,
    Span,
    TokenView,
    shown,
    spans_html,
    token_views,
)
from stir_core.analysis.views import ScoreMatrix, token_interventions
from stir_core.online.trace import Trace

FONT = "DejaVu Sans"
# Okabe–Ito: distinguishable with common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C6D1F", "#000000")
NONE_COLOR = "#e3e6ec"
DIFF_COLOR = "#d6336c"
COLOR_BY = ("control_point", "layer", "kind", "quality")
VECTOR_CELL_LIMIT = 40_000  # above this many cells a heatmap is drawn as a (raster) go.Heatmap
TICK_LIMIT = 40  # most tick labels an axis shows; beyond, every k-th
HOVER_COLUMNS = ("id", "kind", "layer", "control_point", "quality", "norm", "task", "example_id")


def style(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    """The house style: white template, DejaVu Sans, compact margins."""
    fig.update_layout(
        template="simple_white",
        font={"family": FONT, "size": 12},
        margin={"l": 60, "r": 20, "t": 40 if title else 20, "b": 50},
        title={"text": title, "x": 0.01} if title else None,
        hoverlabel={"font_family": FONT},
    )
    if height:
        fig.update_layout(height=height)
    return fig


def category_colors(values: Sequence) -> dict:
    """Stable colour per distinct value (sorted order, palette cycled)."""
    uniq = sorted({v for v in values if v is not None}, key=lambda v: (str(type(v)), v))
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(uniq)}


def tint(color: str, amount: float) -> str:
    """Blend a #rrggbb colour towards white: amount 1 keeps it, 0 gives white."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    mix = [round(255 - (255 - c) * amount) for c in (r, g, b)]
    return "#{:02x}{:02x}{:02x}".format(*mix)


# --- library ----------------------------------------------------------------------------------------


def _hover_text(table: pd.DataFrame) -> list[str]:
    cols = [c for c in HOVER_COLUMNS if c in table.columns]
    out = []
    for _, r in table[cols].iterrows():
        parts = []
        for c in cols:
            v = r[c]
            parts.append(f"{c}: {v:.4g}" if isinstance(v, float) else f"{c}: {v}")
        out.append("<br>".join(parts))
    return out


def library_scatter(
    coords: np.ndarray,
    table: pd.DataFrame,
    color_by: str = "control_point",
    title: str | None = None,
    selected: int | None = None,
    axis_titles: Sequence[str] | None = None,
) -> go.Figure:
    """Scatter of a projection. coords: [N, 2|3], aligned with `table` rows (library entries).

    Categorical colourings get one trace per value (a legend entry each); `quality` is a continuous scale.
    `customdata[:, 0]` holds the row's position in `table` so a click can name the tool."""
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3) or len(coords) != len(table):
        raise ValueError(f"coords must be [N, 2|3] with N = {len(table)} table rows, got {coords.shape}")
    if color_by not in COLOR_BY:
        raise ValueError(f"unknown colour {color_by!r}; use one of {COLOR_BY}")
    three = coords.shape[1] == 3
    hover = np.array(_hover_text(table), dtype=object)
    rows = np.arange(len(table))
    symbols = np.where(table["kind"].to_numpy() == "anchor", "circle-open", "circle")
    fig = go.Figure()

    def add(mask: np.ndarray, name: str, marker: dict, showlegend: bool = True) -> None:
        xyz = {"x": coords[mask, 0], "y": coords[mask, 1]}
        if three:
            xyz["z"] = coords[mask, 2]
        kw = {
            "mode": "markers",
            "name": name,
            "hovertext": hover[mask],
            "hoverinfo": "text",
            "customdata": np.stack([rows[mask], table["id"].to_numpy()[mask]], axis=1),
            "marker": {**marker, "symbol": symbols[mask].tolist()},
            "showlegend": False,  # a legend entry would copy its first point's symbol: see legend_entry
            "legendgroup": name,
        }
        fig.add_trace(go.Scatter3d(**xyz, **kw) if three else go.Scatter(**xyz, **kw))
        if showlegend:
            legend_entry(name, {"color": marker["color"], "symbol": "square", "size": 10}, group=name)

    def legend_entry(name: str, marker: dict, group: str | None = None) -> None:
        """A legend-only entry (no data): its own symbol, whatever the kinds of the points it names."""
        kw = {"mode": "markers", "name": name, "marker": marker, "legendgroup": group or name,
              "hoverinfo": "skip", "showlegend": True, "meta": {"role": "legend"}}
        fig.add_trace(go.Scatter3d(x=[None], y=[None], z=[None], **kw) if three
                      else go.Scatter(x=[None], y=[None], **kw))

    if color_by == "quality":
        add(
            np.ones(len(table), bool),
            "quality",
            {
                "color": table["quality"].to_numpy(float),
                "colorscale": "Viridis",
                "size": 7 if not three else 4,
                "showscale": True,
                "colorbar": {"title": {"text": "quality"}},
            },
            showlegend=False,
        )
    else:
        values = table[color_by].tolist()
        colors = category_colors(values)
        label = {"control_point": "m", "layer": "layer", "kind": ""}[color_by]
        for v, c in colors.items():
            mask = np.array([x == v for x in values], dtype=bool)
            add(mask, f"{label} {v}".strip(), {"color": c, "size": 7 if not three else 4})
    kinds = set(table["kind"])
    for kind, symbol in (("correction", "circle"), ("anchor", "circle-open")):  # the symbols, once each
        if kind in kinds:
            legend_entry(f"{kind} ({'filled' if symbol == 'circle' else 'open'})",
                         {"color": "#495057", "symbol": symbol, "size": 9, "line": {"width": 1.5}}, f"kind:{kind}")
    if selected is not None and 0 <= selected < len(table):
        m = rows == selected
        xyz = {"x": coords[m, 0], "y": coords[m, 1]}
        # An open symbol is drawn in the marker's colour (its line colour is ignored): a transparent colour
        # made the ring invisible, in the app and in the exports.
        ring = {
            "size": 18,
            "color": "#000",
            "line": {"color": "#000", "width": 2.5},
            "symbol": "circle-open",
        }
        if three:
            fig.add_trace(
                go.Scatter3d(
                    **xyz,
                    z=coords[m, 2],
                    mode="markers",
                    name="selected",
                    marker={**ring, "size": 8},
                    hoverinfo="skip",
                )
            )
        else:
            fig.add_trace(go.Scatter(**xyz, mode="markers", name="selected", marker=ring, hoverinfo="skip"))
    style(fig, title, height=520)
    fig.update_layout(legend={"itemsizing": "constant"})
    if axis_titles is not None:
        if three:
            fig.update_layout(scene={f"{a}axis": {"title": {"text": t}}
                                     for a, t in zip("xyz", axis_titles, strict=False)})
        else:
            fig.update_xaxes(title_text=axis_titles[0])
            fig.update_yaxes(title_text=axis_titles[1] if len(axis_titles) > 1 else None)
    return fig


def projection_axis_titles(method: str, dims: int, explained: Sequence[float] | None = None) -> list[str]:
    """Axis titles of a projection: "PC1 (34.1% of variance)" for PCA, "UMAP 1" otherwise."""
    if method == "pca":
        return [f"PC{i + 1}" + (f" ({explained[i]:.1%} of variance)" if explained is not None and i < len(explained)
                                else "") for i in range(dims)]
    return [f"{method.upper()} {i + 1}" for i in range(dims)]


def vector_heatmap(
    z: np.ndarray,
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    *,
    colorscale: str = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    colorbar_title: str = "",
    title: str | None = None,
    hovertext: np.ndarray | None = None,
    n_bins: int = 48,
) -> go.Figure:
    """A heatmap drawn as filled vector cells (exports stay vector in SVG/PDF). z: [rows, cols]; NaN cells
    are left blank. Cells are grouped into `n_bins` colour levels (one trace each); invisible markers at the
    cell centres carry the hover text and the colour bar. Above `VECTOR_CELL_LIMIT` cells it falls back to a
    plain go.Heatmap (exported as an embedded image)."""
    z = np.asarray(z, dtype=float)
    if z.ndim != 2 or z.shape != (len(y_labels), len(x_labels)):
        raise ValueError(
            f"z must be [len(y_labels), len(x_labels)] = {(len(y_labels), len(x_labels))}, got {z.shape}"
        )
    finite = z[np.isfinite(z)]
    lo = float(zmin if zmin is not None else (finite.min() if finite.size else 0.0))
    hi = float(zmax if zmax is not None else (finite.max() if finite.size else 1.0))
    if hi <= lo:
        hi = lo + 1.0
    if hovertext is None:
        hovertext = np.array(
            [
                [f"{y_labels[r]} × {x_labels[c]}: {z[r, c]:.4g}" for c in range(z.shape[1])]
                for r in range(z.shape[0])
            ],
            dtype=object,
        )
    fig = go.Figure()
    if z.size > VECTOR_CELL_LIMIT:  # too many cells for vector paths in a browser: a (raster) go.Heatmap
        fig.add_trace(
            go.Heatmap(
                z=z,
                zmin=lo,
                zmax=hi,
                colorscale=colorscale,
                hovertext=hovertext,
                hoverinfo="text",
                colorbar={"title": {"text": colorbar_title}, "thickness": 12},
            )
        )
        return _heatmap_axes(fig, x_labels, y_labels, title)
    levels = np.clip(np.floor((z - lo) / (hi - lo) * n_bins), 0, n_bins - 1)
    colors = sample_colorscale(colorscale, [(k + 0.5) / n_bins for k in range(n_bins)])
    for k in range(n_bins):
        rr, cc = np.nonzero(np.isfinite(z) & (levels == k))
        if not len(rr):
            continue
        xs, ys = [], []
        for r, c in zip(rr.tolist(), cc.tolist(), strict=True):
            xs += [c - 0.5, c + 0.5, c + 0.5, c - 0.5, c - 0.5, None]
            ys += [r - 0.5, r - 0.5, r + 0.5, r + 0.5, r - 0.5, None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                fill="toself",
                fillcolor=colors[k],
                line={"width": 0.5, "color": colors[k]},
                hoverinfo="skip",
                showlegend=False,
            )
        )
    rr, cc = np.nonzero(np.ones_like(z, dtype=bool))
    fig.add_trace(
        go.Scatter(
            x=cc,
            y=rr,
            mode="markers",
            hovertext=np.asarray(hovertext)[rr, cc],
            hoverinfo="text",
            showlegend=False,
            marker={
                "opacity": 0,
                "size": 8,
                "color": np.where(np.isfinite(z[rr, cc]), z[rr, cc], lo),
                "colorscale": colorscale,
                "cmin": lo,
                "cmax": hi,
                "showscale": True,
                "colorbar": {"title": {"text": colorbar_title}, "thickness": 12},
            },
        )
    )
    return _heatmap_axes(fig, x_labels, y_labels, title)


def _heatmap_axes(
    fig: go.Figure, x_labels: Sequence[str], y_labels: Sequence[str], title: str | None
) -> go.Figure:
    """Categorical tick labels, first row on top. Above `TICK_LIMIT` labels every k-th one is shown, in a
    smaller font (every label would overlap; none at all left the heatmap unreadable)."""
    n = max(len(x_labels), len(y_labels))
    step = max(1, math.ceil(n / TICK_LIMIT))
    font = {"size": 10 if step == 1 else 8}
    fig.update_xaxes(
        tickvals=list(range(0, len(x_labels), step)),
        ticktext=list(x_labels)[::step],
        tickfont=font,
        range=[-0.5, len(x_labels) - 0.5],
        showgrid=False,
        zeroline=False,
        tickangle=-45,
    )
    fig.update_yaxes(
        tickvals=list(range(0, len(y_labels), step)),
        ticktext=list(y_labels)[::step],
        tickfont=font,
        range=[len(y_labels) - 0.5, -0.5],
        showgrid=False,
        zeroline=False,
    )
    return style(fig, title)


def similarity_heatmap(
    sims: np.ndarray, labels: Sequence[str], title: str | None = "Cosine similarity"
) -> go.Figure:
    """Cosine-similarity matrix [N, N] on a diverging scale fixed to [-1, 1]."""
    fig = vector_heatmap(
        sims, labels, labels, colorscale="RdBu_r", zmin=-1.0, zmax=1.0, colorbar_title="cos", title=title
    )
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def distribution_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Histograms of quality (by kind) and of vector norms (corrections; with the label-shuffled control)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("quality q", "vector norm ‖Δ‖"))
    colors = category_colors(["anchor", "correction"])
    for kind in ("correction", "anchor"):
        q = table.loc[table["kind"] == kind, "quality"].to_numpy(float)
        if len(q):
            fig.add_trace(
                go.Histogram(
                    x=q, name=kind, marker_color=colors[kind], opacity=0.75, nbinsx=30, legendgroup=kind
                ),
                row=1,
                col=1,
            )
    corr = table[table["kind"] == "correction"]
    if len(corr):
        fig.add_trace(
            go.Histogram(
                x=corr["norm"].to_numpy(float),
                name="‖Δ‖ (corrections)",
                nbinsx=30,
                marker_color=colors["correction"],
                opacity=0.75,
                showlegend=False,
            ),
            row=1,
            col=2,
        )
        shuffled = corr["shuffled_norm"].to_numpy(float) if "shuffled_norm" in corr else np.array([])
        shuffled = shuffled[np.isfinite(shuffled)]
        if len(shuffled):
            fig.add_trace(
                go.Histogram(
                    x=shuffled, name="label-shuffled ‖Δ‖", nbinsx=30, marker_color="#888", opacity=0.6
                ),
                row=1,
                col=2,
            )
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="q", row=1, col=1)
    fig.update_xaxes(title_text="norm", row=1, col=2)
    fig.update_yaxes(title_text="entries", row=1, col=1)
    return style(fig, title, height=340)


def message_figure(message: str, height: int = 140) -> go.Figure:
    """An empty figure that says `message` (a placeholder where a chart will appear)."""
    fig = go.Figure()
    fig.add_annotation(
        text=message,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": 13, "color": "#868e96"},
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style(fig, None, height=height)


# --- playground ---------------------------------------------------------------------------------------

# Continuous colour modes: (Plotly colour scale, low end fixed or None for the data's min, high end likewise).
MODE_SCALES = {"logp": ("RdYlGn", None, 0.0), "kl": ("Reds", 0.0, None), "gain": ("RdBu", None, None)}


def tool_color(tag: str) -> str:
    """A tool's colour, from its id alone (CRC32 into the palette): the same in every run and every column,
    whatever else fired (a sorted set of the tags that fired would shift colours between runs)."""
    base = tag.split("~", 1)[-1]  # the random-vector ablation's "random~<id>" keeps its tool's colour
    return PALETTE[zlib.crc32(base.encode()) % len(PALETTE)]


def tool_colors(traces: Sequence[Trace]) -> dict[str, str]:
    """One colour per tool tag that acts anywhere in these traces (`tool_color`: stable across runs)."""
    tags = {iv.tool for t in traces for iv in token_interventions(t) if iv.tool is not None}
    return {tag: tool_color(tag) for tag in sorted(tags)}


def mode_range(rows: Sequence[Sequence[TokenView]], mode: str) -> tuple[float, float]:
    scale, lo, hi = MODE_SCALES[mode]
    vals = [v for r in rows for t in r if (v := t.value(mode)) is not None and math.isfinite(v)]
    lo = min(vals, default=0.0) if lo is None else lo
    hi = max(vals, default=1.0) if hi is None else hi
    if mode == "gain":  # diverging around 0
        lim = max(abs(lo), abs(hi), 1e-9)
        lo, hi = -lim, lim
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def token_color(t: TokenView, mode: str, colors: dict[str, str], rng: tuple[float, float] | None) -> str:
    """A token's background in colour mode `mode`: its governing tool (full colour where the vector was
    added, tinted over the rest of the segment, grey under the null action), or its value on the mode's
    scale over `rng` (grey without a value)."""
    if mode == "tool":
        if t.tool is None:
            return NONE_COLOR
        c = colors.get(t.tool) or tool_color(t.tool)
        return c if t.direct else tint(c, 0.35)
    v = t.value(mode)
    if v is None or not math.isfinite(v) or rng is None:
        return NONE_COLOR
    lo, hi = rng
    rgb = sample_colorscale(MODE_SCALES[mode][0], [min(1.0, max(0.0, (v - lo) / (hi - lo)))])[0]
    r, g, b = (int(float(x)) for x in rgb[rgb.index("(") + 1: -1].split(","))
    return f"#{r:02x}{g:02x}{b:02x}"


def token_strip(
    columns: Sequence[tuple[str, Trace]] | Sequence[tuple[str, Sequence[TokenView]]],
    reference: Trace | None = None,
    max_text_tokens: int = 96,
    title: str | None = None,
    mode: str = "tool",
) -> go.Figure:
    """Gate firing per token: one row per column (method), one vector cell per generated token. Columns
    are (label, Trace) or (label, token views from `stir_core.analysis.tokens.token_views`, which carry the
    KL values and the gate's reasons).

    Cell colour (`mode`): "tool": the tool governing the token (full colour where its vector was added, a
    tint over the rest of its committed segment), grey under the null action; "logp" / "kl" / "gain": the
    value on a colour scale (with a colour bar). Black ticks mark segment boundaries (after each
    delimiter); pink markers flag tokens that differ from `reference` (vanilla); a ring marks each control
    point. Hover: token, log p, tool and α, KL, and at a control point why the gate did what it did.
    `customdata` of the hover markers: [row, token index] (a click names the token)."""
    rows: list[list[TokenView]] = []
    for _, c in columns:
        rows.append(token_views(c, reference) if isinstance(c, Trace) else list(c))
    if mode not in COLOR_MODES:
        raise ValueError(f"unknown colour mode {mode!r}; use one of {COLOR_MODES}")
    tags = sorted({t.tool for r in rows for t in r if t.tool is not None})
    colors = {tag: tool_color(tag) for tag in tags}
    rng = None if mode == "tool" else mode_range(rows, mode)
    n_max = max((len(r) for r in rows), default=0)
    fill: dict[str, tuple[list, list]] = {}
    hx, hy, htext, hdata, tx, ty, ttext = [], [], [], [], [], [], []
    bx, by, dx, dy, wx, wy = [], [], [], [], [], []
    for r, toks in enumerate(rows):
        for t in toks:
            i = t.index
            color = token_color(t, mode, colors, rng)
            xs, ys = fill.setdefault(color, ([], []))
            xs += [i - 0.45, i + 0.45, i + 0.45, i - 0.45, i - 0.45, None]
            ys += [r - 0.38, r - 0.38, r + 0.38, r + 0.38, r - 0.38, None]
            hx.append(i)
            hy.append(r)
            htext.append("<br>".join(html.escape(x) for x in t.hover()))
            hdata.append([r, i])
            tx.append(i)
            ty.append(r)
            ttext.append(t.shown)
            if t.is_delimiter:
                bx += [i + 0.5, i + 0.5, None]
                by += [r - 0.48, r + 0.48, None]
            if t.differs:
                dx.append(i)
                dy.append(r - 0.44)
            if t.why:
                wx.append(i)
                wy.append(r)
    fig = go.Figure()
    for color, (xs, ys) in fill.items():
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", fill="toself", fillcolor=color, hoverinfo="skip",
                                 line={"width": 0, "color": color}, showlegend=False))
    if bx:
        fig.add_trace(go.Scatter(x=bx, y=by, mode="lines", line={"color": "#111", "width": 1.5},
                                 name="segment boundary", hoverinfo="skip"))
    if dx:
        fig.add_trace(go.Scatter(x=dx, y=dy, mode="markers", name="differs from vanilla", hoverinfo="skip",
                                 marker={"symbol": "triangle-down", "size": 6, "color": DIFF_COLOR}))
    if wx:
        fig.add_trace(go.Scatter(x=wx, y=wy, mode="markers", name="control point (hover: why)",
                                 hoverinfo="skip", marker={"symbol": "square-open", "size": 15,
                                                           "color": "#495057", "line": {"width": 1.5}}))
    if n_max <= max_text_tokens:
        fig.add_trace(go.Scatter(
            x=tx, y=ty, mode="text", text=ttext, hoverinfo="skip", showlegend=False,
            textfont={"family": FONT, "size": 9, "color": "#222"},
            meta={"role": "cell-text"},  # export.paper_figure shrinks or drops it at small sizes
        ))
    marker: dict = {"opacity": 0, "size": 10}
    if rng is not None:  # the colour bar of a continuous mode rides on the (invisible) hover markers
        marker.update(color=[rng[0]] * len(hx), colorscale=MODE_SCALES[mode][0], cmin=rng[0], cmax=rng[1],
                      showscale=True, colorbar={"title": {"text": COLOR_MODE_LABELS[mode]}, "thickness": 12})
    fig.add_trace(go.Scatter(x=hx, y=hy, mode="markers", hovertext=htext, hoverinfo="text", showlegend=False,
                             customdata=hdata, marker=marker, meta={"role": "token-hover"}))
    if mode == "tool":
        for tag, c in colors.items():  # legend entries for the tools
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=tag,
                                     marker={"symbol": "square", "size": 10, "color": c}))
    labels = [label for label, _ in columns]
    fig.update_yaxes(tickvals=list(range(len(labels))), ticktext=labels, range=[len(labels) - 0.5, -0.6],
                     showgrid=False, zeroline=False)
    fig.update_xaxes(title_text="generated token", range=[-0.6, max(n_max, 1) - 0.4], showgrid=False,
                     zeroline=False)
    style(fig, title, height=90 + 46 * len(labels))
    fig.update_layout(legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
                      margin={"t": 40 if title is None else 70})
    return fig


def tokens_html(trace: Trace | Sequence[TokenView], reference: Trace | None = None,
                colors: dict[str, str] | None = None, mode: str = "tool",
                rng: tuple[float, float] | None = None) -> str:
    """The completion as HTML spans (`stir_core.analysis.tokens.spans_html`, the one token renderer): the
    background by colour mode (`token_color`), underlined where it differs from `reference`, a ¶ at each
    segment boundary, a dotted outline at each control point; hovering a token shows its log-probability,
    what acted on it and, at a control point, why."""
    toks = token_views(trace, reference) if isinstance(trace, Trace) else list(trace)
    colors = colors if colors is not None else {t.tool: tool_color(t.tool) for t in toks if t.tool}
    if mode != "tool" and rng is None:
        rng = mode_range([toks], mode)
    spans = []
    for t in toks:
        bg = token_color(t, mode, colors, rng)
        if mode == "tool" and t.tool is None:
            bg = "#fff3bf" if t.differs else ""
        elif bg == NONE_COLOR and mode != "tool":
            bg = ""
        spans.append(Span(text=t.text, background=bg, marked=t.differs, title=t.hover(),
                          boundary=t.is_delimiter, why=bool(t.why)))
    return spans_html(spans)


def sweep_figure(table: pd.DataFrame, knob: str, title: str | None = None) -> go.Figure:
    """A strength sweep (`stir_core.analysis.sweeps.strength_sweep`): accuracy against the knob (left axis,
    ±1 binomial standard error), vanilla's accuracy on the same problems (dashed), and mean tokens
    (committed + probe; right axis). Hover: paired wins/losses vs vanilla and the McNemar p-value."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [str(v) for v in table["value"]]
    acc = table["accuracy"].astype(float).to_numpy()
    n = np.maximum(table["n"].astype(float).to_numpy(), 1)
    err = np.sqrt(np.clip(acc * (1 - acc), 0, None) / n)
    method = str(table["method"].iat[0]) if len(table) else "stir"
    hover = [f"{knob}={v}<br>accuracy {a:.3f} (vanilla {va:.3f})<br>wins {w} / losses {lo} · p={p:.3g}"
             for v, a, va, w, lo, p in zip(x, acc, table["vanilla_accuracy"], table["wins"], table["losses"],
                                            table["p_value"], strict=True)]
    fig.add_trace(go.Scatter(x=x, y=acc, mode="lines+markers", name=f"{method} accuracy", hovertext=hover,
                             hoverinfo="text", line={"color": PALETTE[0]},
                             error_y={"type": "data", "array": err, "visible": True, "thickness": 1}),
                  secondary_y=False)
    if len(table):
        fig.add_trace(go.Scatter(x=x, y=table["vanilla_accuracy"].astype(float), mode="lines", name="vanilla",
                                 line={"color": "#868e96", "dash": "dash"}, hoverinfo="skip"), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=table["mean_total_tokens"].astype(float), mode="lines+markers",
                             name="tokens (committed + probe)", line={"color": PALETTE[1]},
                             marker={"symbol": "square"}), secondary_y=True)
    fig.update_xaxes(title_text=knob, type="category")
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05], secondary_y=False)
    fig.update_yaxes(title_text="mean tokens", rangemode="tozero", secondary_y=True)
    style(fig, title, height=340)
    fig.update_layout(legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"})
    return fig


def commit_effects_figure(commits: Sequence[dict], title: str | None = None) -> go.Figure:
    """The effect of each commit over time (`stir_core.analysis.effects.CommitEffect`s as dicts): one line
    per commit, KL(steered ‖ vanilla) of the next-token distribution against tokens after the commit; a
    filled marker where the top token changed (hover: the two top tokens)."""
    fig = go.Figure()
    one_tool = len({c["tool"] for c in commits}) == 1 and len(commits) > 1  # then colour by commit instead
    for j, c in enumerate(commits):
        steps = [i - c["token_index"] for i in c["tokens"]]
        color = PALETTE[j % len(PALETTE)] if one_tool else tool_color(c["tool"])
        hover = [f"m={c['m']} {html.escape(c['tool'])} (α={c['alpha']:.3g})<br>token +{k} (#{i}): KL {v:.4g}"
                 f"<br>top: steered {html.escape(shown(a))} · vanilla {html.escape(shown(b))}"
                 for k, i, v, a, b in zip(steps, c["tokens"], c["kl"], c["steered_top"], c["vanilla_top"],
                                          strict=True)]
        fig.add_trace(go.Scatter(
            x=steps, y=c["kl"], mode="lines+markers", name=f"m={c['m']} {c['tool']}", hovertext=hover,
            hoverinfo="text", line={"color": color},
            marker={"color": [color if ch else "#fff" for ch in c["top_changed"]], "size": 8,
                    "line": {"color": color, "width": 1.5},
                    "symbol": ["diamond" if ch else "circle" for ch in c["top_changed"]]},
        ))
    fig.update_xaxes(title_text="tokens after the commit", dtick=1)
    fig.update_yaxes(title_text="KL(steered ‖ vanilla), nats", rangemode="tozero")
    style(fig, title, height=300)
    fig.update_layout(legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"})
    return fig


def score_heatmap(sm: ScoreMatrix, title: str | None = None) -> go.Figure:
    """Control points × candidates gate scores (column 0: the null score); ◆ marks the chosen action."""
    hover = np.array(
        [
            [
                f"{r} · {c}: "
                + ("not scored" if not math.isfinite(sm.z[i, j]) else f"score {sm.z[i, j]:.4g}")
                for j, c in enumerate(sm.col_labels)
            ]
            for i, r in enumerate(sm.row_labels)
        ],
        dtype=object,
    )
    hover = hover.reshape(len(sm.row_labels), len(sm.col_labels))
    fig = vector_heatmap(
        sm.z,
        sm.col_labels,
        sm.row_labels,
        colorscale="Viridis",
        colorbar_title="score",
        title=title,
        hovertext=hover,
    )
    cx = [c for c in sm.chosen if c is not None]
    cy = [r for r, c in enumerate(sm.chosen) if c is not None]
    if cx:
        fig.add_trace(
            go.Scatter(
                x=cx,
                y=cy,
                mode="markers",
                name="chosen",
                hoverinfo="skip",
                marker={
                    "symbol": "diamond",
                    "size": 9,
                    "color": "#fff",
                    "line": {"color": "#000", "width": 1.5},
                },
            )
        )
    fig.update_layout(
        height=max(220, 60 + 28 * len(sm.row_labels)),
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
    )
    return fig


# --- evaluate ---------------------------------------------------------------------------------------


def pareto_figure(
    summary: dict[str, dict], x: str = "mean_total_tokens", title: str | None = None
) -> go.Figure:
    """Accuracy vs tokens, one labelled point per method, the Pareto front as a dashed line.

    Error bars: ±1 binomial standard error √(p(1−p)/n)."""
    methods = list(summary)
    xs = [float(summary[m].get(x, float("nan"))) for m in methods]
    ys = [float(summary[m].get("accuracy", float("nan"))) for m in methods]
    ns = [max(1, int(summary[m].get("n", 1))) for m in methods]
    err = [
        math.sqrt(max(p * (1 - p), 0.0) / n) if math.isfinite(p) else 0.0 for p, n in zip(ys, ns, strict=True)
    ]
    colors = category_colors(methods)
    fig = go.Figure()
    front = pareto_front(xs, ys)
    if len(front) > 1:
        fig.add_trace(
            go.Scatter(
                x=[xs[i] for i in front],
                y=[ys[i] for i in front],
                mode="lines",
                line={"dash": "dash", "color": "#868e96"},
                name="Pareto front",
                hoverinfo="skip",
            )
        )
    for m, xv, yv, e in zip(methods, xs, ys, err, strict=True):
        fig.add_trace(
            go.Scatter(
                x=[xv],
                y=[yv],
                mode="markers+text",
                text=[m],
                textposition="top center",
                name=m,
                marker={"size": 11, "color": colors[m]},
                error_y={"type": "data", "array": [e], "visible": True, "thickness": 1},
                hovertemplate=f"{m}<br>{x}: %{{x:.1f}}<br>accuracy: %{{y:.3f}}<extra></extra>",
                cliponaxis=False,  # a label above the top point stays whole (in the app and in exports)
            )
        )
    # Room for the labels: above the highest point (+ its error bar) and beside the outermost ones; the
    # autoscaled axes ended at the top point and clipped its label ("stir") in the exports.
    finite = [(xv, yv + e) for xv, yv, e in zip(xs, ys, err, strict=True) if math.isfinite(xv) and math.isfinite(yv)]
    if finite:
        lo_x, hi_x = min(v for v, _ in finite), max(v for v, _ in finite)
        pad = max(0.08 * (hi_x - lo_x), 0.05 * max(abs(hi_x), 1.0))
        fig.update_xaxes(range=[lo_x - pad, hi_x + pad])
        fig.update_yaxes(range=[0, max(1.0, max(v for _, v in finite)) * 1.12])
    fig.update_xaxes(
        title_text={
            "mean_total_tokens": "mean tokens (committed + probe)",
            "mean_tokens": "mean committed tokens",
        }.get(x, x)
    )
    fig.update_yaxes(title_text="accuracy", rangemode="tozero")
    return style(fig, title, height=420)
