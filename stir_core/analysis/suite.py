"""`stir suite`: several tasks × methods from one YAML file, one table in the paper's form.

The reference's `run.py suite` (sznnzs/LLM-Latent-Action, `run.py:119-330`) runs each dataset's pipeline in
its own process and concatenates the per-dataset `main_results_single.csv` rows (`_aggregate_suite`,
:119-189). Here the suite evaluates (it does not mine: build each library with `stir build` and name it per
dataset) and aggregates in the paper's form: one row per method, accuracy and mean committed tokens per
dataset, and their unweighted means over datasets (the paper's "Avg." columns), plus the paired comparison
of every method with a baseline per dataset (`outcomes.mcnemar`: exact McNemar on the discordant pairs).

The suite file (see `configs/suite-paper.yaml`):

    model: Qwen/Qwen2.5-3B-Instruct   # null: the embedded testbed model
    methods: [vanilla, stir]
    baseline: vanilla                 # the paired comparison's reference method (must be in methods)
    n: 500                            # per dataset unless a dataset says otherwise
    seed: 123
    split: eval
    batch_size: 64
    online: {k_scale: 0.75}           # StirConfig knobs for every dataset
    datasets:
      - label: MATH-500               # column name (default: the task's name); unique
        task: {name: math500, files: {eval: data/math500/test.jsonl}}   # as a build config's task section
        library: runs/math500/library # needed by steered methods
        online: {max_new_tokens: 2048} # this dataset's knobs over the suite's
        n: 500

Knobs: defaults → the dataset's library's recommended settings → the suite's `online` → the dataset's
`online` → `--set`.

Layout of the output directory (a run directory, `io/outputs.py`):

    <out>/<label>/cells/<method>/   one `evaluate` per (dataset, method); `done.json` marks it finished with
                                    the fingerprint of what produced it (`shard_eval.fingerprint`)
    <out>/<label>/                  the dataset's methods merged: an ordinary eval directory (summary.json,
                                    examples.jsonl) that `stir cases` and the app's Evaluate page open
    <out>/suite.md, suite.csv, suite_long.csv, paired.csv, suite.json

Resuming: a rerun skips every finished cell whose fingerprint matches (a finished cell written by another
setting is refused, naming it); an unfinished cell is evaluated again, and under a launcher (torchrun,
accelerate) `evaluate` shards it across processes and reuses its batch checkpoints, so a killed job loses
only the batches in flight.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stir_core.analysis import evaluate as ev
from stir_core.analysis.outcomes import mcnemar
from stir_core.analysis.shard_eval import fingerprint
from stir_core.io import atomic, jsonio
from stir_core.library.format import ToolLibrary
from stir_core.offline.build import BuildConfig, TaskSpec
from stir_core.online.methods import StirConfig
from stir_core.runtime.engine import Engine
from stir_core.tasks import Task

TOP_KEYS = ("model", "methods", "baseline", "n", "seed", "split", "batch_size", "online", "datasets")
DATASET_KEYS = ("label", "task", "library", "n", "split", "online")
UNSTEERED = ("vanilla", "no_memory")  # methods that never read a library
CELL_DONE = "done.json"


class SuiteError(ValueError):
    """A suite file or output directory we refuse; the message names the field or path."""


@dataclass(frozen=True, kw_only=True)
class SuiteDataset:
    """One dataset of a suite file."""

    label: str
    task: TaskSpec
    library: str | None = None
    n: int
    split: str
    online: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SuiteConfig:
    """A suite file, checked (types, names, methods); tasks and libraries are checked by the caller."""

    model: str | None
    methods: tuple[str, ...]
    baseline: str | None
    seed: int
    batch_size: int
    online: dict
    datasets: tuple[SuiteDataset, ...]

    @classmethod
    def from_yaml(cls, path: str | Path) -> SuiteConfig:
        p = Path(path)
        if not p.is_file():
            raise SuiteError(f"suite file {p}: not found" + (" (it is a directory)" if p.is_dir() else ""))
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise SuiteError(f"suite file {p}: not valid YAML text ({' '.join(str(err).split())})") from None
        try:
            return cls.from_dict(data)
        except SuiteError as err:
            raise SuiteError(f"suite file {p}: {err}") from None

    @classmethod
    def from_dict(cls, d: Any) -> SuiteConfig:
        from stir_core import config as schema
        from stir_core.online.methods import METHODS

        if not isinstance(d, dict):
            raise SuiteError(f"expected a mapping with {', '.join(TOP_KEYS)}; got {type(d).__name__}")
        _unknown(d, TOP_KEYS, "")
        model = d.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise SuiteError(f"model must be a hub id or a path (or null for the embedded model), got {model!r}")
        methods = d.get("methods")
        if isinstance(methods, str):
            methods = [m.strip() for m in methods.split(",") if m.strip()]
        if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
            raise SuiteError("methods must be a non-empty list of method names")
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise SuiteError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
        if len(set(methods)) != len(methods):
            raise SuiteError(f"methods lists a method twice: {methods}")
        baseline = d.get("baseline", "vanilla" if "vanilla" in methods else None)
        if baseline is not None and baseline not in methods:
            raise SuiteError(f"baseline {baseline!r} is not one of the methods {methods}")
        n, seed, batch = _int(d, "n", 200, 1), _int(d, "seed", 123, 0), _int(d, "batch_size", 64, 1)
        split = _text(d, "split", "eval")
        online = _mapping(d, "online")
        schema.from_dict(StirConfig, online, "online")  # a typo fails before any model loads
        raw = d.get("datasets")
        if not isinstance(raw, list) or not raw:
            raise SuiteError("datasets must be a non-empty list")
        datasets = []
        for i, item in enumerate(raw):
            where = f"datasets[{i}]"
            if not isinstance(item, dict):
                raise SuiteError(f"{where}: expected a mapping with {', '.join(DATASET_KEYS)}")
            _unknown(item, DATASET_KEYS, where + ".")
            if "task" not in item:
                raise SuiteError(f"{where}: task is missing (a task name or a build config's task section)")
            try:
                spec = BuildConfig.from_dict({"task": item["task"]}).task
            except ValueError as err:
                raise SuiteError(f"{where}: {str(err).removeprefix('build config ')}") from None
            label = item.get("label", spec.name)
            if not isinstance(label, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", label):
                raise SuiteError(f"{where}: label {label!r} must be a name of letters, digits and ._+- "
                                 "(it names a column and a directory)")
            ds_online = _mapping(item, "online", where + ".")
            schema.from_dict(StirConfig, {**online, **ds_online}, f"{where}.online")
            library = item.get("library")
            if library is not None and (not isinstance(library, str) or not library.strip()):
                raise SuiteError(f"{where}: library must be a directory path, got {library!r}")
            datasets.append(SuiteDataset(label=label, task=spec, library=library, n=_int(item, "n", n, 1, where + "."),
                                         split=_text(item, "split", split, where + "."), online=ds_online))
        labels = [x.label for x in datasets]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise SuiteError(f"dataset label(s) {dup} appear twice; give each dataset its own label")
        return cls(model=model, methods=tuple(methods), baseline=baseline, seed=seed, batch_size=batch,
                   online=online, datasets=tuple(datasets))


def _unknown(d: dict, known: Sequence[str], where: str) -> None:
    extra = sorted(set(d) - set(known))
    if extra:
        raise SuiteError(f"unknown key(s) {[where + k for k in extra]}; known: {', '.join(known)}")


def _int(d: dict, key: str, default: int, least: int, where: str = "") -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise SuiteError(f"{where}{key} must be an integer >= {least}, got {v!r}")
    return v


def _text(d: dict, key: str, default: str, where: str = "") -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or not v.strip():
        raise SuiteError(f"{where}{key} must be text, got {v!r}")
    return v


def _mapping(d: dict, key: str, where: str = "") -> dict:
    v = d.get(key) or {}
    if not isinstance(v, dict):
        raise SuiteError(f"{where}{key} must be a mapping of knob: value, got {type(v).__name__}")
    return dict(v)


@dataclass(frozen=True, kw_only=True)
class SuiteRun:
    """One dataset ready to run: its task (files checked), library (validated for the model) and knobs."""

    label: str
    task: Task
    library: ToolLibrary | None
    config: StirConfig
    n: int
    split: str
    warnings: tuple[str, ...] = ()  # e.g. a library mined on another model (allowed), recorded in the traces


@dataclass(frozen=True, kw_only=True)
class SuiteResult:
    table: pd.DataFrame  # the paper's form: one row per method, "<label> acc" / "<label> tokens", then avg
    long: pd.DataFrame  # one row per (dataset, method): accuracy, tokens, diagnostics
    paired: pd.DataFrame  # one row per (dataset, method ≠ baseline): wins, losses, p_value, deltas
    results: dict[str, ev.EvalResult]  # per dataset label, methods merged


def run_suite(engine: Engine, runs: Sequence[SuiteRun], methods: Sequence[str], out_dir: str | Path, *,
              baseline: str | None = "vanilla", seed: int = 123, batch_size: int = 64, show_progress: bool = True,
              log: Callable[[str], None] = print) -> SuiteResult | None:
    """Evaluate every (dataset, method) cell not already finished under `out_dir`, then aggregate.

    Returns None on the ranks other than 0 under a launcher (rank 0 has the traces and writes the tables)."""
    out = Path(out_dir)
    fps = {}  # every finished cell checked before anything is decoded: a conflicting one fails the run now
    for run in runs:
        examples = run.task.load(run.split, run.n, seed)
        for method in methods:
            lib = None if method in UNSTEERED else run.library
            fp = fingerprint(engine, examples, method, lib, run.config, batch_size, run.task.name, run.split, seed)
            fps[run.label, method] = (fp, _finished(out / run.label / "cells" / method, fp))
    results: dict[str, ev.EvalResult] = {}
    for run in runs:
        cells: dict[str, ev.EvalResult] = {}
        for method in methods:
            lib = None if method in UNSTEERED else run.library
            cell = out / run.label / "cells" / method
            fp, finished = fps[run.label, method]
            if finished:
                log(f"suite: {run.label} / {method}: finished earlier, reused ({cell})")
                cells[method] = ev.load_results(cell)
                continue
            log(f"suite: {run.label} / {method}: evaluating")
            res = ev.evaluate(engine, run.task, [method], lib, run.config, n=run.n, split=run.split, seed=seed,
                              batch_size=batch_size, out_dir=cell, show_progress=show_progress,
                              warnings=run.warnings)
            if res is None:  # not rank 0: its share went to rank 0
                continue
            atomic.write_json(cell / CELL_DONE, {"fingerprint": fp, "label": run.label, "method": method})
            cells[method] = res
        if len(cells) == len(methods):
            results[run.label] = merge(cells, methods)
            ev.save_results(results[run.label], out / run.label)
    if len(results) < len(runs):
        return None
    table, long, paired = aggregate(results, methods, baseline)
    res = SuiteResult(table=table, long=long, paired=paired, results=results)
    save_suite(res, out, baseline)
    return res


def _finished(cell: Path, fp: str) -> bool:
    done = cell / CELL_DONE
    if not done.is_file():
        return False
    if json.loads(done.read_text()).get("fingerprint") != fp:
        raise SuiteError(f"{cell}: finished by another setting (task, problems, method, knobs, model, library "
                         "or batch size differ); use another --out, or delete that directory to redo it")
    return (cell / "summary.json").is_file()


def merge(cells: dict[str, ev.EvalResult], methods: Sequence[str]) -> ev.EvalResult:
    """One dataset's single-method results as one eval result (as `evaluate` would write for all methods)."""
    summary = {m: dict(cells[m].summary[m]) for m in methods}
    if "vanilla" in summary:  # the eval format's comparison, as `evaluate` adds it
        for m in methods:
            if m != "vanilla":
                summary[m]["vs_vanilla"] = mcnemar(*_paired(cells["vanilla"], cells[m]))
    first = cells[methods[0]].config
    libs = [cells[m].config.get("library") for m in methods if cells[m].config.get("library")]
    config = {**first, "methods": list(methods), "library": libs[0] if libs else None}
    config.pop("partial", None)
    return ev.EvalResult(summary, pd.concat([cells[m].examples for m in methods], ignore_index=True), config)


