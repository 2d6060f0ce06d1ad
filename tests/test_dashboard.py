"""The per-tool dashboard against references computed another way: the library table read back, the
trace's own candidate table, the engine's single-row steered decode, and geometry's neighbours."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers.app_library import build_test_library

from stir_core.analysis import dashboard as dash
from stir_core.analysis import outcomes, projection, views
from stir_core.analysis.dashboard_html import render
from stir_core.analysis.evaluate import evaluate
from stir_core.library.format import ToolLibrary
from stir_core.online.methods import StirConfig
from stir_core.online.trace import Trace
from stir_core.runtime.engine import Steer
from stir_core.runtime.scheduler import generate
from stir_core.tasks import Example, register_task


class NewlineTask:
    """Newline-delimited segments; 'correct' when the completion holds a '.' in its first 8 characters."""

    name = "nl-dash"
    delimiter = "\n"

    def load(self, split="eval", n=None, seed=0):
        return [Example(id=f"{split}{i}",
                        question=["3+4=7\n\n", "a\n\n", "5+5\n\n\n", "x\n\n"][i % 4] + str(i), answer="")
                for i in range(n or 8)]

    def prompt(self, ex):
        return ex.question + "\n"

    def extract(self, completion):
        return completion[:8]

    def score(self, completion, ex):
        return "." in completion[:8]


register_task("nl-dash", NewlineTask)


@pytest.fixture(scope="module")
def setup(tiny, tiny_model_dir, tmp_path_factory):
    from stir_core.runtime.engine import Engine

    lib = build_test_library(tiny_model_dir, tmp_path_factory.mktemp("dash") / "lib")
    engine = Engine(tiny)
    cfg = StirConfig(delimiter="\n", max_new_tokens=24, k_retrieve=6, top_l=3)
    res = evaluate(engine, NewlineTask(), ["vanilla", "stir"], lib, cfg, n=8, show_progress=False)
    return lib, engine, res.examples


def test_provenance_reads_the_table(setup):
    lib, _, _ = setup
    row = 4
    rec = lib.table.iloc[row]
    p = dash.provenance(lib, row, with_problem=False)
    assert (p.tool_id, p.layer, p.control_point, p.kind) == (rec["id"], rec["layer"], rec["control_point"], rec["kind"])
    assert p.quality == pytest.approx(rec["quality"]) and p.norm == pytest.approx(float(lib.vectors[row].norm()))
    assert not p.prefixes_stored  # this test library stores none


def test_provenance_of_a_mined_tool_lists_prefixes_and_rewards():
    """The demo library stores each contrasted prefix and its reward: they must average to the stored means."""
    from pathlib import Path

    lib = ToolLibrary.load(Path(__file__).resolve().parents[1] / "assets" / "demo-library")
    row = int((lib.table["kind"] == "correction").to_numpy().argmax())
    p = dash.provenance(lib, row, with_problem=False)
    pos = [c for c in p.contrasts if c.side == "pos"]
    neg = [c for c in p.contrasts if c.side == "neg"]
    rec = lib.table.iloc[row]
    assert len(pos) == rec["n_pos"] and len(neg) == rec["n_neg"] and p.prefixes_stored
    assert sum(c.reward for c in pos) / len(pos) == pytest.approx(rec["mean_reward_pos"])
    assert sum(c.reward for c in neg) / len(neg) == pytest.approx(rec["mean_reward_neg"])
    assert all(c.prefix.count("\n\n") == rec["control_point"] for c in neg)  # cut at the control point
    ratios = (lib.table["norm"] / lib.table["shuffled_norm"])[lib.table["kind"] == "correction"]
    assert p.ratio_percentile == pytest.approx(float((ratios < p.norm_ratio).mean()))


def test_firings_and_paired_outcome_match_the_traces(setup):
    lib, _, ex = setup
    cands = pd.concat([Trace.from_json(t).candidates_frame().assign(example_id=e, method=m)
                       for t, e, m in zip(ex["trace_json"], ex["example_id"], ex["method"], strict=True)])
    assert len(cands), "the run retrieved nothing: the test would be vacuous"
    tool = cands.loc[cands["won"]]["tool_id"].mode().iloc[0] if cands["won"].any() else cands["tool_id"].iloc[0]
    f = dash.firings(tool, ex)
    ref = cands[cands["tool_id"] == tool]
    assert len(f) == len(ref) and len(f) > 0
    assert sorted(x.sim for x in f) == pytest.approx(sorted(ref["sim"].tolist()))
    assert [x.sim for x in f] == sorted((x.sim for x in f), reverse=True)
    assert sum(x.committed for x in f) == int(ref["won"].sum())
    for x in f:  # the context ends with the delimiter the decision was taken at
        assert x.before.endswith("\n")
    po = dash.paired_outcome(tool, ex)
    committed = {e for t, e, m in zip(ex["trace_json"], ex["example_id"], ex["method"], strict=True)
                 if m == "stir" and any(d.chosen == tool for d in Trace.from_json(t).decisions)}
    assert po.n_committed == len(committed)
    pairs = outcomes.paired_outcomes(ex[["example_id", "method", "correct"]])
    pairs = pairs[pairs["example_id"].isin(committed)]
    assert sorted(po.fixed) == sorted(pairs.loc[pairs["outcome"] == "win", "example_id"])
    assert sorted(po.broken) == sorted(pairs.loc[pairs["outcome"] == "loss", "example_id"])


def test_alpha_sweep_rows_equal_single_steered_decodes(setup):
    lib, engine, _ = setup
    row = 2
    prompt = "3+4=7\n\n"
    sw = dash.alpha_sweep(engine, prompt, lib.vectors[row] * 4, 1, (0.0, 0.5, 1.0, 2.0, 4.0), "segment", 12)
    assert [r.scale for r in sw.rows] == [0.0, 0.5, 1.0, 2.0, 4.0]
    plain = generate(engine, [prompt], 12).tokens[0]
    for r in sw.rows:
        steer = None if r.scale == 0 else [Steer(1, lib.vectors[row] * 4, r.scale, "segment")]
        ref = generate(engine, [prompt], 12, steers=steer)
        assert r.text == ref.texts[0]
        assert r.differs == views.diff_mask(plain, ref.tokens[0])
    assert not any(sw.rows[0].differs) and any(any(r.differs) for r in sw.rows[1:])


def test_neighbours_match_geometry(setup):
    lib, _, _ = setup
    row = 2
    nb = dash.neighbours(lib, row, 5)
    ref = projection.nearest_neighbors(lib.keys, row, 5)
    assert [n.id for n in nb if n.by == "keys"] == [lib.table["id"].iloc[j] for j, _ in ref]
    assert all(n.kind == "correction" for n in nb if n.by == "vectors")


def test_dashboard_exports_html_and_strict_json(setup, tiny):
    lib, engine, ex = setup
    tool = lib.table["id"].iloc[2]
    d = dash.build(lib, tool, tiny, engine, ex, "test-run", prompt="3+4=7\n\n", sweep_tokens=8)
    data = json.loads(dash.to_json(d))
    assert data["tool_id"] == tool and len(data["sweep"]["rows"]) == 5 and data["lens"]["promoted"]
    html = render(d)
    assert html.startswith("<!doctype html>") and "<script" not in html
    for section in ("Provenance", "Where it fires", "What it changes", "Neighbours"):
        assert f"<h2>{section}</h2>" in html
    n_marked = sum(sum(r.differs) for r in d.sweep.rows)
    assert html.count('<span class="tok diff"') == n_marked  # the one token renderer marks them
    with pytest.raises(ValueError, match="not in the library"):
        dash.build(lib, "nope")
    anchor = lib.table["id"].iloc[3]
    assert dash.build(lib, anchor, tiny, engine).sweep is None  # an anchor has no vector
    assert torch.equal(lib.vectors[3], torch.zeros_like(lib.vectors[3]))


def test_library_page_tables_hold_the_dashboard(setup, tiny):
    """views.tool_tables (what the Library page shows and exports) against the dashboard's own records."""
    lib, engine, ex = setup
    cands = pd.concat([Trace.from_json(t).candidates_frame() for t in ex["trace_json"]])
    corrections = set(lib.table.loc[lib.table["kind"] == "correction", "id"])
    tool = cands.loc[cands["tool_id"].isin(corrections), "tool_id"].mode().iloc[0]  # a vector: it has a lens
    row = dash.row_of(lib, tool)
    d = dash.build(lib, tool, tiny, engine, ex, "test-run", prompt="3+4=7\n\n", sweep_tokens=8)
    t = views.tool_tables(d, lib.table.iloc[row])
    assert t.metadata["field"].tolist() == list(lib.table.columns)
    assert t.metadata.set_index("field").loc["id", "value"] == tool
    assert len(t.contrasts) == len(d.provenance.contrasts)
    assert len(t.firings) == len(d.firings) > 0
    assert t.firings["sim"].tolist() == [f.sim for f in d.firings]
    assert t.firings["committed α"].notna().sum() == sum(f.committed for f in d.firings)
    assert not t.firings["before"].str.contains("\n").any()  # one line per cell
    assert t.lens["promoted"].tolist() == [repr(tok) for tok, _ in d.lens.promoted]
    assert t.neighbours[["id", "cos"]].to_records(index=False).tolist() == [(n.id, n.cos) for n in d.neighbours]
    bare = views.tool_tables(dash.build(lib, tool), lib.table.iloc[row])  # no run, no model
    assert bare.firings is None and bare.lens is None


