"""The decoding engine against references computed another way (uncached forwards, hand-added vectors)."""

from __future__ import annotations

import pytest
import torch
from oracle.segmented import decode, fork, prefill, refeed_last

from stir_core.runtime.engine import Engine, Sampling, Steer
from stir_core.runtime.scheduler import generate
from stir_core.runtime.steering import foreign_hooks

PROMPTS = ["12+3=", "7-2=45\n\n9", "1", "a:b?"]


@torch.no_grad()
def uncached_greedy(model, prompt: str, n: int, add=None, point="hook_resid_post"):
    """Reference: full forward per token, optional (layer, vector, positions-from) added by a hook at
    `blocks.{layer}.{point}`."""
    ids = model.encode(prompt)
    out, lps = [], []
    for _ in range(n):
        hooks = []
        if add is not None:
            layer, vec, start = add

            def fn(x, hook, start=start, vec=vec):
                x = x.clone()
                x[:, start:] += vec
                return x

            hooks = [(f"blocks.{layer}.{point}", fn)]
        with model.bridge.hooks(fwd_hooks=hooks):
            logits = model.bridge(torch.tensor([ids + out]), return_type="logits")[0, -1].float()
        tok = int(logits.argmax())
        lps.append(float(torch.log_softmax(logits, -1)[tok]))
        out.append(tok)
    return out, lps


def test_batched_equals_single_and_uncached(engine, tiny):
    batched = generate(engine, PROMPTS, 24)
    for i, p in enumerate(PROMPTS):
        single = generate(engine, [p], 24)
        assert single.tokens[0] == batched.tokens[i]
        ref, ref_lp = uncached_greedy(tiny, p, 24)
        assert batched.tokens[i] == ref
        torch.testing.assert_close(torch.tensor(batched.logprobs[i]), torch.tensor(ref_lp), atol=1e-4, rtol=0)


def test_zero_scale_intervention_is_identity(engine, tiny):
    vec = torch.randn(tiny.d_model)
    plain = generate(engine, PROMPTS, 20)
    steers = [Steer(1, vec, 0.0, "segment") for _ in PROMPTS]
    zero = generate(engine, PROMPTS, 20, steers=steers)
    assert zero.tokens == plain.tokens
    torch.testing.assert_close(torch.tensor(zero.logprobs), torch.tensor(plain.logprobs), atol=1e-6, rtol=0)


def test_segment_intervention_equals_manual_forward(engine, tiny):
    torch.manual_seed(0)
    vec = torch.randn(tiny.d_model) * 3
    for p in PROMPTS[:2]:
        steered = generate(engine, [p], 16, steers=[Steer(2, vec, 0.7, "segment")])
        # `segment` adds at every generated token (from the first generated position on).
        ref, ref_lp = uncached_greedy(tiny, p, 16, add=(2, 0.7 * vec, len(tiny.encode(p))))
        assert steered.tokens[0] == ref
        torch.testing.assert_close(torch.tensor(steered.logprobs[0]), torch.tensor(ref_lp), atol=1e-4, rtol=0)
        assert steered.tokens[0] != generate(engine, [p], 16).tokens[0]  # the vector does something


def test_steer_at_another_hook_point_equals_manual_forward(engine, tiny):
    """A steer carrying a library's hook template (here resid_pre) adds there, not at resid_post."""
    torch.manual_seed(2)
    vec = torch.randn(tiny.d_model) * 3
    p = PROMPTS[1]
    pre = generate(engine, [p], 16, steers=[Steer(2, vec, 0.7, "segment", hook="blocks.{layer}.hook_resid_pre")])
    ref, ref_lp = uncached_greedy(tiny, p, 16, add=(2, 0.7 * vec, len(tiny.encode(p))), point="hook_resid_pre")
    assert pre.tokens[0] == ref
    torch.testing.assert_close(torch.tensor(pre.logprobs[0]), torch.tensor(ref_lp), atol=1e-4, rtol=0)
    post = generate(engine, [p], 16, steers=[Steer(2, vec, 0.7, "segment")])
    assert pre.logprobs[0] != post.logprobs[0]  # the hook point matters


@torch.no_grad()
def greedy_added_at(model, ids: list[int], pos: int, layer: int, vec, n: int) -> list[int]:
    """Reference: `n` greedy tokens after `ids` by full forwards, `vec` added at position `pos` only (a
    commit's re-run token) by a hook at `blocks.{layer}.hook_resid_post`."""
    out = []
    for _ in range(n):
        def fn(x, hook):
            x = x.clone()
            x[:, pos] += vec
            return x

        with model.bridge.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", fn)]):
            logits = model.bridge(torch.tensor([ids + out]), return_type="logits")[0, -1]
        out.append(int(logits.argmax()))
    return out


