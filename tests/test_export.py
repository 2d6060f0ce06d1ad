"""Exports: real PNG/SVG/PDF through Kaleido + the system Chromium, HTML, CSV/JSON, saved views."""

from __future__ import annotations

import io
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import export, figures  # noqa: E402
from app.export import ColumnSpec, SavedView  # noqa: E402
from stir_core.online.methods import StirConfig  # noqa: E402

BROWSER = export.find_browser()
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="no Chromium/Chrome installed (Debian: apt-get install "
    "chromium); image export cannot run without a browser",
)


def _heatmap_fig() -> go.Figure:
    sims = np.random.default_rng(0).uniform(-1, 1, size=(6, 6))
    return figures.similarity_heatmap(sims, [f"t{i}" for i in range(6)])


@needs_browser
@pytest.mark.browser
def test_kaleido_writes_real_png_svg_pdf(tmp_path):
    fig = _heatmap_fig()
    png = export.figure_bytes(fig, "png", size="column", scale=2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    w, h, _ = export.PAPER_SIZES["column"]
    assert (width, height) == (w * 2, h * 2)
    svg = export.figure_bytes(fig, "svg").decode("utf-8")
    assert svg.lstrip().startswith("<svg") and "</svg>" in svg
    assert "<image" not in svg, "the vector heatmap must not embed a raster image"
    assert "DejaVu Sans" in svg
    pdf = export.figure_bytes(fig, "pdf")
    assert pdf[:5] == b"%PDF-" and b"%%EOF" in pdf[-1024:]
    out = export.save_figure(fig, tmp_path / "sims.svg")
    assert out.read_bytes().lstrip().startswith(b"<svg")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".stir_tmp")]


