"""The slot pool: bounded by the config whatever the preview pattern, in-place re-runs, rollbacks by length,
forks that copy one slot's filled range. References: the memory module's formula, uncached forwards."""

from __future__ import annotations

import pytest
import torch
from helpers.gate_library import PROMPTS, make_library
from oracle.segmented import prefill

from stir_core.online.methods import StirConfig, run_method
from stir_core.runtime.memory import pool_positions, pool_rows
from stir_core.runtime.scheduler import generate
from stir_core.runtime.slots import SlotCache


@pytest.mark.parametrize("cap", [None, 2, 5])
@pytest.mark.parametrize("scope", ["segment", "persist"])
def test_scheduler_pool_stays_within_the_configured_bound(engine, tiny, cap, scope):
    """Slots and positions of every forward stay within `pool_rows` × `pool_positions` from the config,
    with previews and drivers in flight (the gate always commits), capped or not."""
    lib = make_library(tiny.d_model)
    cfg = StirConfig(delimiter="\n", max_new_tokens=40, scope=scope, tau_null=-1.0, max_preview_rows=cap)
    engine.peak_pool_rows = engine.peak_pool_positions = 0
    traces = run_method(engine, PROMPTS, "stir", lib, cfg)
    assert sum(t.probe_tokens for t in traces) > 0 and sum(t.interventions for t in traces) > 0
    longest = max(len(tiny.encode(p)) for p in PROMPTS)
    assert engine.peak_pool_rows <= pool_rows(len(PROMPTS), "stir", cfg.top_l, cap, scope)
    assert engine.peak_pool_rows > len(PROMPTS), "previews must have taken slots"
    assert engine.peak_pool_positions == pool_positions(longest, 40, cfg.probe_tokens, "stir")


def test_pool_writes_only_its_positions_and_copies_filled_ranges():
    """`update` writes at the given positions only; `copy_slots` moves [0, upto) of the chosen slots; the
    scratch column takes rows fed nothing."""
    pool = SlotCache(3, 6)
    pool.write = torch.tensor([[0, 1], [2, 3], [6, 6]])  # row 2 fed nothing: scratch
    k = torch.arange(3 * 1 * 2 * 2, dtype=torch.float32).reshape(3, 1, 2, 2) + 1
    keys, _ = pool.update(k, -k, 0)
    assert keys.shape == (3, 1, 7, 2)
    assert torch.equal(keys[0, :, :2], k[0]) and torch.equal(keys[1, :, 2:4], k[1])
    assert not keys[0, :, 2:6].any() and not keys[1, :, :2].any() and not keys[2, :, :6].any()
    pool.copy_slots(torch.tensor([1]), torch.tensor([2]), upto=4)
    assert torch.equal(pool.keys[0][2, :, :4], pool.keys[0][1, :, :4])
    new = pool.select(torch.tensor([0, 0]), upto=2)
    assert new.keys[0].shape == (2, 1, 7, 2) and torch.equal(new.keys[0][1, :, :2], k[0])


def test_rollback_then_refeed_equals_never_having_fed(engine, tiny):
    """A row that runs on, is rolled back by length and fed its next token again gives the logits of a
    row that never ran on (positions overwritten in place, nothing masked)."""
    ids = tiny.encode(PROMPTS[1])
    state = prefill(engine, [ids, ids])
    feed = torch.tensor([True, True])
    tok, _ = engine.choose(state, feed, None)
    engine.step(state, tok, feed)
    first = state.logits[0].clone()
    for _ in range(5):
        t, _ = engine.choose(state, feed, None)
        engine.step(state, t, torch.tensor([True, False]))
    engine.rollback(state, 0, len(ids))  # back to the prompt: the first generated token unfed
    engine.step(state, tok, torch.tensor([True, False]))
    torch.testing.assert_close(state.logits[0], first, atol=1e-5, rtol=0)
    with torch.no_grad():
        ref = tiny.bridge(torch.tensor([ids + [int(tok[0])]]), return_type="logits")[0, -1].float()
    torch.testing.assert_close(state.logits[0], ref, atol=1e-4, rtol=0)


def test_buckets_and_positions():
    from stir_core.runtime.graphs import bucket_for, positions_for

    assert [bucket_for(n) for n in (1, 2, 3, 8, 9, 33, 256, 300)] == [1, 2, 4, 8, 16, 64, 256, 300]
    assert positions_for(1) == 256 and positions_for(256) == 256 and positions_for(257) == 512
    with pytest.raises(ValueError):
        bucket_for(0)