def test_last_intervention_equals_manual_forward(engine, tiny):
    """`last` re-runs the final token with the vector: same as adding it at that position in a full forward."""
    torch.manual_seed(1)
    vec = torch.randn(tiny.d_model) * 4
    prompt = "7-2=4"
    state = prefill(engine, [tiny.encode(prompt)])
    decode(engine, state, 3)  # three generated tokens; steer the last of them
    row = state.rows[0]
    prefix_ids = row.prompt + row.tokens
    refeed_last(engine, state, [Steer(1, vec, 1.0, "last")])
    decode(engine, state, 10)
    got = state.rows[0].tokens[3:]
    # Reference: full forward with the vector added only at the position of the 3rd generated token.
    assert got == greedy_added_at(tiny, prefix_ids, len(prefix_ids) - 1, 1, vec, 10)
    assert state.rows[0].added[2] is not None and abs(state.rows[0].added[2][1] - float(vec.norm())) < 1e-4


def test_capture_at_delimiter_equals_separate_forward(engine, tiny):
    prompt = "3+4=7\n\n"
    res = generate(engine, [prompt] * 2, 60, capture_layers=[0, 2], capture_at="\n")
    caps = res.captures[0]
    assert len(caps) >= 1, "the tiny model should emit at least one newline in 60 tokens"
    ids = tiny.encode(prompt)
    for cap in caps:
        prefix = ids + res.tokens[0][: cap.token_index + 1]
        _, cache = tiny.bridge.run_with_cache(torch.tensor([prefix]),
                                              names_filter=lambda n: n.endswith("hook_resid_post"))
        for j, layer in enumerate([0, 2]):
            ref = cache[f"blocks.{layer}.hook_resid_post"][0, -1].float()
            torch.testing.assert_close(cap.states[j], ref, atol=1e-4, rtol=1e-4)


def test_fork_continues_like_fresh_decode(engine, tiny):
    prompt = "9-3="
    state = prefill(engine, [tiny.encode(prompt), tiny.encode("1+1")])
    decode(engine, state, 5)
    prefix_text = prompt + state.rows[0].text
    forked = fork(engine, state, [0, 0, 0])
    vec = torch.randn(tiny.d_model) * 3
    steers = [None, Steer(1, vec, 1.0, "segment"), Steer(2, -vec, 0.5, "segment")]
    decode(engine, forked, 12, steers=steers)
    for b, s in enumerate(steers):
        fresh = generate(engine, [prefix_text], 12, steers=[s])
        assert forked.rows[b].tokens[5:] == fresh.tokens[0]
        torch.testing.assert_close(torch.tensor(forked.rows[b].logprobs[5:]), torch.tensor(fresh.logprobs[0]),
                                   atol=1e-4, rtol=0)
    # the original state is untouched by the fork
    decode(engine, state, 12)
    assert state.rows[0].tokens[5:] == forked.rows[0].tokens[5:]


def test_sampling_is_seeded_and_independent_of_batch(engine):
    s = Sampling(temperature=1.0, top_p=0.9)
    a = generate(engine, PROMPTS, 20, sampling=s, seeds=[1, 2, 3, 4])
    b = generate(engine, PROMPTS, 20, sampling=s, seeds=[1, 2, 3, 4])
    c = generate(engine, PROMPTS[2:3], 20, sampling=s, seeds=[3])
    assert a.tokens == b.tokens
    assert a.tokens[2] == c.tokens[0]
    d = generate(engine, PROMPTS, 20, sampling=s, seeds=[5, 6, 7, 8])
    assert a.tokens != d.tokens


def test_stop_strings_and_budgets_per_row(engine):
    res = generate(engine, PROMPTS, [3, 50, 7, 50], stop="\n")
    assert len(res.tokens[0]) <= 3 and len(res.tokens[2]) <= 7
    for t in res.texts:
        assert t.count("\n") <= 1 and ("\n" not in t or t.endswith("\n"))


def test_segmented_with_null_policy_equals_vanilla(engine, tiny):
    vanilla = generate(engine, PROMPTS, 40)
    from stir_core.online.methods import generate_segmented

    seg, decisions = generate_segmented(engine, PROMPTS, lambda *a: None, 40, delimiter="\n")
    assert seg.tokens == vanilla.tokens
    assert any(decisions), "the tiny model emits newlines, so there are control points"


