"""The app fails safely and explains itself (issue #23), through AppTest on the tiny model and test library:
a model that does not load, out-of-range knobs, a cancelled evaluation, error text with Markdown in it, a
bad delimiter. Each test here failed on the code before the fix it names."""

from __future__ import annotations

import html
import re
import time

import pytest
from helpers.app_library import PROMPT
from helpers.app_pages import assert_ok as _ok
from helpers.app_pages import column_texts, run_playground
from helpers.app_pages import open_app as _app

pytestmark = pytest.mark.usefixtures("app_env")


def _missing() -> str:
    """A model path that does not exist, inside the runs directory (an allowed root: outside one the app
    refuses the path itself, which is the other test's case)."""
    import os

    return os.path.join(os.environ["STIR_RUNS"], "no-such-model")


def _shown(markdown: str) -> str:
    """Markdown source as it reads on screen (backslash escapes removed)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _errors(at) -> list[str]:
    return [_shown(e.value) for e in at.error]  # the whole page, sidebar included


def _with_missing_model(at):
    """Point the sidebar at a local model path that does not exist; wait until its load has failed."""
    from app import loading

    at.sidebar.text_input(key="sb_model_name").set_value(_missing()).run()
    fut = loading.start_loading(_missing(), "auto", "auto")
    assert fut.exception(timeout=120) is not None  # it fails (no such directory)
    return at.run()


@pytest.mark.parametrize(("where", "says"), [("runs", "does not exist"), ("outside", "Model not loaded")])
def test_missing_model_is_one_line_and_disables_run(where, says):
    """Defect 1: a traceback (ModelLoadError) and "Loading the model…" forever; now one line, Run off (a
    path that does not exist under an allowed root, and one outside the allowed roots)."""
    name = _missing() if where == "runs" else "/nonexistent/stir-model"
    at = _app()
    at.run()
    _ok(at)
    at.sidebar.text_input(key="sb_model_name").set_value(name).run()
    at.button(key="x_run").click().run()  # pressed before the load is known to have failed
    assert not at.exception, [e.value for e in at.exception]
    assert any(says in e for e in _errors(at)), _errors(at)
    at.run()
    assert not at.exception
    lines = [e for e in _errors(at) if says in e]
    assert len(lines) == 1 and "\n" not in lines[0], lines  # said once, in one line
    assert at.button(key="x_run").disabled
    assert not any("Loading the model" in c.value for c in at.sidebar.caption)
    assert "pg_result" not in at.session_state


def test_missing_model_on_the_library_page_is_one_line():
    """Defect 1 on the Library page (the tool dashboard needs the model): no traceback, the page draws."""
    at = _app()
    at.run()
    _with_missing_model(at)
    at.switch_page("views/library.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len([e for e in _errors(at) if "does not exist" in e]) == 1
    assert any("needs the model" in i.value for i in at.info)
    assert at.get("plotly_chart")  # the library's geometry still draws: it needs no model
    at.switch_page("views/evaluate.py").run()
    assert not at.exception
    assert at.button(key="x_ev_run").disabled


@pytest.mark.parametrize(
    ("key", "value", "names"),
    [("pg_tokens", 100000, "max_new_tokens=100000"), ("pg2_k_scale", -1.0, "k_scale"), ("pg2_top_l", 0, "top_l")],
)
def test_out_of_range_knobs_are_refused_by_name(key, value, names):
    """Defect 5: the field went red and Run ran with the previous value, saying nothing. Now: the knob is
    named in an error, Run is disabled, and nothing is decoded."""
    at = _app()
    at.run()
    _ok(at)
    at.number_input(key=key).set_value(value).run()
    assert not at.exception
    assert any(names in e for e in _errors(at)), _errors(at)
    assert at.button(key="x_run").disabled  # AppTest, like a browser, cannot press it
    assert "pg_result" not in at.session_state


def test_a_cancelled_evaluation_keeps_and_shows_its_finished_batches(monkeypatch):
    """Defect 4: a cancel kept only the run directory's marker. Progress is reported per finished problem;
    the user cancels at the first report of the first method (n=6, 2 decoding at once), the run stops at
    the next: the 2 finished problems are saved and shown, marked partial."""
    from stir_core.analysis.evaluate import load_results
    from stir_core.io import jobs

    report = jobs.Job.report

    def cancel_after_first(self, done, total, text="", **info):  # the user presses Cancel after problem 1
        report(self, done, total, text, **info)
        self.cancel()

    monkeypatch.setattr(jobs.Job, "report", cancel_after_first)
    at = _app()
    at.run()
    at.switch_page("views/evaluate.py").run()
    _ok(at)
    at.number_input(key="ev_n").set_value(6)
    at.number_input(key="ev_batch").set_value(2)
    at.number_input(key="evk_max_new_tokens").set_value(8)
    at.multiselect(key="ev_methods").set_value(["vanilla", "stir"])
    at.button(key="x_ev_run").click().run()
    _ok(at)
    job = jobs.get_job(at.session_state["ev_job"])
    t0 = time.time()
    while job.active and time.time() - t0 < 120:
        time.sleep(0.2)
    assert job.status == "cancelled", (job.status, job.error)
    at.run()
    at.run()
    assert not at.exception
    res = load_results(job.label)
    assert res.config["partial"] is True
    assert set(res.summary) == {"vanilla"} and res.summary["vanilla"]["n"] == 2
    assert len(res.examples) == 2
    assert at.session_state["ev_dir"] == job.label  # opened on the page
    assert any("partial" in c.value and "vanilla 2/6" in c.value for c in at.caption)


def test_error_text_shows_literally(tmp_path):
    """Defect 7: error text went through Markdown (`__init__.py` rendered as a bold "init.py")."""
    at = _app()
    at.run()
    bad = tmp_path / "__init__.py"
    bad.mkdir()
    at.sidebar.radio(key="sb_lib_src").set_value("path").run()
    at.sidebar.text_input(key="sb_lib_path").set_value(str(bad)).run()
    assert not at.exception
    lines = [e for e in at.sidebar.error if "Library not loaded" in e.value]
    assert lines and "\\_\\_init\\_\\_.py" in lines[0].value, [e.value for e in at.sidebar.error]


def test_a_bad_delimiter_gets_our_own_message():
    """Defect 7: a trailing backslash showed Python's codec message ("truncated \\xXX escape")."""
    at = _app()
    at.run()
    at.text_input(key="pg_delim").set_value("\\").run()
    assert not at.exception
    msgs = [e for e in _errors(at) if "delimiter" in e]
    assert msgs and "broken escape" in msgs[0] and "codec" not in msgs[0], _errors(at)
    assert at.button(key="x_run").disabled


