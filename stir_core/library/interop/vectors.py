"""Pick library entries and combine them into one direction per layer (the exported control vector).

Combination rule (a group of tools → one vector per layer): `mean` (default) is the plain mean of the
selected corrections' Δ at each layer. It is the vector our `static` baseline commits (`StaticPolicy`:
mean of the corrections at its layer), so exporting every correction of a library and loading it in
llama.cpp reproduces the static baseline's direction (llama.cpp adds it at every token, not only at
control points). `quality_mean` weights each Δ by its quality q (q > 0 for mined tools); `sum` adds them
(llama.cpp's own rule for several directions at one layer, which grows with the group size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stir_core.library.format import ToolLibrary

RULES = ("mean", "quality_mean", "sum")
KIND_FILTERS = ("correction", "anchor", "all")


@dataclass(kw_only=True)
class Directions:
    """One direction per layer, ready to export. `directions[layer]` is float32 [d_model]."""

    directions: dict[int, np.ndarray]
    d_model: int
    tool_ids: list[str] = field(default_factory=list)
    rule: str = "mean"
    scale: float = 1.0


def pick(lib: ToolLibrary, ids: Sequence[str] | None = None, kind: str = "correction") -> list[int]:
    """Row indices of the selected entries: the given ids (in that order), else every entry of `kind`."""
    if kind not in KIND_FILTERS:
        raise ValueError(f"--kind must be one of {', '.join(KIND_FILTERS)}, got {kind!r}")
    table = lib.table
    if ids:
        where = {t: i for i, t in enumerate(table["id"].tolist())}
        missing = [t for t in ids if t not in where]
        if missing:
            raise ValueError(f"tool id(s) not in the library: {', '.join(missing[:5])}")
        rows = [where[t] for t in ids]
        if kind != "all":
            rows = [i for i in rows if table["kind"].iloc[i] == kind]
    else:
        rows = list(range(len(table))) if kind == "all" else np.flatnonzero(table["kind"] == kind).tolist()
    return rows


def combine(lib: ToolLibrary, rows: Sequence[int], rule: str = "mean", scale: float = 1.0) -> Directions:
    """Per-layer combination of the selected corrections' vectors (anchors carry no vector: refused)."""
    if rule not in RULES:
        raise ValueError(f"--combine must be one of {', '.join(RULES)}, got {rule!r}")
    if not np.isfinite(scale) or scale == 0:
        raise ValueError(f"--scale must be a finite non-zero number, got {scale}")
    table = lib.table
    corr = [int(i) for i in rows if table["kind"].iloc[int(i)] == "correction"]
    if not corr:
        raise ValueError("the selection has no corrections (anchors have zero vectors: nothing to export)")
    vecs = lib.vectors.double().numpy()
    by_layer: dict[int, list[int]] = {}
    for i in corr:
        by_layer.setdefault(int(table["layer"].iloc[i]), []).append(i)
    out = {}
    for layer, idx in sorted(by_layer.items()):
        v = vecs[idx]
        if rule == "sum":
            d = v.sum(0)
        elif rule == "quality_mean":
            q = table["quality"].to_numpy()[idx].astype(float)
            if not (q > 0).all():
                raise ValueError("quality_mean needs positive qualities; use --combine mean")
            d = (q[:, None] * v).sum(0) / q.sum()
        else:
            d = v.mean(0)
        out[layer] = (scale * d).astype(np.float32)
    return Directions(directions=out, d_model=lib.d_model, tool_ids=[str(table["id"].iloc[i]) for i in corr],
                      rule=rule, scale=scale)
