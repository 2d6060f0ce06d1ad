"""stir_core.analysis (projection, lens, views) against references computed another way (scikit-learn, the HF modules, brute force)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import cosine_similarity

from stir_core.analysis import lens, outcomes, projection, views
from stir_core.analysis.evaluate import mcnemar
from stir_core.online.trace import Candidate, GateDecision, TokenRecord, Trace


def _clusters(n_per: int = 12, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight clusters of directions (cosine-separated), at random radii."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:3] * 5
    x = np.concatenate([c + 0.3 * rng.normal(size=(n_per, d)) for c in centres])
    x *= rng.uniform(0.5, 3.0, size=(len(x), 1))  # radii differ: only the direction carries the cluster
    return x, np.repeat(np.arange(3), n_per)


def test_pca_matches_sklearn_up_to_sign():
    x = np.random.default_rng(1).normal(size=(40, 9)) @ np.diag(np.linspace(3, 0.2, 9))
    ours = projection.pca(x, 3)
    ref = PCA(n_components=3, svd_solver="full").fit(x)
    ref_coords = ref.transform(x)
    for j in range(3):
        sign = np.sign(ours.coords[:, j] @ ref_coords[:, j])
        np.testing.assert_allclose(ours.coords[:, j], sign * ref_coords[:, j], atol=1e-9)
    np.testing.assert_allclose(ours.explained, ref.explained_variance_ratio_, rtol=1e-9)
    assert ours.method == "pca" and ours.note is None
    # deterministic sign rule: each component's largest |loading| is positive, so a flipped copy of the data
    # along any axis projects to the same coordinates up to that rule (re-running gives identical output)
    np.testing.assert_array_equal(projection.pca(x, 3).coords, ours.coords)


def test_pca_rank_deficient_says_so():
    t = np.linspace(-1, 1, 7)[:, None]
    x = t @ np.array([[1.0, 2.0, -1.0]])  # points on a line
    p = projection.pca(x, 2)
    assert p.note is not None and "fewer than 2" in p.note
    assert np.allclose(p.coords[:, 1], 0, atol=1e-9)
    np.testing.assert_allclose(np.abs(p.coords[:, 0]), np.abs(t[:, 0]) * math.sqrt(6), atol=1e-9)


@pytest.mark.slow
def test_umap_separates_cosine_clusters_and_is_seeded():
    x, labels = _clusters()
    a = projection.umap_projection(x, 2, n_neighbors=8, seed=3)
    assert a.method == "umap" and a.coords.shape == (36, 2) and a.note is None
    # every point's nearest neighbour in the embedding is from its own (cosine) cluster
    dist = np.linalg.norm(a.coords[:, None] - a.coords[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert (labels[dist.argmin(1)] == labels).all()
    b = projection.umap_projection(x, 2, n_neighbors=8, seed=3)
    np.testing.assert_array_equal(a.coords, b.coords)


def test_umap_falls_back_to_pca_for_few_points():
    x = np.random.default_rng(0).normal(size=(projection.UMAP_MIN_POINTS - 1, 5))
    p = projection.project(x, "umap", 2)
    assert p.method == "pca" and p.requested == "umap"
    assert "too few" in p.note
    np.testing.assert_allclose(p.coords, projection.pca(x, 2).coords)


def test_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown projection"):
        projection.project(np.ones((3, 2)), "tsne")
    with pytest.raises(ValueError, match="NaN"):
        projection.pca(np.array([[1.0, np.nan], [0.0, 1.0]]))
    x = np.random.default_rng(0).normal(size=(20, 4))
    x[3] = 0
    with pytest.raises(ValueError, match="non-zero rows"):
        projection.umap_projection(x)


def test_cosine_matrix_matches_sklearn_and_blanks_zero_rows():
    x = np.random.default_rng(2).normal(size=(8, 5))
    np.testing.assert_allclose(projection.cosine_matrix(x), cosine_similarity(x), atol=1e-12)
    x[2] = 0
    sims = projection.cosine_matrix(torch.tensor(x))
    assert np.isnan(sims[2]).all() and np.isnan(sims[:, 2]).all()
    keep = [0, 1, 3, 4, 5, 6, 7]
    np.testing.assert_allclose(sims[np.ix_(keep, keep)], cosine_similarity(x[keep]), atol=1e-12)


def test_nearest_neighbors_equal_brute_force():
    x = np.random.default_rng(3).normal(size=(15, 6))
    x[4] = 0
    for i in (0, 7, 14):
        sims = []
        for j in range(15):
            if j in (i, 4):
                continue
            cos = sum(a * b for a, b in zip(x[i], x[j], strict=True)) / (
                np.linalg.norm(x[i]) * np.linalg.norm(x[j])
            )
            sims.append((-cos, j))
        ref = [(j, -c) for c, j in sorted(sims)[:5]]
        got = projection.nearest_neighbors(x, i, 5)
        assert [j for j, _ in got] == [j for j, _ in ref]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in ref], atol=1e-12)
    assert projection.nearest_neighbors(x, 4, 5) == []  # a zero row has no direction
    with pytest.raises(ValueError, match="out of range"):
        projection.nearest_neighbors(x, 15)


def test_logit_lens_matches_the_models_own_modules(tiny):
    hf = tiny.bridge.original_model
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0)) * 4
    with torch.no_grad():
        raw_ref = hf.lm_head(v)  # [d_vocab]
        normed_ref = hf.lm_head(hf.model.norm(v[None])[0])  # RMSNorm(v) = γ ⊙ v / rms(v)
    raw = lens.lens_for_model(tiny, v, k=6, final_norm=False)
    normed = lens.lens_for_model(tiny, v, k=6, final_norm=True)
    assert [i for i, _ in raw.promoted] == torch.topk(raw_ref, 6).indices.tolist()
    assert [i for i, _ in raw.suppressed] == torch.topk(-raw_ref, 6).indices.tolist()
    np.testing.assert_allclose([s for _, s in raw.promoted], torch.topk(raw_ref, 6).values.numpy(), rtol=1e-4)
    assert [i for i, _ in normed.promoted] == torch.topk(normed_ref, 6).indices.tolist()
    assert [i for i, _ in normed.suppressed] == torch.topk(-normed_ref, 6).indices.tolist()
    # after the norm the readout is the module's output up to one positive scale (1 / rms(v))
    ratio = np.array([s for _, s in normed.promoted]) / torch.topk(normed_ref, 6).values.numpy()
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert ratio[0] > 0 and normed.final_norm and not raw.final_norm
    assert set(normed.texts) == {i for i, _ in normed.promoted + normed.suppressed}
    assert normed.texts[normed.promoted[0][0]] == tiny.tokenizer.decode([normed.promoted[0][0]])


def test_logit_lens_layernorm_is_the_linear_part_of_layer_norm():
    g = torch.Generator().manual_seed(1)
    d, vocab = 12, 30
    W, gamma, v = (
        torch.randn(d, vocab, generator=g),
        torch.rand(d, generator=g) + 0.5,
        torch.randn(d, generator=g),
    )
    ref = torch.nn.functional.layer_norm(v, (d,), weight=gamma, bias=torch.zeros(d)) @ W
    out = lens.logit_lens(v, W, gamma, "ln", k=5)
    assert [i for i, _ in out.promoted] == torch.topk(ref, 5).indices.tolist()
    with pytest.raises(ValueError, match="d_model"):
        lens.logit_lens(torch.zeros(d + 1), W)
    with pytest.raises(ValueError, match="norm_kind"):
        lens.logit_lens(v, W, gamma, "batchnorm")


def test_diff_mask():
    assert views.diff_mask([1, 2, 3], [1, 5, 3, 4]) == [False, True, False, True]
    assert views.diff_mask([], [7]) == [True]


def _trace() -> Trace:
    """Tokens 0..9; decisions at token 2 (commits tool a, 4 tokens), token 7 (null: anchor won)."""
    toks = [
        TokenRecord(
            index=i,
            token_id=10 + i,
            text="x\n" if i in (2, 7) else "x",
            logprob=-0.1 * i,
            segment=int(i > 2) + int(i > 7),
            tool="a" if i == 2 else None,
            added_norm=1.5 if i == 2 else 0.0,
            is_delimiter=i in (2, 7),
        )
        for i in range(10)
    ]
    d1 = GateDecision(
        m=1,
        token_index=2,
        query_layers=[1],
        candidates=[
            Candidate(entry=0, tool_id="a", kind="correction", layer=1, sim=0.9, quality=0.5, value=0.45,
                      previewed=True, probe_text="p", probe_logprob=-1.0, gain=0.2, score=0.47),
            Candidate(entry=1, tool_id="b", kind="correction", layer=1, sim=0.8, quality=0.5, value=0.40,
                      previewed=True, probe_text="q", probe_logprob=-1.2, gain=0.0, score=0.40),
            Candidate(entry=2, tool_id="z", kind="anchor", layer=1, sim=0.7, quality=0.1, value=0.07),
        ],
        null_value=0.07,
        score_null=0.07,
        chosen="a",
        chosen_entry=0,
        reason="committed",
        alpha=0.47,
        layer=1,
        added_norm=1.5,
        commit_tokens=4,
    )
    d2 = GateDecision(
        m=2,
        token_index=7,
        query_layers=[1],
        candidates=[
            Candidate(entry=1, tool_id="b", kind="correction", layer=1, sim=0.6, quality=0.5, value=0.3,
                      previewed=True, probe_text="q", probe_logprob=-1.0, gain=-0.5, score=0.25),
            Candidate(entry=2, tool_id="z", kind="anchor", layer=1, sim=0.9, quality=0.4, value=0.36),
        ],
        null_value=0.36,
        score_null=0.36,
        reason="anchor_won",
        commit_tokens=2,
    )
    return Trace(method="stir", prompt="p", completion="x" * 10, tokens=toks, decisions=[d1, d2],
                 probe_tokens=12)


def test_score_matrix_holds_every_score_once():
    t = _trace()
    sm = views.score_matrix(t)
    assert sm.col_labels == ["null", "a", "b"] and sm.row_labels == ["m=1 @t2", "m=2 @t7"]
    for r, d in enumerate(t.decisions):
        assert sm.z[r, 0] == d.score_null
        for c in d.candidates:
            if c.score is not None:
                assert sm.z[r, sm.col_labels.index(c.tool_id)] == c.score
    assert np.isnan(sm.z[1, 1])  # "a" was not retrieved at m=2
    assert sm.chosen == [1, 0]


def test_token_interventions_cover_each_commit():
    t = _trace()
    ivs = views.token_interventions(t)
    governed = [i for i, iv in enumerate(ivs) if iv.tool == "a"]
    assert governed == list(range(2, 2 + 4 + 1))  # the delimiter and the 4 committed tokens
    assert [i for i, iv in enumerate(ivs) if iv.direct] == [2] and ivs[2].added_norm == 1.5
    assert all(iv.alpha == 0.47 and iv.m == 1 for iv in ivs[2:7])
    assert all(iv.tool is None for iv in ivs[7:])


def test_paired_outcomes_agree_with_mcnemar():
    rng = np.random.default_rng(4)
    base, other = rng.random(30) < 0.5, rng.random(30) < 0.6
    ex = pd.DataFrame(
        {
            "example_id": [f"e{i}" for i in range(30)] * 2,
            "method": ["vanilla"] * 30 + ["stir"] * 30,
            "correct": np.concatenate([base, other]),
        }
    )
    out = outcomes.paired_outcomes(ex.sample(frac=1.0, random_state=0))
    ref = mcnemar(base.tolist(), other.tolist())
    assert (out["outcome"] == "win").sum() == ref["wins"]
    assert (out["outcome"] == "loss").sum() == ref["losses"]
    assert len(out) == 30 and set(out["method"]) == {"stir"}
    with pytest.raises(ValueError, match="columns"):
        outcomes.paired_outcomes(ex.drop(columns=["correct"]))


def test_pareto_front_equals_brute_force():
    rng = np.random.default_rng(5)
    cost, value = rng.random(25).tolist(), rng.random(25).tolist()
    cost[3] = float("nan")
    front = outcomes.pareto_front(cost, value)
    for i in range(25):
        if math.isnan(cost[i]):
            assert i not in front
            continue
        beaten = any(
            cost[j] <= cost[i] and value[j] >= value[i] and (cost[j] < cost[i] or value[j] > value[i])
            for j in range(25)
            if not math.isnan(cost[j])
        )
        assert (i in front) == (not beaten)
    assert [cost[i] for i in front] == sorted(cost[i] for i in front)
