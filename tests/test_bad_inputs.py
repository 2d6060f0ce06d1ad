"""The reliability suite: bad inputs and faults, as a user would make them (issue 15).

Every CLI case asserts: a non-zero exit, exactly one `error:` line that names the problem, no traceback,
and no file of the user's touched (a sentinel directory is hashed before and after). Most cases fail before
any model loads, which is the point: they run in-process (typer's CliRunner) in milliseconds. The few that
need a model use the embedded toy model or the tiny random one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stir_core.cli import app

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo-library"
runner = CliRunner()


def _tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256 (files) or 'dir'} of everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def ws(tmp_path):
    """A workspace with the user's files in it (a sentinel that must survive every case) and the inputs
    the cases need."""
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine, do not delete\n")
    (user / "sub" / "data.csv").write_text("a,b\n1,2\n")
    # a fake model directory: a config and a (never read) weights file -- enough for the door checks
    fake = tmp_path / "fake-model"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2,
                                                  "hidden_size": 64, "max_position_embeddings": 128}))
    (fake / "model.safetensors").write_bytes(b"")
    bad_cfg = tmp_path / "bad-config-model"
    bad_cfg.mkdir()
    (bad_cfg / "config.json").write_text("{not json")
    (bad_cfg / "model.safetensors").write_bytes(b"")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    # a copy of the demo library said to be mined on another model (the manifest is outside the hash)
    other = tmp_path / "other-lib"
    shutil.copytree(DEMO, other)
    m = json.loads((other / "manifest.json").read_text())
    m["model_id"] = "someone/another-model"
    (other / "manifest.json").write_text(json.dumps(m))
    broken = tmp_path / "broken-lib"
    shutil.copytree(DEMO, broken)
    (broken / "manifest.json").write_text("{")
    truncated = tmp_path / "truncated-lib"
    shutil.copytree(DEMO, truncated)
    data = (truncated / "tools.safetensors").read_bytes()
    (truncated / "tools.safetensors").write_bytes(data[: len(data) // 3])
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "latin1.yaml").write_bytes("mine:\n  task: caf\xe9\n".encode("latin-1"))
    (tmp_path / "a-file").write_text("x")
    return {"tmp": tmp_path, "user": user, "fake": fake, "bad_cfg": bad_cfg, "no_weights": no_weights,
            "no_config": no_config, "other": other, "broken": broken, "truncated": truncated}


def _yaml(ws, name: str, data) -> str:
    p = ws["tmp"] / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(p)


def _check_refused(result, needle: str, ws, before: dict) -> None:
    out = result.output
    assert result.exit_code != 0, out
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert needle.lower() in errors[0].lower(), (needle, errors[0])
    assert _tree_digest(ws["user"]) == before, "a file of the user's was touched"


def _run(args: list[str], env: dict | None = None):
    return runner.invoke(app, args, env=env)


# Each case: (id, argv builder, needle in the one error line). `{x}` fields are filled from the workspace.
CASES = [
    # --- generate: knobs through the one schema ----------------------------------------------------------
    ("gen-unknown-knob", ["generate", "1+1", "--set", "foo=1"], "unknown field 'foo'"),
    ("gen-knob-type", ["generate", "1+1", "--set", "k_scale=abc"], "k_scale"),
    ("gen-layer-99", ["generate", "1+1", "--set", "layer=99"], "layer"),
    ("gen-layer-not-in-library", ["generate", "1+1", "--set", "layer=1"], "no tools at that layer"),
    ("gen-layer-negative", ["generate", "1+1", "--set", "layer=-1"], "layer"),
    ("gen-max-tokens-0-set", ["generate", "1+1", "--set", "max_new_tokens=0"], "max_new_tokens"),
    ("gen-max-tokens-0", ["generate", "1+1", "--max-new-tokens", "0"], "max-new-tokens"),
    ("gen-max-tokens-negative", ["generate", "1+1", "--max-new-tokens", "-5"], "max-new-tokens"),
    ("gen-max-tokens-over-context", ["generate", "1+1", "--max-new-tokens", "300"], "context"),
    ("gen-positions-choice", ["generate", "1+1", "--set", "positions=middle"], "positions"),
    ("gen-bool", ["generate", "1+1", "--set", "center_keys=maybe"], "center_keys"),
    ("gen-nan", ["generate", "1+1", "--set", "tau_null=nan"], "tau_null"),
    ("gen-none-not-allowed", ["generate", "1+1", "--set", "top_l=none"], "top_l"),
    ("gen-top-l-0", ["generate", "1+1", "--set", "top_l=0"], "top_l"),
    ("gen-k-scale-negative", ["generate", "1+1", "--set", "k_scale=-1"], "k_scale"),
    ("gen-preview-choice", ["generate", "1+1", "--set", "preview=maybe"], "preview"),
    ("gen-set-no-equals", ["generate", "1+1", "--set", "k_scale"], "expected name=value"),
    ("gen-int-float", ["generate", "1+1", "--set", "probe_tokens=2.5"], "probe_tokens"),
    ("gen-non-utf8", ["generate", "1+1\udcff"], "UTF-8"),
    ("gen-empty", ["generate", "   "], "empty"),
    ("gen-unknown-method", ["generate", "1+1", "--methods", "vanilla,magic"], "unknown method"),
    ("gen-no-methods", ["generate", "1+1", "--methods", ","], "--methods is empty"),
    ("gen-model-missing", ["generate", "1+1", "--model", "/nonexistent/model"], "does not exist"),
    ("gen-model-no-config", ["generate", "1+1", "--model", "{no_config}"], "no config.json"),
    ("gen-model-bad-config", ["generate", "1+1", "--model", "{bad_cfg}"], "not a valid config.json"),
    ("gen-model-no-weights", ["generate", "1+1", "--model", "{no_weights}"], "no weights"),
    ("gen-device", ["generate", "1+1", "--device", "quantum"], "unknown device"),
    ("gen-dtype", ["generate", "1+1", "--dtype", "float8"], "unknown dtype"),
    ("gen-library-missing", ["generate", "1+1", "--library", "/nonexistent/lib"], "not found"),
    ("gen-library-broken", ["generate", "1+1", "--library", "{broken}"], "manifest.json"),
    ("gen-library-truncated", ["generate", "1+1", "--library", "{truncated}"], "tools.safetensors"),
    ("gen-library-other-model", ["generate", "1+1", "--library", "{other}"], "--allow-model-mismatch"),
    ("gen-library-width", ["generate", "1+1", "--model", "{fake}", "--library", str(DEMO)], "d_model"),
    ("gen-steered-no-library", ["generate", "1+1", "--model", "{fake}", "--methods", "stir"], "--library"),
    ("gen-json-dir", ["generate", "1+1", "--json", "{user}"], "is a directory"),
    ("gen-unknown-task", ["generate", "1+1", "--task", "nope"], "unknown task"),
    # --- eval ----------------------------------------------------------------------------------------
    ("eval-n-0", ["eval", "--n", "0"], "--n must be >= 1"),
    ("eval-n-negative", ["eval", "--n", "-3"], "--n must be >= 1"),
    ("eval-batch-0", ["eval", "--batch-size", "0"], "batch-size"),
    ("eval-seed-negative", ["eval", "--seed", "-1"], "seed"),
    ("eval-unknown-task", ["eval", "--task", "nope"], "unknown task"),
    ("eval-unknown-method", ["eval", "--methods", "magic"], "unknown method"),
    ("eval-path-missing", ["eval", "--task", "gsm8k", "--path", "{tmp}/missing.jsonl"], "not found"),
    ("eval-path-dir", ["eval", "--task", "gsm8k", "--path", "{user}"], "is a directory"),
    ("eval-path-bad-json", ["eval", "--task", "gsm8k", "--path", "{tmp}/bad.jsonl"], "not valid JSON"),
    ("eval-sweep-empty", ["eval", "--sweep", "k_scale="], "at least one value"),
    ("eval-sweep-unknown", ["eval", "--sweep", "foo=1,2"], "unknown field 'foo'"),
    ("eval-sweep-layer", ["eval", "--methods", "vanilla,stir", "--sweep", "layer=3,99"], "layer"),
    ("eval-sweep-type", ["eval", "--sweep", "top_l=1,many"], "top_l"),
    ("eval-set-layer-99", ["eval", "--methods", "vanilla,stir", "--set", "layer=99"], "layer"),
    ("eval-set-k-scale", ["eval", "--set", "k_scale=abc"], "k_scale"),
    ("eval-out-foreign", ["eval", "--n", "2", "--out", "{user}"], "not a STIR run directory"),
    ("eval-out-file", ["eval", "--n", "2", "--out", "{tmp}/a-file"], "not a directory"),
    ("eval-split", ["eval", "--split", "nosuch"], "nosuch"),
    ("eval-other-model", ["eval", "--methods", "stir", "--library", "{other}"], "--allow-model-mismatch"),
    # --- select ----------------------------------------------------------------------------------------
    ("select-out-foreign", ["select", str(DEMO), "--out", "{user}", "--budget", "20"], "not part of a library"),
    ("select-out-library", ["select", str(DEMO), "--out", "{existing_lib}", "--budget", "20"], "--force"),
    ("select-out-file", ["select", str(DEMO), "--out", "{tmp}/a-file", "--budget", "20"], "not a directory"),
    ("select-budget-0", ["select", str(DEMO), "--out", "{tmp}/new", "--budget", "0"], "budget"),
    ("select-budget-negative", ["select", str(DEMO), "--out", "{tmp}/new", "--budget", "-1"], "budget"),
    ("select-method", ["select", str(DEMO), "--out", "{tmp}/new", "--method", "magic"], "method"),
    ("select-lam", ["select", str(DEMO), "--out", "{tmp}/new", "--lam", "-1"], "lam"),
    ("select-eps", ["select", str(DEMO), "--out", "{tmp}/new", "--eps", "-1"], "eps"),
    ("select-min-per-cp", ["select", str(DEMO), "--out", "{tmp}/new", "--min-per-control-point", "-1"],
     "min_per_control_point"),
    ("select-out-is-input", ["select", "{existing_lib}", "--out", "{existing_lib}"], "candidates directory"),
    ("select-candidates-missing", ["select", "{tmp}/nope", "--out", "{tmp}/new"], "not found"),
    ("select-seed", ["select", str(DEMO), "--out", "{tmp}/new", "--seed", "-2"], "seed"),
    # --- build / mine: the YAML through the same schema ------------------------------------------------
    ("build-config-missing", ["build", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/run"], "not found"),
    ("build-config-dir", ["build", "--config", "{user}", "--out", "{tmp}/run"], "directory"),
    ("build-config-yaml", ["build", "--config", "@bad_yaml", "--out", "{tmp}/run"], "not valid YAML"),
    ("build-config-not-utf8", ["build", "--config", "{tmp}/latin1.yaml", "--out", "{tmp}/run"], "UTF-8"),
    ("build-config-list", ["build", "--config", "@list", "--out", "{tmp}/run"], "mapping"),
    ("build-section", ["build", "--config", "@section", "--out", "{tmp}/run"], "unknown section"),
    ("build-mine-key", ["build", "--config", "@mine_key", "--out", "{tmp}/run"], "mine.rollouts"),
    ("build-k-rollouts", ["build", "--config", "@k1", "--out", "{tmp}/run"], "mine.k_rollouts"),
    ("build-layers-range", ["build", "--config", "@layer99", "--out", "{tmp}/run"], "mine.layers"),
    ("build-layers-fraction", ["build", "--config", "@frac", "--out", "{tmp}/run"], "mine.layers"),
    ("build-budget-0", ["build", "--config", "@budget0", "--out", "{tmp}/run"], "select.budget"),
    ("build-model-type", ["build", "--config", "@model5", "--out", "{tmp}/run"], "model"),
    ("build-task", ["build", "--config", "@task", "--out", "{tmp}/run"], "unknown task"),
    ("build-temperature", ["build", "--config", "@temp0", "--out", "{tmp}/run"], "mine.temperature"),
    ("build-tokens-over-context", ["build", "--config", "@tokens999", "--out", "{tmp}/run"], "context"),
    ("build-out-foreign", ["build", "--out", "{user}"], "not a STIR run directory"),
    ("build-out-library-foreign", ["build", "--out", "{run_foreign_lib}"], "not part of a library"),
    ("build-out-library-exists", ["build", "--out", "{run_with_lib}"], "--force"),
    ("mine-layers-range", ["mine", "--config", "@layer99", "--out", "{tmp}/run"], "mine.layers"),
    ("mine-out-foreign", ["mine", "--out", "{user}"], "not a STIR run directory"),
    ("mine-checkpoint-state", ["mine", "--out", "{ckpt_state}"], "state.json"),
    ("mine-checkpoint-tensors", ["mine", "--out", "{ckpt_tensors}"], "items.safetensors"),
    ("mine-checkpoint-config", ["mine", "--out", "{ckpt_config}"], "different mining config"),
    # --- index / recommend / app -------------------------------------------------------------------------
    ("index-missing", ["index", "{tmp}/nope"], "not found"),
    ("index-truncated", ["index", "{truncated}"], "tools.safetensors"),
    ("index-broken", ["index", "{broken}"], "not valid JSON"),
    ("recommend-unknown", ["recommend", "{existing_lib}", "--set", "foo=1"], "unknown field 'foo'"),
    ("recommend-range", ["recommend", "{existing_lib}", "--set", "top_l=0"], "top_l"),
    ("recommend-n", ["recommend", "{existing_lib}", "--set", "top_l=2", "--n", "0"], "--n"),
    ("app-port", ["app", "--port", "0"], "port"),
]

YAMLS = {
    "bad_yaml": "mine: [unclosed\n",
    "list": "- 1\n- 2\n",
    "section": {"mining": {}},
    "mine_key": {"mine": {"rollouts": 4}},
    "k1": {"mine": {"k_rollouts": 1}},
    "layer99": {"mine": {"layers": [99]}},
    "frac": {"mine": {"layers": [1.5]}},
    "budget0": {"select": {"budget": 0}},
    "model5": {"model": 5},
    "task": {"mine": {"task": "nope"}},
    "temp0": {"mine": {"temperature": 0}},
    "tokens999": {"mine": {"max_new_tokens": 999, "layers": [2]}},
}


def _prepare(ws) -> dict:
    """Directories some cases need: an existing library, run dirs with a foreign file or a library in
    their library/ subdirectory, damaged mining checkpoints."""
    from stir_core.config import MineConfig
    from stir_core.io import outputs
    from stir_core.offline.build import BuildConfig
    from stir_core.offline.checkpoint import CHECKPOINT, save_checkpoint

    t = ws["tmp"]
    extra = {"existing_lib": str(t / "existing-lib")}
    shutil.copytree(DEMO, t / "existing-lib")
    run_foreign = outputs.claim_run_dir(t / "run-foreign", "build")
    (run_foreign / "library").mkdir()
    (run_foreign / "library" / "notes.txt").write_text("the user's")
    extra["run_foreign_lib"] = str(run_foreign)
    run_lib = outputs.claim_run_dir(t / "run-lib", "build")
    shutil.copytree(DEMO, run_lib / "library")
    extra["run_with_lib"] = str(run_lib)
    cfg = BuildConfig.small().mine
    for name in ("ckpt_state", "ckpt_tensors", "ckpt_config"):
        run = outputs.claim_run_dir(t / name, "mine")
        save_checkpoint(run / CHECKPOINT, [], 8, {"problems": 8}, cfg if name != "ckpt_config" else MineConfig())
        extra[name] = str(run)
    state = Path(extra["ckpt_state"]) / CHECKPOINT / "state.json"
    state.write_text(state.read_text()[:20])
    tensors = Path(extra["ckpt_tensors"]) / CHECKPOINT / "items.safetensors"
    tensors.write_bytes(b"\x05garbage")
    return extra


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cli_refuses(case, ws):
    _, argv, needle = case
    fill = {**{k: str(v) for k, v in ws.items()}, **_prepare(ws)}
    args = []
    for a in argv:
        if a.startswith("@"):
            a = _yaml(ws, a[1:] + ".yaml", YAMLS[a[1:]])
        args.append(a.format(**fill) if "{" in a else a)
    before = _tree_digest(ws["user"])
    existing = fill["existing_lib"]
    lib_before = _tree_digest(Path(existing))
    r = _run(args)
    _check_refused(r, needle, ws, before)
    assert _tree_digest(Path(existing)) == lib_before, "an existing library was touched"
    assert not (ws["tmp"] / "run").exists() and not (ws["tmp"] / "new").exists(), "refused, yet it wrote"


GENERIC = {"error", "invalid", "bad", "failed", "cannot"}  # needles that would match almost any refusal


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_refusal_case_is_a_distinct_command_line_with_a_specific_needle(case):
    """What `test_cli_refuses` runs is worth running: a command the CLI has, a command line no other case
    repeats, an id no other case uses, and a needle that names the problem (not a word any error has)."""
    import typer.main

    name, argv, needle = case
    assert argv[0] in typer.main.get_command(app).commands, f"{name}: {argv[0]!r} is not a stir command"
    assert sum(c[1] == argv for c in CASES) == 1, f"{name}: the same command line as another case"
    assert sum(c[0] == name for c in CASES) == 1, f"{name}: the id is used twice"
    assert needle.strip() and needle.strip().lower() not in GENERIC, f"{name}: needle {needle!r} names nothing"


@pytest.mark.parametrize("name", ["ckpt_state", "ckpt_tensors", "ckpt_config"])
def test_damaged_checkpoint_says_how_to_recover(name, ws):
    r = _run(["mine", "--out", _prepare(ws)[name]])
    assert r.exit_code == 2 and "--restart" in r.output, r.output


def test_offline_hub_id_fails_fast(ws, monkeypatch):
    """Fast because it never touches the network (no connection is even attempted), not by a clock."""
    import socket

    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: attempts.append(addr))
    before = _tree_digest(ws["user"])
    r = _run(["generate", "1+1", "--methods", "vanilla", "--model", "nobody-here/not-a-cached-model"],
             env={"HF_HUB_OFFLINE": "1"})
    _check_refused(r, "HF_HUB_OFFLINE", ws, before)
    assert attempts == []


def test_debug_shows_the_traceback():
    r = _run(["--debug", "generate", "1+1", "--set", "foo=1"])
    assert r.exit_code != 0
    from stir_core.config import ConfigError

    assert isinstance(r.exception, ConfigError)  # raised, so the traceback prints
    r = _run(["generate", "1+1", "--set", "foo=1"])  # and --debug does not leak into the next command
    assert isinstance(r.exception, SystemExit)


# --- faults that need a model (the embedded toy model: 4 layers, 256 positions) -------------------------


@pytest.mark.slow
def test_prompt_longer_than_the_context_is_refused_before_decoding(ws, monkeypatch):
    """Refused before any decoding: the engine's prefill (every decode starts there: `add_rows`) is never
    reached."""
    from stir_core.runtime.engine import Engine

    prefills = []
    monkeypatch.setattr(Engine, "add_rows", lambda self, *a, **k: prefills.append(a) or 1 / 0)
    before = _tree_digest(ws["user"])
    r = _run(["generate", "1" * 20_007, "--methods", "vanilla", "--raw", "--device", "cpu"])
    _check_refused(r, "context", ws, before)
    assert prefills == []


def test_allowed_model_mismatch_warns_and_is_recorded_in_the_trace(ws):
    out = ws["tmp"] / "gen.json"
    r = _run(["generate", "3+1", "--methods", "stir", "--library", str(ws["other"]), "--allow-model-mismatch",
              "--max-new-tokens", "8", "--device", "cpu", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "warning: model mismatch allowed" in r.output
    trace = json.loads(out.read_text())["stir"]
    assert any("someone/another-model" in w for w in trace["warnings"])


def test_select_into_a_users_directory_keeps_every_file(ws):
    """The reported data-loss case: `select --out DIR` used to empty DIR."""
    before = _tree_digest(ws["user"])
    r = _run(["select", str(DEMO), "--out", str(ws["user"]), "--budget", "20"])
    _check_refused(r, "not part of a library", ws, before)
    assert (ws["user"] / "notes.txt").read_text() == "mine, do not delete\n" and (ws["user"] / "sub").is_dir()


def test_select_replaces_its_own_library_only_with_force(ws):
    out = ws["tmp"] / "lib"
    assert _run(["select", str(DEMO), "--out", str(out), "--budget", "20"]).exit_code == 0
    first = _tree_digest(out)
    r = _run(["select", str(DEMO), "--out", str(out), "--budget", "10"])
    assert r.exit_code == 2 and "--force" in r.output and _tree_digest(out) == first
    r = _run(["select", str(DEMO), "--out", str(out), "--budget", "10", "--force"])
    assert r.exit_code == 0, r.output
    from stir_core.library.format import ToolLibrary

    assert len(ToolLibrary.load(out)) == 10


def test_orphan_temp_dir_of_a_killed_write_is_removed_and_reported(ws):
    """A `kill -9` mid-save leaves `.stir_tmp-dir-<name>-p<pid>-<hex>`; the next write removes it (its
    writer is gone) and says so. A temp of a live writer is left alone."""
    import subprocess
    import sys

    from stir_core.io import atomic

    out = ws["tmp"] / "lib"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    orphan = ws["tmp"] / f"{atomic.TMP_PREFIX}-dir-lib-p{dead.stdout.strip()}-0123456789ab"
    orphan.mkdir()
    (orphan / "tools.parquet").write_bytes(b"half")
    live = ws["tmp"] / f"{atomic.TMP_PREFIX}-dir-lib-p{os.getpid()}-ba9876543210"
    live.mkdir()
    r = _run(["select", str(DEMO), "--out", str(out), "--budget", "5"])
    assert r.exit_code == 0, r.output
    assert not orphan.exists() and f"removed {orphan}" in r.output
    assert live.exists() and "left" in r.output


def test_n_zero_is_refused_not_divided_by():
    r = _run(["eval", "--n", "0", "--methods", "vanilla"])
    assert r.exit_code == 2 and "ZeroDivision" not in r.output and "--n must be >= 1" in r.output


# --- the app: every app-side case through AppTest --------------------------------------------------------


@pytest.fixture(scope="module")
def app_env(tiny_model_dir, tmp_path_factory):
    """The app on the tiny model, with a library of its own and one said to be mined on another model."""
    import sys

    import torch

    sys.path.insert(0, str(REPO))
    from helpers.app_library import build_test_library

    root = tmp_path_factory.mktemp("app-bad")
    build_test_library(tiny_model_dir, root / "lib")
    shutil.copytree(root / "lib", root / "other-lib")
    m = json.loads((root / "other-lib" / "manifest.json").read_text())
    m["model_id"] = "someone/another-model"
    (root / "other-lib" / "manifest.json").write_text(json.dumps(m))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STIR_MODEL", str(tiny_model_dir))
        mp.setenv("STIR_LIBRARY", str(root / "lib"))
        mp.setenv("STIR_RUNS", str(root / "runs"))
        mp.setenv("STIR_TORCH_THREADS", str(torch.get_num_threads()))
        mp.setenv("STIR_ALLOWED_ROOTS", str(root))  # the served app reads only under allowed roots
        yield {"root": root, "model": tiny_model_dir}


def _at(**query):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app" / "Home.py"), default_timeout=120)
    at.query_params.update(query)
    return at


def _no_crash(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _texts(elements) -> list[str]:
    return [e.value for e in elements]


@pytest.mark.parametrize("query,needle", [
    ({"prompt": "1+1=", "c0": "stir;top_l=many"}, "top_l"),
    ({"prompt": "1+1=", "c0": "stir;warp=1"}, "unknown field 'warp'"),
    ({"prompt": "1+1=", "c0": "stir;positions=middle"}, "positions"),
    ({"prompt": "1+1=", "c0": "stir;min_sim=nan"}, "min_sim"),
    ({"prompt": "1+1=", "tokens": "abc"}, "tokens"),
    ({"prompt": "1+1=", "tokens": "0"}, "max_new_tokens"),
    ({"prompt": "1+1=", "c0": "magic"}, "unknown method"),
    ({"prompt": "1+1=", "delim": ""}, "delimiter"),
    ({"prompt": "1+1=", "c0": "static;static_scale=1e300"}, "static_scale"),  # the CLI's range (issue 24)
    ({"prompt": "1+1=", "c0": "stir;k_scale=inf"}, "k_scale"),
    ({"prompt": "1+1=", "c0": "stir;seed=100000000000000000000000"}, "seed"),
])
def test_app_bad_deep_link_is_named_and_ignored(app_env, query, needle):
    at = _at(**query)
    at.run()
    _no_crash(at)
    warnings = [w for w in _texts(at.warning) if w.startswith("Ignoring the link's view")]
    assert len(warnings) == 1 and needle in warnings[0], _texts(at.warning)


def test_app_deep_link_to_a_layer_the_library_lacks_says_so(app_env):
    at = _at(prompt="1+1=", c0="stir;layer=2")  # the test library holds layer 1 only
    at.run()
    _no_crash(at)
    assert at.selectbox(key="pg0_layer").value == "all"
    assert any("layer=2: the library has no tools at that layer" in w for w in _texts(at.warning))


def test_app_deep_link_above_the_token_cap_is_clamped_visibly(app_env, monkeypatch):
    monkeypatch.setenv("STIR_APP_MAX_TOKENS", "32")
    at = _at(prompt="1+1=", tokens="100", c0="vanilla")
    at.run()
    _no_crash(at)
    assert at.number_input(key="pg_tokens").value == 32
    assert any("per-request cap" in w for w in _texts(at.warning))


def test_app_prompt_longer_than_the_context_is_refused(app_env):
    """Refused in one line before decoding, as the README says (#23 defect 6: it was truncated)."""
    at = _at()
    at.run()
    at.text_area(key="pg_prompt").set_value("1+" * 600 + "1=")  # 1202 characters, 512 positions
    at.number_input(key="pg_ncols").set_value(1)
    at.number_input(key="pg_tokens").set_value(16)
    at.button(key="x_run").click().run()
    _no_crash(at)
    errors = [e for e in _texts(at.error) if "context is 512 positions" in e]
    assert len(errors) == 1 and not _texts(at.warning), (_texts(at.error), _texts(at.warning))


def test_app_empty_prompt_is_refused(app_env):
    at = _at()
    at.run()
    at.text_area(key="pg_prompt").set_value("   ")
    at.button(key="x_run").click().run()
    _no_crash(at)
    assert "The prompt is empty." in _texts(at.error)


def test_app_time_cap_stops_between_columns_and_says_so(app_env, monkeypatch):
    monkeypatch.setenv("STIR_APP_TIME_CAP_S", "0.000001")
    at = _at()
    at.run()
    at.text_area(key="pg_prompt").set_value("3+4=7\n\n")
    at.number_input(key="pg_tokens").set_value(8)
    at.button(key="x_run").click().run()
    _no_crash(at)
    assert any("per-request time cap" in w for w in _texts(at.warning)), _texts(at.warning)


def test_app_refuses_a_library_mined_on_another_model_unless_allowed(app_env):
    at = _at()
    at.session_state["sb_lib_src"] = "path"
    at.session_state["sb_lib_path"] = str(app_env["root"] / "other-lib")
    at.run()
    _no_crash(at)
    assert any("mined on model 'someone/another-model'" in e for e in _texts(at.error)), _texts(at.error)
    at.sidebar.checkbox(key="sb_allow_mismatch").check().run()
    _no_crash(at)
    assert not at.error, _texts(at.error)
    assert any("model mismatch allowed" in w for w in _texts(at.warning))


def _user_dir(path: Path, filename: str) -> tuple[Path, dict[str, str]]:
    """A user's own non-empty directory, and its digest to prove it untouched."""
    path.mkdir(exist_ok=True)
    (path / filename).write_text("keep")
    return path, _tree_digest(path)


def _page(page: str):
    """An AppTest run once, then switched to `page`."""
    at = _at()
    at.run()
    at.switch_page(page).run()
    return at


def test_app_build_refuses_a_foreign_directory_and_an_existing_library(app_env):
    user, before = _user_dir(app_env["root"] / "user-dir", "notes.txt")
    at = _page("views/build.py")
    at.text_input(key="bd_layers").set_value("1")
    at.text_input(key="x_bd_out").set_value(str(user))
    at.button(key="x_bd_run").click().run()
    _no_crash(at)
    assert any("not a STIR run directory" in e for e in _texts(at.error)), _texts(at.error)
    assert _tree_digest(user) == before
    # a run directory that already holds a library: the page asks before replacing it
    from stir_core.io import outputs

    run = outputs.claim_run_dir(app_env["root"] / "runs" / "done", "build")
    shutil.copytree(app_env["root"] / "lib", run / "library", dirs_exist_ok=True)
    lib_before = _tree_digest(run / "library")
    at.text_input(key="x_bd_out").set_value(str(run)).run()
    assert at.checkbox(key="x_bd_force").value is False
    at.button(key="x_bd_run").click().run()
    _no_crash(at)
    assert any("already holds a library" in e for e in _texts(at.error)), _texts(at.error)
    assert _tree_digest(run / "library") == lib_before


@pytest.mark.parametrize("layers,needle", [("99", "mine.layers"), ("abc", "mine.layers"), ("", "mine.layers")])
def test_app_build_bad_layers_are_named(app_env, layers, needle):
    at = _at()
    at.run()
    at.switch_page("views/build.py").run()
    at.text_input(key="bd_layers").set_value(layers)
    at.text_input(key="x_bd_out").set_value(str(app_env["root"] / "runs" / f"never-{len(layers)}"))
    at.button(key="x_bd_run").click().run()
    _no_crash(at)
    assert any(needle in e for e in _texts(at.error)), _texts(at.error)
    assert not (app_env["root"] / "runs" / f"never-{len(layers)}").exists()


def test_app_evaluate_refuses_a_foreign_directory(app_env):
    user, before = _user_dir(app_env["root"] / "user-eval", "thesis.tex")
    at = _page("views/evaluate.py")
    at.text_input(key="x_ev_out").set_value(str(user))
    at.button(key="x_ev_run").click().run()
    _no_crash(at)
    assert any("not a STIR run directory" in e for e in _texts(at.error)), _texts(at.error)
    assert _tree_digest(user) == before


def test_app_evaluate_job_can_be_cancelled(app_env):
    from stir_core.io.jobs import JobState, get_job

    at = _at()
    at.run()
    at.switch_page("views/evaluate.py").run()
    at.number_input(key="ev_n").set_value(400)
    at.number_input(key="evk_max_new_tokens").set_value(64)
    at.multiselect(key="ev_methods").set_value(["vanilla", "no_memory"])
    at.text_input(key="x_ev_out").set_value(str(app_env["root"] / "runs" / "cancel-me"))
    at.button(key="x_ev_run").click().run()
    _no_crash(at)
    job = get_job(at.session_state["ev_job"])
    assert job is not None
    at.button(key="x_ev_job_cancel").click().run()
    t0 = time.time()
    while job.active and time.time() - t0 < 120:
        time.sleep(0.1)
    assert job.status is JobState.CANCELLED, (job.status, job.error)
    at.run()
    _no_crash(at)
    assert any("cancelled" in w for w in _texts(at.warning)), _texts(at.warning)


@pytest.mark.parametrize("args,needle", [
    (["eval", "--n", "abc"], "Invalid value for '--n'"),  # an option of the wrong type
    (["generate", "1+1", "--tokens", "2"], "No such option: --tokens"),
    (["nosuch"], "No such command 'nosuch'"),
    (["generate"], "Missing argument 'prompt'"),
])
def test_usage_errors_are_one_line_from_the_executable(args, needle):
    """click's own usage errors, through the `stir` entry point (`stir_core.cli:run`, not CliRunner): one
    `error:` line naming the problem and the command's --help, exit 2 — no usage block, no box."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "stir_core.cli", *args], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert needle in lines[0] and "--help" in lines[0], lines[0]
    assert out.stdout == "" and "Traceback" not in out.stderr and "╭" not in out.stderr


def test_entry_point_keeps_help_and_version():
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "stir_core.cli", "eval", "--help"], capture_output=True, text=True,
                        cwd=REPO, timeout=120)
    assert ok.returncode == 0 and "--methods" in ok.stdout, ok.stderr
    bare = subprocess.run([sys.executable, "-m", "stir_core.cli"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert bare.returncode == 2 and "Usage" in bare.stdout + bare.stderr and "error:" not in bare.stderr


def test_the_cli_starts_without_torch():
    """`stir --help`, `--version` and every refusal at the door import neither torch nor transformers
    (the toy commands' options come from stir_core.toy.recipe): a typo costs a fraction of a second."""
    import subprocess
    import sys

    code = ("import sys, stir_core.cli; heavy = [m for m in ('torch', 'transformers', 'transformer_lens') "
            "if m in sys.modules]; assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    helped = subprocess.run([sys.executable, "-m", "stir_core.cli", "toy-train", "--help"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert helped.returncode == 0 and "--planted-share" in helped.stdout, helped.stderr


# --- hostile and absurd inputs (issue 24) ------------------------------------------------------------
# Each case: one `error:` line naming the problem, no traceback, nothing written anywhere in the workspace
# (the whole temporary tree is hashed before and after, not only the user's folder).

_BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
         'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n')


def _hostile_inputs(t: Path) -> dict[str, str]:
    """The files the hostile cases read, written into `t`."""
    from stir_core.library.format import ToolLibrary

    files = {
        "bomb_online": _BOMB + "online:\n  delimiter: *c\n",
        "bomb_model": "x: &x [a, a, a]\nmodel: *x\n",
        "alias_only": "mine:\n  split: mine\nselect: {budget: *nothere}\n",
        "dup_key": "select:\n  budget: 4\n  budget: 8\n",
        "dup_section": "mine:\n  n_problems: 4\nselect:\n  budget: 4\nmine:\n  seed: 3\n",
        "deep_yaml": "mine: " + "[" * 5000 + "]" * 5000 + "\n",
        "huge_value": "mine:\n  n_problems: " + "9x" * 400_000 + "\n",
        "huge_key": "mine:\n  ? " + "k" * 800_000 + "\n  : 1\n",  # an explicit key: no 1024-character cap
        "over_cap": "# " + "x" * (2 << 20) + "\nmine: {}\n",
        "n_problems": "mine:\n  n_problems: 100000000\n",
        "seed_1e23": "mine:\n  seed: 1.0e+23\n",
        "k_rollouts": "mine:\n  k_rollouts: 100000000000\n  problems_per_batch: 100000\n",
    }
    out = {}
    for name, text in files.items():
        (t / f"{name}.yaml").write_text(text)
        out[name] = str(t / f"{name}.yaml")
    # a manifest nested 200k deep (used to be "internal error RecursionError")
    shutil.copytree(DEMO, t / "deep-lib")
    (t / "deep-lib" / "manifest.json").write_text('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    out["deep_lib"] = str(t / "deep-lib")
    # binary garbage in a JSON Lines task file, and a 1 GiB sparse one (no disk blocks, no memory if unread)
    (t / "garbage.jsonl").write_bytes(bytes(range(256)) * 64)
    out["garbage"] = str(t / "garbage.jsonl")
    with open(t / "huge.jsonl", "wb") as f:
        f.truncate(1 << 30)
    out["huge"] = str(t / "huge.jsonl")
    # an empty library for the embedded model
    demo = json.loads((DEMO / "manifest.json").read_text())
    ToolLibrary.empty(demo["d_model"], model_id=demo["model_id"], n_layers=demo["n_layers"]).save(t / "empty-lib")
    out["empty_lib"] = str(t / "empty-lib")
    # a web app's folder (a manifest.json and a CARD.md: library file names, not a library) and a user's
    # folder holding a pairs.csv; a copy of a library (diff must not write into it)
    (t / "webapp").mkdir()
    (t / "webapp" / "manifest.json").write_text('{"name": "my app", "icons": []}')
    (t / "webapp" / "CARD.md").write_text("my notes\n")
    out["webapp"] = str(t / "webapp")
    (t / "userdir").mkdir()
    (t / "userdir" / "pairs.csv").write_text("mine\n")
    out["userdir"] = str(t / "userdir")
    shutil.copytree(DEMO, t / "lib-copy")
    out["lib_copy"] = str(t / "lib-copy")
    (t / "report.json").write_text('{"my": "report"}')
    out["user_json"] = str(t / "report.json")
    (t / "user.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    out["user_gguf"] = str(t / "user.gguf")
    (t / "page.html").write_text("<!doctype html><html><head><title>mine</title></head></html>")
    out["user_html"] = str(t / "page.html")
    # a run directory claimed by an evaluation with other settings
    from stir_core.io import outputs

    outputs.claim_run_dir(t / "other-eval", "eval", fingerprint="0" * 32)
    out["other_eval"] = str(t / "other-eval")
    return out


HOSTILE = [
    ("yaml-alias-bomb-online", ["eval", "--config", "{bomb_online}"], "anchors"),
    ("yaml-alias-bomb-model", ["build", "--config", "{bomb_model}", "--out", "{tmp}/run"], "anchors (&x)"),
    ("yaml-alias", ["build", "--config", "{alias_only}", "--out", "{tmp}/run"], "aliases (*nothere)"),
    ("yaml-duplicate-key", ["build", "--config", "{dup_key}", "--out", "{tmp}/run"], "line 3: duplicate key 'budget'"),
    ("yaml-duplicate-section", ["mine", "--config", "{dup_section}", "--out", "{tmp}/run"],
     "line 5: duplicate section 'mine'"),
    ("yaml-deep", ["build", "--config", "{deep_yaml}", "--out", "{tmp}/run"], "nested too deep"),
    ("yaml-huge-value", ["build", "--config", "{huge_value}", "--out", "{tmp}/run"], "mine.n_problems"),
    ("yaml-huge-key", ["build", "--config", "{huge_key}", "--out", "{tmp}/run"], "unknown field"),
    ("yaml-over-size-cap", ["build", "--config", "{over_cap}", "--out", "{tmp}/run"], "over the 1.0 MiB limit"),
    ("eval-n-1e8", ["eval", "--n", "100000000", "--out", "{tmp}/run"], "can produce at most"),
    ("build-n-problems-1e8", ["build", "--config", "{n_problems}", "--out", "{tmp}/run"], "mine.n_problems"),
    ("mine-n-problems-1e8", ["mine", "--config", "{n_problems}", "--out", "{tmp}/run"], "mine.n_problems"),
    ("mine-k-rollouts-memory", ["mine", "--config", "{k_rollouts}", "--out", "{tmp}/run", "--device", "cpu"],
     "memory"),
    ("mine-seed-1e23", ["mine", "--config", "{seed_1e23}", "--out", "{tmp}/run"], "mine.seed"),
    ("select-force-webapp", ["select", "{existing_lib}", "--out", "{webapp}", "--force"],
     "not a STIR library manifest"),
    ("diff-force-user-dir", ["diff", "{existing_lib}", "{existing_lib}", "--out", "{userdir}", "--force"],
     "not a stir diff output"),
    ("diff-force-into-library", ["diff", "{existing_lib}", "{existing_lib}", "--out", "{lib_copy}", "--force"],
     "not a stir diff output"),
    ("generate-json-existing", ["generate", "1+1", "--methods", "vanilla", "--json", "{user_json}"],
     "already exists"),
    ("generate-json-force-foreign", ["generate", "1+1", "--methods", "vanilla", "--json", "{user_json}", "--force"],
     "not written by stir generate"),
    ("export-force-foreign-gguf", ["export", "{existing_lib}", "--out", "{user_gguf}", "--force"],
     "not written by stir export"),
    ("dashboard-force-foreign-html", ["dashboard", "{existing_lib}", "--tool", "x", "--out", "{user_html}",
                                     "--force"], "not written by stir dashboard"),
    ("dashboard-scales-nan", ["dashboard", "{existing_lib}", "--tool", "x", "--out", "{tmp}/new.html",
                              "--scales", "nan,inf"], "'nan' is not a finite"),
    ("dashboard-scales-inf", ["dashboard", "{existing_lib}", "--tool", "x", "--out", "{tmp}/new.html",
                              "--scales", "1,inf"], "'inf' is not a finite"),
    ("dashboard-scales-empty", ["dashboard", "{existing_lib}", "--tool", "x", "--out", "{tmp}/new.html",
                                "--scales", ",,"], "at least one"),
    ("dashboard-sweep-tokens-negative", ["dashboard", "{existing_lib}", "--tool", "x", "--out", "{tmp}/new.html",
                                         "--sweep-tokens", "-5"], "--sweep-tokens"),
    ("export-ids-empty", ["export", "{existing_lib}", "--out", "{tmp}/new.gguf", "--ids", ",,"], "names no tool id"),
    ("set-static-scale-1e300", ["eval", "--methods", "vanilla,static", "--set", "static_scale=1e300"],
     "static_scale"),
    ("set-k-scale-inf", ["generate", "1+1", "--set", "k_scale=inf"], "k_scale"),
    ("manifest-200k-deep-index", ["index", "{deep_lib}"], "nested too deep"),
    ("manifest-200k-deep-eval", ["eval", "--methods", "vanilla,static", "--library", "{deep_lib}"],
     "nested too deep"),
    ("jsonl-binary-garbage", ["eval", "--task", "gsm8k", "--path", "{garbage}"], "garbage.jsonl line 1"),
    ("task-file-1gib", ["eval", "--task", "gsm8k", "--path", "{huge}"], "over the 256.0 MiB limit"),
    ("empty-library-static", ["eval", "--methods", "vanilla,stir,static", "--library", "{empty_lib}", "--n", "2",
                              "--set", "max_new_tokens=32"], "--methods static"),
    ("empty-library-static-generate", ["generate", "1+1", "--methods", "vanilla,static", "--library",
                                       "{empty_lib}"], "--methods static"),
    ("eval-into-other-evaluation", ["eval", "--n", "3", "--methods", "vanilla", "--out", "{other_eval}"],
     "other settings"),
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, str]:
    """The hostile inputs, made once (a 200k-deep manifest, a 1 GiB sparse file, ...)."""
    root = tmp_path_factory.mktemp("hostile")
    return {"root": str(root), **_hostile_inputs(root)}


def _tree_state(root: Path) -> dict[str, str]:
    """Like _tree_digest, with files over 16 MiB (the sparse 1 GiB one) by size and mtime, not read."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = ("dir" if p.is_dir() else f"{st.st_size}:{st.st_mtime_ns}"
                                         if st.st_size > 16 << 20 else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_input_is_one_short_line_and_nothing_is_written(case, ws, hostile):
    _, argv, needle = case
    fill = {**{k: str(v) for k, v in ws.items()}, **_prepare(ws), **hostile}
    args = [a.format(**fill) if "{" in a else a for a in argv]
    before = _tree_state(ws["tmp"]), _tree_state(Path(hostile["root"]))
    r = _run(args)
    _check_refused(r, needle, ws, _tree_digest(ws["user"]))
    error = next(line for line in r.output.splitlines() if line.startswith("error:"))
    assert len(error) < 600, f"the message quotes too much: {len(error)} characters"
    assert "internal error" not in error
    after = _tree_state(ws["tmp"]), _tree_state(Path(hostile["root"]))
    assert after == before, "refused, yet something was written"


def test_impossible_sizes_are_refused_before_torch_is_imported(tmp_path):
    """`--n 1e8` and `n_problems: 1e8` are refused by the task's capacity, before the pipeline (and torch)
    is imported: the refusal costs what the CLI's start costs, not a model's."""
    import subprocess
    import sys

    cfg = tmp_path / "big.yaml"
    cfg.write_text("mine:\n  n_problems: 100000000\n")
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom stir_core.cli import app\n"
            "for args in (['eval', '--n', '100000000', '--out', sys.argv[1] + '/e'],\n"
            "             ['build', '--config', sys.argv[2], '--out', sys.argv[1] + '/b'],\n"
            "             ['mine', '--config', sys.argv[2], '--out', sys.argv[1] + '/m']):\n"
            "    r = CliRunner().invoke(app, args)\n"
            "    assert r.exit_code == 2 and 'at most about' in r.output, r.output\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(cfg)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.yaml"]


def test_a_1gib_task_file_is_refused_without_reading_it(tmp_path):
    """Refused by its size: Python allocates next to nothing (tracemalloc), where reading it whole used to
    peak at 2.4 GB."""
    import tracemalloc

    from stir_core.tasks.files import read_records

    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="over the 256.0 MiB limit"):
            read_records(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_force_replaces_our_own_outputs_only(ws):
    """Each output written by us is recognised by its content and replaced with --force; the same names
    holding a user's content are refused even with --force (see HOSTILE), and nothing is replaced without."""
    import importlib.util

    from stir_core.io import outputs

    t = ws["tmp"]
    # gguf comes with the `interop` extra (`make test-latest` installs `dev` only): checked where installed
    formats = [("gguf", "v.gguf")] if importlib.util.find_spec("gguf") else []
    for fmt, name in formats + [("steering-vectors", "v.safetensors")]:
        out = t / name
        assert _run(["export", str(DEMO), "--out", str(out), "--format", fmt]).exit_code == 0
        assert outputs.owned_file_kind(out) == "export"
        first = out.read_bytes()
        again = _run(["export", str(DEMO), "--out", str(out), "--format", fmt])
        assert again.exit_code == 2 and "already exists" in again.output and out.read_bytes() == first
        assert _run(["export", str(DEMO), "--out", str(out), "--format", fmt, "--force"]).exit_code == 0
        assert outputs.owned_file_kind(out) == "export"
    diff = t / "diff"
    assert _run(["diff", str(DEMO), str(DEMO), "--out", str(diff)]).exit_code == 0
    (diff / "my-notes.txt").write_text("kept")  # the user's file inside our output: never touched
    refused = _run(["diff", str(DEMO), str(DEMO), "--out", str(diff)])
    assert refused.exit_code == 2 and "already exists (a stir diff output)" in refused.output
    assert _run(["diff", str(DEMO), str(DEMO), "--out", str(diff), "--force"]).exit_code == 0
    assert (diff / "my-notes.txt").read_text() == "kept"


def test_generate_json_and_dashboard_are_replaced_only_when_ours(ws):
    t = ws["tmp"]
    out = t / "gen.json"
    assert _run(["generate", "1+1", "--methods", "vanilla", "--max-new-tokens", "4", "--json", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["vanilla"]["method"] == "vanilla"
    assert _run(["generate", "1+1", "--methods", "vanilla", "--max-new-tokens", "4", "--json", str(out)]).exit_code == 2
    assert _run(["generate", "1+1", "--methods", "vanilla", "--max-new-tokens", "4", "--json", str(out),
                 "--force"]).exit_code == 0
    import pandas as pd

    tool = str(pd.read_parquet(DEMO / "tools.parquet")["id"].iloc[0])
    for suffix in (".html", ".json"):
        page = t / f"dash{suffix}"
        args = ["dashboard", str(DEMO), "--tool", tool, "--out", str(page), "--sweep-tokens", "2", "--scales", "0,1"]
        assert _run(args).exit_code == 0, page
        assert _run(args).exit_code == 2
        r = _run([*args, "--force"])
        assert r.exit_code == 0, r.output


def test_second_eval_into_a_run_resumes_the_same_evaluation_only(ws):
    """Same settings: it runs again into the directory (same fingerprint) and gives the same results;
    other settings: refused before the model loads, the first results untouched."""
    from stir_core.io import outputs

    run = ws["tmp"] / "run-eval"
    args = ["eval", "--methods", "vanilla", "--n", "3", "--set", "max_new_tokens=8", "--out", str(run)]
    assert _run(args).exit_code == 0
    first = (run / "examples.csv").read_text()
    marker = json.loads((run / outputs.RUN_MARKER).read_text())
    assert len(marker["fingerprint"]) == 32
    assert _run(args).exit_code == 0
    assert (run / "examples.csv").read_text() == first
    before = _tree_digest(run)
    other = _run([*args[:-2], "--seed", "7", "--out", str(run)])
    assert other.exit_code == 2 and "other settings" in other.output, other.output
    assert _tree_digest(run) == before


def test_a_run_directory_has_one_writer_at_a_time(tmp_path):
    """Two real processes: one holds the run directory's lock; `stir eval --out` from another process is
    refused with the holder's pid and writes nothing; once the holder exits, the lock is free."""
    import subprocess
    import sys

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom stir_core.io import outputs\n"
         "outputs.claim_run_dir(sys.argv[1], 'eval', lock=True)\nprint('locked', flush=True)\nsys.stdin.read()",
         str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _tree_digest(run)
        second = subprocess.run([sys.executable, "-m", "stir_core.cli", "eval", "--methods", "vanilla", "--n", "2",
                                 "--out", str(run)], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert second.returncode == 2, second.stderr
        errors = [x for x in second.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and f"pid {holder.pid}" in errors[0], second.stderr
        assert _tree_digest(run) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    from stir_core.io import outputs

    outputs.lock_run_dir(run)  # free now that the holder has exited
    outputs.unlock_run_dir(run)


def test_a_library_of_absurd_norms_is_flagged_in_traces_and_summary(ws):
    """Vectors of norm ~1e37 (a hash-valid library) overflow the activations: the door says so, every trace
    records it, and the summary counts exactly the traces whose log-probs are non-finite, counted here
    from the examples' JSON (where non-finite numbers are written as null)."""
    import pandas as pd

    from stir_core.library.format import ToolLibrary

    demo = ToolLibrary.load(DEMO)
    table = demo.table.copy()
    table["norm"] = table["norm"] * 1e37
    ToolLibrary(keys=demo.keys, vectors=demo.vectors * 1e37, table=table, manifest=dict(demo.manifest)).save(ws["tmp"] / "huge-lib")
    run = ws["tmp"] / "run-huge"
    r = _run(["eval", "--methods", "vanilla,static", "--library", str(ws["tmp"] / "huge-lib"), "--n", "3",
              "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert "library vectors reach norm" in r.output
    rows = pd.read_json(run / "examples.jsonl", lines=True)
    bad = {m: sum(any(tok["logprob"] is None for tok in json.loads(tj)["tokens"])
                  for tj in rows.loc[rows["method"] == m, "trace_json"]) for m in ("vanilla", "static")}
    summary = json.loads((run / "summary.json").read_text())["methods"]
    assert bad["vanilla"] == 0 and bad["static"] >= 1, bad
    assert summary["static"]["non_finite_traces"] == bad["static"]
    assert "non_finite_traces" not in summary["vanilla"]
    for tj in rows.loc[rows["method"] == "static", "trace_json"]:
        warnings = json.loads(tj)["warnings"]
        assert any("library vectors reach norm" in w for w in warnings)


# --- the app reads only under allowed roots (issue 24) -------------------------------------------------


@pytest.fixture(scope="module")
def outside(app_env):
    """A library and a model outside every allowed root (not under pytest's folder, the cwd or the assets)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="stir-outside-"))
    shutil.copytree(app_env["root"] / "lib", root / "lib")
    shutil.copytree(app_env["model"], root / "model")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_app_link_to_a_library_outside_the_allowed_roots_is_refused(app_env, outside):
    at = _at(lib=str(outside / "lib"), prompt="1+1=")
    at.run()
    _no_crash(at)
    errors = [e for e in _texts(at.error) if "Library not loaded" in e]
    assert len(errors) == 1 and "outside the folders this app may read" in errors[0], _texts(at.error)
    allowed = _at(lib=str(app_env["root"] / "other-lib"), prompt="1+1=")  # under an allowed root: read
    allowed.run()
    assert not any("outside the folders" in e for e in _texts(allowed.error))


def test_app_link_to_a_model_outside_the_allowed_roots_is_refused(app_env, outside):
    at = _at(model=str(outside / "model"), prompt="1+1=")
    at.run()
    _no_crash(at)
    assert any("outside the folders this app may read" in e for e in _texts(at.error)), _texts(at.error)


def test_app_says_when_it_is_served_beyond_this_machine(app_env):
    from streamlit import config as st_config

    before = st_config.get_option("server.address")
    try:
        for address, shown in (("0.0.0.0", True), ("127.0.0.1", False)):
            st_config.set_option("server.address", address)
            at = _at()
            at.run()
            _no_crash(at)
            notes = [i for i in _texts(at.info) if "anyone who can reach it" in i]
            assert bool(notes) == shown, (address, _texts(at.info))
            if shown:
                assert "0.0.0.0" in notes[0] and "STIR_ALLOWED_ROOTS" in notes[0]
    finally:
        st_config.set_option("server.address", before)
