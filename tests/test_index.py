"""Stage III retrieval: the matrix-product top-k against a brute-force loop over entries."""

from __future__ import annotations

import math

import pytest
import torch

from stir_core.library import index as index_module
from stir_core.library.format import ToolLibrary
from stir_core.library.index import ToolIndex, l2_normalize

D = 24


def make_lib(seed: int = 0) -> ToolLibrary:
    """Entries over layers {2, 5} x control points {1, 2, 3}, keys sharing a large common component."""
    g = torch.Generator().manual_seed(seed)
    common = 10.0 * torch.randn(D, generator=g)
    rows, keys, vectors = [], [], []
    for i in range(90):
        layer, m = (2, 5)[i % 2], 1 + (i // 2) % 3
        kind = "anchor" if i % 5 == 0 else "correction"
        keys.append(common + torch.randn(D, generator=g))
        vectors.append(torch.zeros(D) if kind == "anchor" else torch.randn(D, generator=g))
        rows.append(dict(id=f"e{i}", kind=kind, layer=layer, control_point=m, quality=0.5))
    return ToolLibrary.from_records(torch.stack(keys), torch.stack(vectors), rows, {"n_layers": 6})


def brute_force(lib: ToolLibrary, query: torch.Tensor, layer: int, m: int, k: int, center: bool):
    """Loop over every entry, keep the group's, cosine in float64, sort."""
    members = [
        i for i in range(len(lib)) if lib.table["layer"][i] == layer and lib.table["control_point"][i] == m
    ]
    mean = sum(lib.keys[i].double() for i in members) / len(members) if center else 0.0
    q = query.double() - mean
    scored = []
    for i in members:
        key = lib.keys[i].double() - mean
        scored.append((float(key @ q) / (float(key.norm()) * float(q.norm())), i))
    scored.sort(key=lambda t: -t[0])
    return scored[:k]


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize(("layer", "m", "k"), [(2, 1, 8), (5, 3, 4), (2, 2, 100)])
def test_search_equals_brute_force(center, layer, m, k):
    lib = make_lib()
    index = ToolIndex(lib, center_keys=center)
    g = torch.Generator().manual_seed(1)
    queries = lib.keys.mean(0) + torch.randn(5, D, generator=g)
    sims, idx = index.search(queries, layer=layer, control_point=m, k=k)
    group_size = 15
    assert sims.shape == idx.shape == (5, min(k, group_size))
    for r in range(5):
        ref = brute_force(lib, queries[r], layer, m, k, center)
        assert idx[r].tolist() == [i for _, i in ref]
        assert sims[r].tolist() == pytest.approx([s for s, _ in ref], abs=1e-5)
        assert all(
            lib.table["layer"][i] == layer and lib.table["control_point"][i] == m for i in idx[r].tolist()
        )


def test_centring_spreads_the_similarities():
    lib = make_lib()
    q = lib.keys[0] + 0.1 * torch.randn(D, generator=torch.Generator().manual_seed(3))
    raw, _ = ToolIndex(lib).search(q, layer=2, control_point=1, k=15)
    centred, _ = ToolIndex(lib, center_keys=True).search(q, layer=2, control_point=1, k=15)
    assert raw.min() > 0.95  # the common component makes every raw cosine near 1
    assert centred.max() - centred.min() > 0.5


def test_single_query_unknown_group_and_bad_query(monkeypatch):
    lib = make_lib()
    index = ToolIndex(lib)
    sims, idx = index.search(lib.keys[3], layer=5, control_point=2, k=1)
    assert idx.tolist() == [[3]] and sims[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    sims, idx = index.search(torch.randn(4, D), layer=3, control_point=1)
    assert sims.shape == idx.shape == (4, 0) and idx.dtype == torch.long
    sims, idx = index.search(torch.randn(D), layer=2, control_point=9)
    assert sims.shape == (1, 0)
    for exact in (512, 0):  # an empty batch of queries, on either path
        monkeypatch.setattr(index_module, "EXACT_GROUP", exact)
        sims, idx = ToolIndex(lib).search(torch.zeros(0, D), layer=2, control_point=1, k=3)
        assert sims.shape == idx.shape == (0, 3)
    with pytest.raises(ValueError, match="d_model=24"):
        index.search(torch.randn(D + 1), layer=2, control_point=1)
    with pytest.raises(ValueError, match="NaN"):
        index.search(torch.full((D,), float("nan")), layer=2, control_point=1)
    assert sum(index.group_sizes().values()) == len(lib)


def test_empty_library():
    index = ToolIndex(ToolLibrary.empty(D))
    sims, idx = index.search(torch.randn(2, D), layer=0, control_point=1)
    assert sims.shape == idx.shape == (2, 0)


def test_zero_query_and_zero_key_give_zero_similarity():
    lib = make_lib()
    keys = lib.keys.clone()
    keys[0] = 0.0
    zero_key = ToolLibrary.from_records(keys, lib.vectors, lib.table.to_dict("records"), {"n_layers": 6})
    sims, idx = ToolIndex(zero_key).search(torch.zeros(D), layer=2, control_point=1, k=3)
    assert torch.isfinite(sims).all() and (sims == 0).all()
    sims, idx = ToolIndex(zero_key).search(torch.randn(D), layer=2, control_point=1, k=15)
    assert sims[0, idx[0].tolist().index(0)].item() == 0.0


def test_l2_normalize():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]])
    y = l2_normalize(x)
    assert torch.isfinite(y).all()
    assert y[0].tolist() == pytest.approx([0.6, 0.8])
    assert y[1].tolist() == [0.0, 0.0]
    batch = torch.randn(3, 4, 5)
    assert torch.linalg.vector_norm(l2_normalize(batch), dim=-1).flatten().tolist() == pytest.approx(
        [1.0] * 12
    )
    assert not math.isnan(l2_normalize(torch.zeros(7)).sum().item())