@pytest.mark.parametrize("batch", [None, 4, 2])
def test_one_decode_loop_equals_the_oracle_loop_for_sampled_rollouts(engine, tiny, batch):
    """Mining's rollouts through the one scheduler (K sequences per prompt, the prompt prefilled once,
    seeded sampling, captures at every delimiter; `batch` sequences at once, the rest joining as rows
    finish) equal the oracle's plain loop over a prefill forked K times with the same seeds: tokens,
    log-probs, EOS ends and captures (one per delimiter, same token index, same states)."""
    from stir_core.runtime.scheduler import Schedule, run_continuous

    prompts, k, n_new = [p + "\n" for p in PROMPTS[:3]], 2, 40
    ids = [tiny.encode(p) for p in prompts]
    seeds = [100 + s for s in range(len(prompts) * k)]
    sampling = Sampling(1.3, 0.9)
    rows = run_continuous(engine, ids, None, Schedule(n_new), "\n", capture_layers=[0, 2], batch=batch,
                          sampling=sampling, seeds=seeds, fanout=k)
    state = prefill(engine, ids, capture_layers=[0, 2], delimiter="\n")
    state = fork(engine, state, [i for i in range(len(prompts)) for _ in range(k)])
    for b, row in enumerate(state.rows):
        row.generator = engine.generator(seeds[b])
    decode(engine, state, n_new, sampling=sampling, capture_at="\n")
    assert sum(len(r.captures) for r in rows) > 0 and len({tuple(r.tokens) for r in rows}) > len(prompts)
    for row, ref in zip(rows, state.rows, strict=True):
        assert row.tokens == ref.tokens and row.finished == ref.finished
        torch.testing.assert_close(torch.tensor(row.logprobs), torch.tensor(ref.logprobs), atol=1e-5, rtol=0)
        assert [c.token_index for c in row.captures] == [c.token_index for c in ref.captures]
        for x, y in zip(row.captures, ref.captures, strict=True):
            torch.testing.assert_close(x.states, y.states, atol=1e-5, rtol=1e-5)


def test_generate_last_steer_equals_a_commit_at_the_prompt_end(engine, tiny):
    """`generate(steers=[Steer(..., "last")])` re-runs the prompt's last token with the vector (a commit
    at a control point): the same as adding it at that position in full uncached forwards; `fanout`
    sequences of one prompt each carry their own steer (scale 0: the plain continuation)."""
    torch.manual_seed(5)
    vec = torch.randn(tiny.d_model) * 4
    prompt = "7-2=45\n\n"
    res = generate(engine, [prompt], 10, capture_at=None, fanout=2,
                   steers=[None, Steer(1, vec, 1.0, "last", tag="t")])
    ids = tiny.encode(prompt)
    ref, _ = uncached_greedy(tiny, prompt, 10)
    assert res.tokens[0] == ref
    out = greedy_added_at(tiny, ids, len(ids) - 1, 1, vec, 10)
    assert res.tokens[1] == out and res.tokens[1] != res.tokens[0]


def test_decode_arguments_are_checked(engine, tiny):
    from stir_core.runtime.scheduler import Schedule, run_continuous

    ids = [tiny.encode(p) for p in PROMPTS[:2]]
    with pytest.raises(ValueError, match="seed"):
        run_continuous(engine, ids, None, Schedule(4), "\n", sampling=Sampling())
    with pytest.raises(ValueError, match="3 entries for 4 sequences"):
        run_continuous(engine, ids, None, Schedule(4), "\n", fanout=2, seeds=[1, 2, 3], sampling=Sampling())
    with pytest.raises(ValueError, match="cannot hold"):
        run_continuous(engine, ids, None, Schedule(4), "\n", fanout=3, batch=2)


def test_hooks_are_installed_once_and_inert_outside_the_engine(engine, tiny):
    """One engine hook per hook point used, however many decodes; outside an engine forward they change
    nothing: a bridge forward then equals the same forward with every engine hook detached."""
    vec = torch.randn(tiny.d_model)
    ids = torch.tensor([tiny.encode(PROMPTS[1])])

    def hooks_per_point():
        return {id(hp): len(hp._forward_hooks) for hp in tiny.bridge.hook_dict.values()}

    generate(engine, PROMPTS, 5, steers=[Steer(1, vec, 1.0, "segment")] * len(PROMPTS), capture_layers=[0])
    first = hooks_per_point()
    for _ in range(2):
        generate(engine, PROMPTS, 5, steers=[Steer(1, vec, 2.0, "segment")] * len(PROMPTS), capture_layers=[0])
    assert hooks_per_point() == first
    assert sum(first.values()) >= 1
    generate(Engine(tiny), PROMPTS[:1], 3, steers=[Steer(1, vec, 1.0, "segment")], capture_layers=[0])
    assert hooks_per_point() == first, "a second engine on the same model shares the installed hooks"
    assert not foreign_hooks(tiny.bridge)
    with torch.no_grad():
        with_hooks = tiny.bridge(ids, return_type="logits")
        saved = {id(hp): dict(hp._forward_hooks) for hp in tiny.bridge.hook_dict.values()}
        for hp in tiny.bridge.hook_dict.values():
            hp._forward_hooks.clear()
        try:
            bare = tiny.bridge(ids, return_type="logits")
        finally:
            for hp in tiny.bridge.hook_dict.values():
                hp._forward_hooks.update(saved[id(hp)])
    assert torch.equal(with_hooks, bare)


def test_bad_inputs(engine):
    import pytest

    with pytest.raises(ValueError, match="empty"):
        generate(engine, [""], 4)
    with pytest.raises(ValueError, match="positions"):
        Steer(0, torch.zeros(3), 1.0, "everywhere")
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=0)
