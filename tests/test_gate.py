"""The gate as a pure function: every reason from hand-made numbers, no model."""

from __future__ import annotations

import pytest

from stir_core.online.gate import Reason, decide, shortlist
from stir_core.online.trace import Candidate


def cand(entry, kind="correction", sim=0.9, q=1.0) -> Candidate:
    return Candidate(entry=entry, tool_id=f"t{entry}", kind=kind, layer=3, sim=sim, quality=q, value=sim * q)


KW = {"beta": 1.0, "rho": 0.1, "tau_null": 0.0, "k_scale": 1.0}


def run(cands, gains=None, top_l=4, min_entries=1, min_sim=None, group_size=None, **kw):
    short = shortlist(cands, top_l, min_entries, min_sim, group_size)
    return short, decide(short, gains, **{**KW, **kw})


def test_committed_picks_the_best_score_and_scales_alpha():
    short, out = run([cand(0, sim=0.9), cand(1, sim=0.8, q=2.0)], gains={0: 0.0, 1: -1.0})
    assert out.reason is Reason.COMMITTED and out.chosen.entry == 1  # 1.6 - 0.1 > 0.9
    assert out.alpha == pytest.approx(1.5) and out.chosen.score == pytest.approx(1.5)
    assert short.corrections[0].score is None, "inputs are not mutated"


def test_gains_break_value_ties():
    _, out = run([cand(0), cand(1)], gains={0: -2.0, 1: 1.0})
    assert out.chosen.entry == 1


def test_no_entries_and_group_size_semantics():
    assert run([])[1].reason is Reason.NO_ENTRIES
    assert run([cand(0)], min_entries=2)[1].reason is Reason.NO_ENTRIES
    assert run([cand(0)], min_entries=2, group_size=5)[1].reason is Reason.COMMITTED


def test_low_sim():
    assert run([cand(0, sim=0.5)], min_sim=0.6)[1].reason is Reason.LOW_SIM
    assert run([cand(0, sim=0.7)], min_sim=0.6)[1].reason is Reason.COMMITTED


def test_no_candidates_when_only_anchors():
    short, out = run([cand(0, "anchor")])
    assert out.reason is Reason.NO_CANDIDATES and short.null_value == pytest.approx(0.9)


def test_anchor_won_and_tie():
    assert run([cand(0, "anchor", q=3.0), cand(1)])[1].reason is Reason.ANCHOR_WON
    _, out = run([cand(0, "anchor", sim=0.9), cand(1, sim=0.9)])
    assert out.reason is Reason.TIE  # the null action wins ties


def test_below_tau_and_nonpositive_alpha():
    assert run([cand(0)], tau_null=5.0)[1].reason is Reason.BELOW_TAU
    assert run([cand(0)], k_scale=0.0)[1].reason is Reason.NONPOSITIVE_ALPHA


def test_top_l_limits_the_shortlist_by_value():
    short, _ = run([cand(i, sim=0.5 + i / 10) for i in range(6)], top_l=2)
    assert [c.entry for c in short.corrections] == [5, 4]


def test_forced_pick_faces_the_null_score_only_when_asked():
    cands = [cand(0, "anchor", q=5.0), cand(1)]
    assert run(cands, pick=0)[1].reason is Reason.ANCHOR_WON
    out = run(cands, pick=0, pick_beats_null=False)[1]
    assert out.reason is Reason.COMMITTED and out.chosen.entry == 1


def test_an_undecided_decision_says_skipped():
    from stir_core.online.trace import GateDecision

    dec = GateDecision(m=1, token_index=0, query_layers=[1])
    assert Reason(dec.reason) is Reason.SKIPPED and not dec.committed


def test_every_reason_has_a_test():
    tested = {Reason.COMMITTED, Reason.NO_ENTRIES, Reason.LOW_SIM, Reason.NO_CANDIDATES, Reason.ANCHOR_WON,
              Reason.TIE, Reason.BELOW_TAU, Reason.NONPOSITIVE_ALPHA, Reason.SKIPPED,
              Reason.BEFORE_MIN_M}
    elsewhere = {Reason.STATIC: "test_controller static baselines",
                 Reason.FUSED: "test_arch_matrix::test_every_delimiter_is_a_control_point",
                 Reason.SKIPPED: "test_an_undecided_decision_says_skipped"}
    assert tested | set(elsewhere) == set(Reason)


def _reference_gate(cands, null_ahat, conf_gain, beta, rho, tau, k_scale, rand_j, previewed):
    """stir/online/stir.py's decision, transcribed rule by rule: the probing path (:652–721) when
    `previewed`, else the no-probing path (:524–562). `cands` are (ahat, sim, q) already in the
    reference's order; `rand_j` is the random pick (None: not the random_choice variant).
    Returns (chosen index or None, scale)."""
    best_score, chosen = beta * null_ahat, None
    for j, (ahat, _, _) in enumerate(cands):
        score = beta * ahat + (rho * conf_gain[j] if previewed else 0.0)
        if score > best_score:
            best_score, chosen = score, j
    if rand_j is not None and cands:
        chosen = rand_j
        best_score = beta * cands[rand_j][0] + (rho * conf_gain[rand_j] if previewed else 0.0)
    if previewed and chosen is not None and abs(best_score - beta * null_ahat) <= 1e-12:
        chosen = None
    if chosen is not None and best_score < tau:
        chosen = None
    if chosen is not None:
        scale = k_scale * best_score
        return (chosen, scale) if scale > 0.0 else (None, 0.0)
    return None, 0.0