def test_why_on_the_token_colour_modes_and_commit_effects():
    """#23 Deliver 1-2: a control point's token carries the gate's reasons (shortlist with similarities,
    gains and scores, Score_null, τ_null, the reason, α), the same as the core's own decode of the prompt; the
    KL colour mode and the effect-over-time chart show `effects.trace_effects` of that decode."""
    import json
    import os

    from stir_core.analysis.effects import trace_effects
    from stir_core.library.format import ToolLibrary
    from stir_core.online.methods import StirConfig, run_method
    from stir_core.runtime.engine import Engine
    from stir_core.runtime.model import load_model

    at = _app()
    at.run()
    run_playground(at, PROMPT)
    model = load_model(os.environ["STIR_MODEL"], device="cpu")
    lib = ToolLibrary.load(os.environ["STIR_LIBRARY"])
    ref = run_method(Engine(model), [model.format_prompt(PROMPT)], "stir", lib,
                     StirConfig(max_new_tokens=24, delimiter="\n", seed=0))[0]
    assert ref.interventions
    stir_html = [m.value for m in at.markdown if 'class="stir-tokens"' in m.value][2]  # vanilla, static, stir
    titles = re.findall(r'<span class="tok[^"]*why[^"]*" title="([^"]*)"', stir_html)
    assert len(titles) == len(ref.decisions)
    for title, d in zip(titles, ref.decisions, strict=True):
        text = html.unescape(title)
        assert f"Score_null = {d.score_null:.4g}" in text and "τ_null = 0" in text
        assert all(f"{c.tool_id} ({c.kind}, L{c.layer}): sim {c.sim:.3f}" in text for c in d.candidates)
        assert all(f"score {c.score:.4g}" in text for c in d.candidates if c.score is not None)
        assert (f"α = {d.alpha:.3g}" in text) == d.committed
    # the Why panel opens at STIR's first commit
    panel = "\n".join(t.value for t in at.text)
    d0 = next(d for d in ref.decisions if d.committed)
    assert f"control point m={d0.m}" in panel and f"Score_null = {d0.score_null:.4g}" in panel
    # effects: the chart holds the core's KL of each commit
    eff = trace_effects(model, ref, lib)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    effect = next(c for c in charts if c["layout"].get("yaxis", {}).get("title", {}).get("text", "").startswith("KL"))
    assert len(effect["data"]) == len(eff.commits)
    for trace, c in zip(effect["data"], eff.commits, strict=True):
        assert trace["y"] == pytest.approx(c.kl, abs=1e-5)
    # colour mode KL: the strip gets a KL colour bar, the tokens a KL hover line
    at.segmented_control(key="pg_color").set_value("kl").run()
    _ok(at)
    strip = json.loads(at.get("plotly_chart")[0].proto.spec)
    bars = [t["marker"]["colorbar"]["title"]["text"] for t in strip["data"]
            if isinstance(t.get("marker"), dict) and "colorbar" in t["marker"]]
    assert bars == ["KL(steered ‖ vanilla)"]
    k = max(range(len(eff.kl)), key=eff.kl.__getitem__)
    assert any(f"KL(steered ‖ vanilla) = {eff.kl[k]:.4g}" in html.unescape(m.value) for m in at.markdown)


