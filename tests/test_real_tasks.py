"""Real file tasks from the CLI: `stir mine` / `stir build` / `stir eval` take the task and its split files from
the YAML config; split files must not share problems and that is checked before any model loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from arch_models import BY_NAME, build_family, train_tokenizers  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402

from stir_core.cli import app  # noqa: E402
from stir_core.tasks import get_task  # noqa: E402

runner = CliRunner()
GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"
needs_gsm8k = pytest.mark.skipif(not GSM8K.exists(), reason=f"GSM8K test file not found at {GSM8K} "
                                                            "(../shared/data is absent on this machine)")


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    """The matrix's tiny Qwen2 (byte-level BPE, ChatML template), built once for this module."""
    root = tmp_path_factory.mktemp("realtask")
    toks = train_tokenizers(root / "tok")
    return build_family(BY_NAME["qwen2"], toks["bpe"], root / "qwen2")


def write_config(path: Path, task_spec: dict, **mine) -> Path:
    cfg = {"task": task_spec,
           "mine": {"n_problems": 4, "k_rollouts": 4, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 40,
                    "layers": [1], "require_correct_and_incorrect": False, "problems_per_batch": 4,
                    "k_pos": 2, "k_neg": 2, **mine},  # best 2 vs worst 2 of 4: disjoint under the reference split
           "select": {"budget": 8}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@needs_gsm8k
def test_cli_build_mines_gsm8k_file_from_config(qwen2_dir, tmp_path):
    # 16 problems: the seeded subset holds answers (2, 5) the tiny model's recital often ends on, so some
    # rollouts are right and some wrong.
    cfg = write_config(tmp_path / "b.yaml", {"name": "gsm8k", "files": {"mine": str(GSM8K)}}, n_problems=16,
                       problems_per_batch=8, max_new_tokens=32)
    run = tmp_path / "run"
    r = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(run), "--model", str(qwen2_dir),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    summary = json.loads((run / "build.json").read_text())
    assert summary["task"]["name"] == "gsm8k" and summary["task"]["problems"]["mine"]["n"] == 1319
    assert summary["task"]["clean_prefixes"] == "off"  # auto, and GSM8K has no step checker
    stats = summary["mining_stats"]
    assert stats["problems"] == 16 and stats["rollouts"] == 64 and 0 < stats["correct_rollouts"] < 64
    lib = json.loads((run / "library" / "manifest.json").read_text())
    assert lib["task"]["files"] == {"mine": str(GSM8K)}
    ids = {ex.id for ex in get_task("gsm8k", paths={"mine": GSM8K}).load("mine", n=16, seed=0)}
    import pandas as pd

    table = pd.read_parquet(next((run / "candidates").glob("*.parquet")))
    assert len(table) > 0 and set(table["example_id"]) <= ids

    # `stir mine` alone: the same candidates in a fresh run directory (mining is seeded).
    r = runner.invoke(app, ["mine", "--config", str(cfg), "--out", str(tmp_path / "m"), "--model", str(qwen2_dir),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    again = pd.read_parquet(next((tmp_path / "m" / "candidates").glob("*.parquet")))
    assert again["id"].tolist() == table["id"].tolist()
    assert json.loads((tmp_path / "m" / "task.json").read_text()) == summary["task"]

    # `stir mine` into the same run directory with other files is refused (no silent mix of two tasks).
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "How many?", "answer": "1 + 1\n#### 2"}])
    cfg2 = write_config(tmp_path / "b2.yaml", {"name": "gsm8k", "files": {"mine": str(other)}})
    r = runner.invoke(app, ["mine", "--config", str(cfg2), "--out", str(run), "--model", str(qwen2_dir),
                            "--device", "cpu"])
    assert r.exit_code == 2 and "different task" in r.output, r.output


@needs_gsm8k
def test_cli_eval_takes_the_eval_file_from_config(qwen2_dir, tmp_path):
    mine = write_jsonl(tmp_path / "mine.jsonl", [{"question": "Ann has 2 apples and gets 3. How many?",
                                                  "answer": "2 + 3 = 5\n#### 5"}])
    cfg = write_config(tmp_path / "b.yaml", {"name": "gsm8k", "files": {"mine": str(mine), "eval": str(GSM8K)}})
    out = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "--config", str(cfg), "--methods", "vanilla", "--n", "3", "--model",
                            str(qwen2_dir), "--device", "cpu", "--set", "max_new_tokens=8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    test_ids = {ex.id for ex in get_task("gsm8k", path=GSM8K).load("eval")}
    assert len(rows) == 3 and all(row["example_id"] in test_ids for row in rows)