def _lib_from_keys(keys: torch.Tensor, layers: list[int], points: list[int]) -> ToolLibrary:
    rows = [
        dict(id=f"e{i}", kind="anchor", layer=layer, control_point=m, quality=0.5)
        for i, (layer, m) in enumerate(zip(layers, points, strict=True))
    ]
    return ToolLibrary.from_records(keys, torch.zeros_like(keys), rows, {"n_layers": 8})


def _brute_ids(keys: torch.Tensor, members: list[int], query: torch.Tensor, k: int, center: bool) -> list[int]:
    """Float64 cosines by an explicit loop, best first, ties by the lower entry index."""
    mean = keys[members].double().mean(0) if center else torch.zeros(keys.shape[1], dtype=torch.float64)
    q = query.double() - mean
    scored = []
    for i in members:
        key = keys[i].double() - mean
        scored.append((-float((key * q).sum() / (key.norm().clamp_min(1e-12) * q.norm().clamp_min(1e-12))), i))
    return [i for _, i in sorted(scored)[:k]]


SCANS = {"float64": (10_000, 10_000), "float32-scan": (0, 10_000), "float16-scan": (0, 0)}  # EXACT, SMALL


@pytest.mark.parametrize("scan", list(SCANS))
@pytest.mark.parametrize("center", [False, True])
def test_near_ties_below_float16_resolution_are_ranked_exactly(center, scan, monkeypatch):
    """Keys that differ by less than the scan can see: the shortlist must widen, the order stays exact."""
    monkeypatch.setattr(index_module, "EXACT_GROUP", SCANS[scan][0])
    monkeypatch.setattr(index_module, "SMALL_GROUP", SCANS[scan][1])
    g = torch.Generator().manual_seed(7)
    n, d = 3000, 64
    base = torch.randn(d, generator=g)
    keys = base + 1e-4 * torch.randn(n, d, generator=g)  # every cosine within ~1e-7 of the others
    keys[100:110] = keys[5]  # exact duplicates: true ties, broken by the lower entry index
    layers, points = [i % 2 for i in range(n)], [1 + i % 3 for i in range(n)]
    lib = _lib_from_keys(keys, layers, points)
    index = ToolIndex(lib, center_keys=center)
    assert str(index.groups[(0, 1)].scan.dtype) == "torch." + scan.removesuffix("-scan")
    queries = torch.cat([keys[[5, 100]], base + 1e-4 * torch.randn(3, d, generator=g)])
    for layer, m in [(0, 1), (1, 2), (0, 3)]:
        members = [i for i in range(n) if layers[i] == layer and points[i] == m]
        sims, idx = index.search(queries, layer=layer, control_point=m, k=8)
        for r in range(len(queries)):
            assert idx[r].tolist() == _brute_ids(keys, members, queries[r], 8, center)


