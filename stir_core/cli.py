"""The `stir` command: the pipeline (mine, select, index, build), decoding (generate, eval) and the app.

User errors are one line on stderr (`error: ...`, exit 2) and are caught at the door, before any model
loads: every config value goes through the one knob schema (`stir_core.config`), output directories are
claimed before anything is written (`stir_core.io.outputs`). `--debug` (or STIR_DEBUG=1) shows tracebacks.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from stir_core.io import jsonio
from stir_core.io.bounded import clip
from stir_core.io.layout import DEMO_LIBRARY, MANIFEST_FILE

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="STIR Workbench: mine, select, store and replay latent actions.")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="hub id, local path, or 'embedded'")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cuda | mps | cpu | split (one model across the visible GPUs)")]
DtypeOpt = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="StirConfig override name=value (repeatable)")]
MismatchOpt = Annotated[bool, typer.Option("--allow-model-mismatch",
                                           help="use a library mined on another model (warns, recorded)")]
# One name for "replace what is at --out" on every command (`--overwrite`: its old name on the interop
# commands, still accepted).
ForceOutOpt = Annotated[bool, typer.Option("--force", "--overwrite",
                                           help="replace what is already at the output path")]
_STATE = {"debug": os.environ.get("STIR_DEBUG", "").strip() not in ("", "0")}


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {' '.join(str(msg).split())}", fg="red", err=True)
    raise typer.Exit(code)


def _note(msg: str) -> None:
    typer.secho(msg, fg="yellow", err=True)


def guarded(fn):
    """One line for every failure (exit 2 for user errors, 1 for internal ones), no traceback unless
    --debug: the commands raise ValueError/OSError subclasses for anything the user can fix."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as err:  # noqa: BLE001 - the one place that turns exceptions into one line
            if _STATE["debug"]:
                raise
            user = isinstance(err, (ValueError, OSError, LookupError, UnicodeError))
            if user:
                _fail(str(err))
            _fail(f"internal error {type(err).__name__}: {err} (rerun with --debug for the traceback)", 1)

    return wrapper


def _version(value: bool) -> None:
    if value:
        from stir_core.io.versions import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="print the package and backend versions")] = False) -> None:
    """STIR Workbench: mine, select, store and replay latent actions."""
    _STATE["debug"] = debug or os.environ.get("STIR_DEBUG", "").strip() not in ("", "0")


# --- checks at the door (no model loaded) ----------------------------------------------------------


