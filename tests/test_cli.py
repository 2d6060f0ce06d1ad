"""The `stir` command end to end on a tiny model (in-process through typer's CliRunner)."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers.tasks import OneTask
from typer.testing import CliRunner

from stir_core.cli import app
from stir_core.library.format import ToolLibrary
from stir_core.library.report import library_card
from stir_core.tasks import register_task

runner = CliRunner()


class LineTask(OneTask):
    """Segments end at a newline; 'correct' when the completion holds a '1' (a random model gets both)."""

    name = "line"

    def load(self, split="eval", n=None, seed=0):
        from stir_core.tasks import Example

        base = 0 if split == "mine" else 100
        return [Example(id=f"{split}{i}", question=f"{base + i}+{i}=", answer="1") for i in range(n or 8)]


register_task("line", LineTask)


@pytest.mark.slow
def test_eval_vanilla_writes_summary(tiny_model_dir, tmp_path):
    out = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "--task", "line", "--methods", "vanilla,no_memory", "--n", "6",
                            "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    for meth in ("vanilla", "no_memory"):
        assert {"accuracy", "n", "mean_tokens", "wall_s", "mean_probe_tokens"} <= set(s["methods"][meth])
        assert s["methods"][meth]["n"] == 6
    # no_memory never steers, so it equals vanilla on greedy decoding
    assert s["methods"]["no_memory"]["vs_vanilla"]["wins"] == s["methods"]["no_memory"]["vs_vanilla"]["losses"] == 0
    assert len((out / "examples.jsonl").read_text().splitlines()) == 12
    assert "vanilla" in r.output


@pytest.mark.slow
def test_build_then_eval_with_library_and_sweep(tiny_model_dir, tmp_path):
    cfg = {"mine": {"task": "line", "n_problems": 6, "k_rollouts": 6, "temperature": 1.5, "top_p": 1.0,
                    "max_new_tokens": 30, "layers": [1], "require_correct_and_incorrect": False,
                    "problems_per_batch": 3},
           "select": {"budget": 16}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["build", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "run"),
                            "--model", str(tiny_model_dir), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lib = tmp_path / "run" / "library"
    assert (lib / "manifest.json").exists() and (tmp_path / "run" / "build.json").exists()
    r = runner.invoke(app, ["index", str(lib)])
    assert r.exit_code == 0, r.output
    hits, n = map(int, json.loads(r.output)["self_retrieval"].split("/"))
    assert n == len(ToolLibrary.load(lib)) > 0 and hits >= 0.9 * n, f"only {hits}/{n} keys retrieve themselves"
    manifest = json.loads((lib / "manifest.json").read_text())
    sel = manifest["selection"]  # written once, by select.py: nothing dropped on the way to the manifest
    assert {"lam": 0.5, "eps": 1e-4, "seed": 0, "budget": 16, "method": "dpp"}.items() <= sel.items()
    assert sel["n_kept"] == manifest["counts"]["entries"] and "index_groups" in sel
    assert json.loads((tmp_path / "run" / "build.json").read_text())["selection"] == sel
    assert (lib / "CARD.md").read_text() == library_card(tmp_path / "run")
    r = runner.invoke(app, ["eval", "--task", "line", "--methods", "vanilla,stir,static", "--n", "4",
                            "--library", str(lib), "--model", str(tiny_model_dir), "--device", "cpu",
                            "--set", "max_new_tokens=24", "--sweep", "k_scale=0.5,1", "--out", str(tmp_path / "sw")])
    assert r.exit_code == 0, r.output
    import pandas as pd

    sweep = pd.read_csv(tmp_path / "sw" / "sweep.csv")
    assert sorted(sweep["k_scale"].unique().tolist()) == [0.5, 1.0] and len(sweep) == 6
    assert_strict_json_everywhere(tmp_path)


def assert_strict_json_everywhere(root):
    """Every JSON / JSON-lines file under `root` parses with NaN/Infinity refused (strict JSON)."""

    def refuse(const):
        raise ValueError(f"non-JSON constant {const}")

    files = [p for p in root.rglob("*") if p.suffix in (".json", ".jsonl")]
    assert any(p.name == "summary.json" for p in files) and any(p.name == "manifest.json" for p in files)
    for p in files:
        lines = p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()]
        for line in filter(str.strip, lines):
            json.loads(line, parse_constant=refuse)  # raises, naming the constant, on NaN/Infinity
            if p.suffix == ".jsonl":  # the embedded traces are JSON too
                row = json.loads(line)
                if "trace_json" in row:
                    json.loads(row["trace_json"], parse_constant=refuse)


def test_json_helper_writes_null_for_non_finite(tmp_path):
    import math

    import numpy as np

    from stir_core.io import atomic, jsonio

    obj = {"a": math.nan, "b": [1.0, -math.inf, np.float32("inf")], "c": np.float64(2.5), "d": (math.inf,)}
    atomic.write_json(tmp_path / "x.json", obj)
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None, None], "c": 2.5,
                                                             "d": [None]}
    assert "NaN" not in (tmp_path / "x.json").read_text() and "Infinity" not in (tmp_path / "x.json").read_text()
    assert jsonio.dumps(obj) == json.dumps(jsonio.finite(obj), allow_nan=False)


@pytest.mark.parametrize("args,needle", [
    (["eval", "--methods", "vanilla,magic"], "unknown method"),
    (["eval", "--task", "nope"], "unknown task"),
    (["eval", "--model", "/nonexistent/model/dir"], "does not exist"),
    (["generate", "   "], "empty"),
])
def test_bad_input_gives_clear_errors(args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    assert needle in r.output


@pytest.mark.parametrize("online,needle", [
    ({"k_retreive": 8}, "online.k_retreive"),
    ({"beta": 2.0}, None),
])
def test_eval_config_online_section_is_checked_before_the_model_loads(tmp_path, online, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"online": online}))
    # A model path that does not exist: a bad [online] section must fail first, a good one gets that far.
    r = runner.invoke(app, ["eval", "--config", str(cfg), "--model", "/nonexistent/model/dir"])
    assert r.exit_code != 0
    assert (needle or "does not exist") in r.output
    assert "Traceback" not in r.output
