"""Tokens as the app shows them: one view-model per generated token (what acted on it, why, how far the
steered distribution is from vanilla's) and the one HTML renderer of token spans (the Playground's columns,
the Library's α-sweep, the tool dashboard's HTML export all draw through `spans_html`).

"Why" is read from the trace's `GateDecision` at a control point: the shortlist with similarities, each
candidate's preview gain and score, Score_null, τ_null, the reason and the committed α. The colour modes
(`COLOR_MODES`) map each token to one number: its log-probability, the committed tool (categorical),
KL(steered ‖ vanilla) of the distribution it was chosen from (`stir_core.analysis.effects`), or the probe gain
of the commit governing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from stir_core.analysis.views import token_interventions
from stir_core.online.trace import GateDecision, Trace, diff_mask

COLOR_MODES = ("tool", "logp", "kl", "gain")
COLOR_MODE_LABELS = {"tool": "committed tool", "logp": "log p", "kl": "KL(steered ‖ vanilla)",
                     "gain": "probe gain"}
REASON_TEXT = {  # `gate.Reason` values, as a sentence
    "committed": "committed: the best correction beat the null action and τ_null",
    "static": "a static baseline: its fixed vector",
    "no_entries": "no entries: fewer retrieved entries than min_entries",
    "low_sim": "low similarity: the best key is under min_sim",
    "no_candidates": "only anchors were retrieved",
    "anchor_won": "anchor won: the best correction's score is under Score_null",
    "tie": "tie with the null action (the null action wins ties)",
    "below_tau": "below τ_null: the best score is under the threshold",
    "nonpositive_alpha": "α = k_scale · score would be ≤ 0",
    "fused": "another delimiter completes in the same token: the gate acts at the last one",
    "skipped": "never decided",
}


def shown(piece: str) -> str:
    """A token's text with its whitespace visible (↵ for a newline, · for a space, ∅ for nothing)."""
    return piece.replace("\n", "↵").replace(" ", "·") or "∅"


def why_lines(d: GateDecision, tau_null: float | None = None) -> list[str]:
    """The decision at one control point, one fact per line: the verdict, Score_null and τ_null, then the
    shortlist (best score first): id, kind, similarity, preview gain, score."""
    verdict = (f"committed {d.chosen} (α = {d.alpha:.3g}, layer {d.layer}, ‖αΔ‖ = {d.added_norm:.3g})"
               if d.committed else "null action")
    lines = [f"control point m={d.m}: {verdict}", f"reason: {REASON_TEXT.get(d.reason, d.reason)}",
             f"Score_null = {d.score_null:.4g} (Â_null = {d.null_value:.4g}) · τ_null = "
             + ("not recorded" if tau_null is None else f"{tau_null:.4g}")]
    ranked = sorted(d.candidates, key=lambda c: (c.score is None, -(c.score or 0.0), -c.sim))
    for c in ranked:
        gain = "—" if c.gain is None else f"{c.gain:+.3g}"
        score = "not previewed" if c.score is None else f"{c.score:.4g}"
        mark = "★ " if c.tool_id == d.chosen else ""
        lines.append(f"{mark}{c.tool_id} ({c.kind}, L{c.layer}): sim {c.sim:.3f} · gain {gain} · score {score}")
    if not d.candidates:
        lines.append("no candidates retrieved")
    return lines


