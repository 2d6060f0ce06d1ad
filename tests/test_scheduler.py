"""The one scheduler equals the segment-synchronous oracle, token for token and decision for decision.

The oracle (`tests/oracle/segmented.py`, test code only) is the straightforward reference: every row waits at its control point,
previews run as a forked batch, commits re-run the delimiter, and scope `segment` re-feeds the committed
segment unsteered. The continuous path reuses the null row, shadows committed segments and lets rows run
ahead; under greedy decoding nothing it outputs may differ.
"""

from __future__ import annotations

import pytest
import torch
from helpers.gate_library import PROMPTS, make_library
from oracle.segmented import oracle_method

from stir_core.library.format import ToolLibrary
from stir_core.online.methods import StirConfig, run_method
from stir_core.runtime.engine import Engine
from stir_core.runtime.model import DEFAULT_MODEL_DIR, load_model
from stir_core.tasks import get_task

VARIANTS = [
    {},  # the reference defaults: scope segment, probes stop at the delimiter
    {"scope": "persist"},
    {"probe_stop": "none"},
    {"scope": "persist", "probe_stop": "none", "probe_scale": 1.0, "k_scale": 1e-9},  # tiny alpha
    {"positions": "segment"},
    {"positions": "last+segment", "scope": "persist"},
    {"max_control_points": 2},
    {"preview": "reprefill"},  # the authors' way: probe slots recomputed from their tokens
]


def same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert [t.token_id for t in x.tokens] == [t.token_id for t in y.tokens]
        assert x.completion == y.completion
        assert [(d.m, d.token_index, d.reason, d.chosen, d.probe_tokens) for d in x.decisions] == \
               [(d.m, d.token_index, d.reason, d.chosen, d.probe_tokens) for d in y.decisions]
        for dx, dy in zip(x.decisions, y.decisions, strict=True):
            assert dx.alpha == pytest.approx(dy.alpha, abs=1e-4)
            for cx, cy in zip(dx.candidates, dy.candidates, strict=True):
                assert cx.probe_text == cy.probe_text
                if cx.gain is not None:
                    assert cx.gain == pytest.approx(cy.gain, abs=1e-4)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "reference")
@pytest.mark.parametrize("method", ["stir", "random_choice", "static", "no_probing"])
def test_continuous_equals_sync_on_a_random_model(engine, tiny, method, variant):
    lib = make_library(tiny.d_model)
    cfg = StirConfig(delimiter="\n", max_new_tokens=40).with_overrides(**variant)
    sync = oracle_method(engine, PROMPTS, method, lib, cfg)
    cont = run_method(engine, PROMPTS, method, lib, cfg)
    same(cont, sync)
    # every variant must compare real gate work, not two empty decision lists
    assert sum(len(t.decisions) for t in sync) > 0, "no control point occurred: nothing to compare"
    if method in ("stir", "random_choice"):  # the methods that preview (static and no_probing never do)
        assert sum(t.probe_tokens for t in sync) > 0, "no previews ran"
    if method in ("stir", "static") and "k_scale" not in variant:
        assert sum(t.interventions for t in sync) > 0, "the comparison must include commits"


@pytest.fixture(scope="module")
def toy():
    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        pytest.skip("the embedded model is missing")
    return load_model(None, device="cpu")


@pytest.mark.parametrize("variant", [{}, {"scope": "persist"}], ids=["reference", "persist"])
def test_continuous_equals_sync_on_the_embedded_model(toy, variant):
    engine = Engine(toy)
    lib = ToolLibrary.load(DEFAULT_MODEL_DIR.parent / "demo-library")
    task = get_task("planted")
    prompts = [toy.format_prompt(task.prompt(ex)) for ex in task.load("val", 48, seed=11)]
    cfg = StirConfig(layer=3, tau_null=0.5, min_sim=0.9, max_new_tokens=128).with_overrides(**variant)
    sync = oracle_method(engine, prompts, "stir", lib, cfg)
    cont = run_method(engine, prompts, "stir", lib, cfg)
    same(cont, sync)
    assert sum(t.interventions for t in sync) >= 5


@pytest.mark.parametrize("cap", [4, 2, 1])  # 1 and 2: below top_l, so one preview at a time
@pytest.mark.parametrize("scope", ["segment", "persist"])
def test_a_preview_budget_changes_timing_not_results(engine, tiny, cap, scope):
    """Also when capacity is freed by a driver finishing rather than by a decision (scope segment): a
    waiting control point whose null probe is done cannot move by itself (this stalled before `admit`)."""
    lib = make_library(tiny.d_model)
    cfg = StirConfig(delimiter="\n", max_new_tokens=40, scope=scope, tau_null=-1.0)  # the gate always commits
    free = run_method(engine, PROMPTS, "stir", lib, cfg)
    tight = run_method(engine, PROMPTS, "stir", lib, cfg.with_overrides(max_preview_rows=cap))
    same(tight, free)
    assert sum(t.probe_tokens for t in free) > 0, "no previews ran: the budget had nothing to change"
    assert sum(t.interventions for t in free) > 1, "no commits: no driver rows to wait for"