def test_no_browser_is_said_plainly(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    assert export.find_browser(("no-such-browser-xyz",)) is None
    monkeypatch.setattr(export, "find_browser", lambda names=export.BROWSER_NAMES: None)
    monkeypatch.setattr(export, "_kaleido_started", False)
    ok, why = export.image_export_status()
    assert not ok and "chromium" in why.lower() and "HTML, CSV and JSON" in why
    with pytest.raises(export.ExportUnavailable, match="needs Chromium"):
        export.figure_bytes(_heatmap_fig(), "png")
    assert b"plotly" in export.figure_html(_heatmap_fig())  # HTML needs no browser


def test_html_is_standalone(tmp_path):
    fig = figures.pareto_figure({"vanilla": {"accuracy": 0.5, "n": 10, "mean_total_tokens": 100.0}})
    html = export.figure_html(fig).decode("utf-8")
    assert html.lstrip().lower().startswith(("<!doctype html>", "<html>")) and "Plotly.newPlot" in html
    assert not re.search(r"<script[^>]+src=", html), "plotly.js must be embedded, not fetched"
    assert '"vanilla"' in html
    p = export.save_figure(fig, tmp_path / "f.html")
    assert p.read_text(encoding="utf-8") == html


def test_figure_bytes_rejects_unknown_formats():
    with pytest.raises(ValueError, match="image format"):
        export.figure_bytes(go.Figure(), "gif")
    with pytest.raises(ValueError, match="size"):
        export.paper_figure(go.Figure(), "poster")


def test_paper_figure_sizes_and_font():
    fig = export.paper_figure(_heatmap_fig(), "page")
    w, h, pt = export.PAPER_SIZES["page"]
    assert (fig.layout.width, fig.layout.height, fig.layout.font.size) == (w, h, pt)
    assert fig.layout.font.family == "DejaVu Sans"


def test_paper_figure_drops_cell_text_when_cells_get_narrow():
    from stir_core.online.trace import TokenRecord, Trace

    def strip(n: int) -> go.Figure:
        tokens = [TokenRecord(index=i, token_id=5, text="x", logprob=-0.1, segment=0) for i in range(n)]
        t = Trace(method="vanilla", prompt="p", completion="x" * n, tokens=tokens)
        return figures.token_strip([("vanilla", t)])

    def text_trace(fig: go.Figure):
        return next(t for t in fig.data if t.mode == "text")

    assert text_trace(export.paper_figure(strip(64), "column")).visible is False  # 64 cells in 326 px
    page = text_trace(export.paper_figure(strip(64), "page"))  # 64 cells in 672 px: kept, at the paper size
    assert page.visible is not False and page.textfont.size == export.PAPER_SIZES["page"][2]
    assert text_trace(export.paper_figure(strip(16), "column")).visible is not False


def test_tables_round_trip():
    df = pd.DataFrame({"id": ["a", "b"], "score": [0.5, float("nan")], "won": [True, False]})
    back = pd.read_csv(io.BytesIO(export.table_csv(df)))
    pd.testing.assert_frame_equal(back, df)
    records = json.loads(export.table_json(df))
    assert records == [{"id": "a", "score": 0.5, "won": True}, {"id": "b", "score": None, "won": False}]


def _view() -> SavedView:
    return SavedView(
        model="/m/tiny",
        library="/libs/x",
        prompt="mod10 3+4\n",
        seed=7,
        max_new_tokens=48,
        delimiter="\n\n",
        columns=[
            ColumnSpec("vanilla"),
            ColumnSpec("static", {"static_scale": 0.5}),
            ColumnSpec(
                "stir",
                {
                    "k_scale": 0.75,
                    "layer": None,
                    "center_keys": True,
                    "positions": "last+segment",
                    "top_l": 2,
                },
            ),
        ],
    )


def test_saved_view_round_trips_through_json_file_and_query(tmp_path):
    view = _view()
    assert SavedView.from_json(view.to_json()) == view
    path = export.write_view(view, tmp_path / "v.json")
    assert export.read_view(path) == view
    query = view.to_query()
    assert all(isinstance(v, str) for v in query.values())
    assert query["delim"] == "\\n\\n" and query["c2"].startswith("stir;")
    assert SavedView.from_query(query) == view
    cfg = view.config(2)
    assert cfg == StirConfig(
        max_new_tokens=48, seed=7, k_scale=0.75, center_keys=True, positions="last+segment", top_l=2
    )


def test_saved_view_bad_input_is_named():
    good = json.loads(_view().to_json())
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        SavedView.from_json(json.dumps({**good, "columns": [{"method": "magic", "knobs": {}}]}))
    with pytest.raises(ValueError, match="unknown field 'warp'"):
        SavedView.from_json(json.dumps({**good, "columns": [{"method": "stir", "knobs": {"warp": 1}}]}))
    with pytest.raises(ValueError, match="top_l: cannot read 'many'"):
        SavedView.from_json(json.dumps({**good, "columns": [{"method": "stir", "knobs": {"top_l": "many"}}]}))
    with pytest.raises(ValueError, match="version"):
        SavedView.from_json(json.dumps({**good, "version": 99}))
    with pytest.raises(ValueError, match="format"):
        SavedView.from_json(json.dumps({"model": "x"}))
    with pytest.raises(ValueError, match="invalid JSON"):
        SavedView.from_json("{not json")
    with pytest.raises(ValueError, match="unknown field"):
        SavedView.from_json(json.dumps({**good, "colour": "red"}))
    with pytest.raises(ValueError, match="a column must be"):
        SavedView.from_json(json.dumps({**good, "columns": [{"method": "stir", "knob": {}}]}))
    with pytest.raises(ValueError, match="prompt must be a string"):
        SavedView.from_json(json.dumps({**good, "prompt": 3}))
    with pytest.raises(ValueError, match="integer"):
        SavedView.from_query({"seed": "x"})
    with pytest.raises(ValueError, match="delimiter"):
        SavedView.from_query({"delim": ""})
    with pytest.raises(ValueError, match="knob=value"):
        SavedView.from_query({"c0": "stir;k_scale"})
