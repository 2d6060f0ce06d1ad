"""`stir cases RUN`: the problems a method fixed and broke against a baseline, with both traces and the gate.

The reference (sznnzs/LLM-Latent-Action, `stir/analysis/cases.py:13-118`) lists, per run, the examples STIR
gets right where greedy is wrong ("improves") and the reverse ("regresses"), the first `top_n = 5` of each in
the order of its per-example file, with question, gold, both predictions and both outputs cut at 2,000
characters, as Markdown. We keep its selection and order (problem order, first `top` of each side) and add:
the gate's decisions inline in each trace (a marker after the delimiter token where the decision was taken)
and as a table, whole outputs (no cut by default: the markers may sit anywhere), and an HTML rendering in
which every piece of model or data text is escaped (`html.escape`, as `analysis/dashboard_html.py` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape

import pandas as pd

from stir_core.analysis.evaluate import EvalResult
from stir_core.online.trace import GateDecision, Trace


@dataclass(frozen=True, kw_only=True)
class Side:
    """One method's attempt at one problem."""

    method: str
    correct: bool
    answer: str | None
    trace: Trace


@dataclass(frozen=True, kw_only=True)
class Case:
    example_id: str
    prompt: str
    gold: str
    baseline: Side
    method: Side


@dataclass(frozen=True, kw_only=True)
class Cases:
    method: str
    baseline: str
    n: int  # problems both methods ran
    fixed: list[Case]  # method right, baseline wrong (the first `top`)
    broken: list[Case]  # method wrong, baseline right (the first `top`)
    n_fixed: int  # all of them, before `top`
    n_broken: int
    header: str


def find_cases(res: EvalResult, method: str, baseline: str = "vanilla", top: int | None = 5) -> Cases:
    """The fixed and broken problems of `method` vs `baseline` in `res`, in problem order; `top` None: all."""
    ex = res.examples
    have = list(dict.fromkeys(ex["method"]))
    for m, what in ((method, "method"), (baseline, "baseline")):
        if m not in have:
            raise ValueError(f"{what} {m!r} is not in this run (it has {', '.join(have)})")
    if method == baseline:
        raise ValueError(f"the method and the baseline are both {method!r}; pick two different methods")
    if top is not None and top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    base = {str(r["example_id"]): r for r in ex[ex["method"] == baseline].to_dict(orient="records")}
    fixed, broken = [], []
    n = 0
    for r in ex[ex["method"] == method].to_dict(orient="records"):
        b = base.get(str(r["example_id"]))
        if b is None:
            continue
        n += 1
        if bool(r["correct"]) != bool(b["correct"]):
            (fixed if r["correct"] else broken).append(
                Case(example_id=str(r["example_id"]), prompt=str(r["prompt"]), gold=str(r["gold"]),
                     baseline=_side(b), method=_side(r)))
    cfg = res.config
    header = (f"task {cfg.get('task')} · split {cfg.get('split')} · n={cfg.get('n')} · model {cfg.get('model')} "
              f"· library {cfg.get('library')}")
    return Cases(method=method, baseline=baseline, n=n, fixed=fixed[:top] if top is not None else fixed,
                 broken=broken[:top] if top is not None else broken, n_fixed=len(fixed), n_broken=len(broken),
                 header=header)


def _side(row: dict) -> Side:
    answer = row.get("answer")
    answer = None if answer is None or (isinstance(answer, float) and pd.isna(answer)) else str(answer)
    return Side(method=str(row["method"]), correct=bool(row["correct"]), answer=answer,
                trace=Trace.from_json(row["trace_json"]))


def gate_label(d: GateDecision) -> str:
    """A decision in one line: what was committed (or the null action) and why."""
    if d.committed:
        return f"gate m={d.m}: {d.chosen} ({d.reason}, α={d.alpha:.3g}, layer {d.layer})"
    return f"gate m={d.m}: null ({d.reason})"


def segments(trace: Trace) -> list[tuple[str, GateDecision | None]]:
    """The completion cut after each decision's token: [(text, decision taken right after it or None)].

    Joining the texts gives back the trace's token texts in order; decisions are placed after the token
    `token_index` (the delimiter that closed the segment)."""
    at: dict[int, list[GateDecision]] = {}
    for d in trace.decisions:
        at.setdefault(d.token_index, []).append(d)
    out: list[tuple[str, GateDecision | None]] = []
    buf: list[str] = []
    for tok in trace.tokens:
        buf.append(tok.text)
        for d in at.pop(tok.index, []):
            out.append(("".join(buf), d))
            buf = []
    if buf or not out:
        out.append(("".join(buf), None))
    for idx in sorted(at):  # a decision past the last token (should not happen): shown at the end, not lost
        out += [("", d) for d in at[idx]]
    return out


def _best_score(d: GateDecision) -> float | None:
    scores = [c.score for c in d.candidates if c.score is not None]
    return max(scores) if scores else None


def decision_rows(trace: Trace) -> list[dict]:
    return [{"m": d.m, "token": d.token_index, "decision": d.chosen or "null", "reason": d.reason,
             "alpha": d.alpha, "layer": d.layer, "best_score": _best_score(d), "score_null": d.score_null,
             "probe_tokens": d.probe_tokens} for d in trace.decisions]


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