@dataclass(kw_only=True)
class TokenView:
    """One generated token as drawn: text, what acted on it, whether it differs from vanilla, the values
    the colour modes read, and (at a control point) why the gate did what it did."""

    index: int
    text: str
    logprob: float
    segment: int
    is_delimiter: bool
    tool: str | None  # the tool governing this token (None: null action / unsteered)
    alpha: float
    direct: bool  # the vector was added at this very token
    added_norm: float
    m: int | None  # control point of the governing decision
    differs: bool  # differs from the reference (vanilla) at this position
    kl: float | None = None  # KL(steered ‖ vanilla) of the distribution it was chosen from (None: not computed)
    gain: float | None = None  # probe gain of the governing commit (None: no commit / not previewed)
    why: list[str] = field(default_factory=list)  # non-empty at a control point (a decision at this token)

    @property
    def shown(self) -> str:
        return shown(self.text)

    def hover(self) -> list[str]:
        """The hover text, one line each: token, log p, segment, tool/α, KL, differs, then the why."""
        lines = [f"#{self.index} {self.shown}", f"log p = {self.logprob:.3f} · segment {self.segment}"]
        if self.tool is not None:
            how = f"added here, ‖·‖={self.added_norm:.3g}" if self.direct else "in the committed segment"
            lines.append(f"tool {self.tool} (m={self.m}, α={self.alpha:.3g}; {how})")
        if self.kl is not None:
            lines.append(f"KL(steered ‖ vanilla) = {self.kl:.4g}")
        if self.differs:
            lines.append("differs from vanilla")
        return lines + self.why

    def value(self, mode: str) -> float | None:
        """The number `mode` colours this token by (None: no value; "tool" is categorical: None)."""
        if mode not in COLOR_MODES:
            raise ValueError(f"unknown colour mode {mode!r}; use one of {COLOR_MODES}")
        return {"tool": None, "logp": self.logprob, "kl": self.kl, "gain": self.gain}[mode]


def token_views(trace: Trace, reference: Trace | None = None, kl: Sequence[float] | None = None,
                tau_null: float | None = None) -> list[TokenView]:
    """Per generated token of `trace`: its view (`kl`: per token, from `effects.trace_effects`)."""
    ivs = token_interventions(trace)
    diff = (diff_mask([x.token_id for x in reference.tokens], [x.token_id for x in trace.tokens])
            if reference is not None and reference is not trace else [False] * trace.n_tokens)
    if kl is not None and len(kl) != trace.n_tokens:
        raise ValueError(f"kl has {len(kl)} values for {trace.n_tokens} tokens")
    at = {d.token_index: d for d in trace.decisions}
    by_m = {d.m: d for d in trace.decisions}
    out = []
    for i, (tok, iv, d) in enumerate(zip(trace.tokens, ivs, diff, strict=True)):
        gov = by_m.get(iv.m) if iv.m is not None else None
        won = next((c for c in gov.candidates if c.tool_id == gov.chosen), None) if gov is not None else None
        here = at.get(tok.index)
        out.append(TokenView(
            index=tok.index, text=tok.text, logprob=float(tok.logprob), segment=tok.segment,
            is_delimiter=tok.is_delimiter, tool=iv.tool, alpha=iv.alpha, direct=iv.direct,
            added_norm=iv.added_norm, m=iv.m, differs=d, kl=None if kl is None else float(kl[i]),
            gain=None if won is None or won.gain is None else float(won.gain),
            why=why_lines(here, tau_null) if here is not None else []))
    return out


# --- the one HTML renderer of token spans ---------------------------------------------------------------


@dataclass(kw_only=True)
class Span:
    """One token span: text, background colour (CSS, "" for none), marked (differs: pink underline), the
    hover title (lines), and whether a segment boundary (¶) precedes it."""

    text: str
    background: str = ""
    marked: bool = False
    title: list[str] = field(default_factory=list)
    boundary: bool = False
    why: bool = False  # a control point: drawn with a dotted outline so the eye finds the explanations


MARK_COLOR = "#d6336c"


def spans_html(spans: Sequence[Span], css_class: str = "stir-tokens") -> str:
    """Token spans as one HTML block (inline styles only: safe in Streamlit, in a standalone HTML file)."""
    out = [f'<div class="{escape(css_class)}" style="font-family: DejaVu Sans Mono, monospace; '
           'font-size: 0.85rem; line-height: 1.7; white-space: pre-wrap; word-break: break-all;">']
    for s in spans:
        css = []
        if s.background:
            css.append(f"background:{s.background}")
        if s.marked:
            css.append(f"box-shadow:inset 0 -2px 0 {MARK_COLOR}")
        if s.why:
            css.append("outline:1px dotted #495057")
        if s.boundary:
            out.append('<span class="seg" style="color:#868e96" title="segment boundary">¶</span>')
        cls = "tok" + (" diff" if s.marked else "") + (" why" if s.why else "")
        out.append(f'<span class="{cls}" title="{escape(chr(10).join(s.title))}" '
                   f'style="{";".join(css)}">{escape(s.text)}</span>')
    out.append("</div>")
    return "".join(out)
