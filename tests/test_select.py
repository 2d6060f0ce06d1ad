"""Stage II selection: the vectorised greedy quality-DPP against a naive reference and brute force."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stir_core.library.format import ToolLibrary
from stir_core.offline import select as select_mod
from stir_core.offline.select import TIE_TOL, select_library, select_tools

REFERENCE_CASES = json.loads((Path(__file__).parent / "fixtures" / "dpp_reference_picks.json").read_text())["cases"]


def unit(keys: torch.Tensor) -> torch.Tensor:
    x = keys.double()
    n = x.norm(dim=1, keepdim=True)
    return torch.where(n > 0, x / n, torch.zeros_like(x))


def naive_greedy(keys, q, budget, lam, eps, forced=()):
    """The textbook algorithm: one triangular solve per candidate per step, float64."""
    x = unit(torch.as_tensor(keys))
    gram = x @ x.T
    chosen: list[int] = []
    chol = torch.zeros(0, 0, dtype=torch.float64)

    def schur(i):
        if not chosen:
            return float(gram[i, i] + eps), torch.zeros(0, dtype=torch.float64)
        z = torch.linalg.solve_triangular(chol, gram[chosen, i][:, None], upper=False)[:, 0]
        return float(gram[i, i] + eps - z @ z), z

    def add(j):
        nonlocal chol
        s, z = schur(j)
        t = len(chosen)
        grown = torch.zeros(t + 1, t + 1, dtype=torch.float64)
        grown[:t, :t], grown[t, :t], grown[t, t] = chol, z, math.sqrt(s)
        chol = grown
        chosen.append(j)

    for j in forced:
        add(j)
    while len(chosen) < budget:
        scores = {}
        for i in range(len(q)):
            if i not in chosen:
                s, _ = schur(i)
                if s > 1e-12:
                    scores[i] = math.log1p(q[i]) + lam * math.log(s)
        if not scores:
            break
        best = max(scores.values())
        add(min(i for i, v in scores.items() if v >= best - TIE_TOL * max(1.0, abs(best))))
    return chosen


def hard_case(seed: int, n: int = 40, d: int = 12):
    """Keys with a shared component, an exact duplicate direction, a near-duplicate, a zero key; tied qualities."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, d, generator=g, dtype=torch.float64) + 2.0 * torch.randn(
        d, generator=g, dtype=torch.float64
    )
    keys[1] = 3.0 * keys[0]
    keys[2] = keys[0] + 1e-6 * torch.randn(d, generator=g, dtype=torch.float64)
    keys[3] = 0.0
    q = np.random.default_rng(seed).choice([0.1, 0.5, 1.0, 2.0], n)
    cps = np.random.default_rng(seed + 1).integers(1, 5, n)
    return keys, q, cps


def subset_logdet(keys, idx, eps):
    x = unit(torch.as_tensor(keys))[idx]
    return float(torch.logdet(x @ x.T + eps * torch.eye(len(idx), dtype=torch.float64)))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("lam", "eps"), [(0.5, 1e-4), (2.0, 1e-2), (0.1, 1e-6)])
@pytest.mark.parametrize(("n", "d", "budget"), [(40, 12, 30), (24, 48, 20)])
@pytest.mark.parametrize("gram_cache", [True, False])  # Gram rows precomputed, or one mat-vec per pick
def test_dpp_matches_naive_reference(seed, lam, eps, n, d, budget, gram_cache, monkeypatch):
    if not gram_cache:
        monkeypatch.setattr(select_mod, "GRAM_CACHE_BYTES", 0)
    keys, q, _ = hard_case(seed, n, d)  # with B > d the late picks are conditioned on a near-singular set
    res = select_tools(keys, q, None, budget, lam=lam, eps=eps)
    assert res.indices == naive_greedy(keys, q, budget, lam, eps)
    assert len(res.indices) == budget and res.n_dropped == len(q) - budget
    assert res.logdet == pytest.approx(subset_logdet(keys, res.indices, eps), rel=1e-9, abs=1e-9)
    assert res.objective == pytest.approx(np.log1p(q[res.indices]).sum() + lam * res.logdet, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_float32_keys_match_naive(seed):
    keys, q, _ = hard_case(seed, n=60, d=24)
    k32 = keys.float()
    res = select_tools(k32, q, None, 20)
    assert res.indices == naive_greedy(k32.double(), q, 20, 0.5, 1e-4)


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: f"seed{c['seed']}-k{c['min_per_control_point']}")
def test_default_picks_match_the_authors_selection_code(case):
    """The authors' picks, in order, on raw keys — plain DPP and DPP with min_per_control_point > 0."""
    res = select_tools(np.array(case["keys"]), np.array(case["quality"]), np.array(case["control_point"]),
                       case["budget"], lam=case["lam"], eps=case["eps"],
                       min_per_control_point=case["min_per_control_point"])
    assert res.indices == case["picks_in_order"]


