"""Library diff against brute force: cosines from normalised dot products, the matching from trying every
assignment of a small case, and a library against itself."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from stir_core.analysis.diff import diff_libraries
from stir_core.cli import app
from stir_core.library.format import ToolLibrary

runner = CliRunner()


def _lib(n: int, d: int = 16, seed: int = 0, prefix: str = "t", layer: int = 1) -> ToolLibrary:
    g = torch.Generator().manual_seed(seed)
    rows = [{"id": f"{prefix}{i}", "kind": "correction", "layer": layer, "control_point": 1 + i % 2, "quality": 1.0}
            for i in range(n)]
    rows.append({"id": f"{prefix}-anchor", "kind": "anchor", "layer": layer, "control_point": 1, "quality": 0.1})
    vecs = torch.cat([torch.randn(n, d, generator=g), torch.zeros(1, d)])
    return ToolLibrary.from_records(torch.randn(n + 1, d, generator=g), vecs, rows, {"d_model": d, "n_layers": 4})


def test_cosines_and_matching_against_brute_force():
    a, b = _lib(4, seed=1, prefix="a"), _lib(3, seed=2, prefix="b")
    d = diff_libraries(a, b, "vectors", min_cos=-1.0)
    va, vb = a.vectors[:4].double().numpy(), b.vectors[:3].double().numpy()
    ref = (va / np.linalg.norm(va, axis=1, keepdims=True)) @ (vb / np.linalg.norm(vb, axis=1, keepdims=True)).T
    np.testing.assert_allclose(d.cos, ref, atol=1e-5)
    best = max(itertools.permutations(range(4), 3), key=lambda p: sum(ref[p[j], j] for j in range(3)))
    want = {(f"a{best[j]}", f"b{j}") for j in range(3)}
    assert set(zip(d.pairs["id_a"], d.pairs["id_b"], strict=True)) == want
    assert len(d.only_a) == 1 and d.only_b.empty  # 4 vs 3: one A entry is left over
    strict = diff_libraries(a, b, "vectors", min_cos=0.99)
    assert strict.pairs.empty and len(strict.only_a) == 4 and len(strict.only_b) == 3
    np.testing.assert_allclose(strict.only_b["best_cos"], ref.max(0), atol=1e-5)


def test_a_library_matches_itself_and_keys_include_anchors():
    a = _lib(5)
    d = diff_libraries(a, a)
    assert (d.pairs["id_a"] == d.pairs["id_b"]).all() and len(d.pairs) == 5
    assert np.allclose(d.pairs["cos"], 1.0, atol=1e-5)
    assert len(diff_libraries(a, a, "keys").a_ids) == 6
    with pytest.raises(ValueError, match="different widths"):
        diff_libraries(a, _lib(2, d=8))


def test_cli_writes_csv_and_figure(tmp_path):
    _lib(4, seed=1).save(tmp_path / "a")
    _lib(4, seed=1, layer=2).save(tmp_path / "b")
    out = tmp_path / "diff"
    r = runner.invoke(app, ["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "4 matched" in r.output
    cos = pd.read_csv(out / "cosine.csv", index_col=0)
    assert cos.shape == (4, 4) and np.allclose(np.diag(cos.to_numpy()), 1.0, atol=1e-5)
    pairs = pd.read_csv(out / "pairs.csv")
    assert (pairs["layer_a"] == 1).all() and (pairs["layer_b"] == 2).all()
    html = (out / "diff.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html>") and "plotly" in html.lower()
    r = runner.invoke(app, ["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output
    r = runner.invoke(app, ["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--force"])
    assert r.exit_code == 0, r.output