def unsteered_probe(tiny, prefix: list[int], n: int, delimiter: str) -> tuple[str, float]:
    """Greedy continuation of a prefix by full forwards without any vector: text and mean log-prob."""
    out, lps = [], []
    with torch.no_grad():
        for _ in range(n):
            logits = tiny.bridge(torch.tensor([prefix + out]), return_type="logits")[0, -1].float()
            tok = int(logits.argmax())
            lps.append(float(torch.log_softmax(logits, -1)[tok]))
            out.append(tok)
            if delimiter in tiny.decode(out):
                break
    return tiny.decode(out), sum(lps) / len(lps)


@pytest.mark.parametrize("scope", ["segment", "persist"])
def test_segment_scope_equals_reprefilling_the_text_unsteered(engine, tiny, scope):
    """Scope `segment`: every control point after a commit sees the plain text, as if prefilled without any
    vector (the reference's way): its null probe equals an unsteered greedy decode from the text. Scope
    `persist` keeps the commit in the cache, so there the same check must fail somewhere."""
    lib = make_library(tiny.d_model, anchors=False)
    cfg = StirConfig(delimiter="\n", max_new_tokens=40, k_scale=30.0, scope=scope)  # commits that matter
    traces = run_method(engine, PROMPTS, "stir", lib, cfg)
    results = []
    for prompt, tr in zip(PROMPTS, traces, strict=True):
        first = next((d.m for d in tr.decisions if d.committed), None)
        for d in tr.decisions:
            if first is None or d.m <= first or d.null_probe_logprob is None:
                continue
            prefix = tiny.encode(prompt) + [t.token_id for t in tr.tokens[: d.token_index + 1]]
            text, lp = unsteered_probe(tiny, prefix, cfg.probe_tokens, cfg.delimiter)
            results.append(text == d.null_probe_text and abs(lp - d.null_probe_logprob) < 1e-4)
    assert results, "no previewed control point after a commit: the check would be empty"
    assert all(results) if scope == "segment" else not all(results)


# ---- continuous batching: more prompts than slots ----------------------------------------------------------

MANY = PROMPTS + ["5*5=", "9-1=8\n2+2", "x:y:z?", "1\n1\n1\n", "40/8=", "b?"]


def spy_admissions(engine, monkeypatch) -> list[int]:
    """Rows already running each time waiting prompts were prefilled into the pool."""
    seen: list[int] = []
    add_rows = engine.add_rows

    def spy(state, prompts, seeds=None):
        seen.append(len(state.rows))
        return add_rows(state, prompts, seeds)

    monkeypatch.setattr(engine, "add_rows", spy)
    return seen


@pytest.mark.parametrize("variant", [{}, {"scope": "persist"}, {"positions": "segment"}],
                         ids=["reference", "persist", "segment-positions"])
@pytest.mark.parametrize("method", ["vanilla", "stir"])
def test_more_prompts_than_slots_equals_the_oracle_on_all_prompts(engine, tiny, method, variant, monkeypatch):
    """A run over N > batch prompts in a fixed pool (waiting prompts take the slots finished rows leave)
    gives the oracle's tokens and decisions, the oracle decoding all N prompts at once."""
    lib = make_library(tiny.d_model)
    cfg = StirConfig(delimiter="\n", max_new_tokens=40).with_overrides(**variant)
    sync = oracle_method(engine, MANY, method, lib if method == "stir" else None, cfg)
    seen = spy_admissions(engine, monkeypatch)
    cont = run_method(engine, MANY, method, lib if method == "stir" else None, cfg, batch=3)
    same(cont, sync)
    assert len(seen) > 1 and any(n > 0 for n in seen[1:]), f"no prompt joined a running batch: {seen}"
    if method == "stir":
        assert sum(len(t.decisions) for t in sync) > 0 and sum(t.probe_tokens for t in sync) > 0