def test_library_page_scales_and_labels():
    assert views.parse_scales("0, 1;2.5") == ((0.0, 1.0, 2.5), None)
    for bad in ("a, 1", "", "nan"):
        scales, warning = views.parse_scales(bad)
        assert scales == views.DEFAULT_SCALES and warning
    table = pd.DataFrame({"id": ["a", "b"], "control_point": [1, 2], "layer": [3, 4]})
    assert views.similarity_labels(table, [1, 0]) == ["b (m2, L4)", "a (m1, L3)"]


def test_lens_suppressed_lists_only_negative_logits(tiny):
    """#23 defect 7: with k as large as the vocabulary the k smallest logits include positive ones, which
    the "suppressed" column listed. Reference: the logits W_U^T (γ·v) computed here directly."""
    from stir_core.analysis.lens import unembedding

    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(3))
    W_U, gamma, kind = unembedding(tiny)
    logits = (v * gamma.float()) @ W_U.float() if kind == "rms" and gamma is not None else v @ W_U.float()
    n_vocab = logits.shape[0]
    out = dash.lens(tiny, v, k=n_vocab)
    assert out.suppressed and all(s < 0 for _, s in out.suppressed)
    assert all(s > 0 for _, s in out.promoted)
    assert len(out.suppressed) == int((logits < 0).sum()) and len(out.promoted) == int((logits > 0).sum())