def test_split_files_sharing_a_problem_are_refused_before_the_model_loads(tmp_path):
    eval_rows = [{"question": "Tom has 3 pens and buys 4 more. How many pens?", "answer": "3+4=7\n#### 7"},
                 {"question": "A box holds 6 eggs. How many in 2 boxes?", "answer": "6*2=12\n#### 12"}]
    # The shared problem differs only in case and whitespace: still the same problem.
    mine_rows = [{"question": "What is 5 + 5?", "answer": "#### 10"},
                 {"question": "a box holds 6 eggs.   How many in 2 boxes?", "answer": "#### 12"}]
    files = {"mine": str(write_jsonl(tmp_path / "m.jsonl", mine_rows)),
             "eval": str(write_jsonl(tmp_path / "e.jsonl", eval_rows))}
    cfg = write_config(tmp_path / "b.yaml", {"name": "gsm8k", "files": files})
    # A model path that does not exist: the task error must come first, so the model is never loaded.
    for cmd in ("build", "mine"):
        r = runner.invoke(app, [cmd, "--config", str(cfg), "--out", str(tmp_path / "run"), "--model",
                                str(tmp_path / "no-model")])
        assert r.exit_code == 2, r.output
        assert "1 problem(s) of the eval file 'e.jsonl' also appear in the mine file 'm.jsonl'" in r.output
    with pytest.raises(ValueError, match="also appear"):  # the same rule on the Python API
        get_task("gsm8k", paths=files).load("eval")
    same = write_config(tmp_path / "s.yaml", {"name": "gsm8k", "files": {"mine": files["eval"],
                                                                         "eval": files["eval"]}})
    r = runner.invoke(app, ["build", "--config", str(same), "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and "2 problem(s)" in r.output, r.output


@pytest.mark.parametrize("task,mine,needle", [
    ({"name": "gsm8k", "files": {"mine": "E"}}, {"clean_prefixes": "on"}, "no step checker"),
    ({"name": "gsm8k", "files": {"eval": "E"}}, {}, "no file for the mining split 'mine'"),
    ({"name": "gsm8k"}, {}, "reads local files: give task.files"),
    ({"name": "planted", "files": {"mine": "E"}}, {}, "is built in"),
    ({"name": "gsm8k", "files": {"mine": "nope.jsonl"}}, {}, "does not exist"),
    ({"name": "gsm8k", "files": {"mine": "E"}, "fields": {"query": "q"}}, {}, "unknown field role"),
    ({"name": "gsm8k", "files": {"mine": "E"}}, {"task": "math500"}, "give the task once"),
    ({"name": "gsm8k", "files": {"mine": "E"}, "prompt_style": "fancy"}, {}, "prompt_style: 'fancy' is not one of"),
    ({"name": "planted", "prompt_style": "blank_lines"}, {}, "task.prompt_style apply only to file tasks"),
])
def test_bad_task_configs_give_one_line_errors(tmp_path, task, mine, needle):
    e = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is 1 + 1?", "answer": "#### 2"}])
    task = json.loads(json.dumps(task).replace('"E"', json.dumps(str(e))))
    cfg = write_config(tmp_path / "b.yaml", task, **mine)
    r = runner.invoke(app, ["build", "--config", str(cfg), "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_clean_prefixes_off_in_bare_yaml_is_read_as_off(tmp_path):
    from stir_core.offline.build import BuildConfig

    p = tmp_path / "b.yaml"
    p.write_text("mine:\n  clean_prefixes: off\n")
    assert BuildConfig.from_yaml(p).mine.clean_prefixes == "off"


def test_fields_map_a_files_own_columns(tmp_path):
    rows = [{"uid": "p1", "problem_text": "Sam has 2 cats and 3 dogs. How many pets?", "final": "#### 5"},
            {"uid": "p2", "problem_text": "What is 10 - 4?", "final": "10-4=6\n#### 6"}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    task = get_task("gsm8k", path=f, fields={"question": "problem_text", "answer": "final", "id": "uid"})
    exs = task.load("eval")
    assert [(ex.id, ex.question, ex.answer) for ex in exs] == [("p1", rows[0]["problem_text"], "5"),
                                                               ("p2", rows[1]["problem_text"], "6")]
    assert exs[1].solution == "10-4=6\n\n#### 6"
    bad = get_task("gsm8k", path=f, fields={"question": "prompt_text"})
    with pytest.raises(ValueError, match="d.jsonl line 1: no column 'prompt_text'"):
        bad.load("eval")


def test_generate_applies_a_file_tasks_template_without_files(tiny_model_dir, tmp_path):
    out = tmp_path / "g.json"
    r = runner.invoke(app, ["generate", "What is 2 + 3?", "--task", "gsm8k", "--methods", "vanilla", "--model",
                            str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "4", "--json", str(out)])
    assert r.exit_code == 0, r.output
    prompt = json.loads(out.read_text())["vanilla"]["prompt"]
    assert prompt.startswith("Solve the following problem step by step.") and "Problem:\nWhat is 2 + 3?" in prompt
    r = runner.invoke(app, ["generate", "Which?", "--task", "arc-challenge", "--model", str(tiny_model_dir)])
    assert r.exit_code == 2 and "--raw" in r.output


def test_build_config_prompt_style_reaches_the_task(tmp_path):
    from stir_core.offline.build import BuildConfig

    e = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is 1 + 1?", "answer": "#### 2"}])
    p = tmp_path / "b.yaml"
    p.write_text(f"task:\n  name: gsm8k\n  files: {{mine: {e}}}\n  prompt_style: blank_lines\n")
    task = BuildConfig.from_yaml(p).task_spec().make()
    assert task.prompt_style == "blank_lines" and "separate the steps with a blank line" in task.template
    p.write_text(f"task:\n  name: gsm8k\n  files: {{mine: {e}}}\n")
    task = BuildConfig.from_yaml(p).task_spec().make()
    assert task.prompt_style == "reference" and task.template.startswith("Solve the following problem step by step.")