# --- Markdown --------------------------------------------------------------------------------------------


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so the text cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _md_cell(x: object) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_side(side: Side, label: str) -> list[str]:
    t = side.trace
    text = "".join(seg + (f"⟪{gate_label(d)}⟫" if d is not None else "") for seg, d in segments(t))
    fence = _fence(text)
    answer = "no answer" if side.answer is None else f"`{_md_cell(side.answer)}`"
    lines = [f"**{label} — {side.method}**: answer {answer} · "
             f"{'right' if side.correct else 'wrong'} · {t.n_tokens} tokens, {t.interventions} interventions, "
             f"{t.probe_tokens} probe tokens", "", fence, text, fence, ""]
    rows = decision_rows(t)
    if rows:
        lines += ["| m | token | decision | reason | α | layer | best score | null score | probe tokens |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['m']} | {r['token']} | {_md_cell(r['decision'])} | {r['reason']} | {_num(r['alpha'])} | "
                  f"{r['layer'] if r['layer'] is not None else '—'} | {_num(r['best_score'])} | "
                  f"{_num(r['score_null'])} | {r['probe_tokens']} |" for r in rows]
        lines.append("")
    return lines


def to_markdown(cases: Cases) -> str:
    c = cases
    lines = [f"# Cases: {c.method} vs {c.baseline}", "", c.header, "",
             f"{c.method} fixed {c.n_fixed} and broke {c.n_broken} of {c.n} problems; shown: "
             f"{len(c.fixed)} fixed and {len(c.broken)} broken, in problem order. Gate markers ⟪…⟫ follow the "
             "token after which the gate decided.", ""]
    for title, group in ((f"Fixed: {c.method} right, {c.baseline} wrong", c.fixed),
                         (f"Broken: {c.method} wrong, {c.baseline} right", c.broken)):
        lines += [f"## {title}", ""]
        if not group:
            lines += ["(none)", ""]
        for i, case in enumerate(group, 1):
            fence = _fence(case.prompt)
            lines += [f"### {i}. {_md_cell(case.example_id)}", "", "**Prompt**", "", fence, case.prompt, fence, "",
                      f"**Gold**: `{_md_cell(case.gold)}`", ""]
            lines += _md_side(case.baseline, "baseline") + _md_side(case.method, "method")
    return "\n".join(lines) + "\n"


# --- HTML ------------------------------------------------------------------------------------------------

CSS = ("body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem}"
       "pre{white-space:pre-wrap;background:#f6f6f6;padding:.6rem;border-radius:4px}"
       ".gate{font-size:.8em;padding:0 .3em;border-radius:3px;white-space:nowrap}"
       ".commit{background:#d9f2d9;border:1px solid #4a4}.null{background:#eee;border:1px solid #999}"
       "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px}"
       ".right{color:#060}.wrong{color:#a00}")


def _html_side(side: Side, label: str) -> list[str]:
    t = side.trace
    body = "".join(escape(seg) + (f"<span class='gate {'commit' if d.committed else 'null'}'>"
                                  f"{escape(gate_label(d))}</span>" if d is not None else "")
                   for seg, d in segments(t))
    verdict = "right" if side.correct else "wrong"
    answer = "no answer" if side.answer is None else f"<code>{escape(side.answer)}</code>"
    out = [f"<h4>{escape(label)} — {escape(side.method)}: answer {answer} · "
           f"<span class='{verdict}'>{verdict}</span> · {t.n_tokens} tokens, {t.interventions} interventions, "
           f"{t.probe_tokens} probe tokens</h4>", f"<pre>{body}</pre>"]
    rows = decision_rows(t)
    if rows:
        head = ["m", "token", "decision", "reason", "α", "layer", "best score", "null score", "probe tokens"]
        out.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>")
        for r in rows:
            vals = [r["m"], r["token"], r["decision"], r["reason"], _num(r["alpha"]),
                    "—" if r["layer"] is None else r["layer"], _num(r["best_score"]), _num(r["score_null"]),
                    r["probe_tokens"]]
            out.append("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in vals) + "</tr>")
        out.append("</table>")
    return out


def to_html(cases: Cases) -> str:
    c = cases
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>Cases: {escape(c.method)} vs "
           f"{escape(c.baseline)}</title><style>{CSS}</style></head><body>",
           f"<h1>Cases: {escape(c.method)} vs {escape(c.baseline)}</h1>", f"<p>{escape(c.header)}</p>",
           f"<p>{escape(c.method)} fixed {c.n_fixed} and broke {c.n_broken} of {c.n} problems; shown: "
           f"{len(c.fixed)} fixed and {len(c.broken)} broken, in problem order.</p>"]
    for title, group in ((f"Fixed: {c.method} right, {c.baseline} wrong", c.fixed),
                         (f"Broken: {c.method} wrong, {c.baseline} right", c.broken)):
        out.append(f"<h2>{escape(title)}</h2>")
        if not group:
            out.append("<p>(none)</p>")
        for i, case in enumerate(group, 1):
            out += [f"<h3>{i}. {escape(case.example_id)}</h3>", f"<pre>{escape(case.prompt)}</pre>",
                    f"<p>Gold: <code>{escape(case.gold)}</code></p>"]
            out += _html_side(case.baseline, "baseline") + _html_side(case.method, "method")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
