"""A `ToolDashboard` as one self-contained HTML file (inline CSS, no scripts, no network)."""

from __future__ import annotations

import itertools
from html import escape

from stir_core.analysis.dashboard import ToolDashboard
from stir_core.analysis.tokens import Span, spans_html

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 6px;
vertical-align:top;text-align:left}th{background:#f4f4f4}.mono,pre{font-family:ui-monospace,monospace}
pre{background:#f7f7f7;padding:6px;white-space:pre-wrap;margin:0}.pos{color:#0a6}.neg{color:#c33}
mark{background:#ffd54f}.note{color:#666;font-style:italic}.kv td:first-child{font-weight:600}
.sweep td{font-family:ui-monospace,monospace;white-space:pre-wrap}
"""


def _v(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    return escape(str(x))


def _show(text: str | None) -> str:
    """Visible whitespace for contexts: delimiters matter."""
    return "—" if text is None else escape(text).replace("\n", "⏎")


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def render(d: ToolDashboard) -> str:
    p = d.provenance
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>STIR tool {escape(d.tool_id)}</title>"
           f"<style>{CSS}</style></head><body>",
           f"<h1>Tool <span class='mono'>{escape(d.tool_id)}</span></h1>",
           f"<p>library <span class='mono'>{_v(d.library.get('path'))}</span> · {d.library.get('entries')} entries"
           f" · model <span class='mono'>{_v(d.library.get('model_id'))}</span> · "
           f"<span class='mono'>{_v((d.library.get('content_hash') or '')[:19])}…</span></p>"]
    out += [f"<p class='note'>{escape(n)}</p>" for n in d.notes]
    out.append("<h2>Provenance</h2>")
    out.append(_table(["field", "value"], [
        ["kind", _v(p.kind)], ["layer", _v(p.layer)], ["control point m", _v(p.control_point)],
        ["task / example", f"{_v(p.task)} / {_v(p.example_id)}"], ["quality q", _v(p.quality)],
        ["norm ‖Δ‖", _v(p.norm)], ["label-shuffled norm", _v(p.shuffled_norm)],
        ["norm / shuffled", _v(p.norm_ratio) + (f" (above {p.ratio_percentile:.0%} of the library's corrections)"
                                                if p.ratio_percentile is not None else "")],
        ["mean reward +/−", f"{_v(p.mean_reward_pos)} / {_v(p.mean_reward_neg)}"]], "kv"))
    if p.problem:
        out.append(f"<p>source problem ({escape(p.problem['split'])}, gold <b>{escape(str(p.problem['answer']))}"
                   f"</b>):</p><pre>{escape(p.problem['prompt'])}</pre>")
    out.append(_table(["side", "rollout", "reward", "prefix up to the control point"], [
        [f"<span class='{c.side}'>{'positive' if c.side == 'pos' else 'negative'}</span>", _v(c.rollout_id),
         _v(c.reward), f"<pre>{_show(c.prefix)}</pre>"] for c in p.contrasts]))
    out.append("<h2>Where it fires</h2>")
    if d.firings is None:
        out.append("<p class='note'>No run given.</p>")
    else:
        out.append(f"<p>{len(d.firings)} retrievals in <span class='mono'>{_v(d.run)}</span>, by similarity</p>")
        out.append(_table(["example", "method", "m", "sim", "gain", "α", "outcome", "context"], [
            [_v(f.example_id), _v(f.method), _v(f.m), _v(f.sim), _v(f.gain),
             _v(f.alpha) if f.committed else "—", _v(f.outcome),
             f"<pre>{_show(f.before)}<mark>│</mark>{_show(f.after)}</pre>"] for f in d.firings[:100]]))
    out.append("<h2>What it changes</h2>")
    if d.lens is not None:
        out.append(_table(["promoted", "logit +", "suppressed", "logit −"], [
            [f"<span class='mono'>{_show(a)}</span>", _v(sa), f"<span class='mono'>{_show(b)}</span>", _v(sb)]
            for (a, sa), (b, sb) in itertools.zip_longest(d.lens.promoted, d.lens.suppressed,
                                                          fillvalue=(None, None))]))
    if d.sweep is not None:
        out.append(f"<p>α-sweep at layer {d.sweep.layer} (positions {escape(d.sweep.positions)}), prompt:</p>"
                   f"<pre>{_show(d.sweep.prompt[-300:])}</pre>")
        cells = []
        for r in d.sweep.rows:
            toks = spans_html([Span(text=t, background="#ffd54f" if diff else "", marked=diff)
                               for t, diff in zip(r.tokens, r.differs, strict=True)], css_class="stir-sweep")
            cells.append([f"α = {r.scale:g}", toks])
        out.append(_table(["scale", "continuation (marked: differs from the first row)"], cells, "sweep"))
    if d.paired is not None:
        q = d.paired
        out.append(f"<p>Paired outcome ({escape(q.method)} vs {escape(q.baseline)}) on the {q.n_committed} problems "
                   f"where it was committed: fixed {len(q.fixed)}, broken {len(q.broken)}, both right "
                   f"{q.both_right}, both wrong {q.both_wrong}.</p>"
                   f"<p>fixed: <span class='mono'>{escape(', '.join(q.fixed)) or '—'}</span><br>"
                   f"broken: <span class='mono'>{escape(', '.join(q.broken)) or '—'}</span></p>")
    if d.effects:
        out.append("<p>The effect of each commit over time: KL(steered ‖ vanilla) of the next-token distribution, "
                   "token by token after the commit (vanilla computed on the steered text; "
                   "<mark>marked</mark>: the top token changed).</p>")
        out.append(_table(["example", "m", "α", "KL after the commit"], [
            [_v(e["example_id"]), _v(e["m"]), _v(e["alpha"]),
             " ".join(f"<mark>{k:.3g}</mark>" if ch else f"{k:.3g}" for k, ch in zip(e["kl"], e["top_changed"],
                                                                                   strict=True))]
            for e in d.effects]))
    out.append("<h2>Neighbours</h2>")
    out.append(_table(["by", "id", "kind", "m", "layer", "cos"], [
        [_v(n.by), f"<span class='mono'>{_v(n.id)}</span>", _v(n.kind), _v(n.m), _v(n.layer), _v(n.cos)]
        for n in d.neighbours]))
    out.append("</body></html>")
    return "\n".join(out)
