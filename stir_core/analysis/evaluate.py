"""Run methods over a task and compare them: accuracy, tokens, interventions, paired statistics.

Paired comparison vs vanilla uses the exact McNemar test (a two-sided binomial test on the discordant
pairs: wins = steered right where vanilla was wrong, losses = the reverse).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from stir_core import config as config_schema
from stir_core.analysis.diagnostics import diagnose
from stir_core.analysis.outcomes import mcnemar
from stir_core.io import atomic, jsonio
from stir_core.io.bounded import iter_jsonl, read_json
from stir_core.io.versions import versions
from stir_core.library.checks import check_prompts_fit
from stir_core.library.format import ToolLibrary
from stir_core.online import health
from stir_core.online.methods import StirConfig, run_method
from stir_core.online.trace import Trace
from stir_core.runtime import distributed
from stir_core.runtime.engine import Engine
from stir_core.tasks import Task, render_prompt


@dataclass
class EvalResult:
    summary: dict[str, dict]  # method -> metrics
    examples: pd.DataFrame  # one row per (example, method)
    config: dict

    def table(self) -> pd.DataFrame:
        """The one flattening of the summaries (CLI, sweep.csv and the Evaluate page all use it): one row per
        method, in run order, with the comparison vs vanilla as `wins`, `losses`, `p_value` (None for
        vanilla itself and without a vanilla run)."""
        rows = []
        for method, s in self.summary.items():
            vs = s.get("vs_vanilla") if isinstance(s.get("vs_vanilla"), dict) else {}
            rows.append({"method": method, **{k: v for k, v in s.items() if k not in ("vs_vanilla", "diagnostics")},
                         "wins": vs.get("wins"), "losses": vs.get("losses"), "p_value": vs.get("p_value")})
        return pd.DataFrame(rows)

    def diagnostics_table(self) -> pd.DataFrame:
        """One row per method with its diagnostics (`stir_core.analysis.diagnostics`); methods of results
        written before diagnostics existed are left out (an empty frame when none has them)."""
        rows = [{"method": m, **s["diagnostics"]} for m, s in self.summary.items()
                if isinstance(s.get("diagnostics"), dict)]
        return pd.DataFrame(rows)


def summarise(traces: list[Trace], correct: list[bool], wall_s: float, answers: list[str | None] | None = None,
              max_new_tokens: int | None = None, eos_token_id: int | None = None) -> dict:
    """One method's summary; with `answers` and `max_new_tokens`, also its `diagnostics` (a dict)."""
    n = len(traces)
    tok = [t.n_tokens for t in traces]
    probe = [t.probe_tokens for t in traces]
    out = {"accuracy": sum(correct) / n if n else float("nan"), "n": n, "mean_tokens": sum(tok) / n,
           "mean_probe_tokens": sum(probe) / n, "mean_total_tokens": (sum(tok) + sum(probe)) / n,
           "interventions_per_problem": sum(t.interventions for t in traces) / n, "wall_s": wall_s}
    if answers is not None and max_new_tokens is not None:
        out["diagnostics"] = diagnose(traces, answers, max_new_tokens=max_new_tokens,
                                      eos_token_id=eos_token_id).to_dict()
    return out


