"""View-models: what each app page draws, computed here so the pages only draw (and the CLI can reuse it).

Trace helpers (`score_matrix`, `token_interventions`), the one builder of a Playground run's
result (`playground_result` / `playground_column`, whether decoded live or opened from evaluation results:
`eval_example_columns`), and one function per page: `playground_page` (with `gate_cards`) and
`evaluate_page`. The Library page's numbers come from `projection`, `lens` and `dashboard` (one tool's
view-model); `tool_tables` flattens a dashboard into the tables the page shows and exports,
`similarity_labels` names the heatmap's rows and `parse_scales` reads the α-sweep's scales; the Build page
only collects a `BuildConfig`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stir_core.analysis.outcomes import paired_outcomes
from stir_core.config import ALPHA_SWEEP_SCALES

# diff_mask lives with the trace records; re-exported here because app/figures.py imports it from views.
from stir_core.online.trace import Trace, diff_mask  # noqa: F401

if TYPE_CHECKING:  # evaluate.py and dashboard.py pull in the engine; the views only read their results
    from stir_core.analysis.dashboard import ToolDashboard
    from stir_core.analysis.evaluate import EvalResult


@dataclass
class ScoreMatrix:
    """Gate scores of a trace: rows are control points, columns candidates (plus the null action).

    z: [n_points, n_columns]; NaN where a candidate was not scored (anchors, or not retrieved there)."""

    row_labels: list[str]  # "m=1 @t12"
    col_labels: list[str]  # "null" then tool ids in first-seen order
    z: np.ndarray
    chosen: list[int | None]  # per row: column of the committed candidate, 0 for null, None when skipped


def score_matrix(trace: Any) -> ScoreMatrix:
    """The tokens × candidates score table of one `Trace` (rows: its gate decisions)."""
    cols: list[str] = ["null"]
    for d in trace.decisions:
        for c in d.candidates:
            if c.score is not None and c.tool_id not in cols:
                cols.append(c.tool_id)
    z = np.full((len(trace.decisions), len(cols)), np.nan)
    rows, chosen = [], []
    for r, d in enumerate(trace.decisions):
        rows.append(f"m={d.m} @t{d.token_index}")
        scored = any(c.score is not None for c in d.candidates)
        if scored:
            z[r, 0] = d.score_null
        for c in d.candidates:
            if c.score is not None:
                z[r, cols.index(c.tool_id)] = c.score
        if d.chosen is not None and d.chosen in cols:
            chosen.append(cols.index(d.chosen))
        else:
            chosen.append(0 if scored else None)
    return ScoreMatrix(rows, cols, z, chosen)


@dataclass(kw_only=True)
class TokenIntervention:
    """What acted on one generated token: the committed tool governing its segment (if any)."""

    tool: str | None  # tag of the committed tool, None under the null action / unsteered
    alpha: float  # α of that commit (0.0 when none)
    direct: bool  # True where the vector was added at this very token (TokenRecord.tool is set)
    added_norm: float  # ‖added vector‖ at this token (0.0 unless direct)
    m: int | None  # control point of the governing decision


def token_interventions(trace: Any) -> list[TokenIntervention]:
    """Per token of a `Trace`: the governing commit. A decision at token t governs tokens t..t+commit_tokens
    (its delimiter, re-run with the vector under `positions=last`, and the segment decoded after it)."""
    out = [
        TokenIntervention(tool=t.tool, alpha=0.0, direct=t.tool is not None, added_norm=float(t.added_norm),
                          m=None) for t in trace.tokens
    ]
    for d in trace.decisions:
        if d.chosen is None:
            continue
        hi = min(len(out) - 1, d.token_index + d.commit_tokens)
        for i in range(max(0, d.token_index), hi + 1):
            rec = out[i]  # a direct add keeps its own tag (e.g. "random~<id>" for the random-vector ablation)
            out[i] = TokenIntervention(tool=rec.tool if rec.direct else d.chosen, alpha=float(d.alpha),
                                       direct=rec.direct, added_norm=rec.added_norm, m=d.m)
    return out


# --- the Playground page ---------------------------------------------------------------------------


def tuned_static(library_path: str | Path | None, best_json: str | Path) -> dict[str, dict[str, Any]]:
    """The static baselines' tuned settings for this library, {method: {"static_scale", "layer"}}, from
    `benchmarks/tune_static.py`'s output (`results/tune_static/best.json`: chosen on `val`, the README's
    `static` 2.0, `static_cp` 3.0, `static_norm` 0.5, layer 3) when that file was tuned on this very
    library directory; {} otherwise (then the schema's default applies)."""
    path = Path(best_json)
    if library_path is None or not path.is_file():
        return {}
    try:
        best = json.loads(path.read_text())
        tuned_on = (path.parents[2] / best["library"]).resolve()  # results/tune_static/ -> the repo
        if tuned_on != Path(library_path).resolve():
            return {}
        return {m: {"static_scale": float(v["static_scale"]), "layer": int(v["layer"])}
                for m, v in best["best"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def playground_column(label: str, method: str, knobs: dict, trace: Trace, wall_s: float | None) -> dict:
    """One column of a Playground result; `wall_s` None when the trace was opened from saved results."""
    return {"label": label, "method": method, "knobs": dict(knobs), "trace": trace.to_dict(), "wall_s": wall_s}


def playground_result(view_json: str, columns: list[dict], total_s: float, notice: str | None = None,
                      source: str | None = None) -> dict:
    """The one shape of a Playground run's result (decoded live, or opened from evaluation results with
    `source` saying where); kept in the session and drawn by `playground_page`."""
    return {"view": view_json, "columns": columns, "total_s": total_s, "notice": notice, "source": source}


def eval_example_columns(examples: pd.DataFrame, example_id: str) -> list[dict]:
    """Playground columns of one evaluated example: each method's recorded trace, labelled ✓/✗."""
    rows = examples[examples["example_id"].astype(str) == str(example_id)]
    if not len(rows):
        raise ValueError(f"no example {example_id!r} in these results")
    return [playground_column(f"{r['method']} ({'✓' if r['correct'] else '✗'})", r["method"], {},
                              Trace.from_json(r["trace_json"]), None) for _, r in rows.iterrows()]


@dataclass
class GateCard:
    """One control point of a trace, as the Playground's card shows it."""

    title: str  # markdown: control point, token, verdict
    caption: str  # the null value/score, probe and commit tokens, the null probe's text
    candidates: pd.DataFrame  # the retrieved entries with their values, gains, scores and probe texts


CARD_COLUMNS = ["tool_id", "kind", "layer", "sim", "value", "gain", "score", "won", "probe_text"]


def gate_cards(trace: Trace, limit: int | None = None) -> list[GateCard]:
    """A card per gate decision of `trace` (the first `limit`)."""
    cand = trace.candidates_frame()
    cards = []
    for d in trace.decisions[:limit]:
        verdict = (f"committed **{d.chosen}** (α={d.alpha:.3g}, layer {d.layer}, ‖αΔ‖={d.added_norm:.3g})"
                   if d.committed else f"null action — *{d.reason}*")
        caption = (f"Â_null = {d.null_value:.4g} · Score_null = {d.score_null:.4g} · probe tokens "
                   f"{d.probe_tokens} · commit tokens {d.commit_tokens}"
                   + (f" · null probe: {d.null_probe_text!r}" if d.null_probe_text is not None else ""))
        rows = cand[(cand["m"] == d.m) & (cand["token_index"] == d.token_index)][CARD_COLUMNS]
        cards.append(GateCard(f"**Control point m={d.m}** · token {d.token_index} · {verdict}", caption,
                              rows.rename(columns={"value": "Â", "gain": "probe gain"}).reset_index(drop=True)))
    return cards


@dataclass(kw_only=True)
class Gold:
    """A prompt a task can grade: the task, its problem and gold answer."""

    task: str
    example: Any  # stir_core.tasks.Example
    answer: str

    def verdict(self, completion: str) -> tuple[bool, str | None]:
        """(correct, the answer extracted from `completion`) by the task's own rule."""
        from stir_core.tasks import get_task

        task = get_task(self.task)
        return bool(task.score(completion, self.example)), task.extract(completion)


# The formats the built-in tasks can grade from the prompt alone: `mod10 3+4-2+6-5` (planted: single digits
# mod 10) and `calc 23+45-12` (plain: two-digit chains). Their running totals are recomputed here by the
# tasks' own example builders.
_GRADABLE = (("planted", re.compile(r"^mod10 (\d)((?:[+-]\d)+)\s*$")),
             ("plain", re.compile(r"^calc (\d+)((?:[+-]\d+)+)\s*$")))
EMBEDDED_FORMATS = ("The embedded model knows two formats only: `mod10 3+4-2+6-5` (4-5 single-digit steps mod 10) "
                    "and `calc 23+45-12` (two-digit chained arithmetic), each followed by a newline; any other "
                    "text is outside what it was trained on, so its output (e.g. 5555…) means nothing.")


def grade_prompt(prompt: str) -> Gold | None:
    """The gold answer of a raw prompt in a built-in task's format (see `_GRADABLE`), else None."""
    from stir_core.tasks import get_task

    for name, pattern in _GRADABLE:
        m = pattern.match(prompt)
        if not m:
            continue
        start, ops = int(m.group(1)), [(op[0], int(op[1:])) for op in re.findall(r"[+-]\d+", m.group(2))]
        try:
            ex = get_task(name).make_example(start, ops)
        except ValueError:  # outside the task's generator (e.g. two trigger digits): the arithmetic still holds
            from stir_core.tasks import Example

            total = start
            for sign, d in ops:
                total = total + d if sign == "+" else total - d
            ex = Example(id="prompt", question=m.group(1) + m.group(2),
                         answer=str(total % 10 if name == "planted" else total))
        return Gold(task=name, example=ex, answer=str(ex.answer))
    return None


@dataclass(kw_only=True)
class PlaygroundPage:
    """What the Playground draws for one result."""

    traces: list[Trace]
    labels: list[str]
    captions: list[str]  # per column: tokens, interventions, probe tokens, time
    reference: Trace | None  # the vanilla column, which the others are compared with
    steered: list[int]  # columns with gate decisions (they get cards)
    header: str  # how the result came about
    all_tokens: pd.DataFrame  # every column's tokens, with a `column` label
    gold: Gold | None = None  # the prompt's gold answer when a task can grade it
    graded: list[str] = field(default_factory=list)  # per column: "✓ 7" / "✗ 5 (gold 7)"; empty: no gold


def playground_page(result: dict) -> PlaygroundPage:
    """The Playground's view-model of a `playground_result`."""
    traces = [Trace.from_dict(c["trace"]) for c in result["columns"]]
    labels = [c["label"] for c in result["columns"]]
    captions = []
    for t, c in zip(traces, result["columns"], strict=True):
        timing = "" if c["wall_s"] is None else f" · {c['wall_s']:.2f} s"
        captions.append(f"{t.n_tokens} tokens · {t.interventions} interventions · {t.probe_tokens} probe "
                        f"tokens{timing}")
    header = (f"Traces opened from {result['source']} (as recorded there)." if result.get("source") else
              f"{len(traces)} columns in {result['total_s']:.2f} s (repeated runs come from the cache).")
    frames = [t.tokens_frame().assign(column=labels[i]) for i, t in enumerate(traces)]
    try:
        gold = grade_prompt(json.loads(result["view"]).get("prompt", ""))
    except (ValueError, TypeError, AttributeError):
        gold = None
    graded = []
    for t in traces if gold is not None else []:
        ok, got = gold.verdict(t.completion)
        graded.append(f"✓ {got}" if ok else f"✗ {got if got is not None else 'no answer'} (gold {gold.answer})")
    return PlaygroundPage(traces=traces, labels=labels, captions=captions,
                          reference=next((t for t in traces if t.method == "vanilla"), None),
                          steered=[i for i, t in enumerate(traces) if t.decisions], header=header,
                          all_tokens=pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(),
                          gold=gold, graded=graded)


# --- the Evaluate page -----------------------------------------------------------------------------

OUTCOMES = ("all", "win", "loss", "tie")
DETAIL_COLUMNS = ["example_id", "n_tokens", "probe_tokens", "interventions", "answer", "gold"]


@dataclass
class EvaluatePage:
    """What the Evaluate page draws for one results directory."""

    header: str  # task, split, n, model, library
    summary: pd.DataFrame  # `EvalResult.table()`
    methods: list[str]  # the methods compared with vanilla (empty without a vanilla run)
    examples: pd.DataFrame  # per example: outcome vs vanilla (filtered) and the method's details


def evaluate_page(res: EvalResult, method: str | None = None, outcome: str = "all") -> EvaluatePage:
    """The Evaluate page's view-model: the summary table, and the examples of `method` (default: the first
    compared with vanilla) whose outcome vs vanilla is `outcome` ("all" | "win" | "loss" | "tie")."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; use one of {OUTCOMES}")
    cfg, ex = res.config, res.examples
    header = (f"task `{cfg.get('task')}` · split `{cfg.get('split')}` · n={cfg.get('n')} · model "
              f"`{cfg.get('model')}` · library `{cfg.get('library')}`")
    if cfg.get("partial"):  # a cancelled or interrupted run: what finished, per method
        done = ", ".join(f"{m} {int(s.get('n', 0))}/{cfg.get('n')}" for m, s in res.summary.items())
        header += f" · **partial** (stopped early; finished: {done or 'nothing'})"
    if "vanilla" not in set(ex["method"]):
        return EvaluatePage(header, res.table(), [], ex.drop(columns=["trace_json"], errors="ignore"))
    outcomes = paired_outcomes(ex, "vanilla")
    methods = sorted(set(outcomes["method"]))
    method = method if method in methods else (methods[0] if methods else None)
    view = outcomes[outcomes["method"] == method] if method else outcomes
    if outcome != "all":
        view = view[view["outcome"] == outcome]
    detail = ex[ex["method"] == method][DETAIL_COLUMNS] if method else ex.iloc[0:0][DETAIL_COLUMNS]
    return EvaluatePage(header, res.table(), methods, view.merge(detail, on="example_id", how="left"))


# slices of an evaluation: the task's own labels, the tool that fired, whether the gate committed
SLICES = ("mode", "steps", "tool", "committed")


def _labels(cfg: dict, ids: Sequence[str]) -> pd.DataFrame:
    """The task's own labels of the evaluated problems (reloaded by task, split, n and seed): `mode` (the
    planted failure mode, "none" without one) and `steps` (operations in the chain); absent labels are None."""
    from stir_core.tasks import get_task

    out = pd.DataFrame({"example_id": list(ids), "mode": None, "steps": None})
    try:
        examples = get_task(str(cfg.get("task"))).load(str(cfg.get("split")), int(cfg.get("n")), int(cfg.get("seed")))
    except (ValueError, TypeError, KeyError, OSError):
        return out
    meta = {ex.id: ex.meta or {} for ex in examples}
    out["mode"] = [(meta.get(i, {}).get("mode") or "none") if "mode" in meta.get(i, {}) else None for i in ids]
    out["steps"] = [len(meta[i]["ops"]) if "ops" in meta.get(i, {}) else None for i in ids]
    return out


def slice_table(res: EvalResult, by: str, method: str | None = None) -> pd.DataFrame:
    """Accuracy per slice of the evaluated problems, one column per method, with `method`'s wins/losses vs
    vanilla on that slice. `by`: "mode" / "steps" (the task's labels), "tool" (a tool `method` committed on
    the problem; a problem counts once per tool, "(none)" without a commit) or "committed" (whether
    `method` committed anything). `method` defaults to the first steered method."""
    if by not in SLICES:
        raise ValueError(f"unknown slice {by!r}; use one of {SLICES}")
    ex = res.examples.assign(example_id=res.examples["example_id"].astype(str))
    methods = list(dict.fromkeys(ex["method"]))
    steered = [m for m in methods if m != "vanilla"]
    method = method if method in steered else (steered[0] if steered else methods[0])
    ids = list(dict.fromkeys(ex["example_id"]))
    if by in ("mode", "steps"):
        keys = _labels(res.config, ids).rename(columns={by: "slice"})[["example_id", "slice"]]
    else:
        rows = []
        for _, r in ex[ex["method"] == method].iterrows():
            tools = sorted({d["chosen"] for d in json.loads(r["trace_json"]).get("decisions", []) if d.get("chosen")}) \
                if "trace_json" in r and isinstance(r["trace_json"], str) else []
            if by == "committed":
                rows.append({"example_id": r["example_id"], "slice": "committed" if tools else "not committed"})
            else:
                rows += [{"example_id": r["example_id"], "slice": t} for t in (tools or ["(none)"])]
        keys = pd.DataFrame(rows, columns=["example_id", "slice"])
    keys = keys.assign(slice=keys["slice"].astype(str))
    wide = ex.pivot_table(index="example_id", columns="method", values="correct", aggfunc="first")
    merged = keys.merge(wide.reset_index(), on="example_id", how="inner")
    out = []
    for key, g in merged.groupby("slice", sort=True):
        row: dict[str, Any] = {"slice": key, "n": len(g)}
        for m in methods:
            row[f"acc {m}"] = float(g[m].astype(bool).mean()) if m in g else None
        if "vanilla" in g and method in g and method != "vanilla":
            b, o = g["vanilla"].astype(bool), g[method].astype(bool)
            row[f"{method} wins"], row[f"{method} losses"] = int((o & ~b).sum()), int((~o & b).sum())
        out.append(row)
    return pd.DataFrame(out)


# --- the Library page ------------------------------------------------------------------------------

DEFAULT_SCALES = ALPHA_SWEEP_SCALES  # the α-sweep's scales: defined once, in stir_core.config


def format_scales(scales: Sequence[float]) -> str:
    """Scales as the α-sweep's text box shows them: "0, 0.5, 1, 2, 4"."""
    return ", ".join(f"{s:g}" for s in scales)


@dataclass(kw_only=True)
class ToolTables:
    """The tables the Library page shows (and exports) for one tool's dashboard."""

    metadata: pd.DataFrame  # the entry's library row: field, value (as text)
    contrasts: pd.DataFrame  # side, rollout, reward, prefix (newlines as ⏎)
    firings: pd.DataFrame | None  # one row per retrieval in the picked run; None: no run picked
    lens: pd.DataFrame | None  # promoted / suppressed tokens and their logits; None: no model
    neighbours: pd.DataFrame  # by, id, kind, m, layer, cos


def _one_line(text: str | None) -> str | None:
    return None if text is None else text.replace("\n", "⏎")


def tool_tables(board: ToolDashboard, entry: pd.Series) -> ToolTables:
    """Flatten a tool's dashboard (and its library row `entry`) into the Library page's tables."""
    metadata = pd.DataFrame({"field": list(entry.index), "value": [str(v) for v in entry.to_numpy()]})
    contrasts = pd.DataFrame(
        [{"side": c.side, "rollout": c.rollout_id, "reward": c.reward, "prefix": _one_line(c.prefix)}
         for c in board.provenance.contrasts],
        columns=["side", "rollout", "reward", "prefix"],
    )
    firings = None if board.firings is None else pd.DataFrame(
        [{"example": f.example_id, "method": f.method, "m": f.m, "sim": f.sim, "gain": f.gain,
          "committed α": f.alpha if f.committed else None, "outcome": f.outcome, "before": _one_line(f.before),
          "after": _one_line(f.after), "correct": f.correct} for f in board.firings],
        columns=["example", "method", "m", "sim", "gain", "committed α", "outcome", "before", "after", "correct"],
    )
    lens = None
    if board.lens is not None:  # the two lists can differ in length (only positive / only negative logits)
        n = max(len(board.lens.promoted), len(board.lens.suppressed))
        pro = board.lens.promoted + [(None, None)] * (n - len(board.lens.promoted))
        sup = board.lens.suppressed + [(None, None)] * (n - len(board.lens.suppressed))
        lens = pd.DataFrame({
            "promoted": [None if t is None else repr(t) for t, _ in pro], "logit +": [v for _, v in pro],
            "suppressed": [None if t is None else repr(t) for t, _ in sup], "logit −": [v for _, v in sup],
        })
    neighbours = pd.DataFrame([asdict(n) for n in board.neighbours], columns=["by", "id", "kind", "m", "layer", "cos"])
    return ToolTables(metadata=metadata, contrasts=contrasts, firings=firings, lens=lens,
                      neighbours=neighbours)


def similarity_labels(table: pd.DataFrame, rows: Sequence[int]) -> list[str]:
    """The similarity heatmap's row names: `id (m<control point>, L<layer>)` of the library's rows `rows`."""
    return [f"{table['id'].iat[j]} (m{int(table['control_point'].iat[j])}, L{int(table['layer'].iat[j])})"
            for j in rows]


def parse_scales(text: str) -> tuple[tuple[float, ...], str | None]:
    """The α-sweep's scales from "0, 0.5, 1" (commas or semicolons): (scales, None), or (DEFAULT_SCALES,
    a warning) when the text is not a list of numbers or is empty."""
    try:
        scales = tuple(float(x) for x in text.replace(";", ",").split(",") if x.strip())
    except ValueError:
        return DEFAULT_SCALES, (f"Scales must be numbers separated by commas, got {text!r}; using "
                                f"{format_scales(DEFAULT_SCALES)}.")
    if not scales or not all(np.isfinite(scales)):
        return DEFAULT_SCALES, f"No finite scales in {text!r}; using {format_scales(DEFAULT_SCALES)}."
    return scales, None