def test_an_over_long_prompt_is_refused_once():
    """#23 defect 6: the README says over-long prompts are refused; the app truncated them, with the same
    warning in each of the three columns. Now: one error naming the context, nothing decoded."""
    at = _app()
    at.run()
    at.text_area(key="pg_prompt").set_value("1+2=3 " * 120)  # > 512 positions of the tiny model
    at.button(key="x_run").click().run()
    assert not at.exception
    lines = [e for e in _errors(at) if "context" in e]
    assert len(lines) == 1 and "512 positions" in lines[0], _errors(at)
    assert not at.warning and "pg_result" not in at.session_state


def test_defaults_follow_the_readme(monkeypatch):
    """#23 defect 6: the Playground's static column ran at scale 1.0 where the README's tuned value for the
    demo library is 2.0 (results/tune_static/best.json); Evaluate defaulted to the retired seed 123."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    best = json.loads((repo / "results" / "tune_static" / "best.json").read_text())["best"]
    monkeypatch.setenv("STIR_LIBRARY", str(repo / "assets" / "demo-library"))
    monkeypatch.delenv("STIR_MODEL")  # the embedded model, which the demo library was mined on
    at = _app()
    at.run()
    _ok(at)
    assert at.selectbox(key="pg_m1").value == "static"
    assert at.number_input(key="pg1_static_scale").value == best["static"]["static_scale"] == 2.0
    at.switch_page("views/evaluate.py").run()
    assert at.number_input(key="ev_seed").value == 2026


def test_graded_answers_and_the_embedded_models_formats(monkeypatch):
    """#23 Deliver 3 / defect 7: a sample problem shows ✓/✗ against gold in every column (by the task's own
    rule, recomputed here from the traces); a prompt outside the embedded model's formats gets one note."""
    from pathlib import Path

    from stir_core.tasks import get_task

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("STIR_LIBRARY", str(repo / "assets" / "demo-library"))
    monkeypatch.delenv("STIR_MODEL")
    task = get_task("planted")
    ex = task.load("eval", 1, 0)[0]
    at = _app()
    at.run()
    at.text_area(key="pg_prompt").set_value(task.prompt(ex))
    at.number_input(key="pg_tokens").set_value(64)
    at.button(key="x_run").click().run()
    _ok(at)
    from stir_core.analysis.views import playground_page

    page = playground_page(at.session_state["pg_result"])
    expected = [("✓ " if task.score(t.completion, ex) else "✗ ") for t in page.traces]
    shown = [_shown(m.value).strip("*") for m in at.markdown if _shown(m.value).startswith(("**✓", "**✗"))]
    assert len(shown) == len(page.traces) == 3
    assert [s_[:2] for s_ in shown] == expected
    assert all(f"(gold {ex.answer})" in s_ for s_ in shown if s_.startswith("✗"))
    assert not any("knows two formats" in i.value for i in at.info)
    at.text_area(key="pg_prompt").set_value("What is the capital of France?\n")
    at.button(key="x_run").click().run()
    _ok(at)
    notes = [i.value for i in at.info if "knows two formats" in i.value]
    assert len(notes) == 1 and "mod10" in notes[0]


