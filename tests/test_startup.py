"""stir_core.runtime.startup: the collector paused while a model loads, and always back on afterwards."""

from __future__ import annotations

import gc
import threading

import pytest

from stir_core.runtime.startup import gc_paused, pause_gc


@pytest.fixture(autouse=True)
def _collector_on():
    gc.enable()
    yield
    gc.enable()


def test_nested_and_overlapping_pauses_end_with_the_last():
    outer = pause_gc()
    assert not gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the outer pause still holds
    inner = pause_gc()
    outer()
    assert not gc.isenabled()  # overlapping: the later pause ends last
    inner()
    assert gc.isenabled()
    inner()  # idempotent: a second resume must not end someone else's pause
    with gc_paused():
        inner()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_resumed_from_another_thread_and_after_an_error():
    resume = pause_gc()
    t = threading.Thread(target=resume)
    t.start()
    t.join()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("load failed")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


def test_load_model_pauses_the_collector(tiny_model_dir, monkeypatch):
    """The real load runs with the collector off (checked inside the bridge's boot) and turns it back on."""
    from transformer_lens.model_bridge import TransformerBridge

    from stir_core.runtime.model import load_model

    seen = []
    real = TransformerBridge.boot_transformers

    def spy(*a, **k):
        seen.append(gc.isenabled())
        return real(*a, **k)

    monkeypatch.setattr(TransformerBridge, "boot_transformers", spy)
    load_model(str(tiny_model_dir), device="cpu")
    assert seen == [False] and gc.isenabled()
