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

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stir_core.analysis.outcomes import paired_outcomes

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
class PlaygroundPage:
    """What the Playground draws for one result."""

    traces: list[Trace]
    labels: list[str]
    captions: list[str]  # per column: tokens, interventions, probe tokens, time
    reference: Trace | None  # the vanilla column, which the others are compared with
    steered: list[int]  # columns with gate decisions (they get cards)
    header: str  # how the result came about
    all_tokens: pd.DataFrame  # every column's tokens, with a `column` label


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
    return PlaygroundPage(traces=traces, labels=labels, captions=captions,
                          reference=next((t for t in traces if t.method == "vanilla"), None),
                          steered=[i for i, t in enumerate(traces) if t.decisions], header=header,
                          all_tokens=pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())


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


# --- the Library page ------------------------------------------------------------------------------

DEFAULT_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)


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
          "committed α": f.alpha if f.committed else None, "outcome": f.reason, "before": _one_line(f.before),
          "after": _one_line(f.after), "correct": f.correct} for f in board.firings],
        columns=["example", "method", "m", "sim", "gain", "committed α", "outcome", "before", "after", "correct"],
    )
    lens = None if board.lens is None else pd.DataFrame({
        "promoted": [repr(t) for t, _ in board.lens.promoted], "logit +": [v for _, v in board.lens.promoted],
        "suppressed": [repr(t) for t, _ in board.lens.suppressed], "logit −": [v for _, v in board.lens.suppressed],
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
        return DEFAULT_SCALES, f"Scales must be numbers separated by commas, got {text!r}; using 0, 0.5, 1, 2, 4."
    if not scales or not all(np.isfinite(scales)):
        return DEFAULT_SCALES, f"No finite scales in {text!r}; using 0, 0.5, 1, 2, 4."
    return scales, None
