"""Online STIR and its baselines on a tiny random model with constructed libraries."""

from __future__ import annotations

import pytest
import torch
from helpers.gate_library import PROMPTS, make_library

from stir_core.library.format import ToolLibrary
from stir_core.online.gate import Reason
from stir_core.online.methods import StirConfig, build_policy, run_method
from stir_core.online.trace import Trace

CFG = StirConfig(delimiter="\n", max_new_tokens=40)


def reasons(traces: list[Trace]) -> set[str]:
    return {d.reason for t in traces for d in t.decisions}


def test_empty_library_and_null_gate_equal_segmented_vanilla(engine, tiny):
    vanilla = run_method(engine, PROMPTS, "vanilla", None, CFG)
    empty = ToolLibrary.empty(tiny.d_model)
    stir_empty = run_method(engine, PROMPTS, "stir", empty, CFG)
    never = run_method(engine, PROMPTS, "stir", make_library(tiny.d_model), CFG.with_overrides(tau_null=1e9))
    for a, b, c in zip(vanilla, stir_empty, never, strict=True):
        assert [t.token_id for t in a.tokens] == [t.token_id for t in b.tokens] == [t.token_id for t in c.tokens]
    assert reasons(stir_empty) == {"no_entries"}
    assert reasons(never) <= {"below_tau", "anchor_won", "no_entries"} and "below_tau" in reasons(never)


def test_preview_row_equals_separate_decode(engine, tiny):
    lib = make_library(tiny.d_model, anchors=False)
    (trace,) = run_method(engine, ["7-2=45\n9"], "stir", lib, CFG.with_overrides(probe_tokens=5, probe_stop="none"))
    dec = trace.decisions[0]
    cand = dec.candidates[0]
    assert cand.previewed
    prefix = tiny.encode("7-2=45\n9") + [t.token_id for t in trace.tokens[: dec.token_index + 1]]
    # Reference: a fresh uncached greedy decode from the prefix, the vector added at the last prefix position.
    vec = lib.vectors[cand.entry] * CFG.probe_scale
    pos, out, lps = len(prefix) - 1, [], []
    with torch.no_grad():
        for _ in range(5):
            def fn(x, hook):
                x = x.clone()
                x[:, pos] += vec
                return x

            with tiny.bridge.hooks(fwd_hooks=[(f"blocks.{cand.layer}.hook_resid_post", fn)]):
                logits = tiny.bridge(torch.tensor([prefix + out]), return_type="logits")[0, -1].float()
            tok = int(logits.argmax())
            lps.append(float(torch.log_softmax(logits, -1)[tok]))
            out.append(tok)
    assert cand.probe_text == tiny.decode(out)
    assert cand.probe_logprob == pytest.approx(sum(lps) / len(lps), abs=1e-4)
    assert dec.probe_tokens == 5 * (1 + len([c for c in dec.candidates if c.previewed]))


@pytest.mark.parametrize("case,expected", [
    ("committed", "committed"), ("no_entries", "no_entries"), ("low_sim", "low_sim"),
    ("anchor_won", "anchor_won"), ("below_tau", "below_tau"), ("nonpositive_alpha", "nonpositive_alpha"),
    ("tie", "tie"), ("no_candidates", "no_candidates"),
])
def test_every_gate_reason_is_reachable(engine, tiny, case, expected):
    d = tiny.d_model
    lib, cfg = make_library(d, anchors=False), CFG
    if case == "no_entries":
        lib = make_library(d, cps=(99,))
    elif case == "low_sim":
        cfg = cfg.with_overrides(min_sim=1.01)
    elif case == "anchor_won":
        lib = make_library(d, q_corr=0.01, q_anchor=50.0, anchor_same_key=True)
    elif case == "below_tau":
        cfg = cfg.with_overrides(tau_null=1e6)
    elif case == "nonpositive_alpha":
        cfg = cfg.with_overrides(k_scale=0.0)
    elif case == "tie":
        cfg = cfg.with_overrides(beta=0.0, rho=0.0)
    elif case == "no_candidates":
        full = make_library(d)
        lib = full.subset([i for i, k in enumerate(full.table["kind"]) if k == "anchor"])
    traces = run_method(engine, PROMPTS, "stir", lib, cfg)
    assert expected in reasons(traces)
    assert reasons(traces) <= {r.value for r in Reason}  # traces speak the gate's vocabulary only
    for t in traces:
        for dec in t.decisions:
            assert dec.committed == (dec.reason == "committed")
    restored = Trace.from_json(traces[1].to_json())
    assert restored == traces[1]


