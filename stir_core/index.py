"""Stage III: exact cosine top-k retrieval over a library, per (layer, control point).

Keys are L2-normalised once, in float32, and grouped by (layer, control point); a search is one matrix
product [Q, d] x [d, G] plus `topk`. With `center_keys` each group's mean raw key is subtracted from its
keys and from every query before normalising: delimiter states share a large common component, which
pushes every raw cosine towards 1 and makes retrieval nearly blind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stir_core.library import ToolLibrary


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale rows ([..., d]) to unit length; rows with norm below eps are scaled by 1/eps (zero stays zero)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


@dataclass
class IndexGroup:
    entries: torch.Tensor  # [G] int64, entry indices into the library
    keys: torch.Tensor  # [G, d_model] float32, unit rows (after centring when on)
    mean: torch.Tensor | None  # [d_model] float32, the group's mean raw key when centring, else None


class ToolIndex:
    """Exact top-k cosine search over a `ToolLibrary`, filtered by layer and control point."""

    def __init__(self, lib: ToolLibrary, center_keys: bool = False):
        self.lib, self.center_keys, self.d_model = lib, center_keys, lib.d_model
        keys = lib.keys.detach().to(torch.float32)
        layers = torch.from_numpy(lib.table["layer"].to_numpy(dtype=np.int64, copy=True))
        points = torch.from_numpy(lib.table["control_point"].to_numpy(dtype=np.int64, copy=True))
        self.groups: dict[tuple[int, int], IndexGroup] = {}
        pairs = torch.stack([layers, points], dim=1) if len(lib) else torch.zeros(0, 2, dtype=torch.long)
        for layer, m in torch.unique(pairs, dim=0).tolist():
            entries = ((layers == layer) & (points == m)).nonzero().flatten()
            k = keys[entries]
            mean = k.mean(0) if center_keys else None  # float32 sums are pairwise in torch: accurate
            self.groups[(layer, m)] = IndexGroup(entries, l2_normalize(k - mean if center_keys else k), mean)

    def __len__(self) -> int:
        return len(self.lib)

    def group_sizes(self) -> dict[tuple[int, int], int]:
        return {g: len(v.entries) for g, v in self.groups.items()}

    def search(
        self, query: torch.Tensor, *, layer: int, control_point: int, k: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query [d_model] or [Q, d_model] -> (sims [Q, k'], entry indices [Q, k']), k' = min(k, group size),
        best first. An unknown (layer, control point) gives shape [Q, 0]."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        q = query.detach().to(device="cpu", dtype=torch.float32)
        if q.ndim == 1:
            q = q.unsqueeze(0)
        if q.ndim != 2 or q.shape[1] != self.d_model:
            raise ValueError(
                f"query must be [d_model] or [Q, d_model] with d_model={self.d_model}, got {tuple(query.shape)}"
            )
        if not torch.isfinite(q).all():
            raise ValueError("query contains NaN/inf")
        group = self.groups.get((int(layer), int(control_point)))
        kk = 0 if group is None else min(k, len(group.entries))
        if kk == 0:
            return torch.zeros(q.shape[0], 0), torch.zeros(q.shape[0], 0, dtype=torch.long)
        if group.mean is not None:
            q = q - group.mean
        sims, pos = torch.topk(l2_normalize(q) @ group.keys.T, kk, dim=1, sorted=True)
        return sims, group.entries[pos]
