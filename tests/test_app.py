"""The Streamlit app through `streamlit.testing` (AppTest): every page on a tiny random model and a small
library built from that model's own delimiter states (so the gate has real similarities to work with)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.app_library import PROMPT
from helpers.app_pages import assert_ok, column_texts, open_app, run_playground
from helpers.tasks import OneTask

from stir_core.analysis import projection
from stir_core.analysis.lens import lens_for_model
from stir_core.library.format import ToolLibrary
from stir_core.online.methods import StirConfig, run_method
from stir_core.runtime.engine import Engine
from stir_core.runtime.model import load_model
from stir_core.tasks import Example

REPO = Path(__file__).resolve().parents[1]


def _run_playground(at, tokens: int = 24):
    return run_playground(at, PROMPT, tokens)


def test_playground_defaults_load(app_env):
    at = open_app()
    at.run()
    assert_ok(at)
    assert [at.selectbox(key=f"pg_m{i}").value for i in range(3)] == ["vanilla", "static", "stir"]
    assert at.sidebar.radio(key="sb_model_src").value == "local path"
    assert any("parameters" in m.value for m in at.sidebar.markdown)
    bare = open_app()  # no library: vanilla and no_memory only, and the Library page says so
    bare.session_state["sb_lib_src"] = "none"
    bare.run()
    assert_ok(bare)
    assert bare.selectbox(key="pg_m0").options == ["vanilla", "no_memory"]
    bare.switch_page("views/library.py").run()
    assert_ok(bare)
    assert any("No tool library is loaded" in i.value for i in bare.info)


def test_side_by_side_generation_matches_the_core_and_shows_gate_cards(app_env):
    at = open_app()
    at.run()
    _run_playground(at)
    texts = column_texts(at)
    assert len(texts) == 3
    model = load_model(str(app_env["model"]), device="cpu")
    lib = ToolLibrary.load(app_env["library"])
    cfg = StirConfig(max_new_tokens=24, delimiter="\n", seed=0)
    for text, method in zip(texts, ["vanilla", "static", "stir"], strict=True):
        ref = run_method(Engine(model), [PROMPT], method, lib, cfg)[0]
        assert text == ref.completion, method
    stir = run_method(Engine(model), [PROMPT], "stir", lib, cfg)[0]
    cards = [m.value for m in at.markdown if m.value.startswith("**Control point m=")]
    assert len(cards) == len(stir.decisions) > 0  # the stir column is shown by default
    for card, d in zip(cards, stir.decisions, strict=True):
        assert f"m={d.m}**" in card and (d.chosen in card if d.committed else d.reason in card)
    assert len(at.dataframe) >= sum(1 for d in stir.decisions if d.candidates)
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # the gate strip and the score heatmap
    from app import state

    app_model = state.start_loading(str(app_env["model"])).result()[0]  # the app's own (cached) model
    from stir_core.runtime.steering import foreign_hooks

    assert not foreign_hooks(app_model.bridge), "hooks left attached (beyond the engine's own, inert ones)"
    # the link in the URL reproduces this view
    assert at.query_params["c2"].startswith("stir") and at.query_params["run"] == "1"


def test_changing_knobs_changes_the_gate(app_env):
    at = open_app()
    at.run()
    at.number_input(key="pg2_tau_null").set_value(100.0)
    _run_playground(at)
    cards = [m.value for m in at.markdown if m.value.startswith("**Control point m=")]
    assert cards and all("null action" in c for c in cards)
    assert any("below_tau" in c for c in cards)
    texts = column_texts(at)
    assert texts[2] == texts[0]  # nothing committed: stir decodes like vanilla (greedy)


def test_deep_link_reopens_the_view(app_env):
    at = open_app(prompt=PROMPT, delim="\\n", tokens="16", c0="vanilla", c1="stir;k_scale=0.5;top_l=2", run="1")
    at.run()
    assert_ok(at)
    assert at.text_area(key="pg_prompt").value == PROMPT
    assert at.number_input(key="pg_ncols").value == 2
    assert at.number_input(key="pg1_k_scale").value == 0.5 and at.number_input(key="pg1_top_l").value == 2
    assert len(column_texts(at)) == 2  # run=1: the link re-runs the comparison


def _plotly_array(a):
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata": base64} as plotly 6 writes numpy."""
    if isinstance(a, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(a["bdata"]), dtype=a["dtype"]).tolist()
    return list(a)


