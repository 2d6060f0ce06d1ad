"""Geometry of a tool library and of traces: projections, similarities, logit lens, comparisons.

Pure functions the app calls (numpy / torch in, numpy / dataclasses out); nothing here touches Streamlit.

- `project(x, method="pca"|"umap")`: 2-D/3-D projection of keys or vectors [N, d_model]. UMAP uses the
  cosine metric; below `UMAP_MIN_POINTS` points it falls back to PCA and says so in `Projection.note`.
- `cosine_matrix`, `nearest_neighbors`: exact cosine similarities (zero rows, e.g. anchors' vectors, have
  no direction: their similarities are NaN and they are never anyone's neighbour).
- `logit_lens`: the tokens a vector promotes and suppresses through the unembedding. With `final_norm`
  the vector is first passed through the *linear part* of the model's final norm, i.e. multiplied by its
  gain γ (and centred first for LayerNorm). Why: a tool Δ is a difference of residual states, so the norm's
  bias cancels, and adding Δ to a state h changes the normed state by about γ ⊙ Δ / scale(h); the positive
  scale does not change the ranking. Without `final_norm` the readout is the raw `W_U^T Δ`. The app shows
  the readout after the final norm (the default here).
- `diff_mask`, `score_matrix`, `paired_outcomes`: small comparisons the Playground and Evaluate pages draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from stir_core import backend

UMAP_MIN_POINTS = 10  # below this UMAP's neighbour graph is meaningless: fall back to PCA
PROJECTIONS = ("pca", "umap")


@dataclass
class Projection:
    """Low-dimensional coordinates of N points. coords: [N, n_components] float64."""

    coords: np.ndarray
    method: str  # the method actually used: "pca" | "umap"
    requested: str  # the method asked for
    note: str | None = None  # why the method differs from the request, or other caveats
    explained: np.ndarray | None = None  # PCA: explained-variance ratio per component [n_components]


def _as_matrix(x: Any, name: str = "x") -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, d], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def pca(x: Any, n_components: int = 2) -> Projection:
    """PCA by SVD of the centred data. x: [N, d] -> coords [N, n_components].

    Signs are fixed so that each component's largest-magnitude loading is positive (deterministic).
    Components beyond the data's rank are zero columns (with a note)."""
    a = _as_matrix(x)
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    n, d = a.shape
    if n == 0:
        raise ValueError("pca needs at least one point")
    centred = a - a.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(n_components, vt.shape[0])
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    signs[signs == 0] = 1.0
    coords = np.zeros((n, n_components))
    coords[:, :k] = u[:, :k] * s[:k] * signs
    total = float((s**2).sum())
    explained = np.zeros(n_components)
    if total > 0:
        explained[:k] = s[:k] ** 2 / total
    note = None
    if k < n_components or (total > 0 and np.count_nonzero(s[:n_components] > 1e-12 * s[0]) < n_components):
        note = f"the data span fewer than {n_components} dimensions; the extra axes are (near) zero"
    return Projection(coords, "pca", "pca", note, explained)


def umap_projection(
    x: Any, n_components: int = 2, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0
) -> Projection:
    """UMAP with the cosine metric (umap-learn, seeded: single-threaded and deterministic).

    x: [N, d] -> coords [N, n_components]. Fewer than `UMAP_MIN_POINTS` points: PCA, with a note.
    Rows must have non-zero norm (cosine is undefined for a zero vector)."""
    a = _as_matrix(x)
    if n_components not in (2, 3):
        raise ValueError(f"n_components must be 2 or 3, got {n_components}")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2, got {n_neighbors}")
    n = a.shape[0]
    if n < UMAP_MIN_POINTS:
        proj = pca(a, n_components) if n else Projection(np.zeros((0, n_components)), "pca", "umap")
        proj.requested = "umap"
        proj.note = f"{n} points are too few for UMAP (needs {UMAP_MIN_POINTS}); showing PCA instead"
        return proj
    if (np.linalg.norm(a, axis=1) == 0).any():
        raise ValueError("UMAP with the cosine metric needs non-zero rows (drop anchors' zero vectors first)")
    import warnings

    import umap  # lazy: importing umap-learn takes seconds (numba)

    # The exact cosine k-NN graph, computed here and handed to UMAP: exact for these sizes (as umap-learn is
    # below 4096 points) and it skips compiling umap's parallel neighbour search (about half the first call).
    k = min(n_neighbors, n - 1)
    unit, _ = _unit_rows(a)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    order = np.argsort(dist, axis=1, kind="stable")
    self_first = np.concatenate(
        [np.arange(n)[:, None], order[order != np.arange(n)[:, None]].reshape(n, n - 1)], 1
    )
    knn = self_first[:, :k]
    knn_dist = np.take_along_axis(dist, knn, axis=1).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" and small-graph notices
        reducer = umap.UMAP(
            n_components=n_components,
            n_neighbors=k,
            min_dist=min_dist,
            metric="cosine",
            random_state=seed,
            init="spectral",
            precomputed_knn=(knn, knn_dist, None),
        )
        coords = reducer.fit_transform(a.astype(np.float32)).astype(np.float64)
    return Projection(coords, "umap", "umap")


