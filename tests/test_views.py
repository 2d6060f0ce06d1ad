"""View-models (stir_core.analysis.views) and the one summary flattening, on hand-made traces and results (no model)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from stir_core.analysis import views
from stir_core.analysis.evaluate import EvalResult, mcnemar
from stir_core.online.trace import Candidate, GateDecision, TokenRecord, Trace


def make_trace(method: str, text: str, committed: bool) -> Trace:
    toks = [TokenRecord(index=i, token_id=10 + i, text=ch, logprob=-0.1 * i,
                        segment=0) for i, ch in enumerate(text)]
    decs = []
    if method != "vanilla":
        cands = [Candidate(entry=0, tool_id="t0", kind="correction", layer=1, sim=0.9, quality=1.0, value=0.9,
                           previewed=True, probe_text="x", probe_logprob=-0.5, gain=0.2, score=0.3),
                 Candidate(entry=1, tool_id="a0", kind="anchor", layer=1, sim=0.5, quality=0.2, value=0.1)]
        decs = [GateDecision(m=1, token_index=0, query_layers=[1], candidates=cands, null_value=0.1,
                             chosen="t0" if committed else None,
                             reason="committed" if committed else "below_tau"),
                GateDecision(m=2, token_index=1, query_layers=[1], candidates=[], reason="no_entries")]
    return Trace(method=method, prompt="p", completion=text, tokens=toks, decisions=decs)


def make_result() -> EvalResult:
    # vanilla right on e0, e1; stir right on e1, e2, e3 -> stir wins e2, e3, loses e0
    right = {"vanilla": [True, True, False, False], "stir": [False, True, True, True]}
    rows = []
    for method, oks in right.items():
        for i, ok in enumerate(oks):
            t = make_trace(method, f"ans{i}", committed=ok)
            rows.append({"example_id": f"e{i}", "method": method, "correct": ok, "n_tokens": t.n_tokens,
                         "probe_tokens": 0, "interventions": t.interventions, "prompt": "p",
                         "completion": t.completion, "answer": str(i), "gold": str(i), "trace_json": t.to_json()})
    summary = {m: {"accuracy": sum(v) / 4, "n": 4, "mean_tokens": 4.0, "mean_probe_tokens": 0.0,
                   "mean_total_tokens": 4.0, "interventions_per_problem": 0.0, "wall_s": 1.0}
               for m, v in right.items()}
    summary["stir"]["vs_vanilla"] = mcnemar(right["vanilla"], right["stir"])
    return EvalResult(summary, pd.DataFrame(rows), {"task": "t", "split": "eval", "n": 4})


def test_eval_table_is_the_one_flattening():
    res = make_result()
    t = res.table()
    assert t["method"].tolist() == ["vanilla", "stir"]
    stir = t.set_index("method").loc["stir"]
    assert (stir["wins"], stir["losses"]) == (2, 1) and stir["p_value"] == pytest.approx(1.0)
    assert stir["accuracy"] == 0.75 and "vs_vanilla" not in t.columns
    van = t.set_index("method").loc["vanilla"]
    assert van["wins"] is None or math.isnan(van["wins"])


def test_evaluate_page_filters_outcomes_like_counting_by_hand():
    res = make_result()
    page = views.evaluate_page(res, "stir", "win")
    assert page.methods == ["stir"] and page.summary.equals(res.table())
    assert page.examples["example_id"].tolist() == ["e2", "e3"]
    assert views.evaluate_page(res, "stir", "loss").examples["example_id"].tolist() == ["e0"]
    assert len(views.evaluate_page(res).examples) == 4  # default: the first method, every outcome
    with pytest.raises(ValueError, match="unknown outcome"):
        views.evaluate_page(res, "stir", "draw")
    no_vanilla = EvalResult(res.summary, res.examples[res.examples["method"] == "stir"], res.config)
    page = views.evaluate_page(no_vanilla)
    assert page.methods == [] and "trace_json" not in page.examples.columns and len(page.examples) == 4


def test_an_opened_example_is_the_same_result_shape_as_a_live_run():
    res = make_result()
    cols = views.eval_example_columns(res.examples, "e2")
    opened = views.playground_result("{}", cols, 0.0, source="runs/x (example e2)")
    live = views.playground_result("{}", [views.playground_column("1. stir", "stir", {}, make_trace("stir", "ans2", True),
                                                                  0.5)], 0.5)
    assert set(opened) == set(live) and set(opened["columns"][0]) == set(live["columns"][0])
    page = views.playground_page(opened)
    assert page.labels == ["vanilla (✗)", "stir (✓)"] and page.reference.method == "vanilla"
    assert [t.completion for t in page.traces] == ["ans2", "ans2"] and page.steered == [1]
    assert "opened from runs/x" in page.header and not any(c[-2:] == " s" for c in page.captions)
    assert page.captions[1].startswith("4 tokens · 1 interventions")
    assert len(page.all_tokens) == 8 and set(page.all_tokens["column"]) == set(page.labels)
    assert views.playground_page(live).captions[0].endswith("· 0.50 s")
    with pytest.raises(ValueError, match="no example 'zz'"):
        views.eval_example_columns(res.examples, "zz")


def test_gate_cards_hold_each_decisions_own_candidates():
    t = make_trace("stir", "abcd", committed=True)
    cards = views.gate_cards(t)
    assert len(cards) == 2 and len(views.gate_cards(t, 1)) == 1
    assert "committed **t0**" in cards[0].title and "null action — *no_entries*" in cards[1].title
    assert cards[0].candidates["tool_id"].tolist() == ["t0", "a0"] and len(cards[1].candidates) == 0
    assert cards[0].candidates["won"].tolist() == [True, False]
    assert "null probe" not in cards[0].caption