def test_static_graph_step_run_eagerly_equals_the_plain_step(tiny):
    """The CUDA-graph step function (static buffers, a bucketed persistent pool), run eagerly on the CPU:
    the same tokens, log-probs and captures as the plain step, with steering, for batches that land in
    different buckets; one step function per bucket, reused by the next request."""
    from stir_core.runtime.engine import Engine, Steer

    plain, static = Engine(tiny), Engine(tiny)
    static.graphs = "eager"
    vec = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(3))
    prompts = ["12+3=", "7-2=45\n\n9", "1", "a:b?", "3+4=7\n"]
    n_caps = 0
    for n in (1, 3, 5):
        steers = [Steer(1, vec, 0.5 * (b % 2), "segment") for b in range(n)]
        kw = dict(steers=steers, capture_layers=[0, 2], capture_at="\n")
        a = generate(plain, prompts[:n], 24, **kw)
        b = generate(static, prompts[:n], 24, **kw)
        assert a.tokens == b.tokens
        for la, lb in zip(a.logprobs, b.logprobs, strict=True):
            torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), atol=1e-5, rtol=0)
        for ca, cb in zip(a.captures, b.captures, strict=True):
            assert [c.token_index for c in ca] == [c.token_index for c in cb]
            for x, y in zip(ca, cb, strict=True):
                torch.testing.assert_close(x.states, y.states, atol=1e-5, rtol=0)
        n_caps += sum(len(c) for c in a.captures)
    assert n_caps > 0, "no control point: the capture comparison would be empty"
    assert {k[1] for k in static._graph_steps} == {1, 4, 8}  # buckets of 1, 3 and 5 rows
    before = len(static._graph_steps)
    generate(static, prompts[:3], 24, steers=[Steer(1, vec, 1.0, "segment")] * 3, capture_layers=[0, 2],
                    capture_at="\n")
    assert len(static._graph_steps) == before, "a request in a bucket already seen reuses its step"


@pytest.mark.parametrize(("method", "scope", "cap"), [("vanilla", "segment", None), ("stir", "segment", None),
                                                      ("stir", "persist", 2), ("stir", "segment", 3)])
def test_fixed_pool_of_s_slots_whatever_the_number_of_prompts(engine, tiny, method, scope, cap, monkeypatch):
    """N > batch prompts: exactly one pool is allocated, of S = `pool_rows(batch)` slots × `pool_positions`
    (no second pool beside it), and no forward runs over more slots."""
    prompts = PROMPTS * 3  # 12 prompts
    batch = 3
    made = []
    new_cache = engine.backend.new_cache

    def spy(n_slots, capacity, **kw):
        made.append((n_slots, capacity))
        return new_cache(n_slots, capacity, **kw)

    monkeypatch.setattr(engine.backend, "new_cache", spy)
    cfg = StirConfig(delimiter="\n", max_new_tokens=40, scope=scope, tau_null=-1.0, max_preview_rows=cap)
    engine.peak_pool_rows = engine.peak_pool_positions = 0
    traces = run_method(engine, prompts, method, make_library(tiny.d_model) if method == "stir" else None, cfg,
                        batch=batch)
    assert len(traces) == len(prompts) and all(t.tokens for t in traces)
    if method == "stir":
        assert sum(t.probe_tokens for t in traces) > 0 and sum(t.interventions for t in traces) > 0
    longest = max(len(tiny.encode(p)) for p in prompts)
    bound = pool_rows(batch, method, cfg.top_l, cap, scope)
    assert made == [(bound, pool_positions(longest, 40, cfg.probe_tokens, method))]
    assert engine.peak_pool_rows == bound < pool_rows(len(prompts), method, cfg.top_l, cap, scope)


def test_lazy_pool_zeroes_slots_when_a_batch_first_reaches_them():
    """A fixed pool starts uninitialised (here: NaN planted in slots no batch has reached); a batch's slots
    read back finite wherever nothing was written, and a copy into a new slot leaves no garbage past the
    copied range (attention multiplies masked keys by a zero weight, so they must be finite)."""
    pool = SlotCache(4, 5, lazy_zero=True)
    pool.write = torch.tensor([[0]])
    k = torch.ones(1, 1, 1, 2)
    pool.update(k, k, 0)
    pool.keys[0][1:] = float("nan")
    pool.values[0][1:] = float("nan")
    pool.write = torch.tensor([[1], [0], [0]])
    keys, values = pool.update(torch.ones(3, 1, 1, 2), torch.ones(3, 1, 1, 2), 0)
    assert keys.shape[0] == 3 and torch.isfinite(keys).all() and torch.isfinite(values).all()
    assert keys[1, :, 1:].abs().sum() == 0
    pool.copy_slots(torch.tensor([0]), torch.tensor([3]), 2)
    assert torch.isfinite(pool.keys[0][3]).all() and torch.equal(pool.keys[0][3, :, :2], pool.keys[0][0, :, :2])
    assert pool.keys[0][3, :, 2:].abs().sum() == 0