def test_conditioned_forcing_differs_from_the_reference_on_the_fixture():
    # The switch is not a no-op: on every forced fixture case, conditioning changes the picks.
    forced_cases = [c for c in REFERENCE_CASES if c["min_per_control_point"] > 0]
    assert forced_cases
    for c in forced_cases:
        res = select_tools(np.array(c["keys"]), np.array(c["quality"]), np.array(c["control_point"]), c["budget"],
                           lam=c["lam"], eps=c["eps"], min_per_control_point=c["min_per_control_point"],
                           force_mode="conditioned")
        assert res.indices != c["picks_in_order"]


def reference_forced_then_rest(keys, q, cps, budget, k, lam, eps):
    """The reference's forcing, spelled out: top-k per m >= 1, then the naive DPP on what is left."""
    forced = []
    for m in sorted(set(cps.tolist())):
        if m >= 1:
            forced += sorted(np.flatnonzero(cps == m).tolist(), key=lambda i: (-q[i], i))[:k]
    rest = [i for i in range(len(q)) if i not in forced]
    local = naive_greedy(torch.as_tensor(keys)[rest], q[rest], budget - len(forced), lam, eps)
    return forced, forced + [rest[i] for i in local]


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("seed", [3, 7])
def test_min_per_control_point_reference_forcing_is_blind_to_forced(k, seed):
    keys, q, cps = hard_case(seed)
    cps[:3] = 0  # m = 0 entries are never forced (as in the reference)
    q = q + np.arange(len(q)) * 1e-3
    forced, expect = reference_forced_then_rest(keys, q, cps, 25, k, 0.5, 1e-4)
    res = select_tools(keys, q, cps, 25, min_per_control_point=k)
    assert res.indices == expect and res.n_forced == len(forced)
    assert res.logdet == pytest.approx(subset_logdet(keys, res.indices, 1e-4), rel=1e-9)
    assert res.objective == pytest.approx(np.log1p(q[res.indices]).sum() + 0.5 * res.logdet, rel=1e-12)


@pytest.mark.parametrize("k", [1, 2])
def test_min_per_control_point_forced_first_then_greedy(k):
    keys, q, cps = hard_case(7)
    q = q + np.arange(len(q)) * 1e-3  # distinct qualities so the forced set is unambiguous
    res = select_tools(keys, q, cps, 25, min_per_control_point=k, force_mode="conditioned")
    forced = []
    for m in sorted(set(cps.tolist())):
        members = sorted(np.flatnonzero(cps == m).tolist(), key=lambda i: (-q[i], i))
        forced += members[:k]
    assert res.indices[: len(forced)] == forced and res.n_forced == len(forced)
    assert res.indices == naive_greedy(keys, q, 25, 0.5, 1e-4, forced=forced)
    picked = cps[res.indices]
    for m in set(cps.tolist()):
        assert (picked == m).sum() >= min(k, (cps == m).sum())
    assert res.logdet == pytest.approx(subset_logdet(keys, res.indices, 1e-4), rel=1e-9)


def test_min_per_control_point_rescues_a_low_quality_control_point():
    keys, q, cps = hard_case(3)
    cps = np.where(np.arange(len(q)) < 36, 1, 2)
    q = np.where(cps == 2, 0.0, q + 1.0)  # control point 2 only has zero-quality entries
    plain = select_tools(keys, q, cps, 5)
    assert 2 not in cps[plain.indices]
    for mode in ("reference", "conditioned"):
        forced = select_tools(keys, q, cps, 5, min_per_control_point=1, force_mode=mode)
        assert 2 in cps[forced.indices] and len(forced.indices) == 5


def test_min_per_control_point_over_budget_is_an_error():
    keys, q, cps = hard_case(0)
    with pytest.raises(ValueError, match="more than the budget"):
        select_tools(keys, q, cps, 3, min_per_control_point=2)
    with pytest.raises(ValueError, match="needs control_points"):
        select_tools(keys, q, None, 3, min_per_control_point=1)


