"""Compare two libraries (two layers, two seeds, ours vs an imported vector): the cosine matrix of their
vectors (or keys), matched pairs, and what each has that the other lacks.

Matching: a one-to-one assignment that maximises the total cosine (Hungarian, `scipy.optimize.
linear_sum_assignment`); an assigned pair counts as matched when its cosine is ≥ `min_cos`. Every entry left
unmatched is "only in A" / "only in B". Layers are not required to agree (comparing layers is a use case);
each row says both layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy.optimize import linear_sum_assignment

from stir_core.analysis.projection import cosine_matrix
from stir_core.io import atomic
from stir_core.library.format import ToolLibrary

SOURCES = ("vectors", "keys")


@dataclass(kw_only=True)
class LibraryDiff:
    a_rows: list[int]  # library rows compared (corrections for "vectors", all entries for "keys")
    b_rows: list[int]
    a_ids: list[str]
    b_ids: list[str]
    cos: np.ndarray  # [len(a_rows), len(b_rows)]
    pairs: pd.DataFrame  # id_a, id_b, layer_a, layer_b, m_a, m_b, cos (matched, best first)
    only_a: pd.DataFrame  # id, layer, m, best_cos (its best cosine to anything in B)
    only_b: pd.DataFrame
    source: str
    min_cos: float


def _rows(lib: ToolLibrary, source: str) -> list[int]:
    if source == "keys":
        return list(range(len(lib)))
    return np.flatnonzero(lib.table["kind"].to_numpy() == "correction").tolist()


def diff_libraries(a: ToolLibrary, b: ToolLibrary, source: str = "vectors", min_cos: float = 0.5) -> LibraryDiff:
    """Cosine matrix, matched pairs and the unmatched entries of each side."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if a.d_model != b.d_model:
        raise ValueError(f"the libraries have different widths (d_model {a.d_model} vs {b.d_model})")
    if not -1.0 <= min_cos <= 1.0:
        raise ValueError(f"min_cos must lie in [-1, 1], got {min_cos}")
    ra, rb = _rows(a, source), _rows(b, source)
    xa = (a.vectors if source == "vectors" else a.keys)[ra]
    xb = (b.vectors if source == "vectors" else b.keys)[rb]
    # One matrix over both sets, then the off-diagonal block: the same cosine as geometry's everywhere else.
    cos = cosine_matrix(np.concatenate([xa.numpy(), xb.numpy()]))[: len(ra), len(ra):] if ra and rb \
        else np.zeros((len(ra), len(rb)))
    ta, tb = a.table, b.table
    ids_a, ids_b = ta["id"].astype(str).iloc[ra].tolist(), tb["id"].astype(str).iloc[rb].tolist()
    pairs, used_a, used_b = [], set(), set()
    if cos.size:
        ia, ib = linear_sum_assignment(-cos)
        for i, j in zip(ia.tolist(), ib.tolist(), strict=True):
            if cos[i, j] >= min_cos:
                used_a.add(i)
                used_b.add(j)
                pairs.append({"id_a": ids_a[i], "id_b": ids_b[j], "layer_a": int(ta["layer"].iat[ra[i]]),
                              "layer_b": int(tb["layer"].iat[rb[j]]), "m_a": int(ta["control_point"].iat[ra[i]]),
                              "m_b": int(tb["control_point"].iat[rb[j]]), "cos": float(cos[i, j])})
    pairs_df = pd.DataFrame(pairs, columns=["id_a", "id_b", "layer_a", "layer_b", "m_a", "m_b", "cos"])
    pairs_df = pairs_df.sort_values("cos", ascending=False, kind="stable").reset_index(drop=True)

    def lacking(t, rows, ids, used, best):
        keep = [k for k in range(len(rows)) if k not in used]
        return pd.DataFrame({"id": [ids[k] for k in keep], "layer": [int(t["layer"].iat[rows[k]]) for k in keep],
                             "m": [int(t["control_point"].iat[rows[k]]) for k in keep],
                             "best_cos": [float(best[k]) if len(best) else float("nan") for k in keep]},
                            columns=["id", "layer", "m", "best_cos"])

    best_a = cos.max(1) if cos.shape[1] else np.full(len(ra), np.nan)
    best_b = cos.max(0) if cos.shape[0] else np.full(len(rb), np.nan)
    return LibraryDiff(a_rows=ra, b_rows=rb, a_ids=ids_a, b_ids=ids_b, cos=cos, pairs=pairs_df,
                       only_a=lacking(ta, ra, ids_a, used_a, best_a),
                       only_b=lacking(tb, rb, ids_b, used_b, best_b), source=source, min_cos=min_cos)


def diff_figure(d: LibraryDiff, name_a: str = "A", name_b: str = "B", max_side: int = 200) -> go.Figure:
    """Heatmap of the cosine matrix (up to `max_side` entries a side), matched pairs circled."""
    na, nb = min(len(d.a_ids), max_side), min(len(d.b_ids), max_side)
    fig = go.Figure(go.Heatmap(z=d.cos[:na, :nb], x=d.b_ids[:nb], y=d.a_ids[:na], zmin=-1, zmax=1,
                               colorscale="RdBu_r", colorbar={"title": "cos"},
                               hovertemplate="A %{y}<br>B %{x}<br>cos %{z:.3f}<extra></extra>"))
    shown = d.pairs[d.pairs["id_a"].isin(d.a_ids[:na]) & d.pairs["id_b"].isin(d.b_ids[:nb])]
    fig.add_trace(go.Scatter(x=shown["id_b"], y=shown["id_a"], mode="markers", name=f"matched (cos ≥ {d.min_cos:g})",
                             marker={"symbol": "circle-open", "size": 9, "color": "black", "line": {"width": 1.5}}))
    fig.update_layout(title=f"{d.source} cosine: {name_a} ({len(d.a_ids)}) vs {name_b} ({len(d.b_ids)}); "
                            f"{len(d.pairs)} matched, {len(d.only_a)} only in {name_a}, {len(d.only_b)} only in {name_b}",
                      xaxis={"title": name_b, "showticklabels": nb <= 40},
                      yaxis={"title": name_a, "showticklabels": na <= 40, "autorange": "reversed"},
                      template="plotly_white", height=700, legend={"orientation": "h", "y": -0.08})
    return fig


def save_diff(d: LibraryDiff, out: str | Path, name_a: str = "A", name_b: str = "B") -> list[Path]:
    """cosine.csv (rows: A ids, columns: B ids), pairs.csv, only_a.csv, only_b.csv and diff.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [atomic.write_text(out / "cosine.csv", pd.DataFrame(d.cos, index=d.a_ids, columns=d.b_ids).to_csv()),
             atomic.write_text(out / "pairs.csv", d.pairs.to_csv(index=False)),
             atomic.write_text(out / "only_a.csv", d.only_a.to_csv(index=False)),
             atomic.write_text(out / "only_b.csv", d.only_b.to_csv(index=False)),
             atomic.write_text(out / "diff.html", diff_figure(d, name_a, name_b).to_html(include_plotlyjs=True))]
    return files