@pytest.mark.parametrize("method", ["vanilla", "stir"])
def test_continuous_batching_on_the_embedded_model_equals_the_oracle(toy, method, monkeypatch):
    """Rows end at EOS at different steps on the embedded model: newcomers join beside running rows."""
    engine = Engine(toy)
    lib = ToolLibrary.load(DEFAULT_MODEL_DIR.parent / "demo-library")
    task = get_task("planted")
    prompts = [toy.format_prompt(task.prompt(ex)) for ex in task.load("val", 12, seed=5)]
    cfg = StirConfig(layer=3, tau_null=0.5, min_sim=0.9, max_new_tokens=96)
    sync = oracle_method(engine, prompts, method, lib if method == "stir" else None, cfg)
    seen = spy_admissions(engine, monkeypatch)
    cont = run_method(engine, prompts, method, lib if method == "stir" else None, cfg, batch=4)
    same(cont, sync)
    assert sum(n > 0 for n in seen[1:]) >= 2, f"prompts did not join running rows: {seen}"
    if method == "stir":
        assert sum(t.interventions for t in sync) > 0, "the comparison must include commits"


@pytest.mark.parametrize("variant", [{}, {"scope": "persist", "positions": "last+segment"}, {"max_preview_rows": 2}],
                         ids=["reference", "persist,last+segment", "preview-cap"])
def test_graph_steps_equal_the_oracle(tiny, variant):
    """The scheduler on a graph pool (`graphs="eager"`: the static step a CUDA graph captures, run eagerly
    on the CPU; a bucketed pool kept across requests) equals the oracle, batched with continuous admission
    (batch 2 of 4 prompts), for STIR and vanilla; one step function per bucket and capture layout."""
    lib = make_library(tiny.d_model)
    cfg = StirConfig(delimiter="\n", max_new_tokens=40).with_overrides(**variant)
    static = Engine(tiny)
    static.graphs = "eager"
    for method in ("stir", "vanilla"):
        sync = oracle_method(Engine(tiny), PROMPTS, method, lib, cfg)
        same(run_method(static, PROMPTS, method, lib, cfg, batch=2), sync)
        if method == "stir":
            assert sum(t.interventions for t in sync) > 0, "no commit: the steer buffers were not exercised"
    assert static._graph_steps and all(step.mode == "eager" for step in static._graph_steps.values())
    n = len(static._graph_steps)
    run_method(static, PROMPTS, "stir", lib, cfg, batch=2)
    assert len(static._graph_steps) == n, "a second request in the same buckets captures nothing new"


def test_graph_pools_are_bounded(tiny):
    """Graph pools (and their steps) are kept for the `GRAPH_POOLS` most recently used shapes only."""
    from stir_core.runtime.engine import GRAPH_POOLS
    from stir_core.runtime.scheduler import generate

    static = Engine(tiny)
    static.graphs = "eager"
    for n in range(1, GRAPH_POOLS + 3):  # buckets of 2, 4, 8, ... slots: more shapes than are kept
        generate(static, ["12+3="] * (2 ** n), 2)
    pools = {id(p) for p in static._graph_pools.values()}
    assert len(static._graph_pools) == GRAPH_POOLS
    assert {k[0] for k in static._graph_steps} <= pools, "a dropped pool's steps are dropped with it"


def test_uncaptured_graph_steps_run_eagerly_until_capture_is_allowed(tiny, monkeypatch):
    """`graph_capture = False` (the app, while it captures in the background): a graph pool whose step is
    not captured yet decodes eagerly, captures nothing and gives the same tokens; `STIR_GRAPHS` selects
    the mode, and a bad value is refused by name."""
    from stir_core.runtime.scheduler import generate

    monkeypatch.setenv("STIR_GRAPHS", "eager")
    static = Engine(tiny)
    assert static.graphs == "eager"
    static.graph_capture = False
    ref = generate(Engine(tiny), PROMPTS, 24)
    assert generate(static, PROMPTS, 24).tokens == ref.tokens and not static._graph_steps
    static.graph_capture = True
    assert generate(static, PROMPTS, 24).tokens == ref.tokens and static._graph_steps
    monkeypatch.setenv("STIR_GRAPHS", "fast")
    with pytest.raises(ValueError, match="STIR_GRAPHS='fast'"):
        Engine(tiny)
    monkeypatch.setenv("STIR_GRAPHS", "cuda")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Engine(tiny)