def test_where_it_fires_names_the_winner_when_another_tool_won():
    """#23 defect 7: "committed, α None" when another tool won; now the winner is named."""
    from stir_core.online.trace import Candidate, GateDecision, TokenRecord

    cands = [Candidate(entry=0, tool_id="A", kind="correction", layer=1, sim=0.9, quality=0.5, value=0.45),
             Candidate(entry=1, tool_id="B", kind="correction", layer=1, sim=0.8, quality=0.9, value=0.72)]
    d = GateDecision(m=1, token_index=0, query_layers=[1], candidates=cands, chosen="B", chosen_entry=1,
                     reason="committed", alpha=0.7, layer=1)
    tok = TokenRecord(index=0, token_id=1, text="\n", logprob=-0.1, segment=0, tool="B", added_norm=1.0,
                      is_delimiter=True)
    t = Trace(method="stir", prompt="p", completion="\n", tokens=[tok], decisions=[d])
    ex = pd.DataFrame([{"example_id": "e0", "method": "stir", "correct": True, "trace_json": t.to_json()}])
    (fa,) = dash.firings("A", ex)
    (fb,) = dash.firings("B", ex)
    assert not fa.committed and fa.winner == "B" and fa.outcome == "B won"
    assert fb.committed and fb.outcome == "committed (α=0.7)"


def test_similarity_matrix_is_the_cosine_of_the_ordered_entries(setup):
    """`dashboard.similarity` (the app's heatmap; it used to be computed in app/state.py) against numpy
    cosines of the entries in (layer, control point, kind, quality) order."""
    import numpy as np

    lib = setup[0]
    t = lib.table
    corr = t[t["kind"] == "correction"]
    order = corr.sort_values(["layer", "control_point", "quality"], ascending=[True, True, False]).index[:5]
    sims, rows, total = dash.similarity(lib, "vectors", 5)
    assert total == len(corr) and list(rows) == list(order)
    v = lib.vectors[torch.as_tensor(list(order))].double().numpy()
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert np.allclose(sims, v @ v.T, atol=1e-5)
    with pytest.raises(ValueError, match="unknown source"):
        dash.source_matrix(lib, "values")


def test_dashboard_measures_each_commit_of_the_tool(setup, tiny):
    """#23 Deliver 2 in the tool dashboard: the effect over time of the tool's commits in a run, one entry
    per commit of that tool (in the run's order, at most EFFECTS_LIMIT), each equal to
    `effects.trace_effects` of that problem's trace (itself checked against a manual forward in
    tests/test_effects.py)."""
    from stir_core.analysis.effects import trace_effects

    lib, engine, ex = setup
    traces = [(str(r["example_id"]), Trace.from_json(r["trace_json"])) for _, r in ex.iterrows()
              if r["method"] == "stir"]
    commits = [(i, d) for i, t in traces for d in t.decisions if d.chosen]
    tool = max(sorted({d.chosen for _, d in commits}), key=[d.chosen for _, d in commits].count)
    d = dash.build(lib, tool, tiny, engine, ex, "test-run", prompt="3+4=7\n\n", sweep_tokens=4)
    mine = [(i, c) for i, c in commits if c.chosen == tool][: dash.EFFECTS_LIMIT]
    assert [(e["example_id"], e["m"]) for e in d.effects] == [(i, c.m) for i, c in mine]
    for e in d.effects:
        t = next(t for i, t in traces if i == e["example_id"])
        ref = next(c for c in trace_effects(tiny, t, lib).commits if c.m == e["m"])
        assert e["kl"] == pytest.approx(ref.kl) and e["tokens"] == ref.tokens
        assert e["logprob_error"] < 1e-4
    assert "The effect of each commit over time" in render(d)