def _positive(**values: int) -> None:
    for name, v in values.items():
        if v is None or v < 1:
            _fail(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def _overrides(specs: list[str] | None) -> dict:
    """--set name=value ... -> {name: typed value} through the one schema."""
    from stir_core.config import StirConfig, parse_assignment

    out = {}
    for spec in specs or []:
        name, value = parse_assignment(StirConfig, spec)
        out[name] = value
    return out


def _facts(model: str, device: str = "auto", dtype: str = "auto") -> dict:
    """The model's depth/context/width and its id, from its config.json, and the device/dtype checked
    (no weights loaded)."""
    from stir_core.runtime.model import model_facts, model_id_for, pick_device, pick_dtype

    pick_dtype(dtype, pick_device(device))
    return {**model_facts(model), "model_id": model_id_for(model)}


def _library(path: str | None, facts: dict, allow_mismatch: bool) -> tuple[object, list[str]]:
    """(library or None, warnings): validated against the model's shape and id before it loads."""
    from stir_core.library.checks import library_model_check
    from stir_core.library.format import ToolLibrary, validate_for_model

    if path is None:
        return None, []
    lib = ToolLibrary.load(path)
    validate_for_model(lib, facts.get("d_model"), facts.get("n_layers"))
    warnings = library_model_check(lib, facts["model_id"], None, allow_mismatch) + _norm_warnings(lib)
    for w in warnings:
        _note(f"warning: {w}")
    return lib, warnings


def _norm_warnings(lib) -> list[str]:
    """A library whose vectors are beyond a sane norm loads (its hash is valid) but is said to be absurd;
    the line goes into every trace and the summary like any other warning."""
    from stir_core.online.health import MAX_ADDED_NORM

    if not len(lib):
        return []
    top = float(lib.vectors.double().norm(dim=1).max())  # float64: a float32 norm of 1e37-vectors is inf
    if top <= MAX_ADDED_NORM:
        return []
    return [f"library vectors reach norm {top:.3g}, beyond the sane {MAX_ADDED_NORM:g}: steering with them "
            "overflows the activations (non-finite decodes are flagged per trace)"]


def _online_config(lib, overrides: dict, facts: dict, steered: bool):
    """Defaults -> the library's recommended settings -> --set; layers checked against model and library."""
    from stir_core.config import check_layers, online_config

    cfg = online_config(lib, overrides)
    n_ctx = facts.get("n_ctx")
    if n_ctx is not None and cfg.max_new_tokens >= n_ctx:
        _fail(f"max_new_tokens={cfg.max_new_tokens} does not fit the model's context of {n_ctx} positions "
              "(prompt included); lower it, e.g. --set max_new_tokens=128")
    lib_layers = (lib.layers or None) if lib is not None else None
    check_layers(cfg, facts.get("n_layers"), lib_layers if steered else None)
    return cfg


def _load(model: str, device: str, dtype: str):
    from stir_core.runtime.model import load_model

    return load_model(model, device=device, dtype=dtype)


def _task(task: str, path: str | None):
    from stir_core.tasks import get_task

    if path is not None:
        p = Path(path)
        if not p.exists():
            _fail(f"--path {path}: file not found")
        if p.is_dir():
            _fail(f"--path {path}: is a directory; give a data file")
    try:
        return get_task(task, **({"path": path} if path else {}))
    except TypeError as err:
        _fail(f"task {clip(task)}: {err}")


def _default_library(library: str | None, model: str) -> str | None:
    if library is None and model == "embedded" and (DEMO_LIBRARY / MANIFEST_FILE).is_file():
        typer.echo(f"using the demo library {DEMO_LIBRARY}", err=True)
        return str(DEMO_LIBRARY)
    return library


def _check_methods(methods: list[str], lib, configs: list) -> None:
    """Build every method's policy once, without a model (cheap: means and an index over the library),
    so a library that cannot serve a method (an empty one with `static`) is refused before any decode."""
    from stir_core.online.methods import build_policy

    for c in configs:
        for meth in methods:
            try:
                build_policy(meth, lib, c)
            except ValueError as err:
                _fail(f"--methods {meth}: {err}")


def _fingerprint(**parts) -> str:
    """A short hash of what makes an evaluation's results (a second run into its --out must match it)."""
    import hashlib

    return hashlib.blake2b(jsonio.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


# --- commands ------------------------------------------------------------------------------------


@app.command("eval")
@guarded
def eval_cmd(task: Annotated[str, typer.Option(help="task name")] = "planted",
             methods: Annotated[str, typer.Option(help="comma list, e.g. vanilla,static,stir")] = "vanilla",
             n: int = 200, seed: int = 123, split: str = "eval",
             out: Annotated[Path | None, typer.Option(help="output directory")] = None,
             library: Annotated[str | None, typer.Option(help="library directory")] = None,
             set_: SetOpt = None,
             sweep: Annotated[str | None, typer.Option(help="name=v1,v2,...: one row per setting")] = None,
             batch_size: int = 64, path: Annotated[str | None, typer.Option(help="data file for file tasks")] = None,
             allow_model_mismatch: MismatchOpt = False,
             config: Annotated[Path | None, typer.Option(help="YAML build config: take the task (and its "
                                                                 "files), the model and the [online] knobs "
                                                                 "(e.g. configs/reference.yaml) from it")] = None,
             model: ModelOpt = "embedded", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """Evaluate methods on a task: accuracy, tokens, interventions, paired test vs vanilla."""
    from stir_core.config import StirConfig, check_layers, parse_values
    from stir_core.io import outputs

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    if not method_list:
        _fail("--methods is empty")
    _positive(n=n, batch_size=batch_size)
    if seed < 0:
        _fail(f"--seed must be >= 0, got {seed}")
    online: dict = {}
    if config is not None:
        if path is not None or task != "planted":
            _fail("give the task either with --config or with --task/--path, not both")
        build_cfg, task_obj = _build_config(config)
        model = build_cfg.model or model
        online = build_cfg.online
    else:
        task_obj = _task(task, path)
    # defaults -> the library's recommended settings -> --config's [online] section -> --set
    overrides = {**online, **_overrides(set_)}
    sweep_name, sweep_values = parse_values(StirConfig, sweep) if sweep else (None, [None])
    task_obj.load(split, n, seed)  # reads and checks the data (files, split names, --n) before the model loads
    from stir_core.analysis.diagnostics import truncation_warnings
    from stir_core.analysis.evaluate import evaluate  # torch: after the cheap checks
    from stir_core.online.methods import METHODS
    from stir_core.runtime.engine import Engine

    bad = [m for m in method_list if m not in METHODS]
    if bad:
        _fail(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    steered = any(x not in ("vanilla", "no_memory") for x in method_list)
    facts = _facts(model, device, dtype)
    if library is None:  # the embedded model starts from the demo library's recommended settings
        library = _default_library(None, model)
        if library is None and steered:
            _fail("steered methods need --library DIR")
    lib, warnings = _library(library, facts, allow_model_mismatch)
    cfg = _online_config(lib, overrides, facts, steered)
    lib_layers = (lib.layers or None) if lib is not None else None
    settings = [(None, None)] if sweep_name is None else [(sweep_name, v) for v in sweep_values]
    configs = []
    for name, value in settings:
        c = cfg if name is None else cfg.with_overrides(**{name: value})
        check_layers(c, facts.get("n_layers"), lib_layers if steered else None)
        configs.append((name, value, c))
    _check_methods(method_list, lib if steered else None, [c for _, _, c in configs])
    from stir_core.io import feasible

    feasible.check_memory(feasible.eval_bytes(n * len(configs), len(method_list),
                                              max(c.max_new_tokens for _, _, c in configs)),
                          f"--n {n} with {len(method_list)} method(s) and {len(configs)} setting(s)", "lower --n")
    if out is not None:  # a second eval into it: the same evaluation (fingerprint) or refused; one writer
        fingerprint = _fingerprint(task=task_obj.name, files=getattr(task_obj, "paths", None), split=split, n=n,
                                   seed=seed, methods=method_list, model=facts.get("model_id"),
                                   library=(lib.manifest.get("content_hash") if lib is not None else None),
                                   settings=[(name, value, asdict(c)) for name, value, c in configs])
        outputs.claim_run_dir(out, "eval", fingerprint=fingerprint, lock=True)
    m = _load(model, device, dtype)
    if lib is not None:
        from stir_core.library.checks import library_model_check

        warnings = list(dict.fromkeys(warnings + library_model_check(lib, m.model_id, m.revision,
                                                                     allow_model_mismatch)))
    engine = Engine(m)
    rows, diags, warn_lines = [], [], []
    for name, value, c in configs:
        sub = None if out is None else (out if name is None else out / f"{name}={value}")
        res = evaluate(engine, task_obj, method_list, lib if steered else None, c, n=n, split=split, seed=seed,
                       batch_size=batch_size, out_dir=sub, warnings=warnings)
        if res is None:  # a rank other than 0 under a launcher: rank 0 has its traces and reports
            continue
        t, dg = res.table(), res.diagnostics_table()
        rows.append(t.assign(**{name: value}) if name else t)
        diags.append(dg.assign(**{name: value}) if name else dg)
        warn_lines += truncation_warnings(res.summary, c.max_new_tokens)
    if not rows:
        return
    import pandas as pd

    table, diag = pd.concat(rows, ignore_index=True), pd.concat(diags, ignore_index=True)
    if sweep_name is not None:  # the swept knob first
        table = table[[sweep_name, *(c for c in table.columns if c != sweep_name)]]
        diag = diag[[sweep_name, *(c for c in diag.columns if c != sweep_name)]]
    typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    typer.echo("\ndiagnostics (rates in [0, 1]; tokens and probe tokens per problem):")
    typer.echo(diag.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    for line in dict.fromkeys(warn_lines):
        _note(line)
    if out is not None and sweep:
        from stir_core.io import atomic

        atomic.write_text(out / "sweep.csv", table.to_csv(index=False))
    if out is not None:
        typer.echo(f"wrote {out}")


@app.command("suite")
@guarded
def suite_cmd(config: Annotated[Path, typer.Argument(help="suite YAML file (datasets × methods; see "
                                                           "configs/suite-paper.yaml)")],
              out: Annotated[Path, typer.Option(help="run directory (a rerun resumes: finished cells are reused)")],
              set_: SetOpt = None, allow_model_mismatch: MismatchOpt = False,
              model: Annotated[str | None, typer.Option("--model", "-m", help="override the file's model "
                                                                               "(hub id, path, 'embedded')")] = None,
              device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """Several tasks × methods from one file: one table in the paper's form and paired statistics per dataset."""
    from stir_core.analysis.diagnostics import truncation_warnings
    from stir_core.analysis.suite import SuiteConfig, SuiteRun, run_suite
    from stir_core.io import outputs
    from stir_core.runtime.engine import Engine

    cfg = SuiteConfig.from_yaml(config)
    model = model or cfg.model or "embedded"
    overrides = _overrides(set_)
    steered = any(m not in ("vanilla", "no_memory") for m in cfg.methods)
    tasks = []
    for ds in cfg.datasets:  # every task's files, then the model's config, then every library: before it loads
        try:
            tasks.append(ds.task.make())
            tasks[-1].load(ds.split, ds.n, cfg.seed)
        except ValueError as err:
            _fail(f"dataset {ds.label}: {err}")
    facts = _facts(model, device, dtype)
    runs = []
    for ds, task in zip(cfg.datasets, tasks, strict=True):
        library = ds.library if ds.library is not None else _default_library(None, model)
        if library is None and steered:
            _fail(f"dataset {ds.label}: steered methods need a library (library: DIR in the suite file)")
        lib, warnings = _library(library, facts, allow_model_mismatch) if steered else (None, [])
        c = _online_config(lib, {**cfg.online, **ds.online, **overrides}, facts, steered)
        runs.append(SuiteRun(label=ds.label, task=task, library=lib, config=c, n=ds.n, split=ds.split,
                             warnings=tuple(warnings)))
    outputs.claim_run_dir(out, "suite")
    engine = Engine(_load(model, device, dtype))
    res = run_suite(engine, runs, cfg.methods, out, baseline=cfg.baseline, seed=cfg.seed,
                    batch_size=cfg.batch_size, log=lambda line: typer.echo(line, err=True))
    if res is None:  # a rank other than 0 under a launcher
        return
    typer.echo((out / "suite.md").read_text())
    for run in runs:
        for line in truncation_warnings(res.results[run.label].summary, run.config.max_new_tokens):
            _note(f"warning: {run.label} / {line.removeprefix('warning: ')}")
    typer.echo(f"wrote {out}")


@app.command()
@guarded
def generate(prompt: Annotated[str, typer.Argument(help="problem text (the task's template is applied)")],
             methods: str = "vanilla,stir", task: str = "planted", library: str | None = None,
             max_new_tokens: Annotated[int | None, typer.Option(
                 help="committed-token budget (default: the library's recommendation, else 128)")] = None,
             set_: SetOpt = None,
             json_out: Annotated[Path | None, typer.Option("--json", help="write texts and traces here")] = None,
             raw: Annotated[bool, typer.Option(help="use the prompt as is (no task template)")] = False,
             allow_model_mismatch: MismatchOpt = False, force: ForceOutOpt = False,
             model: ModelOpt = "embedded", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """Decode one prompt with several methods side by side, gate decisions inline."""
    from stir_core.library.checks import check_prompts_fit, library_model_check
    from stir_core.online import health
    from stir_core.online.methods import METHODS, run_method
    from stir_core.runtime.engine import Engine

    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:
        _fail(f"the prompt is not valid UTF-8 text (undecodable byte at character {err.start})")
    if not prompt.strip():
        _fail("the prompt is empty")
    method_list = [x.strip() for x in methods.split(",") if x.strip()]
    bad = [x for x in method_list if x not in METHODS]
    if bad or not method_list:
        _fail(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}" if bad else "--methods is empty")
    if max_new_tokens is not None:
        _positive(max_new_tokens=max_new_tokens)
    if json_out is not None:  # an existing file: only with --force, and only one `generate --json` wrote
        from stir_core.io import outputs

        outputs.check_file_target(json_out, "generate", force)
    overrides = _overrides(set_)
    text = prompt if raw else _task_prompt(task, prompt)  # a file task's template needs no file
    facts = _facts(model, device, dtype)
    steered = any(x not in ("vanilla", "no_memory") for x in method_list)
    lib, warnings = _library(_default_library(library, model) if steered or library else None, facts,
                             allow_model_mismatch)
    if steered and lib is None:
        _fail("steered methods need --library DIR")
    if max_new_tokens is not None:
        overrides["max_new_tokens"] = max_new_tokens
    elif "max_new_tokens" not in overrides and "max_new_tokens" not in _recommended(lib):
        overrides["max_new_tokens"] = 128
    cfg = _online_config(lib, overrides, facts, steered)
    _check_methods(method_list, lib, [cfg])
    m = _load(model, device, dtype)
    if lib is not None:
        warnings = list(dict.fromkeys(warnings + library_model_check(lib, m.model_id, m.revision,
                                                                     allow_model_mismatch)))
    text = m.format_prompt(text)
    check_prompts_fit(m, [text], cfg.max_new_tokens)
    engine = Engine(m)
    out = {}
    for meth in method_list:
        (trace,) = run_method(engine, [text], meth, lib, cfg)
        trace.warnings.extend(warnings)
        if health.flag([trace]):
            for line in trace.warnings[len(warnings):]:
                _note(f"warning: {meth}: {line}")
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
        from stir_core.io import atomic

        atomic.write_json(json_out, {k: v.to_dict() for k, v in out.items()}, indent=1)
        typer.echo(f"wrote {json_out}")


def _recommended(lib) -> dict:
    from stir_core.config import recommended

    return recommended(lib.manifest) if lib is not None else {}


def _precheck_sizes(path: Path | None) -> None:
    """The config's mining size against its built-in task's capacity, before the pipeline (and torch) is
    imported, so an impossible `n_problems` is refused in a fraction of a second. The full check runs
    again on the parsed config (`_check_mine_config`)."""
    from stir_core.io import feasible
    from stir_core.io.bounded import load_yaml
    from stir_core.tasks import get_task

    data = load_yaml(path) if path is not None and path.is_file() else None
    mine = data.get("mine") if isinstance(data, dict) else None
    n = mine.get("n_problems") if isinstance(mine, dict) else None
    spec = data.get("task") if isinstance(data, dict) else None
    name = spec if isinstance(spec, str) else (spec or {}).get("name") if isinstance(spec, dict) else None
    name = name or (mine.get("task") if isinstance(mine, dict) else None) or "planted"
    split = mine.get("split", "mine") if isinstance(mine, dict) else "mine"
    if isinstance(n, int) and not isinstance(n, bool) and isinstance(name, str) and isinstance(split, str):
        try:
            task = get_task(name)
        except (ValueError, TypeError):  # unknown, or a file task (needs its files): checked later
            return
        feasible.check_problems(task, split, n, "mine.n_problems")


def _build_config(path: Path | None):
    """The build config and its task, checked (files, split disjointness, clean_prefixes) before any model
    loads."""
    _precheck_sizes(path)
    from stir_core.offline.build import BuildConfig

    cfg = BuildConfig.from_yaml(path) if path else BuildConfig.small()
    return cfg, cfg.make_task()


def _task_prompt(task: str, question: str) -> str:
    """The task's prompt around one question; a file task's template needs no file (choice tasks need --raw)."""
    from stir_core.tasks import Example
    from stir_core.tasks.files import FORMATS

    if task in FORMATS:
        if FORMATS[task].kind == "choice":
            _fail(f"task {task!r} needs its options in the prompt: write them yourself and pass --raw")
        return FORMATS[task].template.replace("{question}", question)
    return _task(task, None).prompt(Example(id="cli", question=question, answer=""))


def _check_mine_config(cfg, task, model_name: str, device: str, dtype: str, out: Path | None = None) -> dict:
    """Task, split and layer specs of a mining config, checked against the model's config.json (and the run
    directory's task stamp)."""
    from stir_core.config import check_layers
    from stir_core.io import feasible
    from stir_core.offline.build import check_task_stamp

    feasible.check_problems(task, cfg.mine.split, cfg.mine.n_problems, "mine.n_problems")
    task.load(cfg.mine.split, 1, cfg.mine.seed)
    if out is not None:
        check_task_stamp(out, cfg, task)
    facts = _facts(model_name, device, dtype)
    if facts.get("n_layers") and facts.get("d_model"):
        from stir_core.runtime.model import pick_device

        if pick_device(device).type == "cpu":  # the cache lives in this machine's memory
            rows = cfg.mine.problems_per_batch * cfg.mine.k_rollouts
            feasible.check_memory(
                feasible.kv_cache_bytes(rows, cfg.mine.max_new_tokens, facts["n_layers"], facts["d_model"]),
                f"mining {rows} rollouts at once (mine.problems_per_batch × mine.k_rollouts)",
                "lower mine.problems_per_batch or mine.k_rollouts")
    check_layers(cfg.mine, facts.get("n_layers"), section="mine")
    n_ctx = facts.get("n_ctx")
    if n_ctx is not None and cfg.mine.max_new_tokens >= n_ctx:
        _fail(f"mine.max_new_tokens={cfg.mine.max_new_tokens} does not fit the model's context of {n_ctx} "
              "positions (prompt included)")
    return facts


@app.command()
@guarded
def mine(out: Annotated[Path, typer.Option(help="run directory (resumes from its checkpoint)")],
         config: Annotated[Path | None, typer.Option(help="YAML build config (its [mine] section)")] = None,
         restart: Annotated[bool, typer.Option(help="discard the run's mining checkpoint first")] = False,
         force: Annotated[bool, typer.Option(help="replace <out>/candidates if it holds a library")] = False,
         model: ModelOpt = "embedded", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """Stage I: mine candidate tools into <out>/candidates."""
    cfg, task = _build_config(config)  # first: an impossible size is refused before torch is imported
    from stir_core.io import outputs
    from stir_core.offline.build import mine_run
    from stir_core.offline.checkpoint import check_checkpoint, discard_checkpoint

    model_name = cfg.model or model
    _check_mine_config(cfg, task, model_name, device, dtype, out)
    outputs.claim_run_dir(out, "mine", lock=True)
    outputs.check_library_target(out / "candidates", force or restart)
    if not restart:
        check_checkpoint(out, cfg.mine)
    for line in outputs.report_orphans(out / "candidates"):
        _note(line)
    if restart and discard_checkpoint(out):
        _note(f"discarded the mining checkpoint in {out}")
    m = _load(model_name, device, dtype)
    cands = mine_run(m, cfg, out, task)
    if cands is None:  # a rank other than 0 under a launcher: its shard is written; rank 0 merges
        return
    typer.echo(f"{len(cands)} candidate entries -> {out / 'candidates'}; stats: "
               f"{jsonio.dumps(cands.manifest.get('mining_stats'))}")


@app.command()
@guarded
def select(candidates: Annotated[Path, typer.Argument(help="candidate library directory")],
           out: Annotated[Path, typer.Option(help="library directory to write (new, empty, or --force)")],
           budget: int = 256, method: str = "dpp", lam: float = 0.5, eps: float = 1e-4,
           min_per_control_point: int = 0, seed: int = 0,
           force: Annotated[bool, typer.Option(help="replace a library already at --out")] = False,
           force_mode: Annotated[str, typer.Option(help="reference: DPP on the rest, blind to forced entries; "
                                                   "conditioned (ours): DPP conditioned on them")] = "reference",
           ) -> None:
    """Stage II+III: select a diverse library (quality-DPP, top, random) and index it."""
    from stir_core import config
    from stir_core.config import SelectConfig
    from stir_core.io import outputs
    from stir_core.library.format import ToolLibrary
    from stir_core.offline.build import select_and_index

    cfg = config.from_dict(SelectConfig, {"budget": budget, "method": method, "lam": lam, "eps": eps,
                                          "min_per_control_point": min_per_control_point,
                                          "force_mode": force_mode})
    if seed < 0:
        _fail(f"--seed must be >= 0, got {seed}")
    if Path(out).resolve() == Path(candidates).resolve():
        _fail(f"--out {out}: is the candidates directory itself; write the library elsewhere")
    outputs.check_library_target(out, force)
    for line in outputs.report_orphans(out):
        _note(line)
    cands = ToolLibrary.load(candidates)
    if len(cands) == 0:
        _fail(f"{candidates}: the candidate set is empty; nothing to select")
    lib, report = select_and_index(cands, cfg, seed)
    lib.save(out, overwrite=force)
    typer.echo(jsonio.dumps(report, indent=1))


@app.command()
@guarded
def index(library: Annotated[Path, typer.Argument(help="library directory")],
          center_keys: bool = False) -> None:
    """Stage III: validate a library, build its key index and check that every key retrieves itself."""
    from stir_core.library.format import ToolLibrary
    from stir_core.library.index import ToolIndex

    lib = ToolLibrary.load(library)
    idx = ToolIndex(lib, center_keys=center_keys)
    hits = 0
    for t in lib.tools():
        sims, ent = idx.search(t.key, layer=t.layer, control_point=t.control_point, k=1)
        hits += int(ent[0, 0]) == t.entry or bool(sims[0, 0] >= 1 - 1e-6)
    typer.echo(jsonio.dumps({"entries": len(lib), "groups": {f"L{a}/m{b}": n for (a, b), n in
                                                           sorted(idx.group_sizes().items())},
                           "self_retrieval": f"{hits}/{len(lib)}"}, indent=1))


@app.command()
@guarded
def build(out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/build"),
          config: Annotated[Path | None, typer.Option(help="YAML build config (default: the small one)")] = None,
          restart: Annotated[bool, typer.Option(help="discard the run's mining checkpoint first")] = False,
          force: Annotated[bool, typer.Option(help="replace <out>/library if it already holds one")] = False,
          model: ModelOpt = "embedded", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """mine → select → index from one YAML config; writes <out>/candidates, <out>/library, <out>/build.json."""
    cfg, task = _build_config(config)  # first: an impossible size is refused before torch is imported
    from stir_core.io import outputs
    from stir_core.offline.build import build_library, check_build_output
    from stir_core.offline.checkpoint import check_checkpoint

    model_name = cfg.model or model
    _check_mine_config(cfg, task, model_name, device, dtype, out)
    check_build_output(out, force)
    outputs.lock_run_dir(out)  # one writer at a time
    if not restart:
        check_checkpoint(out, cfg.mine)
    for target in (out / "library", out / "candidates"):
        for line in outputs.report_orphans(target):
            _note(line)
    m = _load(model_name, device, dtype)
    lib_dir = build_library(m, cfg, out, overwrite=force, restart=restart)
    if lib_dir is None:  # a rank other than 0 under a launcher: its shard is written; rank 0 merges
        return
    typer.echo(f"library -> {lib_dir}")
    typer.echo((out / "build.json").read_text())


@app.command()
@guarded
def recommend(library: Annotated[Path, typer.Argument(help="library directory")],
              set_: Annotated[list[str], typer.Option("--set", help="recommended online setting name=value")],
              split: Annotated[str, typer.Option(help="the split the settings were chosen on")] = "val",
              n: Annotated[int, typer.Option(help="problems of that split")] = 300,
              seed: Annotated[int, typer.Option(help="the seed of that split's sample")] = 1,
              task: Annotated[str, typer.Option(help="the task they were chosen on")] = "planted",
              how: Annotated[str, typer.Option(help="how they were chosen, in words")] = "") -> None:
    """Record the online settings a library recommends (chosen on --split); every entry point starts there."""
    from stir_core.library.format import ToolLibrary

    _positive(n=n)
    settings = _overrides(set_)
    if not settings:
        _fail("give at least one --set name=value")
    ToolLibrary.load(library)
    ToolLibrary.set_recommended(library, settings, split=split, n=n, seed=seed, task=task, how=how)
    typer.echo(f"recorded {settings} in {library}")


@app.command("show-config")
@guarded
def show_config(small: bool = True) -> None:
    """Print the default build config as YAML (small: the embedded-model default; else the reference)."""
    import yaml

    from stir_core.offline.build import BuildConfig

    typer.echo(yaml.safe_dump(asdict(BuildConfig.small() if small else BuildConfig()), sort_keys=False))


@app.command("app")
@guarded
def run_app(port: int = 8501, address: str = "127.0.0.1") -> None:
    """Start the Streamlit workbench (local only by default; pass --address 0.0.0.0 to expose it)."""
    if not 0 < port < 65536:
        _fail(f"--port must be in 1..65535, got {port}")
    root = Path(__file__).resolve().parent.parent
    if not (root / "app" / "Home.py").exists():
        _fail(f"the app entry {root / 'app' / 'Home.py'} is missing")
    # app/__main__.py: `streamlit run app/Home.py` that starts loading the model with the server
    raise typer.Exit(subprocess.call([sys.executable, "-m", "app", "--server.port", str(port),
                                      "--server.address", address], cwd=root))


def _fresh_output(path: Path, kind: str, force: bool) -> None:
    """Refuse to replace a file unless asked to, and even then unless `stir <kind>` wrote it (recognised by
    its content, `outputs.owned_file_kind`)."""
    from stir_core.io import outputs

    outputs.check_file_target(path, kind, force)


@app.command("export")
@guarded
def export_cmd(library: Annotated[Path, typer.Argument(help="library directory")],
               out: Annotated[Path, typer.Option(help="file to write")],
               format_: Annotated[str, typer.Option("--format", help="gguf | repeng | steering-vectors")] = "gguf",
               ids: Annotated[str | None, typer.Option(help="comma list of tool ids (default: every entry of --kind)")] = None,
               kind: Annotated[str, typer.Option(help="correction | anchor | all")] = "correction",
               combine: Annotated[str, typer.Option(help="per-layer rule for a group: mean | quality_mean | sum")] = "mean",
               scale: float = 1.0,
               model_hint: Annotated[str | None, typer.Option(help="model type for GGUF (default: from the model's config)")] = None,
               force: ForceOutOpt = False) -> None:
    """Export tools as a llama.cpp / repeng control vector (GGUF) or a steering-vectors file."""
    from stir_core.library.format import LibraryError, ToolLibrary
    from stir_core.library.interop.export import export_library

    _fresh_output(out, "export", force)
    id_list = [x.strip() for x in ids.split(",") if x.strip()] if ids is not None else None
    if id_list is not None and not id_list:
        _fail(f"--ids {clip(ids)} names no tool id; give ids separated by commas, or leave --ids out for every "
              f"entry of --kind")
    try:
        lib = ToolLibrary.load(library)
        path, d = export_library(lib, format_, out, id_list, kind, combine, scale, model_hint)
    except (LibraryError, ValueError) as err:
        _fail(str(err))
    layers = ", ".join(f"{k} (|v|={float((v.astype('float64') ** 2).sum()) ** 0.5:.3g})" for k, v in d.directions.items())
    typer.echo(f"wrote {path}: {len(d.tool_ids)} tool(s) combined by {d.rule}, layers {layers}")


@app.command("import-vector")
@guarded
def import_vector_cmd(file: Annotated[Path, typer.Argument(help="GGUF control vector or safetensors {layer: vector}")],
                      library_out: Annotated[Path, typer.Option(help="library directory to write")],
                      layer: Annotated[int | None, typer.Option(help="layer to take (needed when the file has several)")] = None,
                      scale: float = 1.0, tool_id: Annotated[str | None, typer.Option("--id")] = None,
                      model: ModelOpt = "embedded", force: ForceOutOpt = False) -> None:
    """Make a one-entry library from an external vector, usable by the static baselines (`--methods static`)."""
    from stir_core.io import outputs
    from stir_core.library.format import LibraryError
    from stir_core.library.interop.import_vector import import_vector, model_dims

    outputs.check_library_target(library_out, force)  # only a library of ours, and only with --force
    try:
        lib = import_vector(file, model_dims(model), layer, scale, tool_id)
    except (LibraryError, ValueError) as err:
        _fail(str(err))
    lib.save(library_out, overwrite=force)
    row = lib.table.iloc[0]
    typer.echo(f"wrote {library_out}: {row['id']} at layer {int(row['layer'])}, |v|={float(row['norm']):.4g}; "
               f"try: stir eval --methods vanilla,static --library {library_out} --set layer={int(row['layer'])}")


@app.command()
@guarded
def dashboard(library: Annotated[Path, typer.Argument(help="library directory")],
              tool: Annotated[str, typer.Option(help="tool id")],
              out: Annotated[Path, typer.Option(help="file to write: .html or .json")],
              run: Annotated[Path | None, typer.Option(help="a `stir eval --out` directory (where it fires)")] = None,
              prompt: Annotated[str | None, typer.Option(help="raw prompt for the α-sweep (default: its source problem)")] = None,
              scales: str = "0,0.5,1,2,4", sweep_tokens: int = 48, force: ForceOutOpt = False,
              model: ModelOpt = "embedded", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """One tool's dashboard (provenance, firings, lens, α-sweep, paired outcome, neighbours) as HTML or JSON."""
    if out.suffix not in (".html", ".json"):
        _fail(f"--out must end in .html or .json, got {out.name}")
    _fresh_output(out, "dashboard", force)
    _positive(sweep_tokens=sweep_tokens)
    scale_list = _scales(scales)
    from stir_core.analysis import dashboard as dash  # torch: after the cheap checks
    from stir_core.analysis.dashboard_html import render
    from stir_core.analysis.evaluate import load_results
    from stir_core.io import atomic
    from stir_core.runtime.engine import Engine

    try:
        examples = load_results(run).examples if run is not None else None
    except ValueError as err:
        _fail(f"{err}")
    lib, _ = _library(str(library), _facts(model, device, dtype), False)
    m = _load(model, device, dtype)
    engine = Engine(m)
    try:
        d = dash.build(lib, tool, m, engine, examples, str(run) if run else None,
                       m.format_prompt(prompt) if prompt else None, scale_list, sweep_tokens)
    except ValueError as err:
        _fail(str(err))
    atomic.write_text(out, render(d) if out.suffix == ".html" else dash.to_json(d))
    typer.echo(f"wrote {out}")


@app.command("cases")
@guarded
def cases_cmd(run: Annotated[Path, typer.Argument(help="a `stir eval --out` directory (or a `stir suite` dataset "
                                                       "directory)")],
              method: Annotated[str | None, typer.Option(help="the method studied (default: the first one that "
                                                                  "is not the baseline)")] = None,
              baseline: str = "vanilla",
              top: Annotated[int, typer.Option(help="at most this many fixed and this many broken (0: all)")] = 5,
              md: Annotated[Path | None, typer.Option(help="Markdown file (default RUN/cases-METHOD-vs-BASELINE.md)")] = None,
              html: Annotated[Path | None, typer.Option(help="HTML file (default RUN/cases-METHOD-vs-BASELINE.html)")] = None,
              force: ForceOutOpt = False) -> None:
    """The problems a method fixed and broke against a baseline, with both traces and the gate's decisions."""
    from stir_core.analysis.cases import find_cases, to_html, to_markdown
    from stir_core.analysis.evaluate import load_results
    from stir_core.io import atomic

    if top < 0:
        _fail(f"--top must be >= 0, got {top}")
    if not run.is_dir():
        _fail(f"{run}: not a directory (give a `stir eval --out` directory)")
    res = load_results(run)
    methods = list(dict.fromkeys(res.examples["method"]))
    method = method or next((m for m in methods if m != baseline), None)
    if method is None:
        _fail(f"{run} has only the baseline {baseline!r}; there is nothing to compare")
    stem = f"cases-{method}-vs-{baseline}"
    md, html = md or run / f"{stem}.md", html or run / f"{stem}.html"
    if md.suffix != ".md" or html.suffix != ".html":
        _fail("--md must end in .md and --html in .html")
    _fresh_output(md, "cases", force)
    _fresh_output(html, "cases", force)
    cases = find_cases(res, method, baseline, top or None)
    atomic.write_text(md, to_markdown(cases))
    atomic.write_text(html, to_html(cases))
    typer.echo(f"{method} vs {baseline}: fixed {cases.n_fixed}, broke {cases.n_broken} of {cases.n}; "
               f"wrote {md} and {html}")


def _scales(spec: str) -> tuple[float, ...]:
    """`--scales 0,0.5,1` -> finite α values within the knob schema's range (`config.MAX_SCALE`)."""
    from stir_core.config import MAX_SCALE

    parts = [x.strip() for x in spec.split(",") if x.strip()]
    if not parts:
        _fail(f"--scales {clip(spec)}: give at least one α, e.g. 0,1,2")
    out = []
    for x in parts:
        try:
            v = float(x)
        except ValueError:
            _fail(f"--scales: cannot read {clip(x)} as a number")
        if not -MAX_SCALE <= v <= MAX_SCALE:  # also refuses nan and inf
            _fail(f"--scales: {clip(x)} is not a finite α in [-{MAX_SCALE:g}, {MAX_SCALE:g}]")
        out.append(v)
    return tuple(out)


@app.command("diff")
@guarded
def diff_cmd(a: Annotated[Path, typer.Argument(help="library A")], b: Annotated[Path, typer.Argument(help="library B")],
             out: Annotated[Path, typer.Option(help="directory to write (CSV tables + diff.html)")],
             source: Annotated[str, typer.Option(help="vectors (corrections) | keys (all entries)")] = "vectors",
             min_cos: Annotated[float, typer.Option(help="a matched pair needs at least this cosine")] = 0.5,
             force: ForceOutOpt = False) -> None:
    """Compare two libraries: cosine matrix, matched pairs, and what each has that the other lacks."""
    from stir_core.analysis.diff import diff_libraries, save_diff
    from stir_core.io import outputs
    from stir_core.library.format import LibraryError, ToolLibrary

    outputs.check_output_dir(out, "diff", force)  # a user's directory or a library: refused, even with --force
    try:
        la, lb = ToolLibrary.load(a), ToolLibrary.load(b)
        d = diff_libraries(la, lb, source, min_cos)
    except (LibraryError, ValueError) as err:
        _fail(str(err))
    outputs.claim_output_dir(out, "diff", force)
    save_diff(d, out, a.name, b.name)
    typer.echo(f"{len(d.a_ids)} vs {len(d.b_ids)} {source}: {len(d.pairs)} matched (cos >= {min_cos:g}), "
               f"{len(d.only_a)} only in {a.name}, {len(d.only_b)} only in {b.name} -> {out}")


def _register_toy_commands() -> None:
    try:
        from stir_core.toy import commands
    except ImportError:
        return
    if hasattr(commands, "toy_train"):
        app.command("toy-train")(guarded(commands.toy_train))
    if hasattr(commands, "toy_control"):
        app.command("toy-control")(guarded(commands.toy_control))


_register_toy_commands()


def run() -> None:
    """The `stir` executable: the Typer app, with click's own usage errors (an option value of the wrong
    type, an unknown option or command) as one line too, instead of a usage block and a boxed message."""
    # Typer >= 0.24 raises its vendored click's exceptions, older ones click's: take the classes from the
    # public typer.BadParameter, whichever they are.
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(standalone_mode=False)
    except click_error as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `stir` alone: the help, as before
            err.show()
        else:
            ctx = getattr(err, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.secho(f"error: {' '.join(err.format_message().split())}{hint}", fg="red", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.secho("error: aborted", fg="red", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