def test_static_baselines_apply_the_mean_vectors(engine, tiny):
    lib = make_library(tiny.d_model)
    corr = torch.tensor([k == "correction" for k in lib.table["kind"]])
    mean_all = lib.vectors[corr].mean(0)
    cfg = CFG.with_overrides(static_scale=0.5)
    for t in run_method(engine, PROMPTS, "static", lib, cfg):
        for dec in t.decisions:
            assert dec.added_norm == pytest.approx(0.5 * float(mean_all.norm()), rel=1e-5)
            assert t.tokens[dec.token_index].added_norm == pytest.approx(dec.added_norm, rel=1e-5)
    cps = torch.tensor(lib.table["control_point"].to_numpy())
    for t in run_method(engine, PROMPTS, "static_cp", lib, cfg):
        for dec in t.decisions:
            if dec.m > 3:  # no tools mined past control point 3: nothing is added
                assert dec.reason == "no_entries" and not dec.committed
                continue
            want = lib.vectors[corr & (cps == dec.m)].mean(0)
            assert dec.added_norm == pytest.approx(0.5 * float(want.norm()), rel=1e-5)


def test_static_norm_is_the_mean_direction_at_the_median_tool_norm(engine, tiny):
    lib = make_library(tiny.d_model)
    corr = [k == "correction" for k in lib.table["kind"]]
    vecs = [lib.vectors[i].double() for i, c in enumerate(corr) if c]
    mean = sum(vecs) / len(vecs)
    norms = sorted(float(v.norm()) for v in vecs)
    median = norms[(len(norms) - 1) // 2]  # torch's median: the lower middle value for an even count
    cfg = CFG.with_overrides(static_scale=0.5)
    plain = run_method(engine, PROMPTS, "static", lib, cfg)
    normed = run_method(engine, PROMPTS, "static_norm", lib, cfg)
    n = 0
    for tp, tn in zip(plain, normed, strict=True):
        for dec in tn.decisions:
            assert dec.committed and dec.chosen == "static_norm"
            assert dec.added_norm == pytest.approx(0.5 * median, rel=1e-5)
            n += 1
        # same direction as `static`: the first commit (same state in both runs) differs only in length
        if tp.decisions and tn.decisions:
            assert tp.decisions[0].added_norm == pytest.approx(0.5 * float(mean.norm()), rel=1e-5)
    assert n >= 1 and median > float(mean.norm())
    vec = build_policy("static_norm", lib, cfg).vectors[None].double()
    torch.testing.assert_close(vec, mean / mean.norm() * median, rtol=1e-5, atol=1e-6)


def test_steering_uses_the_manifests_hook_point(engine, tiny):
    """A library whose manifest says resid_pre steers at block 2's input, which is block 1's output:
    the same decode as the resid_post library one layer down, and not the resid_post one at layer 2."""
    cfg = CFG.with_overrides(static_scale=0.5)
    pre = make_library(tiny.d_model, layer=2, hook_point="blocks.{layer}.hook_resid_pre")
    post_below = make_library(tiny.d_model, layer=1)
    post_same = make_library(tiny.d_model, layer=2)
    a = run_method(engine, PROMPTS, "static", pre, cfg)
    b = run_method(engine, PROMPTS, "static", post_below, cfg)
    c = run_method(engine, PROMPTS, "static", post_same, cfg)
    assert sum(t.interventions for t in a) > 0, "no control point occurred: the test would check nothing"
    for x, y in zip(a, b, strict=True):
        assert [t.token_id for t in x.tokens] == [t.token_id for t in y.tokens]
        torch.testing.assert_close(torch.tensor([t.logprob for t in x.tokens]),
                                   torch.tensor([t.logprob for t in y.tokens]), atol=1e-4, rtol=0)
    assert [t.logprob for x in a for t in x.tokens] != [t.logprob for x in c for t in x.tokens]


def test_random_vector_matches_the_norm_of_what_stir_would_commit(engine, tiny):
    lib = make_library(tiny.d_model, anchors=False)
    stir = run_method(engine, PROMPTS, "stir", lib, CFG)
    rnd = run_method(engine, PROMPTS, "random_vector", lib, CFG)
    n_checked = 0
    for ts, tr in zip(stir, rnd, strict=True):
        # The first decision sees the same state in both runs, so the same tool wins with the same alpha.
        if ts.decisions and tr.decisions and ts.decisions[0].committed:
            a, b = ts.decisions[0], tr.decisions[0]
            assert a.chosen == b.chosen and a.alpha == pytest.approx(b.alpha)
            assert b.added_norm == pytest.approx(a.added_norm, rel=1e-5)
            assert tr.tokens[b.token_index].tool.startswith("random~")
            n_checked += 1
    assert n_checked >= 1


@pytest.mark.slow
def test_batched_equals_per_problem(engine, tiny):
    lib = make_library(tiny.d_model)
    for method in ("stir", "random_choice", "static_cp"):
        batched = run_method(engine, PROMPTS, method, lib, CFG)
        # Parity must be tested where the policy acted: control points occurred and something committed.
        assert sum(len(t.decisions) for t in batched) >= len(PROMPTS), f"{method}: too few control points"
        assert sum(t.interventions for t in batched) >= 1, f"{method}: nothing committed, nothing compared"
        for p, b in zip(PROMPTS, batched, strict=True):
            (single,) = run_method(engine, [p], method, lib, CFG)
            assert single.completion == b.completion
            assert [d.chosen for d in single.decisions] == [d.chosen for d in b.decisions]


def test_width_mismatch_is_a_clear_error(engine, tiny):
    lib = make_library(tiny.d_model + 1)
    with pytest.raises(ValueError, match="d_model"):
        run_method(engine, PROMPTS, "stir", lib, CFG)
    with pytest.raises(ValueError, match="unknown method"):
        run_method(engine, PROMPTS, "magic", make_library(tiny.d_model), CFG)


def test_forked_previews_equal_reprefilled_previews(engine, tiny):
    lib = make_library(tiny.d_model)
    fork = run_method(engine, PROMPTS[:2], "stir", lib, CFG)
    slow = run_method(engine, PROMPTS[:2], "stir", lib, CFG.with_overrides(preview="reprefill"))
    assert sum(c.previewed for t in fork for d in t.decisions for c in d.candidates) >= 2, \
        "no previews ran: the parity below would compare nothing"
    for a, b in zip(fork, slow, strict=True):
        assert a.completion == b.completion
        for da, db in zip(a.decisions, b.decisions, strict=True):
            assert da.chosen == db.chosen and da.probe_tokens == db.probe_tokens
            for ca, cb in zip(da.candidates, db.candidates, strict=True):
                assert ca.probe_text == cb.probe_text
                if ca.previewed:
                    assert ca.probe_logprob == pytest.approx(cb.probe_logprob, abs=1e-4)


def test_min_entries_counts_the_group_or_the_hits(engine, tiny):
    """Reference: `min_entries` counts the library's entries at the control point; ours counts retrieved hits."""
    lib = make_library(tiny.d_model, n_per=3)  # 6 entries per control point (3 corrections + 3 anchors)
    base = CFG.with_overrides(k_retrieve=2, min_entries=4)
    group = run_method(engine, PROMPTS, "stir", lib, base)
    hits = run_method(engine, PROMPTS, "stir", lib, base.with_overrides(min_entries_count="retrieved"))
    assert any(d.reason != "no_entries" for t in group for d in t.decisions if d.m <= 3)
    assert all(d.reason == "no_entries" for t in hits for d in t.decisions)