@pytest.mark.parametrize("scan", list(SCANS))
def test_random_groups_at_width_512_equal_brute_force(scan, monkeypatch):
    """A wider, bigger case like the benchmark's (random keys, several groups), batch equals one by one."""
    monkeypatch.setattr(index_module, "EXACT_GROUP", SCANS[scan][0])
    monkeypatch.setattr(index_module, "SMALL_GROUP", SCANS[scan][1])
    g = torch.Generator().manual_seed(11)
    n, d = 4000, 512
    keys = torch.randn(n, d, generator=g)
    layers, points = [3 + i % 2 for i in range(n)], [1 + (i // 2) % 4 for i in range(n)]
    index = ToolIndex(_lib_from_keys(keys, layers, points))
    assert str(index.groups[(3, 1)].scan.dtype) == "torch." + scan.removesuffix("-scan")
    queries = torch.randn(4, d, generator=g)
    for layer, m in [(3, 1), (4, 4)]:
        members = [i for i in range(n) if layers[i] == layer and points[i] == m]
        sims, idx = index.search(queries, layer=layer, control_point=m, k=8)
        for r in range(4):
            assert idx[r].tolist() == _brute_ids(keys, members, queries[r], 8, False)
            one_s, one_i = index.search(queries[r], layer=layer, control_point=m, k=8)
            assert torch.equal(one_i[0], idx[r]) and torch.equal(one_s[0], sims[r])
        ref = keys[idx[0]].double() @ queries[0].double() / (keys[idx[0]].double().norm(dim=1) * queries[0].double().norm())
        assert sims[0].tolist() == pytest.approx(ref.tolist(), abs=1e-7)


def test_float16_scan_error_is_within_the_shortlist_bound():
    """The bound in ToolIndex._shortlist assumes torch's float16 matrix-vector product accumulates in
    float32 and rounds once to float16: check that against float64 on the same float16 inputs."""
    g = torch.Generator().manual_seed(3)
    d = 2048
    h = l2_normalize(torch.randn(5000, d, generator=g)).half()
    h[:10] = l2_normalize(torch.ones(10, d)).half()  # cosines near 1: the largest output rounding
    p = l2_normalize(torch.randn(d, generator=g)).half()
    p_ones = l2_normalize(torch.ones(d)).half()
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    for q in (p, p_ones):
        a = torch.mv(h, q).double()
        exact = h.double() @ q.double()
        bound = gamma * h.double().norm(dim=1) * q.double().norm() + 2.0**-11 * a.abs() / (1 - 2.0**-11) + 2.0**-25
        assert ((a - exact).abs() <= bound).all()
        # the float32 scan of small groups: no output rounding, gamma_d covers products and sums
        h32, q32 = l2_normalize(torch.randn(300, d, generator=g)), q.float()
        a = torch.mv(h32, q32).double()
        exact = h32.double() @ q32.double()
        assert ((a - exact).abs() <= gamma * h32.double().norm(dim=1) * q32.double().norm()).all()
    for q in (p, p_ones):
        a = torch.mv(h, q).double()
        exact = h.double() @ q.double()
        bound = gamma * h.double().norm(dim=1) * q.double().norm() + 2.0**-11 * a.abs() / (1 - 2.0**-11) + 2.0**-25
        assert ((a - exact).abs() <= bound).all()
