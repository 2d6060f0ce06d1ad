"""The gate as data in, decision out: which retrieved tool, if any, to commit at a control point.

Two pure functions, no model and no mutation, so every reason is testable with hand-made numbers:

- `shortlist(candidates, ...)` — from the retrieved entries (sorted by similarity): the null value
  Â_null = max(0, best anchor Â), the top-L corrections to preview, or the reason nothing can be committed;
- `decide(shortlist, gains, ...)` — scores S_i = β·Â_i + ρ·gain_i (gain = mean probe log-prob minus the
  null probe's), the null score S_null = β·Â_null, and the outcome with its `Reason`.

The committed scale is α = k_scale · S_best (STIR_SPEC.md, "Online").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from stir_core.online.trace import Candidate

TIE_EPS = 1e-12  # |Score − Score_null| at or under this is a tie, with previews (stir/online/stir.py:693–694)


class Reason(str, Enum):
    """Why a control point committed a tool or nothing. Values are what traces store."""

    COMMITTED = "committed"
    STATIC = "static"  # a static baseline committed its fixed vector
    NO_ENTRIES = "no_entries"  # fewer retrieved entries than `min_entries`, or none at all
    LOW_SIM = "low_sim"  # the best similarity is under `min_sim`
    NO_CANDIDATES = "no_candidates"  # only anchors were retrieved
    ANCHOR_WON = "anchor_won"  # S_best < S_null
    TIE = "tie"  # S_best == S_null (within TIE_EPS after previews): the null action wins ties
    BELOW_TAU = "below_tau"  # S_best < tau_null
    NONPOSITIVE_ALPHA = "nonpositive_alpha"  # α = k_scale · S_best <= 0
    BEFORE_MIN_M = "min_tool_m"  # m < min_tool_m: no tool and no previews here (the reference's knob)
    FUSED = "fused"  # another delimiter completes in the same token: the gate acts at the last one
    SKIPPED = "skipped"  # `GateDecision`'s default: a decision that was never resolved


@dataclass(frozen=True)
class Shortlist:
    candidates: tuple[Candidate, ...]  # every retrieved entry, best similarity first
    corrections: tuple[Candidate, ...]  # the top-L corrections by Â: what gets previewed
    null_value: float  # Â_null
    reason: Reason | None = None  # set when nothing can be committed whatever the previews say


@dataclass(frozen=True, kw_only=True)
class Outcome:
    reason: Reason
    chosen: Candidate | None  # the committed correction (scored), None for the null action
    alpha: float
    score_null: float
    scored: tuple[Candidate, ...]  # the shortlist's corrections with gain and score filled in


def shortlist(candidates: Sequence[Candidate], top_l: int, min_entries: int = 1,
              min_sim: float | None = None, group_size: int | None = None,
              m: int | None = None, min_tool_m: int | None = None) -> Shortlist:
    """Split retrieved entries into the null value and the corrections worth previewing.

    `min_entries` counts the retrieved hits, or, when `group_size` is given, the library entries of the
    queried (layer, control point) group (the reference's reading). At a control point `m` below
    `min_tool_m` nothing is previewed or committed (stir/online/stir.py:384–398, :976–990).
    """
    cands = tuple(candidates)
    null_value = max(0.0, max((c.value for c in cands if c.kind == "anchor"), default=0.0))
    if min_tool_m is not None and m is not None and m < min_tool_m:
        return Shortlist(cands, (), null_value, Reason.BEFORE_MIN_M)
    # The reference's order: (Â, sim, q) descending, ties kept in retrieval order (a stable sort;
    # stir/online/stir.py:503–504). `candidates` arrive in retrieval order (similarity, then entry).
    corrections = tuple(sorted((c for c in cands if c.kind == "correction"),
                               key=lambda c: (-c.value, -c.sim, -c.quality))[:top_l])
    available = len(cands) if group_size is None else group_size
    if not cands or available < max(1, min_entries):
        return Shortlist(cands, (), null_value, Reason.NO_ENTRIES)
    if min_sim is not None and cands[0].sim < min_sim:
        return Shortlist(cands, (), null_value, Reason.LOW_SIM)
    if not corrections:
        return Shortlist(cands, (), null_value, Reason.NO_CANDIDATES)
    return Shortlist(cands, corrections, null_value)


def decide(short: Shortlist, gains: Mapping[int, float] | None, beta: float, rho: float, tau_null: float,
           k_scale: float, pick: int | None = None, pick_beats_null: bool = True) -> Outcome:
    """The gate. `gains[entry]` are the previews' gains (None: no previews, gain 0).

    `pick` forces the i-th shortlisted correction (the `random_choice` ablation); with
    `pick_beats_null=False` (the reference's ablation) it need not beat the null score, but the tie (with
    previews), τ and α > 0 checks still apply, as in stir/online/stir.py:684–721.
    """
    score_null = beta * short.null_value
    if short.reason is not None:
        return Outcome(reason=short.reason, chosen=None, alpha=0.0, score_null=score_null, scored=())
    scored = tuple(
        replace(c, gain=None if gains is None else gains[c.entry],
                score=beta * c.value + (0.0 if gains is None else rho * gains[c.entry]))
        for c in short.corrections
    )
    # max() keeps the first of equal scores: the reference replaces its best only on a strictly higher one.
    best = scored[pick] if pick is not None else max(scored, key=lambda c: c.score)
    # The reference (stir/online/stir.py): the best stays null unless a score is strictly above Score_null
    # (:679, :533); with previews, a pick within TIE_EPS of Score_null is null (:693–697); then τ (:699–702,
    # :544–547); then α > 0 (:706–721). A `random_choice` pick skips only the first check (:684–691).
    previewed = gains is not None
    if pick is None or pick_beats_null:
        if best.score < score_null:
            return Outcome(reason=Reason.ANCHOR_WON, chosen=None, alpha=0.0, score_null=score_null,
                           scored=scored)
        if best.score == score_null:
            return Outcome(reason=Reason.TIE, chosen=None, alpha=0.0, score_null=score_null, scored=scored)
    if previewed and abs(best.score - score_null) <= TIE_EPS:
        return Outcome(reason=Reason.TIE, chosen=None, alpha=0.0, score_null=score_null, scored=scored)
    if best.score < tau_null:
        return Outcome(reason=Reason.BELOW_TAU, chosen=None, alpha=0.0, score_null=score_null, scored=scored)
    alpha = k_scale * best.score
    if not alpha > 0:
        return Outcome(reason=Reason.NONPOSITIVE_ALPHA, chosen=None, alpha=0.0, score_null=score_null,
                       scored=scored)
    return Outcome(reason=Reason.COMMITTED, chosen=best, alpha=alpha, score_null=score_null, scored=scored)