def test_library_page(app_env):
    at = open_app()
    at.run()
    at.switch_page("views/library.py").run()
    assert_ok(at)
    lib = ToolLibrary.load(app_env["library"])
    # the scatter holds one point per entry (default: keys, PCA, 2-D) where an independent PCA puts it
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    shown = {cd[1]: (x, y) for tr in spec["data"] if "customdata" in tr  # (the selection ring has none)
             for cd, x, y in zip(tr["customdata"], _plotly_array(tr["x"]), _plotly_array(tr["y"]), strict=True)}
    assert sorted(shown) == sorted(lib.table["id"])
    ref = projection.project(lib.keys, "pca", 2, seed=0).coords
    for i, tool_id in enumerate(lib.table["id"]):
        assert shown[tool_id] == pytest.approx(tuple(ref[i]), abs=1e-5)
    row = 2  # a correction
    assert lib.table["kind"].iloc[row] == "correction"
    at.selectbox(key="lib_tool").set_value(lib.table["id"].iloc[row]).run()
    assert_ok(at)
    frames = [d.value for d in at.dataframe]
    nb = next(f for f in frames if "cos" in f.columns)
    ref = projection.nearest_neighbors(lib.keys, row, 5)
    assert nb[nb["by"] == "keys"]["id"].tolist() == [lib.table["id"].iloc[j] for j, _ in ref]
    lens = next(f for f in frames if "promoted" in f.columns)
    model = load_model(str(app_env["model"]), device="cpu")
    readout = lens_for_model(model, lib.vectors[row], k=10)
    assert lens["promoted"].tolist() == [repr(readout.texts[i]) for i, _ in readout.promoted]
    at.selectbox(key="lib_color").set_value("quality").run()
    assert_ok(at)
    at.segmented_control(key="lib_method").set_value("umap").run()  # a real UMAP (22 keys, cosine)
    assert_ok(at)
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert fig["layout"]["title"]["text"] == "UMAP of keys (22 points)"


def _wait_for_job(at, key: str, timeout: float = 120.0) -> None:
    """Rerun the page until its background job ends (AppTest does not drive run_every fragments)."""
    import time

    from stir_core.io.jobs import get_job

    job = get_job(at.session_state[key])
    assert job is not None
    t0 = time.time()
    while job.active and time.time() - t0 < timeout:
        time.sleep(0.2)
    assert not job.active, "the job did not finish"
    assert job.status == "done", (job.status, job.error, job.detail)
    at.run()
    at.run()
    assert_ok(at)


def test_evaluate_page_runs_and_opens_an_example(app_env):
    at = open_app()
    at.run()
    at.switch_page("views/evaluate.py").run()
    assert_ok(at)
    at.number_input(key="ev_n").set_value(3)
    at.number_input(key="evk_max_new_tokens").set_value(16)
    at.multiselect(key="ev_methods").set_value(["vanilla", "stir"])
    at.button(key="x_ev_run").click().run()
    assert_ok(at)
    _wait_for_job(at, "ev_job")
    from stir_core.analysis.evaluate import load_results

    res = load_results(at.session_state["ev_dir"])
    assert set(res.summary) == {"vanilla", "stir"} and res.config["n"] == 3
    assert len(at.get("plotly_chart")) >= 1
    at.button(key="x_ev_to_pg").click().run()
    assert_ok(at)
    chosen = at.session_state["ev_example"]
    saved = res.examples[res.examples["example_id"].astype(str) == chosen]
    assert sorted(column_texts(at)) == sorted(saved["completion"])


class EchoTask(OneTask):
    """A task a random model can be mined on: newline segments, 'correct' when the completion has a '1'."""

    name = "echo"

    def load(self, split="mine", n=None, seed=0):
        return [Example(id=f"e{i}", question=f"{i}+{i}=", answer="1") for i in range(12)][:n]


