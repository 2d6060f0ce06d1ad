"""Data parallelism under real launchers (CPU, gloo): `stir build` (torchrun) and `stir eval` (accelerate
launch) with 2 processes equal one process; a killed rank resumes; a failed, dead or silent rank is named by
rank 0; shards from another config or process count are refused. The reference is a single-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import safetensors.torch
import yaml

from stir_core.runtime import distributed
from stir_core.runtime.distributed import Dist, DistributedError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

SMALL = {"mine": {"n_problems": 12, "k_rollouts": 4, "max_new_tokens": 48, "layers": [2, 3], "top_c": 16,
                  "problems_per_batch": 2, "seed": 3},
         "select": {"budget": 12}}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        distributed.FAULT_ENV)}
    env.update({"PYTHONPATH": str(REPO), "STIR_DIST_TIMEOUT_S": "120", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _torchrun(args: list[str], **env) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", "--",
           str(BIN / "stir"), *args, "--device", "cpu"]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300, cwd=REPO)


def _accelerate(args: list[str], **env) -> subprocess.CompletedProcess:
    """`accelerate launch` starts its processes through torchrun; `--multi_gpu` is its multi-process switch
    (its `--cpu` flag means one process), and it works on a CPU-only machine."""
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--no_python", str(BIN / "stir"), *args,
           "--device", "cpu"]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "small.yaml"
    p.write_text(yaml.safe_dump(SMALL))
    return p


@pytest.fixture(scope="module")
def reference(config_path, tmp_path_factory) -> Path:
    """The one-process build, in this process (no launcher variables)."""
    from stir_core.offline.build import BuildConfig, build_library
    from stir_core.runtime.model import load_model

    out = tmp_path_factory.mktemp("ref") / "run"
    build_library(load_model("embedded", device="cpu"), BuildConfig.from_yaml(config_path), out,
                  show_progress=False)
    return out


def _assert_same_library(a: Path, b: Path) -> None:
    ta = safetensors.torch.load_file(str(a / "tools.safetensors"))
    tb = safetensors.torch.load_file(str(b / "tools.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape and ta[k].equal(tb[k]), k
    pd.testing.assert_frame_equal(pd.read_parquet(a / "tools.parquet"), pd.read_parquet(b / "tools.parquet"))
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["content_hash"] == mb["content_hash"] and ma["counts"] == mb["counts"]
    assert ma["config"] == mb["config"]
    assert ma.get("mining_stats") == mb.get("mining_stats")
    assert "parallel" not in ma and mb["parallel"] == {"world_size": 2}  # the recorded world size


@pytest.mark.slow
def test_two_process_build_equals_one_process(config_path, reference, tmp_path):
    out = tmp_path / "run"
    r = _torchrun(["build", "--config", str(config_path), "--out", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert (reference / "library" / "tools.parquet").exists()
    for part in ("candidates", "library"):
        _assert_same_library(reference / part, out / part)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["mine-000-of-002", "mine-001-of-002"]
    log = (out / "run.log").read_text()
    assert "rank 0: 6 problems" in log and "rank 1: 6 problems" in log and "problems/s" in log
    assert r.stderr.count("library ->") + r.stdout.count("library ->") == 1  # only rank 0 reports

    # Mismatched shards are refused, not merged: one process on this run directory ...
    from typer.testing import CliRunner

    from stir_core.cli import app

    r1 = CliRunner().invoke(app, ["mine", "--config", str(config_path), "--out", str(out), "--device", "cpu",
                                  "--force"])  # past the "already holds a library" refusal, to the shard check
    assert r1.exit_code == 2 and "written by 2 processes" in r1.output, r1.output
    # ... and a merge under another config or process count.
    from stir_core.config import MineConfig
    from stir_core.offline.build import BuildConfig
    from stir_core.offline.shard_mine import merge_shards
    from stir_core.runtime.model import load_model

    model = load_model("embedded", device="cpu")
    cfg = BuildConfig.from_yaml(config_path).mine
    ref_counts = json.loads((reference / "candidates" / "manifest.json").read_text())["counts"]
    assert len(merge_shards(out, model, cfg, 2)) == ref_counts["entries"]
    with pytest.raises(DistributedError, match="refusing to merge shard 0: .*different mining config"):
        merge_shards(out, model, MineConfig(**{**SMALL["mine"], "temperature": 0.9}), 2)
    with pytest.raises(DistributedError, match="refusing to merge: shard 0 .* is missing"):
        merge_shards(out, model, cfg, 3)


@pytest.mark.slow
def test_kill_one_rank_then_resume(config_path, reference, tmp_path):
    out = tmp_path / "run"
    # Rank 1 is SIGKILLed while working on its second batch (problems 6-7), before checkpointing it.
    r = _torchrun(["build", "--config", str(config_path), "--out", str(out)], STIR_FAULT="1:1:kill")
    assert r.returncode != 0
    assert "rank      : 1" in r.stderr and "SIGKILL" in r.stderr  # torchrun names the dead rank
    state1 = json.loads((out / "shards" / "mine-001-of-002" / "state.json").read_text())
    assert state1["next_problem"] == 4 and state1["stats"]["problems"] == 2  # only the batch in flight lost
    assert not (out / "library").exists()
    r = _torchrun(["build", "--config", str(config_path), "--out", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    log = (out / "run.log").read_text().splitlines()
    assert "rank 1: 4 problems" in log[-1] and "2 resumed" in log[-1]
    _assert_same_library(reference / "library", out / "library")


@pytest.mark.slow
@pytest.mark.skipif(not (BIN / "accelerate").exists(), reason="accelerate is not installed in this environment")
def test_two_process_eval_under_accelerate_equals_one_process(tmp_path):
    from stir_core.analysis.evaluate import evaluate
    from stir_core.library.format import ToolLibrary
    from stir_core.runtime.engine import Engine
    from stir_core.runtime.model import load_model
    from stir_core.tasks import get_task

    model = load_model("embedded", device="cpu")
    lib = ToolLibrary.load(REPO / "assets" / "demo-library", d_model=model.d_model, n_layers=model.n_layers)
    one = tmp_path / "one"
    from stir_core.config import online_config

    evaluate(Engine(model), get_task("planted"), ["vanilla", "stir"], lib, online_config(lib), n=10, seed=5,
             batch_size=3, out_dir=one, show_progress=False)  # the CLI starts from the library's settings
    two = tmp_path / "two"
    r = _accelerate(["eval", "--methods", "vanilla,stir", "--n", "10", "--seed", "5", "--batch-size", "3",
                   "--library", str(REPO / "assets" / "demo-library"), "--out", str(two)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 1: 8 problem-methods" in r.stdout  # batches [3,6) and [9,10) for both methods
    # One process decodes each method in one continuous run (3 problems at once, the next joining as one
    # finishes); the ranks decode their batches. Tokens, texts, decisions and counts are equal; float fields
    # (log-probs, gains) only to float32 noise: a problem joining mid-run is prefilled beside others.
    rows1, rows2 = ([_parsed(x) for x in (d / "examples.jsonl").read_text().splitlines()] for d in (one, two))
    _same(rows1, rows2)
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    for s in (s1, s2):
        for m in s["methods"].values():
            m.pop("wall_s")
    s1["config"]["library"] = s2["config"]["library"]  # the CLI passes the path as given
    _same(s1, s2)


def _parsed(line: str):
    row = json.loads(line)
    row["trace_json"] = json.loads(row["trace_json"])
    return row


def _same(a, b, path: str = "") -> None:
    """Equal structures: every key, string, bool and integer exactly; floats within 1e-5 (relative)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool) and isinstance(b, (int, float)):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6), (path, a, b)
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode,needle", [
    ("raise", "rank 1 failed: RuntimeError: boom"),
    ("kill", "rank 1 failed: stopped answering"),
    ("hang", "rank 1 failed: stopped answering"),
])
def test_rank_zero_names_the_failed_rank_and_never_hangs(mode, needle):
    """Processes started by hand (as `srun` would), with no torchrun agent to clean up after them."""
    port = str(_free_port())
    procs = []
    for rank in (1, 0):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, STIR_DIST_TIMEOUT_S="4")
        procs.append(subprocess.Popen([sys.executable, str(REPO / "tests" / "control_plane_worker.py"), mode],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    rank1, rank0 = procs
    try:
        out0, _ = rank0.communicate(timeout=90)
    finally:
        if mode == "hang":
            rank1.kill()  # the worker we started sleeps for an hour
        rank1.communicate(timeout=90)
    assert rank0.returncode == 3, out0
    assert needle in out0, out0  # never hangs: communicate(timeout=90) above raises if it did
    assert "rank 0 round 1: [{" in out0  # the first round went through


def test_launcher_environment_and_sharding():
    assert distributed.from_env({}) is None and distributed.from_env({"WORLD_SIZE": "1"}) is None
    assert distributed.from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == Dist(2, 4, 0)
    with pytest.raises(DistributedError, match="RANK is not set"):
        distributed.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="RANK=5 is outside"):
        distributed.from_env({"WORLD_SIZE": "2", "RANK": "5"})
    with pytest.raises(DistributedError, match="STIR_DIST_TIMEOUT_S"):
        distributed.timeout_s({"STIR_DIST_TIMEOUT_S": "soon"})
    b = distributed.batches(7, 2)
    assert b == [(0, 2), (2, 4), (4, 6), (6, 7)]
    shards = [distributed.shard(b, Dist(r, 3, r)) for r in range(3)]
    assert shards == [[(0, 2), (6, 7)], [(2, 4)], [(4, 6)]]
    assert sorted(x for s in shards for x in s) == b and distributed.n_rounds(len(b), 3) == 2


def test_sharded_eval_checkpoints_each_batch_and_resumes(tiny, tmp_path, monkeypatch):
    """In this process, as a one-rank group: a fault in batch 1 leaves batch 0's file; the rerun decodes only
    the missing batches and gives the traces a plain loop gives; a changed config refuses the files."""
    from stir_core.analysis import shard_eval
    from stir_core.online.methods import StirConfig, run_method
    from stir_core.runtime.engine import Engine
    from stir_core.tasks import Example

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    engine = Engine(tiny)
    examples = [Example(id=f"q{i}", question=f"{i}+{i}=", answer=str(2 * i)) for i in range(7)]
    prompts = [ex.question for ex in examples]
    cfg = StirConfig(max_new_tokens=8)
    one = Dist(0, 1, 0)
    reference = []
    for lo in range(0, 7, 3):
        reference += run_method(engine, prompts[lo:lo + 3], "vanilla", None, cfg, [ex.id for ex in examples[lo:lo + 3]])
    calls = []

    def counted(*a, **k):
        calls.append(1)
        return run_method(*a, **k)

    monkeypatch.setattr(shard_eval, "run_method", counted)
    kw = {"out_dir": tmp_path, "task": "t", "split": "eval", "seed": 0, "show_progress": False}
    try:
        monkeypatch.setenv(distributed.FAULT_ENV, "0:1:raise")
        with pytest.raises(DistributedError, match="rank 0 failed: RuntimeError: injected fault"):
            shard_eval.run_sharded(engine, examples, prompts, ["vanilla"], None, cfg, 3, one, **kw)
        assert sorted(p.name for p in (tmp_path / "shards" / "eval" / "vanilla").iterdir()) == ["batch-00000.json"]
        monkeypatch.delenv(distributed.FAULT_ENV)
        calls.clear()
        out = shard_eval.run_sharded(engine, examples, prompts, ["vanilla"], None, cfg, 3, one, **kw)
        assert len(calls) == 2  # batches 1 and 2; batch 0 came from its file
        assert [t.to_json() for t in out["vanilla"][0]] == [t.to_json() for t in reference]
        with pytest.raises(DistributedError, match="written by another evaluation"):
            shard_eval.run_sharded(engine, examples, prompts, ["vanilla"], None, StirConfig(max_new_tokens=9), 3,
                                   one, **kw)
    finally:
        distributed.destroy()