def test_strength_sweeps_one_prompt_and_a_batch():
    """#23 Deliver 4: one knob over a range. One prompt -> vanilla + one column per value (each decoded as
    the core decodes that setting); a small batch -> accuracy and tokens against the knob with paired
    wins/losses, equal to `evaluate` run per value here (with vanilla on the same problems)."""
    import json
    import os

    from stir_core.analysis.evaluate import evaluate
    from stir_core.analysis.outcomes import mcnemar
    from stir_core.library.format import ToolLibrary
    from stir_core.online.methods import StirConfig, run_method
    from stir_core.runtime.engine import Engine
    from stir_core.runtime.model import load_model
    from stir_core.tasks import get_task

    at = _app()
    at.run()
    at.text_area(key="pg_prompt").set_value(PROMPT)
    at.text_input(key="pg_delim").set_value("\\n")
    at.number_input(key="pg_tokens").set_value(16)
    at.run()
    at.selectbox(key="pg_sw_knob").set_value("k_scale").run()
    at.text_input(key="pg_sw_values").set_value("0.5, 2").run()
    at.button(key="x_sw_prompt").click().run()
    at.run()
    _ok(at)
    assert [at.selectbox(key=f"pg_m{i}").value for i in range(3)] == ["vanilla", "stir", "stir"]
    assert [at.number_input(key=f"pg{i}_k_scale").value for i in (1, 2)] == [0.5, 2.0]
    model = load_model(os.environ["STIR_MODEL"], device="cpu")
    lib = ToolLibrary.load(os.environ["STIR_LIBRARY"])
    texts = column_texts(at)
    for text, k in zip(texts[1:], (0.5, 2.0), strict=True):
        ref = run_method(Engine(model), [model.format_prompt(PROMPT)], "stir", lib,
                         StirConfig(max_new_tokens=16, delimiter="\n", seed=0, k_scale=k))[0]
        assert text == ref.completion
    # a batch of 4 planted val problems
    at.number_input(key="pg_sw_n").set_value(4)
    at.button(key="x_sw_batch").click().run()
    _ok(at)
    table = at.session_state["pg_sweep"]["table"]
    assert list(table["value"]) == [0.5, 2.0]
    cfg = StirConfig(max_new_tokens=16, delimiter="\n", seed=0)
    task = get_task("planted")
    van = evaluate(Engine(model), task, ["vanilla"], None, cfg, n=4, split="val", seed=1, show_progress=False)
    for k, row in zip((0.5, 2.0), table.itertuples(), strict=True):
        res = evaluate(Engine(model), task, ["stir"], lib, cfg.with_overrides(k_scale=k), n=4, split="val", seed=1,
                       show_progress=False)
        assert row.accuracy == res.summary["stir"]["accuracy"]
        assert row.mean_total_tokens == pytest.approx(res.summary["stir"]["mean_total_tokens"])
        vs = mcnemar(list(van.examples["correct"]), list(res.examples["correct"]))
        assert (row.wins, row.losses) == (vs["wins"], vs["losses"])
    chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                 if json.loads(c.proto.spec)["layout"].get("xaxis", {}).get("title", {}).get("text") == "k_scale")
    assert [t["name"] for t in chart["data"]] == ["stir accuracy", "vanilla", "tokens (committed + probe)"]


def test_slices_and_deep_links_to_a_run_and_a_tool():
    """#23 Deliver 5: Evaluate results sliced by the task's labels / tool / commit (the page's table equals
    `views.slice_table` of the saved results); `?eval=DIR` reopens a run (only under the runs directory)
    and `?tool=ID` opens a tool's dashboard, whose firings come from the newest saved run at once."""
    import os

    from stir_core.analysis.evaluate import load_results
    from stir_core.analysis.views import slice_table
    from stir_core.library.format import ToolLibrary

    at = _app()
    at.run()
    at.switch_page("views/evaluate.py").run()
    at.number_input(key="ev_n").set_value(4)
    at.number_input(key="evk_max_new_tokens").set_value(16)
    at.text_input(key="evk_delimiter").set_value("\\n")
    at.multiselect(key="ev_methods").set_value(["vanilla", "stir"])
    at.button(key="x_ev_run").click().run()
    from stir_core.io import jobs

    job = jobs.get_job(at.session_state["ev_job"])
    t0 = time.time()
    while job.active and time.time() - t0 < 120:
        time.sleep(0.2)
    assert job.status == "done", job.error
    at.run()
    at.run()
    _ok(at)
    run_dir = at.session_state["ev_dir"]
    assert at.query_params["eval"] == run_dir
    res = load_results(run_dir)
    for by in ("mode", "committed"):
        at.segmented_control(key="ev_slice").set_value(by).run()
        shown = next(d.value for d in at.dataframe if "slice" in d.value.columns)
        ref = slice_table(res, by, "stir")
        assert shown.reset_index(drop=True).equals(ref)
        assert int(shown["n"].sum()) == 4
    # a fresh session from the link
    link = _app(eval=run_dir)  # opened on the Evaluate page itself, as a browser opens /evaluate?eval=…
    link.switch_page("views/evaluate.py").run()
    _ok(link)
    assert link.session_state["ev_dir"] == run_dir
    outside = _app(eval="/etc")
    outside.switch_page("views/evaluate.py").run()
    assert "ev_dir" not in outside.session_state and any("only directories under" in w.value for w in outside.warning)
    # ?tool=: the tool's dashboard, with where it fired in the newest saved run
    lib = ToolLibrary.load(os.environ["STIR_LIBRARY"])
    tool = str(lib.table["id"].iloc[4])
    lt = _app(tool=tool)
    lt.switch_page("views/library.py").run()
    _ok(lt)
    assert lt.selectbox(key="lib_tool").value == tool
    assert lt.segmented_control(key="dash_source").value == "saved run"