def project(
    x: Any,
    method: str = "pca",
    n_components: int = 2,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> Projection:
    """Dispatch to `pca` or `umap_projection`."""
    if method == "pca":
        return pca(x, n_components)
    if method == "umap":
        return umap_projection(x, n_components, n_neighbors, min_dist, seed)
    raise ValueError(f"unknown projection {method!r}; use one of {PROJECTIONS}")


def _unit_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norms = np.linalg.norm(a, axis=1)
    zero = norms == 0
    unit = a / np.where(zero, 1.0, norms)[:, None]
    return unit, zero


def cosine_matrix(x: Any) -> np.ndarray:
    """Cosine similarity of every pair of rows. x: [N, d] -> [N, N]; rows of norm 0 give NaN."""
    a = _as_matrix(x)
    unit, zero = _unit_rows(a)
    sims = np.clip(unit @ unit.T, -1.0, 1.0)
    sims[zero, :] = np.nan
    sims[:, zero] = np.nan
    return sims


def nearest_neighbors(x: Any, i: int, k: int = 5) -> list[tuple[int, float]]:
    """The k rows most cosine-similar to row i (itself and zero rows excluded), best first: [(row, sim)].
    Ties go to the lower row index."""
    a = _as_matrix(x)
    n = a.shape[0]
    if not 0 <= i < n:
        raise ValueError(f"row {i} is out of range for {n} rows")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    unit, zero = _unit_rows(a)
    if zero[i]:
        return []
    sims = unit @ unit[i]
    ok = ~zero
    ok[i] = False
    rows = np.flatnonzero(ok)
    order = np.lexsort((rows, -sims[rows]))[:k]
    return [(int(rows[j]), float(sims[rows[j]])) for j in order]


@dataclass
class LensReadout:
    """Tokens a vector promotes (largest logits) and suppresses (smallest), best first."""

    promoted: list[tuple[int, float]]  # (token id, logit)
    suppressed: list[tuple[int, float]]
    final_norm: bool  # whether the final norm's linear part was applied first
    texts: dict[int, str] = field(default_factory=dict)  # token id -> text, when a tokenizer was given


def logit_lens(
    vector: torch.Tensor,
    W_U: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    norm_kind: str | None = None,
    k: int = 10,
) -> LensReadout:
    """Read a direction through the unembedding. vector: [d_model]; W_U: [d_model, d_vocab].

    With `norm_kind` "rms" the vector is multiplied by `norm_weight` (γ) first; with "ln" it is centred,
    then multiplied by γ (the linear part of the final norm; see the module docstring). None: raw W_U^T v."""
    v = torch.as_tensor(vector).detach().float().cpu()
    w = torch.as_tensor(W_U).detach().float().cpu()
    if v.ndim != 1 or w.ndim != 2 or w.shape[0] != v.shape[0]:
        raise ValueError(
            f"need vector [d_model] and W_U [d_model, d_vocab], got {tuple(v.shape)} and {tuple(w.shape)}"
        )
    if not torch.isfinite(v).all():
        raise ValueError("vector contains NaN or inf")
    if norm_kind not in (None, "rms", "ln"):
        raise ValueError(f"unknown norm_kind {norm_kind!r}; use None, 'rms' or 'ln'")
    if norm_kind == "ln":
        v = v - v.mean()
    if norm_kind is not None and norm_weight is not None:
        v = v * torch.as_tensor(norm_weight).detach().float().cpu()
    logits = v @ w  # [d_vocab]
    k = min(k, logits.shape[0])
    top = torch.topk(logits, k)
    bottom = torch.topk(-logits, k)
    return LensReadout(
        [(int(i), float(s)) for s, i in zip(top.values, top.indices, strict=True)],
        [(int(i), -float(s)) for s, i in zip(bottom.values, bottom.indices, strict=True)],
        norm_kind is not None,
    )


def unembedding(model: Any) -> tuple[torch.Tensor, torch.Tensor | None, str | None]:
    """(W_U [d_model, d_vocab], final-norm gain γ [d_model] or None, norm kind "rms"/"ln"/None) of a
    `LoadedModel` (`backend.unembedding`)."""
    return backend.unembedding(model.bridge)


def lens_for_model(model: Any, vector: torch.Tensor, k: int = 10, final_norm: bool = True) -> LensReadout:
    """`logit_lens` through a loaded model's unembedding (after its final norm's linear part by default),
    with token texts filled in."""
    W_U, weight, kind = unembedding(model)
    out = logit_lens(vector, W_U, weight, kind if final_norm else None, k)
    ids = {i for i, _ in out.promoted + out.suppressed}
    out.texts = {i: model.tokenizer.decode([i]) for i in sorted(ids)}
    return out


# --- comparisons for the Playground and Evaluate pages ---------------------------------------------


def diff_mask(reference: list[int], tokens: list[int]) -> list[bool]:
    """Per token of `tokens`: True where it differs from `reference` at the same position (or the
    reference has ended)."""
    return [i >= len(reference) or t != reference[i] for i, t in enumerate(tokens)]


@dataclass
class ScoreMatrix:
    """Gate scores of a trace: rows are control points, columns candidates (plus the null action).

    z: [n_points, n_columns]; NaN where a candidate was not scored (anchors, or not retrieved there)."""

    row_labels: list[str]  # "m=1 @t12"
    col_labels: list[str]  # "null" then tool ids in first-seen order
    z: np.ndarray
    chosen: list[int | None]  # per row: column of the committed candidate, 0 for null, None when skipped


def score_matrix(trace: Any) -> ScoreMatrix:
    """The tokens × candidates score table of one `Trace` (rows: its gate decisions)."""
    cols: list[str] = ["null"]
    for d in trace.decisions:
        for c in d.candidates:
            if c.score is not None and c.tool_id not in cols:
                cols.append(c.tool_id)
    z = np.full((len(trace.decisions), len(cols)), np.nan)
    rows, chosen = [], []
    for r, d in enumerate(trace.decisions):
        rows.append(f"m={d.m} @t{d.token_index}")
        scored = any(c.score is not None for c in d.candidates)
        if scored:
            z[r, 0] = d.score_null
        for c in d.candidates:
            if c.score is not None:
                z[r, cols.index(c.tool_id)] = c.score
        if d.chosen is not None and d.chosen in cols:
            chosen.append(cols.index(d.chosen))
        else:
            chosen.append(0 if scored else None)
    return ScoreMatrix(rows, cols, z, chosen)


def paired_outcomes(examples: pd.DataFrame, baseline: str = "vanilla") -> pd.DataFrame:
    """Per (example, method ≠ baseline): both correctness values and the outcome vs the baseline.

    examples: one row per (example_id, method) with a boolean `correct`. Returns columns example_id, method,
    correct, baseline_correct, outcome ("win" | "loss" | "tie"); empty when the baseline is absent."""
    need = {"example_id", "method", "correct"}
    if not need <= set(examples.columns):
        raise ValueError(f"examples need columns {sorted(need)}, got {sorted(examples.columns)}")
    base = examples.loc[examples["method"] == baseline, ["example_id", "correct"]]
    base = base.rename(columns={"correct": "baseline_correct"})
    if base["example_id"].duplicated().any():
        raise ValueError(f"baseline {baseline!r} has more than one row for an example")
    other = examples.loc[examples["method"] != baseline, ["example_id", "method", "correct"]]
    out = other.merge(base, on="example_id", how="inner")
    c, b = out["correct"].astype(bool), out["baseline_correct"].astype(bool)
    out["outcome"] = np.where(c & ~b, "win", np.where(~c & b, "loss", "tie"))
    return out.reset_index(drop=True)


@dataclass
class TokenIntervention:
    """What acted on one generated token: the committed tool governing its segment (if any)."""

    tool: str | None  # tag of the committed tool, None under the null action / unsteered
    alpha: float  # α of that commit (0.0 when none)
    direct: bool  # True where the vector was added at this very token (TokenRecord.tool is set)
    added_norm: float  # ‖added vector‖ at this token (0.0 unless direct)
    m: int | None  # control point of the governing decision


def token_interventions(trace: Any) -> list[TokenIntervention]:
    """Per token of a `Trace`: the governing commit. A decision at token t governs tokens t..t+commit_tokens
    (its delimiter, re-run with the vector under `positions=last`, and the segment decoded after it)."""
    out = [
        TokenIntervention(t.tool, 0.0, t.tool is not None, float(t.added_norm), None) for t in trace.tokens
    ]
    for d in trace.decisions:
        if d.chosen is None:
            continue
        hi = min(len(out) - 1, d.token_index + d.commit_tokens)
        for i in range(max(0, d.token_index), hi + 1):
            rec = out[i]  # a direct add keeps its own tag (e.g. "random~<id>" for the random-vector ablation)
            out[i] = TokenIntervention(
                rec.tool if rec.direct else d.chosen, float(d.alpha), rec.direct, rec.added_norm, d.m
            )
    return out


def pareto_front(cost: list[float], value: list[float]) -> list[int]:
    """Indices of the points no other point beats (lower-or-equal cost and higher-or-equal value, one strictly),
    ordered by cost. NaN points are never on the front."""
    if len(cost) != len(value):
        raise ValueError("cost and value must have the same length")
    pts = [
        (float(c), float(v), i)
        for i, (c, v) in enumerate(zip(cost, value, strict=True))
        if np.isfinite(c) and np.isfinite(v)
    ]
    front = []
    for c, v, i in pts:
        dominated = any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for c2, v2, _ in pts)
        if not dominated:
            front.append((c, -v, i))
    return [i for _, _, i in sorted(front)]
