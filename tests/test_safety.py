"""Concurrency, background jobs, safe writes and the knob schema, through their public functions."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import fields

import pytest
import torch
from fake_tasks import OneTask

from stir_core import config as schema
from stir_core.config import ConfigError, StirConfig
from stir_core.io import outputs
from stir_core.io.jobs import Cancelled, get_job, start_job
from stir_core.offline.build import SelectConfig
from stir_core.offline.mine import MineConfig
from stir_core.runtime.locks import FairLock, model_lock
from stir_core.tasks import Example

# --- the knob schema ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [StirConfig, MineConfig, SelectConfig])
def test_every_field_has_schema_metadata_and_its_default_round_trips(cls):
    ks = schema.knobs(cls)
    assert set(ks) == {f.name for f in fields(cls)}, "a field without knob(...) metadata"
    for name, k in ks.items():
        assert k.help and k.group
        default = schema.defaults(cls)[name]
        text = "none" if default is None else (",".join(map(str, default)) if isinstance(default, list)
                                                else str(default))
        assert schema.cast_value(cls, name, text) == default, name  # what --set/YAML/links read back


def test_one_caster_for_cli_sweeps_views_and_yaml():
    from app.export import _cast_knob
    from stir_core.analysis.evaluate import parse_sweep

    assert parse_sweep("center_keys=true,0,off") == ("center_keys", [True, False, False])
    assert parse_sweep("layer=none,3") == ("layer", [None, 3])
    for name, raw in [("center_keys", "off"), ("layer", "none"), ("min_sim", "0.9"), ("top_l", "2")]:
        assert _cast_knob(name, raw) == schema.cast_value(StirConfig, name, raw)
    with pytest.raises(ConfigError, match="top_l"):
        _cast_knob("top_l", "2.5")
    with pytest.raises(ConfigError, match="center_keys"):
        parse_sweep("center_keys=maybe")  # used to read as False


def test_layer_checks_use_the_model_and_the_library():
    cfg = StirConfig(layer=3)
    schema.check_layers(cfg, 4, [2, 3])
    with pytest.raises(ConfigError, match="out of range"):
        schema.check_layers(StirConfig(layer=9), 4)
    with pytest.raises(ConfigError, match="no tools at that layer"):
        schema.check_layers(StirConfig(layer=1), 4, [2, 3])
    with pytest.raises(ConfigError, match="mine.layers"):
        schema.check_layers(MineConfig(layers=[0.5, -9]), 4, section="mine")


def test_library_recommendations_are_where_entry_points_start():
    from stir_core.library.format import ToolLibrary
    from stir_core.runtime.model import DEFAULT_MODEL_DIR  # noqa: F401 - the demo library belongs to it

    demo = ToolLibrary.load(schema.__file__.rsplit("/stir_core/", 1)[0] + "/assets/demo-library")
    rec = demo.manifest[schema.RECOMMENDED_KEY]
    assert rec["chosen_on"] == {"task": "planted", "split": "val", "n": 300, "seed": 1}
    cfg = schema.online_config(demo)
    assert (cfg.layer, cfg.tau_null, cfg.min_sim, cfg.max_new_tokens) == (3, 0.5, 0.9, 128)
    assert schema.online_config(demo, {"layer": 2}).layer == 2  # the user's overrides win
    assert schema.online_config(None) == StirConfig()


def test_set_recommended_keeps_the_content_hash(tmp_path):
    import shutil

    from stir_core.library.format import ToolLibrary

    src = schema.__file__.rsplit("/stir_core/", 1)[0] + "/assets/demo-library"
    lib_dir = tmp_path / "lib"
    shutil.copytree(src, lib_dir)
    before = ToolLibrary.load(lib_dir).manifest["content_hash"]
    ToolLibrary.set_recommended(lib_dir, {"top_l": 2}, split="val", n=10, seed=4, task="planted")
    after = ToolLibrary.load(lib_dir)
    assert after.manifest["content_hash"] == before
    assert after.manifest[schema.RECOMMENDED_KEY]["settings"] == {"top_l": 2}
    with pytest.raises(ConfigError, match="top_l"):
        ToolLibrary.set_recommended(lib_dir, {"top_l": 0}, split="val", n=10, seed=4, task="planted")


# --- safe writes ---------------------------------------------------------------------------------------


def test_run_directories_are_claimed_and_foreign_ones_refused(tmp_path):
    run = outputs.claim_run_dir(tmp_path / "run", "build")
    assert outputs.run_kind(run) == "build"
    assert outputs.claim_run_dir(run, "build") == run  # ours: reused (resume)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "thesis.tex").write_text("x")
    with pytest.raises(outputs.OutputError, match="not a STIR run directory"):
        outputs.claim_run_dir(tmp_path / "theirs", "eval")
    assert (tmp_path / "theirs" / "thesis.tex").read_text() == "x"
    old = tmp_path / "old-run"  # written before markers existed: recognised by its outputs
    (old / "mine_checkpoint").mkdir(parents=True)
    (old / "build.json").write_text("{}")
    assert outputs.claim_run_dir(old, "build") == old and outputs.run_kind(old) == "build"


def test_library_save_never_replaces_a_foreign_directory(tmp_path):
    from stir_core.library.format import ToolLibrary

    lib = ToolLibrary.empty(8)
    target = tmp_path / "lib"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    with pytest.raises(outputs.OutputError, match="not part of a library"):
        lib.save(target)
    assert (target / "notes.txt").read_text() == "keep"
    lib.save(tmp_path / "ours")
    with pytest.raises(outputs.OutputError, match="already holds a library"):
        lib.save(tmp_path / "ours", overwrite=False)
    lib.save(tmp_path / "ours", overwrite=True)


# --- concurrency -----------------------------------------------------------------------------------------


def _tiny_library(model):
    from stir_core.library.format import ToolLibrary

    g = torch.Generator().manual_seed(0)
    d = model.d_model
    keys, vecs, rows = [], [], []
    for m in (1, 2, 3):
        keys.append(torch.randn(d, generator=g))
        vecs.append(3 * torch.randn(d, generator=g))
        rows.append({"id": f"t{m}", "kind": "correction", "layer": 1, "control_point": m, "quality": 0.5})
    return ToolLibrary.from_records(torch.stack(keys), torch.stack(vecs), rows,
                                    {"model_id": model.model_id, "n_layers": model.n_layers, "d_model": d})


def test_run_method_is_safe_from_several_threads(engine):
    """Three threads decode steered batches on one engine at once and get exactly what they get one by one
    (without the model lock, 2 of 3 threads raised IndexError and a completion changed)."""
    from stir_core.online.methods import run_method

    lib = _tiny_library(engine.model)
    cfg = StirConfig(max_new_tokens=24, delimiter="\n", layer=1, static_scale=2.0)
    jobs = [(["1+2=\n", "3+4=\n"], "static_cp"), (["5+6=\n"], "stir"), (["7+8=\n", "9+1=\n", "2+2=\n"], "vanilla"),
            (["4+4=\n"], "static")]
    alone = [[t.completion for t in run_method(engine, p, meth, lib, cfg)] for p, meth in jobs]
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(6):
                results[i] = [t.completion for t in run_method(engine, jobs[i][0], jobs[i][1], lib, cfg)]
                assert results[i] == alone[i]
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert [results[i] for i in range(len(jobs))] == alone
    from stir_core.runtime.steering import foreign_hooks

    assert not foreign_hooks(engine.model.bridge), "hooks left attached (beyond the engine's own, inert ones)"


def test_model_lock_serves_waiters_in_arrival_order_and_reports_positions():
    lock = FairLock()
    order, positions = [], {}
    lock.acquire()

    def waiter(name: str) -> None:
        def seen(pos: int) -> None:
            positions.setdefault(name, pos)

        with lock.turn(on_wait=seen, poll_s=0.02):
            order.append(name)

    threads = []
    for name in "abc":
        t = threading.Thread(target=waiter, args=(name,))
        t.start()
        threads.append(t)
        while lock.waiting() < len(threads):  # arrival order is fixed before the next one starts
            time.sleep(0.005)
    time.sleep(0.1)
    assert order == [] and positions == {"a": 1, "b": 2, "c": 3}
    lock.release()
    for t in threads:
        t.join(5)
    assert order == ["a", "b", "c"]
    assert lock.acquire(timeout_s=0.1) and lock.acquire()  # free again, and reentrant
    lock.release()
    lock.release()


def test_model_lock_is_shared_by_every_engine_on_a_model(tiny):
    from stir_core.runtime.engine import Engine

    assert model_lock(Engine(tiny).model) is model_lock(tiny) is model_lock(Engine(tiny).model)


# --- background jobs ---------------------------------------------------------------------------------------


def _wait(job, timeout: float = 30.0):
    t0 = time.time()
    while job.active and time.time() - t0 < timeout:
        time.sleep(0.01)
    assert not job.active
    return job


def test_jobs_report_progress_cancel_and_fail_in_one_line():
    def slow(job):
        for i in range(1000):
            job.report(i, 1000, "step")
            time.sleep(0.005)
        return "finished"

    job = start_job("test", slow)
    while job.done < 3:
        time.sleep(0.01)
    job.cancel()
    assert _wait(job).status == "cancelled" and job.done < 1000 and get_job(job.id) is job

    def bad(job):
        raise ValueError("n must be >= 1")

    assert _wait(start_job("test", bad)).error == "n must be >= 1"

    def bug(job):
        return {}["missing"]

    crashed = _wait(start_job("test", bug))
    assert crashed.status == "failed" and "KeyError" in crashed.error and "Traceback" in crashed.detail
    assert _wait(start_job("test", lambda job: 42)).result == 42


class _LineTask(OneTask):
    name = "line-safety"

    def load(self, split="eval", n=None, seed=0):
        return [Example(f"{split}{i}", f"{i}+{i}=", "1") for i in range(n or 4)]


def test_evaluation_writes_partial_results_and_a_cancel_keeps_them(engine, tmp_path):
    from stir_core.analysis.evaluate import evaluate, load_results

    def cancel_in_second_method(done, total, method):
        if method == "no_memory":
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        evaluate(engine, _LineTask(), ["vanilla", "no_memory"], None, StirConfig(max_new_tokens=8), n=3,
                 batch_size=3, out_dir=tmp_path / "ev", progress=cancel_in_second_method, show_progress=False)
    res = load_results(tmp_path / "ev")
    assert set(res.summary) == {"vanilla"} and res.config["partial"] is True and len(res.examples) == 3
    full = evaluate(engine, _LineTask(), ["vanilla", "no_memory"], None, StirConfig(max_new_tokens=8), n=3,
                    batch_size=3, out_dir=tmp_path / "ev", show_progress=False, warnings=["w1"])
    assert "partial" not in load_results(tmp_path / "ev").config
    assert all(json.loads(t)["warnings"] == ["w1"] for t in full.examples["trace_json"])


def test_evaluation_refuses_prompts_beyond_the_context_before_decoding(engine):
    from stir_core.analysis.evaluate import evaluate

    n_ctx = engine.model.n_ctx
    with pytest.raises(ValueError, match="context"):
        evaluate(engine, _LineTask(), ["vanilla"], None, StirConfig(max_new_tokens=n_ctx), n=2,
                 show_progress=False)


def test_fit_prompt_truncates_visibly(tiny):
    from stir_core.library.checks import context_problem, fit_prompt

    long = "1+" * 2000 + "1="
    text, tokens, warning = fit_prompt(tiny, long, 64)
    assert warning and "dropped" in warning
    assert context_problem(len(tiny.encode(text)), tokens, tiny.n_ctx) is None
    assert text.endswith("1=")  # the end of the question is kept
    assert fit_prompt(tiny, "1+1=", 16) == ("1+1=", 16, None)


def test_unreachable_hub_fails_fast_without_retries(monkeypatch):
    import socket

    from stir_core.runtime.model import ModelLoadError, resolve_model_path

    calls = []

    def refuse(addr, timeout=None):
        calls.append((addr, timeout))
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="unreachable"):
        resolve_model_path("nobody-here/not-a-cached-model")
    assert time.perf_counter() - t0 < 2 and len(calls) == 1 and calls[0][1] <= 3


def test_bad_config_json_is_named_as_such(tmp_path):
    from stir_core.runtime.model import ModelLoadError, model_facts

    (tmp_path / "config.json").write_text('{"num_hidden_layers": 2,')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a valid config.json"):
        model_facts(str(tmp_path))