def _paired(base: ev.EvalResult, other: ev.EvalResult) -> tuple[list[bool], list[bool]]:
    """Correctness of both on the same problems, aligned by example id."""
    a = dict(zip(base.examples["example_id"].astype(str), base.examples["correct"].astype(bool), strict=True))
    b = dict(zip(other.examples["example_id"].astype(str), other.examples["correct"].astype(bool), strict=True))
    if set(a) != set(b):
        raise SuiteError("paired comparison: the two methods were run on different problems")
    ids = sorted(a)
    return [a[i] for i in ids], [b[i] for i in ids]


def aggregate(results: dict[str, ev.EvalResult], methods: Sequence[str],
              baseline: str | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(paper table, long table, paired table) from each dataset's merged result."""
    long_rows, paired_rows = [], []
    for label, res in results.items():
        for m in methods:
            s = res.summary[m]
            long_rows.append({"dataset": label, "method": m, "n": s["n"], "accuracy": s["accuracy"],
                              "mean_tokens": s["mean_tokens"], "mean_total_tokens": s["mean_total_tokens"],
                              "interventions_per_problem": s["interventions_per_problem"],
                              **(s.get("diagnostics") or {})})
        if baseline is None:
            continue
        bm = _per_method(res, baseline)
        for m in methods:
            if m == baseline:
                continue
            om = _per_method(res, m)
            stats = mcnemar(*_paired(bm, om))
            paired_rows.append({"dataset": label, "method": m, "baseline": baseline,
                                "accuracy": res.summary[m]["accuracy"],
                                "baseline_accuracy": res.summary[baseline]["accuracy"],
                                "delta_accuracy": res.summary[m]["accuracy"] - res.summary[baseline]["accuracy"],
                                "delta_tokens": res.summary[m]["mean_tokens"] - res.summary[baseline]["mean_tokens"],
                                "wins": stats["wins"], "losses": stats["losses"], "p_value": stats["p_value"]})
    long = pd.DataFrame(long_rows)
    table = pd.DataFrame({"method": list(methods)})
    for label in results:
        sub = long[long["dataset"] == label].set_index("method")
        table[f"{label} acc"] = [float(sub.loc[m, "accuracy"]) for m in methods]
        table[f"{label} tokens"] = [float(sub.loc[m, "mean_tokens"]) for m in methods]
    table["avg acc"] = table[[f"{x} acc" for x in results]].mean(axis=1)
    table["avg tokens"] = table[[f"{x} tokens" for x in results]].mean(axis=1)
    paired_cols = ["dataset", "method", "baseline", "accuracy", "baseline_accuracy", "delta_accuracy",
                   "delta_tokens", "wins", "losses", "p_value"]
    return table, long, pd.DataFrame(paired_rows, columns=paired_cols)


def _per_method(res: ev.EvalResult, method: str) -> ev.EvalResult:
    return ev.EvalResult({method: res.summary[method]}, res.examples[res.examples["method"] == method], res.config)


def markdown(res: SuiteResult, baseline: str | None) -> str:
    """The paper-form table (accuracy in %, tokens rounded) and the paired table, as Markdown."""
    labels = [c.removesuffix(" acc") for c in res.table.columns if c.endswith(" acc") and c != "avg acc"]
    head = ["Method"]
    for x in labels + ["Avg."]:
        head += [f"{x} Acc", f"{x} Tok"]
    lines = ["# Suite results", "", "Accuracy (%) and mean committed tokens per problem; Avg. is the unweighted "
             "mean over datasets.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in res.table.iterrows():
        cells = [str(row["method"])]
        for x in labels + ["avg"]:
            cells += [f"{100 * row[f'{x} acc']:.1f}", f"{row[f'{x} tokens']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if baseline is not None and len(res.paired):
        lines += ["", f"## Paired comparison with {baseline} (exact McNemar on discordant pairs)", "",
                  "| Dataset | Method | Δ acc (pts) | Δ tokens | wins | losses | p |", "|---|---|---|---|---|---|---|"]
        for _, r in res.paired.iterrows():
            lines.append(f"| {r['dataset']} | {r['method']} | {100 * r['delta_accuracy']:+.1f} | "
                         f"{r['delta_tokens']:+,.0f} | {r['wins']} | {r['losses']} | {r['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


def save_suite(res: SuiteResult, out_dir: str | Path, baseline: str | None) -> Path:
    out = Path(out_dir)
    atomic.write_text(out / "suite.csv", res.table.to_csv(index=False))
    atomic.write_text(out / "suite_long.csv", res.long.to_csv(index=False))
    atomic.write_text(out / "paired.csv", res.paired.to_csv(index=False))
    atomic.write_text(out / "suite.md", markdown(res, baseline))
    atomic.write_text(out / "suite.json", jsonio.dumps({"table": res.table.to_dict(orient="records"),
                                                        "paired": res.paired.to_dict(orient="records"),
                                                        "long": res.long.to_dict(orient="records")},
                                                       indent=2, default=str) + "\n")
    return out