def test_evaluate_is_one_continuous_run_equal_to_separate_batches(tmp_path):
    """`evaluate(batch_size=3)` decodes each method in one continuous run (3 problems at once, the next
    taking a finished one's slot) and reports progress per finished problem; its traces equal separate
    `run_method` calls over consecutive chunks of 3 (the old batching, computed independently)."""
    from stir_core.analysis.evaluate import evaluate
    from stir_core.config import online_config
    from stir_core.tasks import render_prompt

    model = load_model(DEFAULT_MODEL_DIR, device="cpu")
    lib = ToolLibrary.load(DEFAULT_MODEL_DIR.parent / "demo-library", d_model=model.d_model, n_layers=model.n_layers)
    cfg = online_config(lib).with_overrides(max_new_tokens=48)
    task = get_task("planted")
    seen = []
    res = evaluate(Engine(model), task, ["vanilla", "stir"], lib, cfg, n=8, seed=5, batch_size=3,
                   progress=lambda done, total, method: seen.append((done, total, method)), show_progress=False)
    assert seen == [(i, 16, "vanilla") for i in range(1, 9)] + [(i, 16, "stir") for i in range(9, 17)]
    examples = task.load("eval", 8, 5)
    prompts = [render_prompt(model, task, ex) for ex in examples]
    for method in ("vanilla", "stir"):
        ref = [t for lo in range(0, 8, 3) for t in run_method(Engine(model), prompts[lo: lo + 3], method, lib, cfg)]
        got = res.examples[res.examples.method == method]
        assert list(got.completion) == [t.completion for t in ref]
        assert list(got.interventions) == [t.interventions for t in ref]
    assert res.examples[res.examples.method == "stir"].interventions.sum() > 0


def test_a_multi_layer_library_captures_each_bucket_once(tiny):
    """A policy's hook names get their steer buffers when the pool is made: every captured step of a
    two-layer library is keyed by both hooks from its first step, so a commit at the second layer does not
    capture a step again mid-request (and the decode still equals the oracle)."""
    a, b = make_library(tiny.d_model, layer=0, seed=1), make_library(tiny.d_model, layer=2, seed=2)
    rows = a.table.to_dict("records") + [{**r, "id": "L2/" + r["id"]} for r in b.table.to_dict("records")]
    lib = ToolLibrary.from_records(torch.cat([a.keys, b.keys]), torch.cat([a.vectors, b.vectors]), rows,
                                   {"d_model": tiny.d_model, "n_layers": 3, "hook_point": "blocks.{layer}.hook_resid_post"})
    cfg = StirConfig(delimiter="\n", max_new_tokens=40, tau_null=-1.0)  # the gate always commits
    static = Engine(tiny)
    static.graphs = "eager"
    got = run_method(static, PROMPTS, "stir", lib, cfg)
    same(got, oracle_method(Engine(tiny), PROMPTS, "stir", lib, cfg))
    layers = {d.layer for t in got for d in t.decisions if d.reason == "committed"}
    assert layers == {0, 2}, layers
    names = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post")
    assert static._graph_steps and all(k[3] == names for k in static._graph_steps)


@pytest.mark.parametrize("fault", ["capture", "replay"])
def test_a_failing_graph_step_turns_graphs_off_loudly_and_decoding_goes_on(tiny, monkeypatch, fault):
    """A step that fails to capture, or whose first replay disagrees with the eager step (what a CUDA
    graph that baked in a changing value would do): a warning and a `graph_log` line, graphs off for the
    engine, and the decode equals the eager reference (nothing lost, nothing silently wrong)."""
    from stir_core.runtime import engine as engine_mod
    from stir_core.runtime.graphs import GraphMismatch, GraphStep
    from stir_core.runtime.scheduler import generate

    class Broken(GraphStep):
        def __init__(self, *a, **k):
            if fault == "capture":
                raise RuntimeError("operation not permitted when stream is capturing\nmore")
            super().__init__(*a, **k)

        def run(self, ids, qpos, gain):
            raise GraphMismatch("the captured step (4 slots) differs from the eager one by inf (relative)")

    monkeypatch.setattr(engine_mod, "GraphStep", Broken)
    ref = generate(Engine(tiny), PROMPTS, 24)
    static = Engine(tiny)
    static.graphs = "eager"
    with pytest.warns(RuntimeWarning, match="decode graphs off"):
        got = generate(static, PROMPTS, 24)
    assert got.tokens == ref.tokens and static.graphs == "off"
    assert len(static.graph_log) == 1 and static.graphs_off_reason in static.graph_log[0]
    if fault == "capture":
        assert static.graphs_off_reason == "capture failed: RuntimeError: operation not permitted when stream is capturing"
    assert generate(static, PROMPTS, 24).tokens == ref.tokens and len(static.graph_log) == 1  # said once


def test_replay_disagreement_measure():
    """`disagreement`: 0 for equal outputs, relative to the eager magnitude, inf when a greedy choice moves."""
    from stir_core.runtime.graphs import disagreement

    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, 1.0]])
    caps = {1: torch.ones(2, 4)}
    assert disagreement((logits, caps), (logits.clone(), {1: caps[1].clone()})) == 0.0
    assert disagreement((logits + 0.05, caps), (logits, caps)) == pytest.approx(0.01, rel=1e-4)
    assert disagreement((logits, {1: caps[1] * 1.5}), (logits, caps)) == pytest.approx(0.5)
    swapped = logits.clone()
    swapped[0, 0] = 9.0
    assert disagreement((swapped, caps), (logits, caps)) == float("inf")