def test_build_page_builds_a_library_that_the_picker_lists(app_env, monkeypatch):
    from stir_core import tasks

    tasks.task_names()  # load the built-in tasks first: the registry loads them only when empty
    monkeypatch.setitem(tasks._REGISTRY, "echo", EchoTask)
    at = open_app()
    at.run()
    at.switch_page("views/build.py").run()
    assert_ok(at)
    at.selectbox(key="bd_task").set_value("echo")
    at.number_input(key="bd_problems").set_value(4)
    at.number_input(key="bd_rollouts").set_value(8)  # > k_pos + k_neg: disjoint sides under the reference split
    at.number_input(key="bd_tokens").set_value(24)
    at.text_input(key="bd_layers").set_value("1")
    at.number_input(key="bd_temperature").set_value(1.5)
    at.checkbox(key="bd_both").set_value(False)
    at.number_input(key="bd_budget").set_value(16)
    out = app_env["runs"] / "build-test"
    at.text_input(key="x_bd_out").set_value(str(out))
    at.button(key="x_bd_run").click().run()
    assert_ok(at)
    _wait_for_job(at, "bd_job")
    lib = ToolLibrary.load(out / "library")
    assert 0 < len(lib) <= 16 and set(lib.table["task"]) == {"echo"}
    assert any("Built" in s.value for s in at.success)
    # A new session whose picker is on "run directory" (AppTest records the entry script's sidebar only on
    # a session's first run, so the choice is made through session state before it).
    fresh = open_app()
    fresh.session_state["sb_lib_src"] = "run directory"
    fresh.run()
    assert_ok(fresh)
    assert str(out / "library") in fresh.sidebar.selectbox(key="sb_lib_run").options


def test_generation_waits_for_the_lock(app_env):
    import threading

    from app import state

    model_key = (str(app_env["model"]), "auto", "auto")
    state.start_loading(*model_key).result()
    cfg = json.dumps(vars(StirConfig(max_new_tokens=4)), sort_keys=True)
    done = threading.Event()

    def generate():
        state.run_trace(model_key, ("", ""), "lock-test 1+1=", "vanilla", cfg)
        done.set()

    from stir_core.runtime.locks import model_lock

    with model_lock(state.start_loading(*model_key).result()[0]):
        worker = threading.Thread(target=generate)
        worker.start()
        assert not done.wait(1.0), "a generation ran while another held the lock"
    assert done.wait(60), "the generation never ran after the lock was released"
    worker.join()


def test_thread_policy_reads_the_environment(monkeypatch):
    from app.loading import THREADS_ENV, thread_policy

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert thread_policy() == "auto"
    monkeypatch.setenv(THREADS_ENV, "3")
    assert thread_policy() == 3
    monkeypatch.setenv(THREADS_ENV, "0")
    assert thread_policy() is None  # leave torch's default alone
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        thread_policy()


def test_build_page_offers_file_tasks_with_files_per_split(app_env, tmp_path):
    """A file task shows one file input per split; files that share a problem are refused before any work."""
    rows = [{"question": "Tom has 3 pens and buys 4 more. How many pens?", "answer": "3+4=7\n#### 7"}]
    for name in ("mine.jsonl", "eval.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    at = open_app()
    at.run()
    at.switch_page("views/build.py").run()
    assert_ok(at)
    assert not [w for w in at.text_input if w.key == "bd_mine_file"]
    at.selectbox(key="bd_task").set_value("gsm8k").run()
    at.text_input(key="bd_mine_file").set_value(str(tmp_path / "mine.jsonl"))
    at.text_input(key="bd_eval_file").set_value(str(tmp_path / "eval.jsonl"))
    out = app_env["runs"] / "build-overlap"
    at.text_input(key="x_bd_out").set_value(str(out))
    at.button(key="x_bd_run").click().run()
    assert any("also appear" in e.value for e in at.error), [e.value for e in at.error]
    assert not out.exists()
