"""App start: light imports, one model cache, the defaults loading from the server's start."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.app_library import build_test_library
from helpers.server import free_port, wait_healthy

from app import loading, state

REPO = Path(__file__).resolve().parents[1]


def test_loading_and_launcher_import_no_torch():
    """The launcher and the first lines of app/Home.py import only these: the page can paint before torch."""
    code = "import sys, app.loading, app.__main__; print(sorted(m for m in ('torch', 'pandas', 'stir_core.runtime.model', 'transformer_lens') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def lib_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("start") / "lib"
    build_test_library(tiny_model_dir, out)
    return out


def test_one_model_cache(tiny_model_dir, lib_dir, monkeypatch):
    """The defaults started at server start are the very objects the pages get: one model (its engine
    wraps it), one library read."""
    monkeypatch.setenv("STIR_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("STIR_LIBRARY", str(lib_dir))
    fut = loading.start_defaults()
    key = (str(tiny_model_dir), "auto", "auto")
    model, engine = fut.result(timeout=300)
    assert state.get_model(*key) is model and state.get_engine(*key) is engine and engine.model is model
    assert loading.start_loading(*key) is fut  # idempotent: no second load
    stamp = state.library_stamp(lib_dir)
    assert stamp  # a real manifest hash
    lib = state.get_library_file(str(lib_dir), stamp)
    assert lib is state.get_library_file(str(lib_dir), stamp) is loading.library_file(str(lib_dir), stamp).result()
    assert len(lib) > 0
    ctx = state.Context(*key, library_path=str(lib_dir), library=lib)
    assert ctx.model is model and ctx.engine is engine and ctx.ready


def test_model_cache_evicts_model_and_engine_together(tiny_model_dir):
    """More models than MAX_MODELS: an evicted model reloads (a new object), and its engine always wraps
    the model the pages see."""
    keys = [(str(tiny_model_dir), "cpu", dt) for dt in ("float32", "bfloat16", "float16")]
    assert len(keys) > loading.MAX_MODELS
    first = state.get_model(*keys[0])
    for k in keys[1:]:
        assert state.get_engine(*k).model is state.get_model(*k)
    assert len(loading._LOADS) <= loading.MAX_MODELS
    again = state.get_model(*keys[0])
    assert again is not first  # evicted, then loaded once more
    assert state.get_engine(*keys[0]).model is again


def test_launcher_loads_the_model_before_any_browser(tiny_model_dir, lib_dir, tmp_path):
    """`python -m app` loads the default model as the server starts: the ready line reaches the log with no
    page ever requested (only the health endpoint is polled)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIR_")}
    env.update(STIR_MODEL=str(tiny_model_dir), STIR_LIBRARY=str(lib_dir), STIR_RUNS=str(tmp_path / "runs"))
    port = free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "app", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.headless", "true"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc, log, timeout=120)
        t0 = time.perf_counter()
        while loading.READY_LINE not in log.read_text() and time.perf_counter() - t0 < 180:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert f"{loading.READY_LINE} {tiny_model_dir} auto auto" in log.read_text(), log.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_switch_interval_is_restored_after_the_default_load(tiny_model_dir, lib_dir, monkeypatch):
    monkeypatch.setenv("STIR_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("STIR_LIBRARY", str(lib_dir))
    monkeypatch.setattr(loading, "_LOADS", {})  # a fresh load, so the interval is lowered meanwhile
    before = sys.getswitchinterval()
    fut = loading.start_defaults()
    fut.result(timeout=300)
    deadline = time.perf_counter() + 10  # done callbacks run right after the result is set
    while sys.getswitchinterval() != before and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert sys.getswitchinterval() == before and not loading._SAVED_SWITCH
    assert gc.isenabled()  # the collector paused for the load is back on


def test_gc_is_paused_during_the_default_load(tiny_model_dir, lib_dir, monkeypatch):
    """The background load runs with the collector off (the faster cold start) and turns it back on."""
    monkeypatch.setenv("STIR_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("STIR_LIBRARY", str(lib_dir))
    monkeypatch.setattr(loading, "_LOADS", {})
    seen = []
    real = loading._load
    monkeypatch.setattr(loading, "_load", lambda *a: (seen.append(gc.isenabled()), real(*a))[1])
    assert gc.isenabled()
    fut = loading.start_defaults()
    fut.result(timeout=300)
    deadline = time.perf_counter() + 10
    while not gc.isenabled() and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert seen == [False] and gc.isenabled()
