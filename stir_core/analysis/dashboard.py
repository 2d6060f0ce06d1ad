"""The per-tool dashboard: where a tool comes from, where it fires, what it changes, and its neighbours.

Everything here is computed from the library, a saved evaluation run (`stir eval --out`, whose
`examples.jsonl` holds every trace) and, for the logit lens and the α-sweep, the model. The app's Library
page only draws a `ToolDashboard`; `dashboard_html.render` writes the same record as one HTML file and
`to_json` as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from stir_core.analysis.lens import lens_for_model
from stir_core.analysis.projection import cosine_matrix, nearest_neighbors
from stir_core.config import ALPHA_SWEEP_SCALES
from stir_core.io import jsonio
from stir_core.library.format import ToolLibrary
from stir_core.online.trace import Trace, diff_mask
from stir_core.runtime.engine import Engine, Steer
from stir_core.runtime.locks import serialised
from stir_core.runtime.scheduler import generate

SCALES = ALPHA_SWEEP_SCALES  # the α-sweep's scales: defined once, in stir_core.config
CONTEXT_CHARS = (80, 60)  # text shown before (up to and including the delimiter) / after a control point


# --- provenance ---------------------------------------------------------------------------------------


@dataclass
class Contrast:
    """One rollout prefix the tool was mined from (positive: correct and best; negative: incorrect)."""

    side: str  # "pos" | "neg"
    rollout_id: str
    reward: float | None  # None when the library did not store per-rollout rewards
    prefix: str | None  # completion text up to the m-th delimiter; None when not stored


@dataclass(kw_only=True)
class Provenance:
    tool_id: str
    kind: str
    layer: int
    control_point: int
    pair_id: str
    task: str
    example_id: str
    quality: float
    norm: float
    shuffled_norm: float | None  # ‖Δ‖ with the pos/neg labels permuted within the problem
    norm_ratio: float | None  # norm / shuffled_norm
    ratio_percentile: float | None  # share of the library's corrections with a lower ratio
    mean_reward_pos: float | None
    mean_reward_neg: float | None
    contrasts: list[Contrast]
    prefixes_stored: bool
    problem: dict[str, Any] | None = None  # {"split", "id", "prompt", "answer", "solution"} when found


def _json_list(value: Any) -> list | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        out = json.loads(value)
    except json.JSONDecodeError:
        return None
    return out if isinstance(out, list) else None


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def find_example(task_name: str, example_id: str, split_hint: str | None = None) -> dict[str, Any] | None:
    """The task example a tool was mined from (the mining split first, then val and eval), or None.
    The train split is never searched: it is large and never mined."""
    from stir_core.tasks import SPLITS, get_task

    try:
        task = get_task(task_name)
    except Exception:  # noqa: BLE001 - unknown or file-backed task without its data: no source to show
        return None
    for split in [split_hint or "mine"] + [s for s in ("val", "eval") if s != split_hint and s in SPLITS]:
        try:
            exs = task.load(split, None, 0)
        except Exception:  # noqa: BLE001 - a split the task does not have
            continue
        for ex in exs:
            if ex.id == example_id:
                return {"split": split, "id": ex.id, "question": ex.question, "answer": ex.answer,
                        "solution": ex.solution, "prompt": task.prompt(ex)}
    return None


def provenance(lib: ToolLibrary, row: int, with_problem: bool = True) -> Provenance:
    """Where entry `row` comes from: problem, control point, contrasted prefixes with rewards, quality, and
    its norm against the label-shuffled control (ranked among the library's corrections)."""
    t = lib.table
    rec = t.iloc[row]
    pos_ids = _json_list(rec.get("pos_rollouts")) or []
    neg_ids = _json_list(rec.get("neg_rollouts")) or []
    if not pos_ids and not neg_ids:  # older libraries: one list, positives first (n_pos of them)
        ids = _json_list(rec["rollout_ids"]) or []
        pos_ids, neg_ids = ids[: int(rec["n_pos"])], ids[int(rec["n_pos"]):]
    pre = {s: _json_list(rec.get(f"{s}_prefixes")) for s in ("pos", "neg")}
    rew = {s: _json_list(rec.get(f"{s}_rewards")) for s in ("pos", "neg")}
    contrasts = []
    for side, ids in (("pos", pos_ids), ("neg", neg_ids)):
        for i, rid in enumerate(ids):
            p, r = pre[side], rew[side]
            contrasts.append(Contrast(side, str(rid), _num(r[i]) if r and i < len(r) else None,
                                      p[i] if p and i < len(p) else None))
    norm, sh = float(rec["norm"]), _num(rec["shuffled_norm"])
    ratio = norm / sh if sh else None
    pct = None
    if ratio is not None:
        corr = t[(t["kind"] == "correction") & t["shuffled_norm"].notna()]
        with np.errstate(divide="ignore"):  # a zero shuffled norm: the tool is infinitely above its control
            ratios = (corr["norm"] / corr["shuffled_norm"]).to_numpy()
        pct = float((ratios < ratio).mean()) if len(ratios) else None
    split_hint = ((lib.manifest.get("config") or {}).get("mine") or {}).get("split")
    problem = find_example(str(rec["task"]), str(rec["example_id"]), split_hint) \
        if with_problem and rec["task"] else None
    return Provenance(tool_id=str(rec["id"]), kind=str(rec["kind"]), layer=int(rec["layer"]),
                      control_point=int(rec["control_point"]), pair_id=str(rec["pair_id"]),
                      task=str(rec["task"]), example_id=str(rec["example_id"]), quality=float(rec["quality"]),
                      norm=norm, shuffled_norm=sh, norm_ratio=ratio, ratio_percentile=pct,
                      mean_reward_pos=_num(rec["mean_reward_pos"]),
                      mean_reward_neg=_num(rec["mean_reward_neg"]), contrasts=contrasts,
                      prefixes_stored=any(c.prefix is not None for c in contrasts), problem=problem)


# --- where it fires -------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Firing:
    """One control point of a run where the tool was retrieved (a row of "top-activating examples")."""

    example_id: str
    method: str
    m: int
    token_index: int
    sim: float
    value: float
    gain: float | None  # previewed gain (None when not previewed)
    score: float | None
    committed: bool
    alpha: float  # committed α (0 when not committed)
    reason: str  # the decision's outcome at this control point
    before: str  # completion text up to and including the delimiter
    after: str  # text generated next
    correct: bool | None  # the run's verdict on the problem
    winner: str | None = None  # the tool committed at this control point (this one, another, or None: null)

    @property
    def outcome(self) -> str:
        """What happened here, in words: this tool committed (with α), another tool won (named), or the
        null action with the gate's reason."""
        if self.committed:
            return f"committed (α={self.alpha:.3g})"
        if self.winner is not None:
            return f"{self.winner} won"
        return f"null: {self.reason}"


def _traces(examples: pd.DataFrame) -> list[tuple[pd.Series, Trace]]:
    if "trace_json" not in examples.columns:
        raise ValueError("the run has no traces (examples.jsonl without trace_json)")
    return [(r, Trace.from_json(r["trace_json"])) for _, r in examples.iterrows()]


def firings(tool_id: str, examples: pd.DataFrame, methods: list[str] | None = None) -> list[Firing]:
    """Every control point where `tool_id` was among the retrieved candidates, by similarity (best first)."""
    out = []
    for r, tr in _traces(examples):
        if methods is not None and r["method"] not in methods:
            continue
        text = [t.text for t in tr.tokens]
        for d in tr.decisions:
            for c in d.candidates:
                if c.tool_id != tool_id:
                    continue
                before = "".join(text[: d.token_index + 1])[-CONTEXT_CHARS[0]:]
                after = "".join(text[d.token_index + 1:])[: CONTEXT_CHARS[1]]
                won = d.chosen == tool_id
                out.append(Firing(example_id=str(r["example_id"]), method=str(r["method"]), m=d.m,
                                  token_index=d.token_index, sim=c.sim, value=c.value, gain=c.gain,
                                  score=c.score, committed=won, alpha=float(d.alpha) if won else 0.0,
                                  reason=d.reason, before=before, after=after,
                                  correct=None if "correct" not in r else bool(r["correct"]),
                                  winner=d.chosen))
    out.sort(key=lambda f: (-f.sim, f.example_id, f.method, f.m))
    return out


@dataclass(kw_only=True)
class PairedOutcome:
    """Problems where `method` committed the tool, against `baseline` on the same problems."""

    method: str
    baseline: str
    n_committed: int  # problems where the tool was committed at least once
    fixed: list[str]  # baseline wrong, method right
    broken: list[str]  # baseline right, method wrong
    both_right: int
    both_wrong: int


def paired_outcome(tool_id: str, examples: pd.DataFrame, method: str = "stir",
                   baseline: str = "vanilla") -> PairedOutcome | None:
    """None when the run lacks either method."""
    if not {method, baseline} <= set(examples["method"]):
        return None
    base = dict(zip(examples.loc[examples["method"] == baseline, "example_id"].astype(str),
                    examples.loc[examples["method"] == baseline, "correct"].astype(bool), strict=True))
    fixed, broken, right, wrong, n = [], [], 0, 0, 0
    for r, tr in _traces(examples[examples["method"] == method]):
        if not any(d.chosen == tool_id for d in tr.decisions):
            continue
        ex = str(r["example_id"])
        if ex not in base:
            continue
        n += 1
        ok, b = bool(r["correct"]), base[ex]
        if ok and not b:
            fixed.append(ex)
        elif b and not ok:
            broken.append(ex)
        elif ok:
            right += 1
        else:
            wrong += 1
    return PairedOutcome(method=method, baseline=baseline, n_committed=n, fixed=fixed, broken=broken,
                         both_right=right, both_wrong=wrong)


# --- what it changes ------------------------------------------------------------------------------------


@dataclass
class SweepRow:
    scale: float
    text: str
    tokens: list[str]
    differs: list[bool]  # per token: differs from the first row (scale 0: the unsteered continuation)


@dataclass
class AlphaSweep:
    prompt: str
    layer: int
    positions: str
    rows: list[SweepRow]


@serialised  # the engine is not safe for concurrent callers (stir_core/runtime/locks.py)
def sweep_prompt(engine: Engine, prompt: str, m: int, delimiter: str = "\n\n", max_new_tokens: int = 128) -> str:
    """`prompt` (formatted) plus its greedy unsteered completion up to the m-th delimiter: the control point
    where a tool mined at m would act. The prompt alone when the completion has fewer delimiters."""
    text = generate(engine, [prompt], max_new_tokens).texts[0]
    parts = text.split(delimiter)
    if len(parts) <= m:
        return prompt
    return prompt + delimiter.join(parts[:m]) + delimiter


@serialised
@torch.no_grad()
def alpha_sweep(engine: Engine, prompt: str, vector: torch.Tensor, layer: int,
                scales: tuple[float, ...] = SCALES, positions: str = "last", max_new_tokens: int = 48,
                tag: str = "sweep") -> AlphaSweep:
    """Greedy continuations of `prompt` (formatted) with `scale * vector` committed at its end (as a STIR
    commit at a control point: `positions` "last" adds at the last prompt token, "segment" at every
    generated token), one row per scale, in one batched decode. Scale 0 is the unsteered continuation."""
    if not scales:
        raise ValueError("alpha_sweep needs at least one scale")
    steers = [None if s == 0 else Steer(layer, vector, float(s), positions, tag) for s in scales]
    # the prompt prefilled once, one sequence per scale
    res = generate(engine, [prompt], max_new_tokens, capture_at=None, steers=steers, fanout=len(scales))
    ref = res.rows[0].tokens
    rows = [SweepRow(float(s), r.text, list(r.pieces), diff_mask(ref, r.tokens))
            for s, r in zip(scales, res.rows, strict=True)]
    return AlphaSweep(prompt, layer, positions, rows)


@dataclass
class Lens:
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


def lens(model: Any, vector: torch.Tensor, k: int = 10) -> Lens:
    """The `k` tokens the vector promotes most (positive logits only) and suppresses most (negative logits
    only): with a small vocabulary the k smallest logits can include positive ones, which suppress nothing."""
    out = lens_for_model(model, vector, k=k)
    return Lens([(out.texts[i], s) for i, s in out.promoted if s > 0],
                [(out.texts[i], s) for i, s in out.suppressed if s < 0])


# --- neighbours -----------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Neighbour:
    by: str  # "keys" | "vectors"
    id: str
    kind: str
    m: int
    layer: int
    cos: float


SOURCES = ("keys", "vectors")


def source_matrix(lib: ToolLibrary, source: str) -> tuple[torch.Tensor, np.ndarray]:
    """(rows of keys or vectors [n, d_model], their library row indices [n]). Vectors: corrections only
    (anchors have none). The one selection behind neighbours, projections and similarity matrices."""
    if source == "keys":
        return lib.keys, np.arange(len(lib))
    if source == "vectors":
        rows = np.flatnonzero(lib.table["kind"].to_numpy() == "correction")
        return lib.vectors[torch.from_numpy(rows)], rows
    raise ValueError(f"unknown source {source!r}; use one of {SOURCES}")


def similarity(lib: ToolLibrary, source: str, limit: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(cosine matrix [k, k], library rows [k], total rows of the source) of up to `limit` entries of
    `source`, ordered by layer, control point, kind, then quality (best first)."""
    x, rows = source_matrix(lib, source)
    t = lib.table.iloc[rows].assign(_pos=np.arange(len(rows)))
    t = t.sort_values(["layer", "control_point", "kind", "quality"], ascending=[True, True, False, False])
    keep = t["_pos"].to_numpy()[:limit]
    sims = cosine_matrix(x[torch.as_tensor(keep.tolist(), dtype=torch.long)]) if len(keep) else np.zeros((0, 0))
    return sims, rows[keep], len(rows)


def neighbours(lib: ToolLibrary, row: int, k: int = 5) -> list[Neighbour]:
    """Nearest entries by key cosine (all entries) and by vector cosine (corrections; anchors have none)."""
    t = lib.table
    out = []
    for by in SOURCES:
        x, rows = source_matrix(lib, by)
        where = np.flatnonzero(rows == row)
        if not len(where):
            continue
        for j, s in nearest_neighbors(x, int(where[0]), k):
            i = int(rows[j])
            out.append(Neighbour(by=by, id=str(t["id"].iat[i]), kind=str(t["kind"].iat[i]),
                                 m=int(t["control_point"].iat[i]), layer=int(t["layer"].iat[i]),
                                 cos=float(s)))
    return out


# --- the whole record -------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ToolDashboard:
    tool_id: str
    library: dict[str, Any]  # {"path", "content_hash", "model_id", "entries"}
    provenance: Provenance
    neighbours: list[Neighbour]
    lens: Lens | None = None
    run: str | None = None  # where the firings come from (a run directory, or "on demand: ...")
    firings: list[Firing] | None = None
    paired: PairedOutcome | None = None
    sweep: AlphaSweep | None = None
    notes: list[str] = field(default_factory=list)
    # the effect of each commit of this tool over time (effects.CommitEffect as dicts, with example_id,
    # method and the recomputation's logprob_error); None: no run or no model
    effects: list[dict] | None = None


EFFECTS_LIMIT = 8  # commits whose effect the dashboard measures (two forwards each)


def commit_effects(tool_id: str, examples: pd.DataFrame, model: Any, lib: ToolLibrary,
                   limit: int = EFFECTS_LIMIT, scope: str = "segment") -> list[dict]:
    """KL(steered ‖ vanilla) after each commit of `tool_id` in a run's traces (the first `limit`, in the run's
    order), by `effects.trace_effects`; traces whose additions cannot be put back are skipped."""
    from stir_core.analysis.effects import EffectsUnavailable, trace_effects

    out: list[dict] = []
    for r, tr in _traces(examples):
        if len(out) >= limit:
            break
        if not any(d.chosen == tool_id for d in tr.decisions):
            continue
        try:
            eff = trace_effects(model, tr, lib, scope)
        except EffectsUnavailable:
            continue
        for c in eff.commits:
            if c.tool == tool_id and len(out) < limit:
                out.append({"example_id": str(r["example_id"]), "method": str(r["method"]),
                            "logprob_error": eff.logprob_error, **asdict(c)})
    return out


def row_of(lib: ToolLibrary, tool_id: str) -> int:
    ids = lib.table["id"].astype(str).tolist()
    if tool_id not in ids:
        raise ValueError(f"tool id {tool_id!r} is not in the library")
    return ids.index(tool_id)


def build(lib: ToolLibrary, tool_id: str, model: Any = None, engine: Engine | None = None,
          examples: pd.DataFrame | None = None, run: str | None = None, prompt: str | None = None,
          scales: tuple[float, ...] = SCALES, sweep_tokens: int = 48, positions: str = "last",
          method: str = "stir", k: int = 5) -> ToolDashboard:
    """The dashboard of one tool. `model`/`engine` enable the lens and the α-sweep (on `prompt`, formatted;
    default: the tool's source problem decoded up to its control point); `examples` (a run's
    `EvalResult.examples`) enables the firings and the paired outcome."""
    row = row_of(lib, tool_id)
    rec = lib.table.iloc[row]
    d = ToolDashboard(tool_id=tool_id, library={"path": str(lib.path) if lib.path else None,
                                "content_hash": lib.manifest.get("content_hash"),
                                "model_id": lib.manifest.get("model_id"), "entries": len(lib)},
                      provenance=provenance(lib, row), neighbours=neighbours(lib, row, k))
    if not d.provenance.prefixes_stored:
        d.notes.append("This library predates stored prefixes: rollout ids and mean rewards only "
                       "(libraries mined now store every contrasted prefix and its reward).")
    is_corr = rec["kind"] == "correction"
    if model is not None and is_corr:
        d.lens = lens(model, lib.vectors[row])
    if engine is not None and is_corr:
        if prompt is None:
            prob = d.provenance.problem
            if prob is None:
                d.notes.append("No sweep: the source problem was not found; give a prompt.")
            else:
                prompt = sweep_prompt(engine, engine.model.format_prompt(prob["prompt"]), int(rec["control_point"]))
        if prompt is not None:
            d.sweep = alpha_sweep(engine, prompt, lib.vectors[row], int(rec["layer"]), scales, positions,
                                  sweep_tokens, tool_id)
    elif not is_corr:
        d.notes.append("An anchor has no vector: it argues for doing nothing (no lens, no sweep).")
    if examples is not None:
        d.run = run
        d.firings = firings(tool_id, examples)
        d.paired = paired_outcome(tool_id, examples, method)
        if d.paired is None:
            d.notes.append(f"No paired outcome: the run needs both '{method}' and 'vanilla'.")
        if model is not None and is_corr:
            d.effects = commit_effects(tool_id, examples, model, lib)
    return d


def to_dict(d: ToolDashboard) -> dict:
    return jsonio.finite(asdict(d))


def to_json(d: ToolDashboard) -> str:
    """Strict JSON (NaN/inf as null)."""
    return jsonio.dumps(to_dict(d), indent=1)


def run_on_demand(engine: Engine, lib: ToolLibrary, task_name: str, n: int = 32, split: str = "val",
                  seed: int = 0, config: Any = None) -> pd.DataFrame:
    """`vanilla` and `stir` over `n` problems of `split` (greedy, traced): the examples frame of a run."""
    from stir_core.analysis.evaluate import evaluate
    from stir_core.tasks import get_task

    res = evaluate(engine, get_task(task_name), ["vanilla", "stir"], lib, config, n=n, split=split, seed=seed,
                   show_progress=False)
    return res.examples
