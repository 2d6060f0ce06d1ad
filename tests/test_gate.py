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
              Reason.TIE, Reason.BELOW_TAU, Reason.NONPOSITIVE_ALPHA, Reason.SKIPPED}
    elsewhere = {Reason.STATIC: "test_controller static baselines",
                 Reason.FUSED: "test_arch_matrix::test_every_delimiter_is_a_control_point",
                 Reason.SKIPPED: "test_an_undecided_decision_says_skipped"}
    assert tested | set(elsewhere) == set(Reason)
