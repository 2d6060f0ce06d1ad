"""The Library page's tool dashboard, export menu and library diff through AppTest (tiny model, test library)."""

from __future__ import annotations

import html
import re

import pytest
from helpers.app_pages import assert_ok, open_app

from stir_core.analysis import dashboard as dash
from stir_core.analysis.dashboard import row_of
from stir_core.library.format import ToolLibrary
from stir_core.runtime.engine import Engine
from stir_core.runtime.model import load_model

pytestmark = pytest.mark.slow


def test_dashboard_neighbour_navigation_export_and_diff(app_env):
    at = open_app()
    at.run()
    at.switch_page("views/library.py").run()
    assert_ok(at)
    lib = ToolLibrary.load(app_env["library"])
    tool = lib.table["id"].iloc[2]
    at.selectbox(key="lib_tool").set_value(tool).run()
    assert_ok(at)
    # one click on a key neighbour opens its dashboard
    by_key = [n for n in dash.neighbours(lib, 2, 5) if n.by == "keys"]
    j = next(i for i, n in enumerate(by_key) if n.kind == "correction")  # anchors have no sweep
    first = by_key[j]
    at.button(key=f"x_nb_keys_{j}").click().run()
    assert_ok(at)
    assert at.selectbox(key="lib_tool").value == first.id
    # the α-sweep columns hold the same continuations as the core's sweep
    at.text_area(key="dash_prompt").set_value("3+4=7\n\n").run()
    assert_ok(at)
    htmls = [h.proto.body for h in at.html if "stir-sweep" in h.proto.body]
    model = load_model(str(app_env["model"]), device="cpu")
    ref = dash.alpha_sweep(Engine(model), model.format_prompt("3+4=7\n\n"), lib.vectors[row_of(lib, first.id)],
                           first.layer, dash.SCALES, "last", 48)
    texts = [html.unescape("".join(re.findall(r'<span class="tok[^"]*" style="[^"]*">(.*?)</span>', h, re.S)))
             for h in htmls]
    assert texts == [r.text for r in ref.rows]
    # the export menu produced a GGUF for the selected tools
    assert at.get("download_button")
    # diff against itself: everything matched, nothing lacking
    at.text_input(key="diff_other").set_value(str(app_env["library"])).run()
    assert_ok(at)
    n_corr = int((lib.table["kind"] == "correction").sum())
    assert any(f"{n_corr} matched, 0 only in A, 0 only in B" in c.value for c in at.caption)
