"""The `stir` command: the pipeline (mine, select, index, build), decoding (generate, eval) and the app."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="STIR Workbench: mine, select, store and replay latent actions.")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="hub id, local path, or 'embedded'")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cuda | mps | cpu")]
DtypeOpt = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")]
DEMO_LIBRARY = Path(__file__).resolve().parent.parent / "assets" / "demo-library"


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def _model(model: str, device: str, dtype: str):
    from stir_core.model import load_model

    try:
        return load_model(model, device=device, dtype=dtype)
    except ValueError as err:
        _fail(str(err))


def _library(path: str | None, model):
    from stir_core.library import LibraryError, ToolLibrary

    if path is None:
        return None
    try:
        return ToolLibrary.load(path, d_model=model.d_model, n_layers=model.n_layers)
    except LibraryError as err:
        _fail(str(err))


def _stir_config(overrides: list[str] | None):
    from stir_core.controller import StirConfig
    from stir_core.evaluate import parse_sweep

    cfg = StirConfig()
    for spec in overrides or []:
        name, values = parse_sweep(spec)
        if len(values) != 1:
            _fail(f"--set {spec}: give one value (use --sweep for several)")
        cfg = cfg.with_overrides(**{name: values[0]})
    return cfg


@app.command("eval")
def eval_cmd(task: Annotated[str, typer.Option(help="task name")] = "planted",
             methods: Annotated[str, typer.Option(help="comma list, e.g. vanilla,static,stir")] = "vanilla",
             n: int = 200, seed: int = 123, split: str = "eval",
             out: Annotated[Path | None, typer.Option(help="output directory")] = None,
             library: Annotated[str | None, typer.Option(help="library directory")] = None,
             set_: Annotated[list[str] | None, typer.Option("--set", help="StirConfig override name=value")] = None,
             sweep: Annotated[str | None, typer.Option(help="name=v1,v2,...: one row per setting")] = None,
             batch_size: int = 64, path: Annotated[str | None, typer.Option(help="data file for file tasks")] = None,
             config: Annotated[Path | None, typer.Option(help="YAML build config: take the task (and its "
                                                                 "files) and the model from it")] = None,
             model: ModelOpt = "embedded", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """Evaluate methods on a task: accuracy, tokens, interventions, paired test vs vanilla."""
    from stir_core.controller import METHODS
    from stir_core.engine import Engine
    from stir_core.evaluate import evaluate, parse_sweep
    from stir_core.tasks import get_task

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in method_list if m not in METHODS]
    if bad:
        _fail(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    if config is not None:
        if path is not None or task != "planted":
            _fail("give the task either with --config or with --task/--path, not both")
        cfg, task_obj = _build_config(config)
        model = cfg.model or model
    else:
        try:
            task_obj = get_task(task, **({"path": path} if path else {}))
        except (ValueError, TypeError) as err:
            _fail(str(err))
    m = _model(model, device, dtype)
    lib = _library(library, m)
    if lib is None and any(x not in ("vanilla", "no_memory") for x in method_list):
        if DEMO_LIBRARY.exists() and model == "embedded":
            lib = _library(str(DEMO_LIBRARY), m)
            typer.echo(f"using the demo library {DEMO_LIBRARY}")
        else:
            _fail("steered methods need --library DIR")
    cfg = _stir_config(set_)
    engine = Engine(m)
    settings = [(None, None)]
    if sweep:
        name, values = parse_sweep(sweep)
        settings = [(name, v) for v in values]
    rows = []
    for name, value in settings:
        c = cfg if name is None else cfg.with_overrides(**{name: value})
        sub = None if out is None else (out if name is None else out / f"{name}={value}")
        try:
            res = evaluate(engine, task_obj, method_list, lib, c, n=n, split=split, seed=seed,
                           batch_size=batch_size, out_dir=sub)
        except ValueError as err:
            _fail(str(err))
        for meth, s in res.summary.items():
            vs = s.get("vs_vanilla", {})
            rows.append({**({name: value} if name else {}), "method": meth, "accuracy": s["accuracy"], "n": s["n"],
                         "mean_tokens": s["mean_tokens"], "mean_probe_tokens": s["mean_probe_tokens"],
                         "interventions": s["interventions_per_problem"], "wall_s": s["wall_s"],
                         "wins": vs.get("wins"), "losses": vs.get("losses"), "p_mcnemar": vs.get("p_value")})
    import pandas as pd

    table = pd.DataFrame(rows)
    typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if out is not None and sweep:
        from stir_core import atomic

        atomic.write_text(out / "sweep.csv", table.to_csv(index=False))
    if out is not None:
        typer.echo(f"wrote {out}")


@app.command()
def generate(prompt: Annotated[str, typer.Argument(help="problem text (the task's template is applied)")],
             methods: str = "vanilla,stir", task: str = "planted", library: str | None = None,
             max_new_tokens: int = 128, set_: Annotated[list[str] | None, typer.Option("--set")] = None,
             json_out: Annotated[Path | None, typer.Option("--json", help="write texts and traces here")] = None,
             raw: Annotated[bool, typer.Option(help="use the prompt as is (no task template)")] = False,
             model: ModelOpt = "embedded", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """Decode one prompt with several methods side by side, gate decisions inline."""
    from stir_core.controller import run_method
    from stir_core.engine import Engine
    if not prompt.strip():
        _fail("the prompt is empty")
    m = _model(model, device, dtype)
    lib = _library(library or (str(DEMO_LIBRARY) if DEMO_LIBRARY.exists() and model == "embedded" else None), m)
    text = prompt if raw else _task_prompt(task, prompt)
    text = m.format_prompt(text)
    cfg = _stir_config(set_).with_overrides(max_new_tokens=max_new_tokens)
    engine = Engine(m)
    out = {}
    for meth in [x.strip() for x in methods.split(",") if x.strip()]:
        try:
            (trace,) = run_method(engine, [text], meth, lib, cfg)
        except ValueError as err:
            _fail(str(err))
        out[meth] = trace
        typer.secho(f"── {meth} " + "─" * 40, bold=True)
        decisions = {d.token_index: d for d in trace.decisions}
        for tok in trace.tokens:
            typer.echo(tok.text, nl=False)
            d = decisions.get(tok.index)
            if d is not None:
                what = f"{d.chosen} α={d.alpha:.2f}" if d.committed else f"null ({d.reason})"
                typer.secho(f"  ⟨m={d.m}: {what}⟩", fg="cyan" if d.committed else "bright_black")
        typer.echo(f"\n[{trace.n_tokens} tokens, {trace.probe_tokens} probe tokens, "
                   f"{trace.interventions} interventions]")
    if json_out is not None:
        from stir_core import atomic

        atomic.write_text(json_out, json.dumps({k: v.to_dict() for k, v in out.items()}, indent=1))
        typer.echo(f"wrote {json_out}")


def _task_prompt(task: str, question: str) -> str:
    """The task's prompt around one question; a file task's template needs no file (choice tasks need --raw)."""
    from stir_core.tasks import Example, get_task
    from stir_core.tasks.files import FORMATS

    if task in FORMATS:
        if FORMATS[task].kind == "choice":
            _fail(f"task {task!r} needs its options in the prompt: write them yourself and pass --raw")
        return FORMATS[task].template.replace("{question}", question)
    try:
        return get_task(task).prompt(Example("cli", question, ""))
    except (ValueError, TypeError) as err:
        _fail(str(err))


@app.command()
def mine(out: Annotated[Path, typer.Option(help="run directory (resumes from its checkpoint)")],
         config: Annotated[Path | None, typer.Option(help="YAML build config (its [mine] section)")] = None,
         model: ModelOpt = "embedded", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """Stage I: mine candidate tools into <out>/candidates (the task and its files from the config)."""
    from stir_core.pipeline import mine_run

    cfg, task = _build_config(config)
    m = _model(cfg.model or model, device, dtype)
    try:
        cands = mine_run(m, cfg, out, task)
    except ValueError as err:
        _fail(str(err))
    typer.echo(f"{len(cands)} candidate entries -> {out / 'candidates'}; stats: "
               f"{json.dumps(cands.manifest.get('mining_stats'))}")


@app.command()
def select(candidates: Annotated[Path, typer.Argument(help="candidate library directory")],
           out: Annotated[Path, typer.Option(help="library directory to write")],
           budget: int = 256, method: str = "dpp", lam: float = 0.5, eps: float = 1e-4,
           min_per_control_point: int = 0, seed: int = 0) -> None:
    """Stage II+III: select a diverse library (quality-DPP, top, random) and index it."""
    from stir_core.library import LibraryError, ToolLibrary
    from stir_core.pipeline import SelectConfig, select_and_index

    try:
        cands = ToolLibrary.load(candidates)
        lib, report = select_and_index(cands, SelectConfig(budget, method, lam, eps, min_per_control_point), seed)
    except (LibraryError, ValueError) as err:
        _fail(str(err))
    lib.save(out)
    typer.echo(json.dumps(report, indent=1))


@app.command()
def index(library: Annotated[Path, typer.Argument(help="library directory")],
          center_keys: bool = False) -> None:
    """Stage III: validate a library, build its key index and check that every key retrieves itself."""
    from stir_core.index import ToolIndex
    from stir_core.library import LibraryError, ToolLibrary

    try:
        lib = ToolLibrary.load(library)
    except LibraryError as err:
        _fail(str(err))
    idx = ToolIndex(lib, center_keys=center_keys)
    hits = 0
    for i in range(len(lib)):
        row = lib.table.iloc[i]
        sims, ent = idx.search(lib.keys[i], layer=int(row.layer), control_point=int(row.control_point), k=1)
        hits += int(ent[0, 0]) == i or bool(sims[0, 0] >= 1 - 1e-6)
    typer.echo(json.dumps({"entries": len(lib), "groups": {f"L{a}/m{b}": n for (a, b), n in
                                                           sorted(idx.group_sizes().items())},
                           "self_retrieval": f"{hits}/{len(lib)}"}, indent=1))


def _build_config(path: Path | None):
    """The build config and its task, checked (files, split disjointness, clean_prefixes) before any model loads."""
    from stir_core.pipeline import BuildConfig

    try:
        cfg = BuildConfig.from_yaml(path) if path else BuildConfig.small()
        return cfg, cfg.make_task()
    except (ValueError, TypeError) as err:
        _fail(str(err))


@app.command()
def build(out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/build"),
          config: Annotated[Path | None, typer.Option(help="YAML build config (default: the small one)")] = None,
          model: ModelOpt = "embedded", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """mine → select → index from one YAML config; writes <out>/candidates, <out>/library, <out>/build.json."""
    from stir_core.pipeline import build_library

    cfg, _ = _build_config(config)
    m = _model(cfg.model or model, device, dtype)
    try:
        lib_dir = build_library(m, cfg, out)
    except ValueError as err:
        _fail(str(err))
    typer.echo(f"library -> {lib_dir}")
    typer.echo((out / "build.json").read_text())


@app.command("show-config")
def show_config(small: bool = True) -> None:
    """Print the default build config as YAML (small: the embedded-model default; else the reference)."""
    import yaml

    from stir_core.pipeline import BuildConfig

    typer.echo(yaml.safe_dump(asdict(BuildConfig.small() if small else BuildConfig()), sort_keys=False))


@app.command("app")
def run_app(port: int = 8501, address: str = "127.0.0.1") -> None:
    """Start the Streamlit workbench."""
    entry = Path(__file__).resolve().parent.parent / "app" / "Home.py"
    if not entry.exists():
        _fail(f"the app entry {entry} is missing")
    raise typer.Exit(subprocess.call([sys.executable, "-m", "streamlit", "run", str(entry),
                                      "--server.port", str(port), "--server.address", address]))


def _register_toy_commands() -> None:
    try:
        from stir_core.toy import commands
    except ImportError:
        return
    if hasattr(commands, "toy_train"):
        app.command("toy-train")(commands.toy_train)
    if hasattr(commands, "toy_control"):
        app.command("toy-control")(commands.toy_control)


_register_toy_commands()

if __name__ == "__main__":
    app()