def evaluate(engine: Engine, task: Task, methods: Sequence[str], library: ToolLibrary | None = None,
             config: StirConfig | None = None, n: int = 200, split: str = "eval", seed: int = 123,
             batch_size: int = 64, out_dir: str | Path | None = None,
             progress: Callable[[int, int, str], None] | None = None, show_progress: bool = True,
             warnings: Sequence[str] = ()) -> EvalResult | None:
    """Every method on the same `n` problems of `split` (greedy, batched); optional outputs under `out_dir`.

    Prompts that do not fit the model's context with `config.max_new_tokens` are refused before decoding.
    With `out_dir`, results are written after each method (config "partial": true until the last), so an
    interrupted or cancelled run keeps what it finished; `progress` may raise to cancel. `warnings` (e.g.
    an allowed model mismatch) are recorded in every trace and in the config. Under a launcher each rank
    decodes whole batches (round-robin) and rank 0 returns the result, equal to one process's (wall times
    apart); the other ranks return None."""
    config = config or StirConfig()
    if not methods:
        raise ValueError("evaluate needs at least one method")
    mined_split = (library.manifest.get("config", {}).get("mine", {}) or {}).get("split") if library else None
    if mined_split is not None and mined_split == split:
        raise ValueError(f"the library was mined on split {split!r}; evaluate on another split")
    examples = task.load(split, n, seed)
    model = engine.model
    prompts = [render_prompt(model, task, ex) for ex in examples]
    check_prompts_fit(model, prompts, config.max_new_tokens, [ex.id for ex in examples])
    cfg = {"task": task.name, "split": split, "n": len(examples), "seed": seed, "methods": list(methods),
           "library": str(library.path) if library is not None and library.path else None,
           "model": model.model_id, "stir": asdict(config), "warnings": list(warnings),
           "versions": versions()}
    rows, summary, correct_by = [], {}, {}

    def record(method: str, traces: list[Trace], wall: float, done_ex: list | None = None) -> None:
        for t in traces:
            t.warnings.extend(warnings)
        done_ex = examples if done_ex is None else done_ex  # all of them, except for a method cut short
        correct = [bool(task.score(t.completion, ex)) for t, ex in zip(traces, done_ex, strict=True)]
        answers = [task.extract(t.completion) for t in traces]
        correct_by[method] = correct
        summary[method] = summarise(traces, correct, wall, answers, config.max_new_tokens, model.eos_token_id)
        if n_bad := health.flag(traces):  # non-finite or exploding activations: said, not hidden
            summary[method]["non_finite_traces"] = n_bad
        for t, ex, ok, answer in zip(traces, done_ex, correct, answers, strict=True):
            rows.append({"example_id": ex.id, "method": method, "correct": ok, "n_tokens": t.n_tokens,
                         "probe_tokens": t.probe_tokens, "interventions": t.interventions,
                         "prompt": t.prompt, "completion": t.completion, "answer": answer,
                         "gold": ex.answer, "trace_json": t.to_json()})

    if (dist := distributed.from_env()) is not None:  # under torchrun / accelerate: batches shared by rank
        from stir_core.analysis.shard_eval import run_sharded

        traced = run_sharded(engine, examples, prompts, methods, library, config, batch_size, dist,
                             progress, show_progress, out_dir, task.name, split, seed)
        if traced is None:  # not rank 0: its traces went to rank 0
            return None
        for method in methods:
            record(method, *traced[method])
    else:
        total = len(methods) * len(examples)
        bar = tqdm(total=total, desc="eval", unit="problem", disable=not show_progress)
        done = 0
        for method in methods:
            t0 = time.perf_counter()
            got: dict[int, Trace] = {}

            def finished(i: int, trace: Trace, method: str = method, got: dict = got) -> None:
                nonlocal done
                got[i] = trace
                done += 1
                bar.update(1)
                if progress:
                    progress(done, total, method)

            try:
                # one continuous run: `batch_size` problems decode at once, a finished one's slot taken by the next
                traces = run_method(engine, prompts, method, library, config, example_ids=[ex.id for ex in examples],
                                    batch=batch_size, on_trace=finished)
            except BaseException:  # cancelled (progress raised) or interrupted: keep the finished problems
                if out_dir is not None and got:
                    keep = sorted(got)
                    record(method, [got[i] for i in keep], time.perf_counter() - t0, [examples[i] for i in keep])
                    save_results(EvalResult(dict(summary), pd.DataFrame(rows), {**cfg, "partial": True}),
                                 out_dir)
                raise
            record(method, traces, time.perf_counter() - t0)
            if out_dir is not None and method != methods[-1]:
                save_results(EvalResult(dict(summary), pd.DataFrame(rows), {**cfg, "partial": True}), out_dir)
        bar.close()
    if "vanilla" in correct_by:
        for method in methods:
            if method != "vanilla":
                summary[method]["vs_vanilla"] = mcnemar(correct_by["vanilla"], correct_by[method])
    result = EvalResult(summary, pd.DataFrame(rows), cfg)
    if out_dir is not None:
        save_results(result, out_dir)
    return result


def save_results(result: EvalResult, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "summary.json", jsonio.dumps({"config": result.config, "methods": result.summary},
                                                         indent=2, default=str) + "\n")
    lines = "\n".join(jsonio.dumps(r, default=str) for r in result.examples.to_dict(orient="records"))
    atomic.write_text(out / "examples.jsonl", lines + "\n")
    atomic.write_text(out / "examples.csv", result.examples.drop(columns=["trace_json"]).to_csv(index=False))
    return out


def load_results(out_dir: str | Path) -> EvalResult:
    out = Path(out_dir)
    if not (out / "summary.json").is_file():
        raise ValueError(f"{out}: no summary.json (not an evaluation directory)")
    s = read_json(out / "summary.json", "summary")  # bounded: a damaged or hostile run names its file
    if not isinstance(s, dict) or not {"methods", "config"} <= set(s):
        raise ValueError(f"{out / 'summary.json'}: not an evaluation summary (no methods/config)")
    rows = [r for _, r in iter_jsonl(out / "examples.jsonl", max_line_bytes=256 << 20, max_bytes=16 << 30)]
    return EvalResult(s["methods"], pd.DataFrame(rows), s["config"])


def parse_sweep(spec: str) -> tuple[str, list]:
    """`k_scale=0.25,0.5,1` -> ("k_scale", [0.25, 0.5, 1.0]): the one knob caster (`stir_core.config`)."""
    return config_schema.parse_values(StirConfig, spec)
