"""Stage III: exact cosine top-k retrieval over a library, per (layer, control point).

Keys are grouped by (layer, control point). A search scans a float16 copy of the group's unit keys (half
the bytes of float32: the scan of a big group is memory-bound; groups of at most SMALL_GROUP rows keep a
float32 copy, whose matrix-vector product has less fixed cost) and keeps every entry whose score, widened
by a proven error bound, could still reach the top k; that shortlist (usually k plus a few) is re-ranked
with float64 cosines from the library's own keys. Groups of at most EXACT_GROUP rows (the usual library)
keep float64 unit rows and are ranked directly: a few small operations, no bound needed. So the result is the exact top k, identical to a float64
brute force: best first, ties broken by the lower entry index.

With `center_keys` each group's mean raw key is subtracted from its keys and from every query before
normalising: delimiter states share a large common component, which pushes every raw cosine towards 1 and
makes retrieval nearly blind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stir_core.library.format import ToolLibrary

EPS = 1e-12  # a row with a smaller norm is scaled by 1/EPS (zero stays zero): its cosines are ~0
U16 = 2.0**-11  # float16 unit roundoff
CHUNK = 8192  # rows per float64 pass at build time: bounds the temporary memory to CHUNK x d x 8 bytes
# Groups up to this many rows scan in float32: torch's float16 matrix-vector product is parallelised even for
# a few rows, and on 2 busy cores its thread start-up cost dominated (0.3 ms for 43 rows vs 6 us in float32).
SMALL_GROUP = 4096
EXACT_GROUP = 512  # up to this many rows: float64 unit rows, ranked directly (at most 8 MiB at d=2,048)


def l2_normalize(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Scale rows ([..., d]) to unit length; rows with norm below eps are scaled by 1/eps (zero stays zero)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


@dataclass(kw_only=True)
class IndexGroup:
    entries: torch.Tensor  # [G] int64, entry indices into the library, ascending
    scan: torch.Tensor  # [G, d_model] the unit rows: float16, float32 up to SMALL_GROUP, float64 up to EXACT_GROUP
    norms: torch.Tensor  # [G] float64, norm of each (centred) raw key, clamped to EPS
    err: float  # max over rows of ||unit row - its scan copy||, measured in float64
    mean: torch.Tensor | None  # [d_model] float64, the group's mean raw key when centring, else None


class ToolIndex:
    """Exact top-k cosine search over a `ToolLibrary`, filtered by layer and control point."""

    def __init__(self, lib: ToolLibrary, center_keys: bool = False):
        self.lib, self.center_keys, self.d_model = lib, center_keys, lib.d_model
        self.keys = lib.keys.detach()  # [N, d_model]; re-ranking reads these rows in float64
        layers = torch.from_numpy(lib.table["layer"].to_numpy(dtype=np.int64, copy=True))
        points = torch.from_numpy(lib.table["control_point"].to_numpy(dtype=np.int64, copy=True))
        self.groups: dict[tuple[int, int], IndexGroup] = {}
        pairs = torch.stack([layers, points], dim=1) if len(lib) else torch.zeros(0, 2, dtype=torch.long)
        for layer, m in torch.unique(pairs, dim=0).tolist():
            entries = ((layers == layer) & (points == m)).nonzero().flatten()
            self.groups[(layer, m)] = self._build(entries)

    def _build(self, entries: torch.Tensor) -> IndexGroup:
        mean = None
        if self.center_keys:
            mean = sum(self.keys.index_select(0, c).double().sum(0) for c in entries.split(CHUNK)) / len(entries)
        g = len(entries)
        dtype = torch.float64 if g <= EXACT_GROUP else torch.float32 if g <= SMALL_GROUP else torch.float16
        scan = torch.empty(len(entries), self.d_model, dtype=dtype)
        norms = torch.empty(len(entries), dtype=torch.float64)
        err = 0.0
        for start, c in zip(range(0, len(entries), CHUNK), entries.split(CHUNK), strict=True):
            x = self.keys.index_select(0, c).double()
            if mean is not None:
                x -= mean
            n = torch.linalg.vector_norm(x, dim=1).clamp_min(EPS)
            unit = x / n[:, None]
            low = unit.to(dtype)
            scan[start : start + len(c)], norms[start : start + len(c)] = low, n
            err = max(err, torch.linalg.vector_norm(unit - low.double(), dim=1).max().item())
        return IndexGroup(entries=entries, scan=scan, norms=norms, err=err, mean=mean)

    def __len__(self) -> int:
        return len(self.lib)

    def group_sizes(self) -> dict[tuple[int, int], int]:
        return {g: len(v.entries) for g, v in self.groups.items()}

    def search(
        self, query: torch.Tensor, *, layer: int, control_point: int, k: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query [d_model] or [Q, d_model] -> (sims [Q, k'] float32, entry indices [Q, k'] int64),
        k' = min(k, group size), best first, ties by lower entry index. An unknown (layer, control point)
        gives shape [Q, 0]."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        q = query.detach().to(device="cpu", dtype=torch.float64)
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
        if kk == 0 or q.shape[0] == 0:
            return torch.zeros(q.shape[0], kk), torch.zeros(q.shape[0], kk, dtype=torch.long)
        if group.mean is not None:
            q = q - group.mean
        qnorm = torch.linalg.vector_norm(q, dim=1).clamp_min(EPS)
        unit = q / qnorm[:, None]  # [Q, d] float64
        if group.scan.dtype == torch.float64:  # exact: rank the float64 cosines of every row
            all_sims = (group.scan @ unit.T).T  # [Q, G]
            # a stable sort on -sims: entries ascend with the position, so ties keep the lower entry first
            order = torch.sort(-all_sims, dim=1, stable=True).indices[:, :kk]
            return all_sims.gather(1, order).float(), group.entries[order]
        low = unit.to(group.scan.dtype)
        qerr = torch.linalg.vector_norm(unit - low.double(), dim=1).tolist()  # [Q]
        sims, idx = [], []
        for r in range(q.shape[0]):
            # one matrix-vector product per query: torch's float16 gemv accumulates in float32 (checked
            # against float64 in tests/test_index.py), which the shortlist's error bound assumes
            approx = torch.mv(group.scan, low[r]).float()  # [G]
            pos = self._shortlist(approx, kk, group.err, qerr[r])
            s, e = self._rerank(group, pos, q[r], qnorm[r], kk)
            sims.append(s)
            idx.append(e)
        return torch.stack(sims).float(), torch.stack(idx)

    def _shortlist(self, approx: torch.Tensor, k: int, err: float, qerr: float) -> torch.Tensor:
        """Positions [C] whose true cosine may be in the top k, from scan scores approx [G] (float32).

        For a unit row u, its float16 copy h (||u - h|| <= err) and the unit query p with its float16 copy
        p16 (||p - p16|| = qerr), |u.p - h.p16| <= err + (1 + err) qerr; float32 accumulation of the d
        exact float16 products adds at most gamma_d ||h|| ||p16|| (gamma_d = d u32 / (1 - d u32)), and the
        float16 output rounding at most U16 |a| / (1 - U16) + 2^-25. So |approx - cosine| <= D + 2 U16 |a|.
        A float32 scan (h, p16 in float32, err and qerr measured the same way): gamma_d bounds a d-term dot
        product's rounding in any summation order, products included, and there is no output rounding, so
        the same bound holds, with the U16 terms as slack.
        """
        d = self.d_model
        gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
        big = (1 + err) * (1 + qerr)
        slack = 1e-9  # the float64 re-rank itself is off by ~1e-15, and the bound math here by less
        dd = err + (1 + err) * qerr + gamma * big + 2.0**-24 + slack
        kth = torch.topk(approx, k, sorted=True).values[-1].item()
        low = kth - dd - 2 * U16 * abs(kth)  # k entries have a true cosine >= low
        # keep a where a + dd + 2 U16 |a| >= low (monotone in a): solve for the smallest such a
        t = low - dd
        cut = t / (1 + 2 * U16) if t >= 0 else t / (1 - 2 * U16)
        return (approx >= cut - slack).nonzero().flatten()

    def _rerank(
        self, group: IndexGroup, pos: torch.Tensor, q: torch.Tensor, qnorm: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact float64 cosines of the shortlisted positions; the best k, ties by lower entry index."""
        entries = group.entries.index_select(0, pos)
        x = self.keys.index_select(0, entries).double()  # not keys[entries]: 1000x slower on CPU
        if group.mean is not None:
            x -= group.mean
        sims = (x @ q) / (group.norms.index_select(0, pos) * qnorm)  # [C]
        # entries ascend with pos, so a stable sort on -sims breaks ties by the lower entry index
        order = torch.sort(-sims, stable=True).indices[:k]
        return sims.index_select(0, order), entries.index_select(0, order)
