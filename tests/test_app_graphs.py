"""Decode graphs captured in the background after the app loads a model (issue #20, item 3): eager decoding
until they are ready, the same tokens either way, and the status the sidebar shows.

On CPU the engine's graph path runs with `STIR_GRAPHS=eager` (the captured step's function, run eagerly):
that is what these tests switch on. The reference is always a fresh Engine with graphs "off".
"""

from __future__ import annotations

import threading
import time

import pytest
from helpers.app_library import PROMPT
from helpers.app_pages import assert_ok, column_texts, open_app, run_playground

from app import loading
from stir_core.library.format import ToolLibrary
from stir_core.online.methods import StirConfig, run_method
from stir_core.online.warmup import GraphPhase, warm_graphs
from stir_core.runtime.engine import Engine
from stir_core.runtime.locks import model_lock
from stir_core.runtime.model import load_model

JOIN_S = 300  # a bound on waiting for the warm-up thread (it finishes in seconds); never a timing assert


@pytest.fixture
def fresh_app(app_env, monkeypatch):
    """The app's model cache and graph status emptied for this test (other modules load the same model with
    graphs off), restored after it."""
    monkeypatch.setattr(loading, "_LOADS", {})
    monkeypatch.setattr(loading, "_GRAPHS", {})
    monkeypatch.setattr(loading, "_GRAPH_THREADS", {})
    return app_env


def _reference(model_dir, method: str, tokens: int) -> str:
    model = load_model(str(model_dir), device="cpu")
    engine = Engine(model)
    engine.graphs = "off"
    lib = ToolLibrary.load(loading.default_library())
    cfg = StirConfig(max_new_tokens=tokens, delimiter="\n", seed=0)
    return run_method(engine, [PROMPT], method, lib, cfg)[0].completion


def _graph_captions(at) -> list[str]:
    return [c.value for c in at.sidebar.caption if c.value.startswith("Decode graphs")]


def test_app_captures_in_the_background_and_decodes_eagerly_until_ready(fresh_app, monkeypatch):
    monkeypatch.setenv("STIR_GRAPHS", "eager")
    gate = threading.Event()  # holds the warm-up before its first capture, so "capturing" can be seen
    real_runs = loading._graph_runs

    def gated_runs(model, engine):
        assert gate.wait(JOIN_S), "the test never opened the gate"
        return real_runs(model, engine)

    monkeypatch.setattr(loading, "_graph_runs", gated_runs)
    key = (str(fresh_app["model"]), "auto", "auto")
    try:
        at = open_app()
        at.run()
        assert_ok(at)
        model, engine = loading.loaded(*key)
        thread = loading.graph_warmup(*key)
        assert thread is not None and thread.daemon and thread.is_alive()
        assert _graph_captions(at) == ["Decode graphs: capturing in the background (eager until ready)"]

        # A Playground request while the capture is pending: it decodes (eagerly), captures nothing, and
        # equals graphs off.
        assert engine.graphs == "eager" and engine.graph_capture is False
        forwards = engine.forwards
        run_playground(at, PROMPT, 20)
        texts = column_texts(at)
        assert engine.forwards > forwards, "the request did not decode"
        assert not engine._graph_steps and engine.graph_capture is False
        assert texts == [_reference(fresh_app["model"], m, 20) for m in ("vanilla", "static", "stir")]
    finally:
        gate.set()
    thread.join(JOIN_S)
    assert not thread.is_alive()
    assert engine._graph_steps, "the warm-up captured no step"
    assert engine.graph_capture is True
    status = loading.graph_status(*key)
    assert status.phase is GraphPhase.READY and status.captured == len(engine._graph_steps)

    at.run()
    assert_ok(at)
    [line] = _graph_captions(at)
    assert line.startswith(f"Decode graphs: ready, {status.captured} captured in ")
    # A comparison after the capture (another budget: not the cached one above) runs on the captured steps
    # and still equals graphs off.
    run_playground(at, PROMPT, 24)
    assert column_texts(at) == [_reference(fresh_app["model"], m, 24) for m in ("vanilla", "static", "stir")]


def test_graphs_off_starts_no_thread(fresh_app, monkeypatch):
    monkeypatch.setenv("STIR_GRAPHS", "off")
    at = open_app()
    at.run()
    assert_ok(at)
    key = (str(fresh_app["model"]), "auto", "auto")
    engine = loading.loaded(*key)[1]
    assert engine.graphs == "off" and loading.graph_warmup(*key) is None
    assert loading.graph_status(*key).phase is GraphPhase.OFF
    assert _graph_captions(at) == ["Decode graphs: off (CPU)"]


