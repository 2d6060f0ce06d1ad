"""The app's figure builders are pure functions: check the data they draw (points, colours, labels)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import figures  # noqa: E402
from stir_core.analysis import projection, views  # noqa: E402
from stir_core.online.trace import Candidate, GateDecision, TokenRecord, Trace  # noqa: E402


def _table(n: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(n)],
            "kind": ["correction" if i % 3 else "anchor" for i in range(n)],
            "layer": [1 + i % 2 for i in range(n)],
            "control_point": [1 + i % 3 for i in range(n)],
            "quality": rng.random(n),
            "norm": rng.random(n) * 3,
            "shuffled_norm": rng.random(n),
            "task": ["planted"] * n,
            "example_id": [f"e{i // 2}" for i in range(n)],
        }
    )


def _no_webgl(fig: go.Figure) -> None:
    assert not any(t.type in ("scattergl", "heatmapgl", "heatmap") for t in fig.data), "export-unsafe trace"


def _cells(fig: go.Figure) -> list[tuple[str, float, float]]:
    """(fill colour, centre x, centre y) of every vector cell (filled polygon) in a figure."""
    out = []
    for t in fig.data:
        if t.type == "scatter" and t.fill == "toself":
            xs, ys = list(t.x), list(t.y)
            for k in range(0, len(xs), 6):
                out.append((t.fillcolor, (xs[k] + xs[k + 1]) / 2, (ys[k] + ys[k + 2]) / 2))
    return out


def test_library_scatter_categorical():
    table = _table()
    coords = np.random.default_rng(1).normal(size=(12, 2))
    fig = figures.library_scatter(coords, table, "control_point")
    _no_webgl(fig)
    colors = figures.category_colors(table["control_point"].tolist())
    seen = []
    for t in fig.data:
        rows = [int(r) for r in t.customdata[:, 0]]
        seen += rows
        values = {int(table["control_point"].iat[r]) for r in rows}
        assert len(values) == 1 and t.marker.color == colors[values.pop()]
        np.testing.assert_allclose(np.c_[t.x, t.y], coords[rows])
        assert list(t.customdata[:, 1]) == table["id"].iloc[rows].tolist()
        for r, h in zip(rows, t.hovertext, strict=True):
            assert f"id: t{r}" in h and f"example_id: {table['example_id'].iat[r]}" in h
        assert list(t.marker.symbol) == [
            "circle-open" if table["kind"].iat[r] == "anchor" else "circle" for r in rows
        ]
    assert sorted(seen) == list(range(12))


def test_library_scatter_quality_3d_and_selection():
    table = _table()
    coords = np.random.default_rng(2).normal(size=(12, 3))
    fig = figures.library_scatter(coords, table, "quality", selected=4)
    main, sel = fig.data
    assert main.type == "scatter3d" and main.marker.showscale
    np.testing.assert_allclose(main.marker.color, table["quality"])
    np.testing.assert_allclose([sel.x[0], sel.y[0], sel.z[0]], coords[4])
    with pytest.raises(ValueError, match="coords"):
        figures.library_scatter(coords[:5], table)
    with pytest.raises(ValueError, match="colour"):
        figures.library_scatter(coords, table, "size")


def test_vector_heatmap_draws_each_finite_cell_once_in_order():
    z = np.arange(12, dtype=float).reshape(3, 4)
    z[1, 2] = np.nan
    fig = figures.vector_heatmap(z, list("abcd"), list("xyz"), zmin=0, zmax=11, n_bins=12)
    _no_webgl(fig)
    cells = _cells(fig)
    assert sorted((round(cy), round(cx)) for _, cx, cy in cells) == sorted(
        (r, c) for r in range(3) for c in range(4) if not np.isnan(z[r, c])
    )
    ramp = figures.sample_colorscale("Viridis", [(k + 0.5) / 12 for k in range(12)])
    for color, cx, cy in cells:  # z = 0..11 with 12 bins: cell value k gets the k-th colour
        assert color == ramp[int(z[round(cy), round(cx)])]
    hover = fig.data[-1]
    assert list(hover.marker.color)[:4] == [0, 1, 2, 3] and hover.marker.cmin == 0 and hover.marker.cmax == 11
    assert list(fig.layout.yaxis.ticktext) == list("xyz") and list(fig.layout.xaxis.ticktext) == list("abcd")
    with pytest.raises(ValueError, match="z must be"):
        figures.vector_heatmap(z, list("abc"), list("xyz"))


def test_similarity_heatmap_scale_is_fixed():
    x = np.random.default_rng(3).normal(size=(5, 4))
    sims = projection.cosine_matrix(x)
    fig = figures.similarity_heatmap(sims, [f"t{i}" for i in range(5)])
    hover = fig.data[-1]
    assert (hover.marker.cmin, hover.marker.cmax) == (-1.0, 1.0)
    np.testing.assert_allclose(np.array(hover.marker.color).reshape(5, 5), sims)
    top = figures.sample_colorscale("RdBu_r", [(47.5) / 48])[0]
    diag = [c for c, cx, cy in _cells(fig) if round(cx) == round(cy)]
    assert diag == [top] * 5  # cos = 1 on the diagonal is the top colour


def test_distribution_figure_holds_the_table():
    table = _table()
    fig = figures.distribution_figure(table)
    by_name = {t.name: t for t in fig.data}
    np.testing.assert_allclose(by_name["correction"].x, table.loc[table.kind == "correction", "quality"])
    np.testing.assert_allclose(by_name["anchor"].x, table.loc[table.kind == "anchor", "quality"])
    np.testing.assert_allclose(by_name["‖Δ‖ (corrections)"].x, table.loc[table.kind == "correction", "norm"])
    assert all(t.type == "histogram" for t in fig.data)


def _trace(method: str, ids: list[int], steer_at: int | None = None) -> Trace:
    """Tokens with ids `ids`; '\\n' (id 0) is the delimiter; one commit of tool 'a' at `steer_at`."""
    toks, seg = [], 0
    for i, tid in enumerate(ids):
        toks.append(
            TokenRecord(
                index=i,
                token_id=tid,
                text="\n" if tid == 0 else chr(97 + tid % 26),
                logprob=-0.05 * (i + 1),
                segment=seg,
                tool="a" if i == steer_at else None,
                added_norm=2.0 if i == steer_at else 0.0,
                is_delimiter=tid == 0,
            )
        )
        seg += tid == 0
    decisions = []
    for t in toks:
        if t.is_delimiter:
            d = GateDecision(
                m=t.segment + 1,
                token_index=t.index,
                query_layers=[1],
                candidates=[Candidate(entry=0, tool_id="a", kind="correction", layer=1, sim=0.9, quality=0.5,
                                      value=0.45, previewed=True, probe_text="x", probe_logprob=-1.0, gain=0.1,
                                      score=0.46)],
                null_value=0.0,
                score_null=0.0,
            )
            if t.index == steer_at:
                d.chosen, d.reason, d.alpha, d.layer, d.added_norm = "a", "committed", 0.46, 1, 2.0
            else:
                d.reason = "below_tau"
            decisions.append(d)
    bounds = [d.token_index for d in decisions] + [len(toks) - 1]
    for d, nxt in zip(decisions, bounds[1:], strict=True):
        d.commit_tokens = nxt - d.token_index
    return Trace(method=method, prompt="p", completion="".join(t.text for t in toks), tokens=toks,
                 decisions=decisions if method != "vanilla" else [])


def test_token_strip_cells_boundaries_and_differences():
    van = _trace("vanilla", [3, 4, 0, 5, 6, 0, 7])
    st_ = _trace("stir", [3, 4, 0, 9, 6, 0, 7, 8], steer_at=2)
    fig = figures.token_strip([("vanilla", van), ("stir", st_)], reference=van)
    _no_webgl(fig)
    cells = _cells(fig)
    assert len(cells) == van.n_tokens + st_.n_tokens
    color = {(round(cy), round(cx)): c for c, cx, cy in cells}
    tool = figures.tool_colors([van, st_])["a"]
    assert color[(1, 2)] == tool  # vector added at the delimiter
    assert color[(1, 3)] == color[(1, 5)] == figures.tint(tool, 0.35)  # the committed segment: tinted
    assert color[(1, 6)] == color[(0, 3)] == figures.NONE_COLOR  # after the segment, and vanilla
    bounds = next(t for t in fig.data if t.name == "segment boundary")
    xs = [x for x in bounds.x if x is not None]
    assert sorted(set(xs)) == [2.5, 5.5] and len(xs) == 2 * 4  # 2 delimiters in each row
    diff = next(t for t in fig.data if t.name == "differs from vanilla")
    assert list(diff.x) == [
        i for i, d in enumerate(views.diff_mask([3, 4, 0, 5, 6, 0, 7], [3, 4, 0, 9, 6, 0, 7, 8])) if d
    ]
    hover = [t for t in fig.data if t.hoverinfo == "text"][0]
    assert any("log p = -0.200" in h and "tool a" in h for h in hover.hovertext)
    assert list(fig.layout.yaxis.ticktext) == ["vanilla", "stir"]


def test_tokens_html_spans_titles_and_highlights():
    van = _trace("vanilla", [3, 4, 0, 5])
    st_ = _trace("stir", [3, 4, 0, 9, 5], steer_at=2)
    html = figures.tokens_html(st_, van)
    spans = re.findall(r'<span class="(tok[^"]*)" title="([^"]*)"', html)
    assert len(spans) == st_.n_tokens
    assert [c for c, _ in spans].count("tok diff") == sum(views.diff_mask([3, 4, 0, 5], [3, 4, 0, 9, 5]))
    assert all(f"log p = {t.logprob:.3f}" in title for (_, title), t in zip(spans, st_.tokens, strict=True))
    assert html.count('class="seg"') == 1
    assert "&lt;" in figures.tokens_html(_trace_with_text("<b>"), None)  # token text is escaped


def _trace_with_text(text: str) -> Trace:
    tokens = [TokenRecord(index=0, token_id=1, text=text, logprob=-0.1, segment=0)]
    return Trace(method="vanilla", prompt="p", completion=text, tokens=tokens)


def test_score_heatmap_marks_the_chosen_cells():
    st_ = _trace("stir", [3, 0, 4, 0, 5], steer_at=3)
    sm = views.score_matrix(st_)
    fig = figures.score_heatmap(sm)
    chosen = next(t for t in fig.data if t.name == "chosen")
    assert list(zip(chosen.x, chosen.y, strict=True)) == [
        (c, r) for r, c in enumerate(sm.chosen) if c is not None
    ]
    assert len(_cells(fig)) == int(np.isfinite(sm.z).sum())


def test_pareto_figure_points_and_front():
    summary = {
        "vanilla": {"accuracy": 0.5, "n": 100, "mean_total_tokens": 300.0},
        "static": {"accuracy": 0.45, "n": 100, "mean_total_tokens": 320.0},
        "stir": {"accuracy": 0.6, "n": 100, "mean_total_tokens": 250.0},
    }
    fig = figures.pareto_figure(summary)
    _no_webgl(fig)
    pts = {t.name: (t.x[0], t.y[0], t.error_y.array[0]) for t in fig.data if t.mode == "markers+text"}
    for m, s in summary.items():
        assert pts[m][:2] == (s["mean_total_tokens"], s["accuracy"])
        assert pts[m][2] == pytest.approx((s["accuracy"] * (1 - s["accuracy"]) / s["n"]) ** 0.5)
    assert not any(t.name == "Pareto front" for t in fig.data)  # stir dominates both: a one-point front
    summary["cheap"] = {"accuracy": 0.3, "n": 100, "mean_total_tokens": 100.0}
    front = next(t for t in figures.pareto_figure(summary).data if t.name == "Pareto front")
    assert list(front.x) == [100.0, 250.0]


def test_vector_heatmap_falls_back_to_a_plain_heatmap_when_huge():
    n = int(figures.VECTOR_CELL_LIMIT**0.5) + 1
    z = np.random.default_rng(0).random((n, n))
    fig = figures.vector_heatmap(z, [str(i) for i in range(n)], [str(i) for i in range(n)])
    (trace,) = fig.data
    assert trace.type == "heatmap"
    np.testing.assert_array_equal(np.asarray(trace.z), z)


def test_message_figure_is_an_empty_placeholder():
    fig = figures.message_figure("Run a comparison")
    assert len(fig.data) == 0 and fig.layout.annotations[0].text == "Run a comparison"
