"""The `counter` sampler (`stir_core/runtime/sampling.py`): the distribution it draws from, computed
another way (softmax and nucleus by hand, frequencies over many seeds), its reproducibility per row
whatever the batch, and the one decode loop on it against the oracle's plain loop."""

from __future__ import annotations

import math

import pytest
import torch
from oracle.segmented import decode, fork, prefill

from stir_core.runtime.engine import Engine, Sampling
from stir_core.runtime.sampling import sample, uniform
from stir_core.runtime.scheduler import Schedule, generate, run_continuous


def test_noise_is_a_pure_function_of_seed_step_and_id():
    ids = torch.arange(1000)[None].repeat(3, 1)
    a = uniform(torch.tensor([1, 2, 1]), torch.tensor([0, 0, 5]), ids)
    assert a.dtype == torch.float64 and float(a.min()) > 0 and float(a.max()) <= 1
    assert abs(float(a.mean()) - 0.5) < 0.02  # 3,000 draws: sd of the mean ~0.005
    alone = uniform(torch.tensor([1]), torch.tensor([5]), ids[:1])
    assert torch.equal(alone[0], a[2])  # the same (seed, step) gives the same noise in any batch
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (1.5, 0.5)])
def test_draws_follow_the_nucleus_distribution(temperature, top_p):
    """20,000 rows with the same logits and seeds 0..19,999: token frequencies equal the tempered softmax
    restricted to the top-p nucleus and renormalised (within 5 binomial sd), nothing outside it."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -1.0, -3.0])
    p = torch.softmax(logits / temperature, -1)
    order = p.argsort(descending=True)
    cum = 0.0
    nucleus = []
    for i in order.tolist():  # the top token always, then while the mass before it is below top_p
        if nucleus and cum >= top_p:
            break
        nucleus.append(i)
        cum += float(p[i])
    want = torch.zeros_like(p)
    want[nucleus] = p[nucleus] / p[nucleus].sum()
    n = 20_000
    tokens = sample(logits.repeat(n, 1), temperature, top_p, torch.arange(n), torch.zeros(n, dtype=torch.long))
    freq = torch.bincount(tokens, minlength=len(p)).double() / n
    for v in range(len(p)):
        sd = math.sqrt(max(float(want[v]) * (1 - float(want[v])), 1e-12) / n)
        assert abs(float(freq[v]) - float(want[v])) <= 5 * sd + 1e-12, (v, float(freq[v]), float(want[v]))


def test_the_decode_loop_on_the_counter_sampler_equals_the_oracle_loop(tiny, monkeypatch):
    """Rollouts (2 per prompt, seeded) through the one scheduler with `STIR_SAMPLER=counter` equal the
    oracle's plain loop on the same seeds, and the same with fewer rows at once: a row's tokens depend on
    its seed, not on its batch."""
    monkeypatch.setenv("STIR_SAMPLER", "counter")
    engine = Engine(tiny)
    assert engine.sampler == "counter"
    prompts = ["12+3=\n", "7-2=45\n\n9", "a:b?"]
    ids = [tiny.encode(p) for p in prompts]
    seeds = [11, 12, 21, 22, 31, 32]
    s = Sampling(1.2, 0.95)
    rows = run_continuous(engine, ids, None, Schedule(30), "\n", sampling=s, seeds=seeds, fanout=2)
    fewer = run_continuous(engine, ids, None, Schedule(30), "\n", sampling=s, seeds=seeds, fanout=2, batch=2)
    state = prefill(engine, ids, delimiter="\n")
    state = fork(engine, state, [0, 0, 1, 1, 2, 2])
    for b, row in enumerate(state.rows):
        row.seed, row.generator = seeds[b], engine.generator(seeds[b])
    decode(engine, state, 30, sampling=s)
    assert [r.tokens for r in rows] == [r.tokens for r in state.rows] == [r.tokens for r in fewer]
    assert len({tuple(r.tokens) for r in rows}) > len(prompts), "the two rollouts of a prompt should differ"
    again = generate(engine, ["12+3=\n"], 30, sampling=s, seeds=[11])
    assert again.tokens[0] == rows[0].tokens
    monkeypatch.setenv("STIR_SAMPLER", "dice")
    with pytest.raises(ValueError, match="STIR_SAMPLER='dice'"):
        Engine(tiny)
