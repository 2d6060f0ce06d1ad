"""`stir suite` on the embedded model with tiny n: the aggregated table and paired statistics against the
per-example records, resume after an interrupted run, and one-line refusals of bad suite files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy.stats import binomtest
from typer.testing import CliRunner

from stir_core.analysis import evaluate as ev
from stir_core.cli import app

runner = CliRunner()
SUITE = {"model": None, "methods": ["vanilla", "stir"], "n": 3, "seed": 7, "batch_size": 2,
         "online": {"max_new_tokens": 32},
         "datasets": [{"task": "planted"}, {"label": "Plain", "task": "plain", "n": 2}]}


def write(tmp_path: Path, suite: dict, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(suite))
    return p


def run(cfg: Path, out: Path, *extra: str):
    return runner.invoke(app, ["suite", str(cfg), "--out", str(out), "--device", "cpu", *extra])


def test_suite_table_and_paired_statistics_match_the_per_example_records(tmp_path):
    out = tmp_path / "out"
    r = run(write(tmp_path, SUITE), out)
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "suite.csv")
    paired = pd.read_csv(out / "paired.csv")
    assert list(table["method"]) == ["vanilla", "stir"]
    accs, toks = {}, {}
    for label, n in (("planted", 3), ("Plain", 2)):
        rows = [json.loads(x) for x in (out / label / "examples.jsonl").read_text().splitlines()]
        assert len(rows) == 2 * n
        for method in ("vanilla", "stir"):
            mine = [x for x in rows if x["method"] == method]
            accs[label, method] = sum(x["correct"] for x in mine) / n
            toks[label, method] = sum(x["n_tokens"] for x in mine) / n
            row = table[table["method"] == method].iloc[0]
            assert row[f"{label} acc"] == pytest.approx(accs[label, method])
            assert row[f"{label} tokens"] == pytest.approx(toks[label, method])
        base = {x["example_id"]: x["correct"] for x in rows if x["method"] == "vanilla"}
        stir = {x["example_id"]: x["correct"] for x in rows if x["method"] == "stir"}
        wins = sum(stir[i] and not base[i] for i in base)
        losses = sum(base[i] and not stir[i] for i in base)
        p = paired[paired["dataset"] == label].iloc[0]
        assert (p["wins"], p["losses"]) == (wins, losses)
        assert p["p_value"] == pytest.approx(1.0 if wins + losses == 0 else binomtest(wins, wins + losses).pvalue)
        assert p["delta_tokens"] == pytest.approx(toks[label, "stir"] - toks[label, "vanilla"])
    for method in ("vanilla", "stir"):
        row = table[table["method"] == method].iloc[0]
        assert row["avg acc"] == pytest.approx((accs["planted", method] + accs["Plain", method]) / 2)
        assert row["avg tokens"] == pytest.approx((toks["planted", method] + toks["Plain", method]) / 2)
    # each dataset directory is an ordinary eval directory, with the diagnostics in its summary
    merged = ev.load_results(out / "planted")
    assert set(merged.summary) == {"vanilla", "stir"} and "diagnostics" in merged.summary["stir"]
    assert "vs_vanilla" in merged.summary["stir"]
    assert "| Method | planted Acc | planted Tok | Plain Acc | Plain Tok | Avg. Acc | Avg. Tok |" in r.output
    # a budget of 32 tokens cuts most embedded-model answers: the reference's truncation warning, per cell
    long = pd.read_csv(out / "suite_long.csv")
    assert (long["truncation_rate"] >= 0.2).any()
    for _, row in long.iterrows():
        warned = f"warning: {row['dataset']} / {row['method']} ran out of tokens" in r.output
        assert warned == (row["truncation_rate"] >= 0.2)


def test_an_interrupted_suite_resumes_where_it_stopped(tmp_path, monkeypatch):
    cfg = write(tmp_path, SUITE)
    real = ev.evaluate
    calls: list[tuple[str, str]] = []

    def interrupted(engine, task, methods, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the 4th cell (Plain / stir) never finishes
        calls.append((task.name, methods[0]))
        return real(engine, task, methods, *args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", interrupted)
    r = run(cfg, tmp_path / "out")
    assert r.exit_code == 130 and "interrupted" in r.output
    assert not (tmp_path / "out" / "suite.csv").exists()

    def counting(engine, task, methods, *args, **kwargs):
        calls.append((task.name, methods[0]))
        return real(engine, task, methods, *args, **kwargs)

    calls.clear()
    monkeypatch.setattr(ev, "evaluate", counting)
    r = run(cfg, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert calls == [("plain", "stir")]  # only the unfinished cell was decoded again
    assert r.output.count("finished earlier, reused") == 3
    # the same numbers as one uninterrupted run (greedy decoding is deterministic)
    calls.clear()
    assert run(cfg, tmp_path / "fresh").exit_code == 0 and len(calls) == 4
    resumed, fresh = pd.read_csv(tmp_path / "out" / "suite.csv"), pd.read_csv(tmp_path / "fresh" / "suite.csv")
    pd.testing.assert_frame_equal(resumed, fresh)


def test_a_finished_cell_with_other_settings_is_refused(tmp_path):
    small = {**SUITE, "methods": ["vanilla"], "datasets": [{"label": "Plain", "task": "plain", "n": 2}]}
    assert run(write(tmp_path, small), tmp_path / "out").exit_code == 0
    r = run(write(tmp_path, small), tmp_path / "out", "--set", "max_new_tokens=16")
    assert r.exit_code == 2 and "finished by another setting" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("change, needle", [
    ({"methods": ["vanilla", "nope"]}, "unknown method(s) ['nope']"),
    ({"baseline": "static"}, "baseline 'static' is not one of the methods"),
    ({"colour": 1}, "unknown key(s) ['colour']"),
    ({"n": 0}, "n must be an integer >= 1"),
    ({"online": {"k_scal": 1}}, "k_scal"),
    ({"datasets": [{"task": "planted"}, {"task": "planted"}]}, "label(s) ['planted'] appear twice"),
    ({"datasets": [{"task": {"name": "gsm8k", "files": {"eval": "nowhere.jsonl"}}}]}, "nowhere.jsonl"),
    ({"datasets": [{"task": "planted", "library": "no/such/library"}]}, "no/such/library"),
    ({"datasets": [{"label": "a b", "task": "planted"}]}, "label 'a b'"),
    ({"datasets": []}, "datasets must be a non-empty list"),
])
def test_bad_suite_files_fail_in_one_line_before_the_model_loads(tmp_path, change, needle):
    out = tmp_path / "out"
    r = run(write(tmp_path, {**SUITE, **change}), out)
    assert r.exit_code == 2, r.output
    assert needle in r.output and r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1
    assert not out.exists()  # nothing written


def _paper_datasets(root: Path) -> None:
    """The reference loader's file layout under root/datasets, filled with the test fixtures' few problems."""
    fx = Path(__file__).parent / "fixtures"

    def rows(name: str) -> list[dict]:
        return [json.loads(x) for x in (fx / name).read_text().splitlines() if x.strip()]

    def put(rel: str, rs: list[dict]) -> None:
        p = root / "datasets" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".jsonl":
            p.write_text("".join(json.dumps(r) + "\n" for r in rs))
        else:
            pd.DataFrame(rs).astype({k: str for k in ("Answer",) if k in rs[0]}).to_parquet(p)

    m, a, arc, ob = (rows(f"{x}_sample.jsonl") for x in ("math500", "aime", "arc", "openbookqa"))
    put("MATH/train.parquet", m[:2])
    put("HuggingFaceH4/MATH-500/test.jsonl", m[2:])
    put("HuggingFaceH4/aime_2024/data/train-00000-of-00001.parquet", a)
    put("math-ai/aime25/test.jsonl", a)
    put("math-ai/amc23/test-00000-of-00001.parquet", a)
    put("allenai/ai2_arc/ARC-Challenge/train-00000-of-00001.parquet", arc[:1])
    put("allenai/ai2_arc/ARC-Challenge/test-00000-of-00001.parquet", arc[1:3])
    put("allenai/openbookqa/main/train-00000-of-00001.parquet", ob[:1])
    put("allenai/openbookqa/main/test-00000-of-00001.parquet", [dict(ob[0], id="t1", question_stem="A compass points")])


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("command", [
    ["suite", str(CONFIGS / "suite-paper.yaml"), "--out", "runs/s"],
    ["suite", str(CONFIGS / "suite-paper-r1-1.5b.yaml"), "--out", "runs/s"],
    *(["build", "--config", str(p), "--out", "runs/b"] for p in sorted(CONFIGS.glob("paper-*.yaml"))),
], ids=lambda c: Path(c[1] if c[0] == "suite" else c[2]).name)
def test_reproduce_commands_parse_and_stop_at_the_model(tmp_path, monkeypatch, command):
    """docs/REPRODUCE.md's commands: with the data in place, the only thing missing here is the model."""
    _paper_datasets(tmp_path)
    monkeypatch.chdir(tmp_path)
    # offline, with an empty cache: a machine that holds the model never starts a real build here
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    if command[0] == "suite":
        command = [*command, "--model", str(tmp_path / "no-such-model")]
    r = runner.invoke(app, command)
    assert r.exit_code == 2, r.output
    assert ("no-such-model" in r.output or "Qwen2.5-3B-Instruct" in r.output
            or "DeepSeek-R1-Distill-Qwen-1.5B" in r.output), r.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_processes_under_torchrun_equal_one_process(tmp_path):
    """Sharded like `stir eval`: batches round-robin across ranks (batch size 1, so rank 1 decodes half)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent
    cfg = write(tmp_path, {**SUITE, "batch_size": 1})
    assert run(cfg, tmp_path / "one").exit_code == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update({"PYTHONPATH": str(repo), "STIR_DIST_TIMEOUT_S": "120"})
    r = subprocess.run([str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", "--",
                        str(bin_dir / "stir"), "suite", str(cfg), "--out", str(tmp_path / "two"), "--device", "cpu"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=repo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 1: 1 problem-methods" in r.stdout  # e.g. Plain (2 problems): one batch each
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "one" / "suite.csv"),
                                  pd.read_csv(tmp_path / "two" / "suite.csv"))
    for label in ("planted", "Plain"):  # every trace identical (greedy float32 on the CPU)
        one, two = ((tmp_path / d / label / "examples.jsonl").read_text() for d in ("one", "two"))
        assert one == two
