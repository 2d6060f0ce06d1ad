"""Projections and similarities of library keys or vectors `[N, d_model]`: PCA, UMAP, cosines, neighbours.

- `project(x, method="pca"|"umap")`: 2-D/3-D projection. UMAP uses the cosine metric; below
  `UMAP_MIN_POINTS` points it falls back to PCA and says so in `Projection.note`.
- `cosine_matrix`, `nearest_neighbors`: exact cosine similarities (zero rows, e.g. anchors' vectors, have
  no direction: their similarities are NaN and they are never anyone's neighbour).

Pure functions (numpy / torch in, numpy / dataclasses out); nothing here touches Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

UMAP_MIN_POINTS = 10  # below this UMAP's neighbour graph is meaningless: fall back to PCA
PROJECTIONS = ("pca", "umap")


@dataclass(kw_only=True)
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
    return Projection(coords=coords, method="pca", requested="pca", note=note, explained=explained)


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
        proj = pca(a, n_components) if n else Projection(coords=np.zeros((0, n_components)), method="pca",
                                                         requested="umap")
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
    return Projection(coords=coords, method="umap", requested="umap")


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
