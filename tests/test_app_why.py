"""The app fails safely and explains itself (issue #23), through AppTest on the tiny model and test library:
a model that does not load, out-of-range knobs, a cancelled evaluation, error text with Markdown in it, a
bad delimiter. Each test here failed on the code before the fix it names."""

from __future__ import annotations

import re
import time

import pytest
from test_app import _app, _ok, _run_playground, app_env  # noqa: F401 - app_env is a fixture

pytestmark = pytest.mark.usefixtures("app_env")
MISSING = "/nonexistent/stir-model"


def _shown(markdown: str) -> str:
    """Markdown source as it reads on screen (backslash escapes removed)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _errors(at) -> list[str]:
    return [_shown(e.value) for e in at.error]  # the whole page, sidebar included


def _with_missing_model(at):
    """Point the sidebar at a local model path that does not exist; wait until its load has failed."""
    from app import loading

    at.sidebar.text_input(key="sb_model_name").set_value(MISSING).run()
    fut = loading.start_loading(MISSING, "auto", "auto")
    assert fut.exception(timeout=120) is not None  # it fails (no such directory)
    return at.run()


def test_missing_model_is_one_line_and_disables_run():
    """Defect 1: a traceback (ModelLoadError) and "Loading the model…" forever; now one line, Run off."""
    at = _app()
    at.run()
    _ok(at)
    at.sidebar.text_input(key="sb_model_name").set_value(MISSING).run()
    at.button(key="x_run").click().run()  # pressed before the load is known to have failed
    assert not at.exception, [e.value for e in at.exception]
    assert any("does not exist" in e for e in _errors(at))
    at.run()
    assert not at.exception
    lines = [e for e in _errors(at) if "does not exist" in e]
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
    """Defect 4: a cancel kept only the run directory's marker. Cancel after the second batch of the first
    method (n=6, batches of 2): the 4 finished problems are saved and shown, marked partial."""
    from stir_core.analysis.evaluate import load_results
    from stir_core.io import jobs

    report = jobs.Job.report

    def cancel_after_first(self, done, total, text="", **info):  # the user presses Cancel after batch 1
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
    assert set(res.summary) == {"vanilla"} and res.summary["vanilla"]["n"] == 4
    assert len(res.examples) == 4
    assert at.session_state["ev_dir"] == job.label  # opened on the page
    assert any("partial" in c.value and "vanilla 4/6" in c.value for c in at.caption)


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