def test_a_failed_capture_is_one_line_and_decoding_stays_eager(fresh_app, monkeypatch):
    monkeypatch.setenv("STIR_GRAPHS", "eager")

    def broken(model, engine):
        def run():
            raise RuntimeError("capture exploded\nsecond line of detail")
        return [run]

    monkeypatch.setattr(loading, "_graph_runs", broken)
    key = (str(fresh_app["model"]), "auto", "auto")
    at = open_app()
    at.run()
    engine = loading.loaded(*key)[1]
    thread = loading.graph_warmup(*key)
    thread.join(JOIN_S)
    assert not thread.is_alive()
    assert engine.graph_capture is False and not engine._graph_steps
    at.run()
    assert not at.exception
    assert [w.value for w in at.sidebar.warning] == [
        "Decode graphs: capture failed, decoding stays eager: RuntimeError: capture exploded"]


def test_warm_graphs_captures_only_under_the_lock_one_run_at_a_time(tiny, monkeypatch):
    """Capture is allowed inside each locked run only; a request queued during a run is served before the
    next run, and decodes eagerly (no capture) with the same tokens as graphs off."""
    monkeypatch.setenv("STIR_GRAPHS", "eager")
    engine = Engine(tiny)
    lock = model_lock(tiny)
    cfg = StirConfig(max_new_tokens=12, delimiter="\n", seed=0)
    ref = Engine(tiny)
    ref.graphs = "off"
    expected = {m: run_method(ref, [PROMPT], m, None, cfg)[0].completion for m in ("vanilla", "no_memory")}
    seen: dict[str, object] = {}

    def request() -> None:  # a user's request arriving during the first run, on a shape not captured yet
        with lock:
            seen["capture"] = engine.graph_capture
            seen["steps"] = len(engine._graph_steps)
            seen["text"] = run_method(engine, [PROMPT], "no_memory", None, cfg)[0].completion
            seen["steps_after"] = len(engine._graph_steps)

    waiter = threading.Thread(target=request)

    def first() -> None:
        assert lock.busy() and engine.graph_capture is True
        run_method(engine, [PROMPT], "vanilla", None, cfg)
        waiter.start()
        for _ in range(JOIN_S * 100):  # bounded: until the request is queued behind this run
            if lock.waiting():
                break
            time.sleep(0.01)
        assert lock.waiting() == 1

    def second() -> None:
        assert "text" in seen, "the queued request was not served between two runs"
        run_method(engine, [PROMPT], "no_memory", None, cfg)

    status = warm_graphs(engine, [first, second])
    waiter.join(JOIN_S)
    assert seen["capture"] is False and seen["steps"] == seen["steps_after"]  # eager: nothing captured
    assert seen["text"] == expected["no_memory"]
    assert status.phase is GraphPhase.READY and status.captured == len(engine._graph_steps) > 0
    assert engine.graph_capture is True
    assert run_method(engine, [PROMPT], "vanilla", None, cfg)[0].completion == expected["vanilla"]


def test_warm_graphs_with_graphs_off_runs_nothing(tiny):
    engine = Engine(tiny)
    engine.graphs = "off"
    status = warm_graphs(engine, [lambda: pytest.fail("a run ran with graphs off")])
    assert status.phase is GraphPhase.OFF and status.line() == "Decode graphs: off (CPU)"


def test_warm_graphs_reports_graphs_turned_off_by_a_failing_step(tiny, monkeypatch):
    """A step that fails to capture during the warm-up turns graphs off (the engine says so); the status is
    FAILED with that reason, not READY."""
    from stir_core.runtime import engine as engine_mod
    from stir_core.runtime.scheduler import generate

    def broken(*a, **k):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(engine_mod, "GraphStep", broken)
    engine = Engine(tiny)
    engine.graphs = "eager"
    with pytest.warns(RuntimeWarning, match="decode graphs off"):
        status = warm_graphs(engine, [lambda: generate(engine, ["12+3="], 4)])
    assert status.phase is GraphPhase.FAILED and engine.graphs == "off"
    assert status.line() == ("Decode graphs: capture failed, decoding stays eager: capture failed: RuntimeError: "
                             "operation not permitted when stream is capturing")