@pytest.mark.parametrize("previewed", [True, False])
@pytest.mark.parametrize("random_pick", [True, False])
def test_decisions_equal_the_reference_rule(previewed, random_pick):
    """Random gates (values on a coarse grid so ties happen) decided by `decide` and by the reference's
    rule transcribed above: same committed entry and same α, for STIR and for `random_choice`."""
    import random

    rng = random.Random(7)
    seen = {"committed": 0, "null": 0}
    for _ in range(600):
        n = rng.randint(1, 5)
        grid = [0.25, 0.5, 0.75, 1.0]
        entries = [cand(i, "correction" if rng.random() < 0.8 else "anchor", sim=rng.choice(grid),
                        q=rng.choice([-0.5, 0.5, 1.0, 2.0])) for i in range(n)]
        entries.sort(key=lambda c: (-c.sim, c.entry))  # retrieval order
        kw = {"beta": rng.choice([1.0, 2.0]), "rho": 0.1, "tau_null": rng.choice([0.0, 0.5, 1.5]),
              "k_scale": rng.choice([0.0, 1.0])}
        short = shortlist(entries, 4)
        gains = {c.entry: rng.choice([-1.0, 0.0, 1.0]) for c in short.corrections} if previewed else None
        pick = rng.randrange(len(short.corrections)) if random_pick and short.corrections else None
        out = decide(short, gains, **kw, pick=pick, pick_beats_null=False)
        ref_cands = [(c.value, c.sim, c.quality) for c in short.corrections]
        null_ahat = max([0.0] + [c.value for c in entries if c.kind == "anchor"])
        ref = _reference_gate(ref_cands, null_ahat, [gains[c.entry] for c in short.corrections] if gains else [],
                              kw["beta"], kw["rho"], kw["tau_null"], kw["k_scale"], pick, previewed)
        ours = (None if out.chosen is None else short.corrections.index(
            next(c for c in short.corrections if c.entry == out.chosen.entry)), out.alpha)
        assert ours[0] == ref[0] and ours[1] == pytest.approx(ref[1]), (entries, kw, gains, pick)
        seen["committed" if ours[0] is not None else "null"] += 1
    assert min(seen.values()) > 50  # both outcomes exercised


def test_shortlist_orders_by_value_then_sim_then_quality():
    # equal Â = 0.5: (sim 1.0, q 0.5) before (sim 0.5, q 1.0), whatever the entry numbers
    short, _ = run([cand(0, sim=0.5, q=1.0), cand(1, sim=1.0, q=0.5)])
    assert [c.entry for c in short.corrections] == [1, 0]


def test_random_pick_within_the_tie_epsilon_is_null_after_previews():
    cands = [cand(0, "anchor", sim=0.5), cand(1, sim=0.5)]
    assert run(cands, gains={1: 1e-13}, pick=0, pick_beats_null=False, rho=1.0)[1].reason is Reason.TIE
    assert run(cands, gains={1: 0.3}, pick=0, pick_beats_null=False, tau_null=1.0)[1].reason is Reason.BELOW_TAU
    assert run(cands, gains={1: 0.3}, pick=0, pick_beats_null=False)[1].reason is Reason.COMMITTED


def test_min_tool_m_skips_early_control_points_before_any_preview():
    """The reference's `online.min_tool_m` (stir/config.py:157; stir/online/stir.py:384–398): at mem_m < it,
    no tool and no probing. Our m is the reference's mem_m (control point after the m-th segment)."""
    cands = [cand(0), cand(1, sim=0.8)]
    for m, reason in [(1, Reason.BEFORE_MIN_M), (2, Reason.BEFORE_MIN_M), (3, Reason.COMMITTED), (5, Reason.COMMITTED)]:
        short = shortlist(cands, 4, m=m, min_tool_m=3)
        assert (short.corrections == ()) is (reason is Reason.BEFORE_MIN_M)  # nothing to preview
        assert decide(short, None, **KW).reason is reason
    assert shortlist(cands, 4, m=1, min_tool_m=None).reason is None


def test_min_tool_m_through_the_stir_policy(engine, tiny):
    """End to end: at m < min_tool_m the trace says `min_tool_m` and no preview token is spent; from
    min_tool_m on the gate decides as usual."""
    from helpers.gate_library import PROMPTS, make_library

    from stir_core.online.methods import StirConfig, run_method

    lib = make_library(tiny.d_model, anchors=False, cps=(1, 2, 3, 4, 5, 6))
    traces = run_method(engine, PROMPTS, "stir", lib, StirConfig(delimiter="\n", max_new_tokens=40, min_tool_m=3))
    decisions = [d for t in traces for d in t.decisions if d.reason != "fused"]
    early = [d for d in decisions if d.m < 3]
    late = [d for d in decisions if d.m >= 3]
    assert early and late
    assert all(d.reason == Reason.BEFORE_MIN_M.value and d.probe_tokens == 0 and not d.committed for d in early)
    assert not any(d.reason == Reason.BEFORE_MIN_M.value for d in late)