@pytest.mark.parametrize("seed", range(5))
def test_brute_force_optimum_on_orthogonal_keys(seed):
    # Orthogonal (or zero) keys make K_S + eps I diagonal, so the objective is a sum over entries and the
    # greedy is provably optimal; check it against every subset of size B.
    rng = np.random.default_rng(seed)
    n, budget = 8, 3
    basis = torch.linalg.qr(
        torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    )[0]
    keys = basis * torch.as_tensor(rng.uniform(0.5, 3.0, n))[:, None]
    keys[rng.integers(n)] = 0.0  # a zero key only contributes log(eps)
    q = rng.choice([0.0, 0.3, 0.3, 1.0, 4.0], n)
    lam, eps = 0.5, 1e-4
    best = max(
        itertools.combinations(range(n), budget),
        key=lambda s: np.log1p(q[list(s)]).sum() + lam * subset_logdet(keys, list(s), eps),
    )
    res = select_tools(keys, q, None, budget, lam=lam, eps=eps)
    best_obj = np.log1p(q[list(best)]).sum() + lam * subset_logdet(keys, list(best), eps)
    assert len(set(res.indices)) == budget
    assert res.objective == pytest.approx(best_obj, rel=1e-10)


def test_ties_go_to_the_lowest_index():
    keys = torch.eye(6, dtype=torch.float64)  # orthogonal: every candidate has the same conditional variance
    q = np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    assert select_tools(keys, q, None, 6).indices == [1, 3, 5, 0, 2, 4]
    dup = torch.ones(4, 3)  # identical keys, identical quality
    assert select_tools(dup, np.ones(4), None, 2).indices == [0, 1]


def test_budget_edges_and_stopping():
    keys, q, _ = hard_case(1, n=10)
    assert select_tools(keys, q, None, 0).indices == []
    res = select_tools(keys, q, None, 50)
    assert sorted(res.indices) == list(range(10)) and res.n_dropped == 0
    # eps = 0 and two copies of one direction: the second copy has zero conditional variance and is skipped
    two = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    res = select_tools(two, [1.0, 1.0], None, 2, eps=0.0)
    assert res.indices == [0] and res.n_dropped == 1


def test_top_and_random():
    keys, q, cps = hard_case(2)
    top = select_tools(keys, q, cps, 10, method="top")
    assert top.indices == np.argsort(-q, kind="stable")[:10].tolist()
    assert top.logdet == pytest.approx(subset_logdet(keys, top.indices, 1e-4), rel=1e-9)
    r1, r2 = (select_tools(keys, q, cps, 10, method="random", seed=s).indices for s in (1, 1))
    r3 = select_tools(keys, q, cps, 10, method="random", seed=2).indices
    assert r1 == r2 and r1 != r3 and len(set(r1)) == 10
    forced = select_tools(keys, q, cps, 10, method="random", seed=1, min_per_control_point=1)
    assert set(cps[forced.indices]) == set(cps.tolist())


def test_bad_inputs():
    keys, q, _ = hard_case(0, n=5)
    with pytest.raises(ValueError, match="quality"):
        select_tools(keys, np.array([0.1, -1.0, 0.2, 0.3, 0.4]), None, 2)
    with pytest.raises(ValueError, match="method"):
        select_tools(keys, q, None, 2, method="greedy")
    with pytest.raises(ValueError, match="force_mode"):
        select_tools(keys, q, None, 2, force_mode="blind")
    with pytest.raises(ValueError, match="4 values for 5"):
        select_tools(keys, q[:4], None, 2)
    nan_keys = keys.clone()
    nan_keys[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        select_tools(nan_keys, q, None, 2)


def test_select_library_subsets_and_records():
    keys, q, cps = hard_case(4, n=12)
    vectors = torch.randn(12, keys.shape[1], generator=torch.Generator().manual_seed(0))
    rows = [
        dict(id=f"t{i}", kind="correction", layer=1, control_point=int(cps[i]), quality=float(q[i]))
        for i in range(12)
    ]
    lib = ToolLibrary.from_records(keys, vectors, rows, {"model_id": "toy"})
    out, res = select_library(lib, 5)
    assert out.table["id"].tolist() == [f"t{i}" for i in res.indices]
    assert torch.equal(out.keys, lib.keys[res.indices]) and torch.equal(out.vectors, lib.vectors[res.indices])
    assert res.indices == select_tools(lib.keys, q, cps, 5).indices
    sel = out.manifest["selection"]
    assert sel["n_candidates"] == 12 and sel["n_dropped"] == 7 and sel["logdet"] == res.logdet
    out.validate()
