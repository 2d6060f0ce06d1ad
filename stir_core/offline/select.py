"""Stage II: choose a library of at most B entries from the mined candidates.

`dpp` maximises  sum_{i in S} log1p(q_i) + lam * log det(K_S + eps I)  greedily, K the cosine Gram matrix
of the L2-normalised keys (a zero key has K_ii = 0, so it only ever contributes eps). At each step it adds
the candidate with the largest gain  log1p(q_i) + lam * log(s_i),  s_i = K_ii + eps - ||L^-1 K_{S,i}||^2
the conditional variance given the current Cholesky factor L of K_S + eps I; candidates with
s_i <= 1e-12 are skipped and it stops at B or when nothing qualifies.

Vectorised like fast greedy MAP (Chen et al. 2018): every candidate i keeps c_i = L^-1 K_{S,i} (column i
of a [B, N] matrix C) and s_i. Adding j appends the row e = (K_{j,:} + eps 1_j - c_j^T C) / sqrt(s_j) to C
and updates s <- s - e^2 for all candidates at once: O(N |S|) per step (plus O(N d) for K's row when the
Gram matrix is not cached), O(N B) memory, no triangular solves.

Ties: gains within `TIE_TOL` of the best (relative, floor 1) count as equal and the lowest index wins, so
float rounding in how s_i is computed cannot change the pick.

`min_per_control_point = k` forces, before anything else, the k highest-quality entries of every control
point m >= 1 (order: control point ascending, then quality descending, then index); they come first in the
pick order and count towards B. What happens next is the `force_mode` switch:
- `reference` (default, the authors' `stir/offline/stage2.py::select_library`): the DPP runs on the
  remaining entries alone, with budget B - |forced|, as if the forced entries did not exist — its gains are
  NOT conditioned on them, so it may pick entries that duplicate a forced one.
- `conditioned` (ours): the forced entries enter through the same incremental factor as greedy picks, so
  every later gain is conditioned on them and nothing near-duplicates a forced entry.
Either way `logdet`/`objective` are those of the whole chosen set, forced entries included. If the forced
entries alone exceed B, that is an error (the reference silently truncates the forced list instead). `top`
and `random` honour the forcing the same way in both modes, then fill up from the remaining entries by
quality (stable) or a seeded permutation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stir_core.library.format import ToolLibrary

METHODS = ("dpp", "top", "random")
FORCE_MODES = ("reference", "conditioned")
MIN_VARIANCE = 1e-12
TIE_TOL = 1e-9
GRAM_CACHE_BYTES = 256 * 2**20  # precompute the float64 Gram matrix up to N = 5,792 candidates


@dataclass(kw_only=True)
class SelectionResult:
    indices: list[int]  # chosen candidates in pick order
    logdet: float  # log det(K_S + eps I) of the chosen set
    objective: float  # sum log1p(q) + lam * logdet
    n_candidates: int
    n_dropped: int  # candidates not chosen
    n_forced: int = 0  # of `indices`, how many came from min_per_control_point


def _unit_rows(keys: torch.Tensor) -> torch.Tensor:
    """[N, d] -> rows scaled to unit length in float64; zero rows stay zero."""
    x = keys.to(torch.float64)
    n = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.where(n > 0, x / n.clamp_min(1e-300), torch.zeros_like(x))


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def forced_entries(quality: np.ndarray, control_points: np.ndarray, k: int) -> list[int]:
    """The top-k by quality of every control point m >= 1 (m ascending, q descending, index ascending).

    m <= 0 is skipped as in the reference (no offline control point exists before the first segment)."""
    out: list[int] = []
    for m in np.unique(control_points[control_points >= 1]):
        idx = np.flatnonzero(control_points == m)
        order = idx[np.argsort(-quality[idx], kind="stable")]
        out.extend(int(i) for i in order[:k])
    return out


class _Greedy:
    """Incremental Cholesky state over all candidates (see the module docstring)."""

    def __init__(self, x: torch.Tensor, eps: float, budget: int):
        self.x, self.eps = x, eps  # x: [N, d] unit rows, float64
        n = x.shape[0]
        # Rows of K: one GEMM up front while the N x N Gram fits GRAM_CACHE_BYTES (compute-bound, far faster
        # than B memory-bound mat-vecs over x); beyond that one mat-vec per pick, memory O(N d + N B).
        self.gram = x @ x.T if n * n * 8 <= GRAM_CACHE_BYTES else None
        self.var = (x * x).sum(1) + eps  # s_i, [N]
        self.c = torch.zeros(budget, n, dtype=torch.float64)  # column i: L^-1 K_{S,i}, [B, N]
        self.free = torch.ones(n, dtype=torch.bool)
        self.picks: list[int] = []
        self.logdet = 0.0

    def add(self, j: int) -> None:
        t, s = len(self.picks), float(self.var[j])
        if s <= MIN_VARIANCE:
            raise ValueError(
                f"candidate {j} has conditional variance {s:.3g} <= {MIN_VARIANCE}; cannot add it"
            )
        k_j = self.gram[j].clone() if self.gram is not None else self.x @ self.x[j]  # K_{j,:}, [N]
        k_j[j] += self.eps
        # the factor's new row, for every candidate at once: (K_ji + eps [i=j] - <c_j, c_i>) / sqrt(s_j)
        e = (k_j - torch.mv(self.c[:t].T, self.c[:t, j])) / math.sqrt(s)
        self.c[t] = e
        self.var -= e * e
        self.free[j] = False
        self.picks.append(j)
        self.logdet += math.log(s)

    def best(self, gain: torch.Tensor, lam: float) -> int | None:
        """argmax of gain + lam*log(s) over free candidates with s > MIN_VARIANCE (lowest index on ties)."""
        ok = self.free & (self.var > MIN_VARIANCE)
        if not ok.any():
            return None
        score = torch.where(ok, gain + lam * torch.log(self.var.clamp_min(MIN_VARIANCE)), -math.inf)
        top = score.max()
        tied = ok & (score >= top - TIE_TOL * max(1.0, abs(float(top))))
        return int(tied.nonzero()[0])


def select_tools(
    keys: torch.Tensor | np.ndarray,
    quality: Sequence[float] | np.ndarray | torch.Tensor,
    control_points: Sequence[int] | np.ndarray | torch.Tensor | None,
    budget: int,
    method: str = "dpp",
    lam: float = 0.5,
    eps: float = 1e-4,
    min_per_control_point: int = 0,
    seed: int = 0,
    force_mode: str = "reference",
) -> SelectionResult:
    """Pick at most `budget` of N candidates. keys: [N, d]; quality: [N] (> -1); control_points: [N].

    `force_mode` only matters for `dpp` with `min_per_control_point > 0` (see the module docstring)."""
    raw = torch.as_tensor(keys).detach().cpu()
    if raw.ndim != 2:
        raise ValueError(f"keys must be [N, d], got shape {tuple(raw.shape)}")
    if not torch.isfinite(raw).all():
        raise ValueError("keys contain NaN/inf")
    x, n = _unit_rows(raw), raw.shape[0]
    q = _numpy(quality).astype(np.float64).reshape(-1)
    if q.shape[0] != n:
        raise ValueError(f"quality has {q.shape[0]} values for {n} keys")
    if not np.isfinite(q).all() or (q <= -1).any():
        raise ValueError("quality must be finite and > -1 (log1p(q) is used)")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if force_mode not in FORCE_MODES:
        raise ValueError(f"force_mode must be one of {FORCE_MODES}, got {force_mode!r}")
    if budget < 0 or min_per_control_point < 0 or eps < 0:
        raise ValueError("budget, min_per_control_point and eps must be >= 0")
    budget = min(int(budget), n)

    forced: list[int] = []
    if min_per_control_point > 0:
        if control_points is None:
            raise ValueError("min_per_control_point needs control_points")
        cp = _numpy(control_points).reshape(-1)
        if cp.shape[0] != n:
            raise ValueError(f"control_points has {cp.shape[0]} values for {n} keys")
        forced = forced_entries(q, cp, min_per_control_point)
        if len(forced) > budget:
            raise ValueError(
                f"min_per_control_point={min_per_control_point} forces {len(forced)} entries over "
                f"{len(np.unique(cp))} control points, more than the budget {budget}"
            )

    if method == "dpp" and (force_mode == "conditioned" or not forced):
        picks, logdet = _greedy_dpp(x, q, budget, lam, eps, forced)
    elif method == "dpp":  # reference: a plain DPP over the rest, blind to the forced entries
        taken = set(forced)
        rest = [i for i in range(n) if i not in taken]
        local, _ = _greedy_dpp(x[rest], q[rest], budget - len(forced), lam, eps, [])
        picks = forced + [rest[i] for i in local]
        logdet = gram_logdet(x, picks, eps)
    else:
        order = (
            np.argsort(-q, kind="stable") if method == "top" else np.random.default_rng(seed).permutation(n)
        )
        taken = set(forced)
        picks = forced + [int(i) for i in order if int(i) not in taken][: budget - len(forced)]
        logdet = gram_logdet(x, picks, eps)
    objective = float(np.log1p(q[picks]).sum()) + lam * logdet
    return SelectionResult(indices=picks, logdet=logdet, objective=objective, n_candidates=n,
                           n_dropped=n - len(picks), n_forced=len(forced))


def _greedy_dpp(x: torch.Tensor, q: np.ndarray, budget: int, lam: float, eps: float,
                forced: list[int]) -> tuple[list[int], float]:
    """Greedy quality-DPP over unit rows x [N, d], conditioned on `forced` (added first); picks and log-det."""
    state = _Greedy(x, eps, budget)
    for j in forced:
        state.add(j)
    gain = torch.from_numpy(np.log1p(q))
    while len(state.picks) < budget and (j := state.best(gain, lam)) is not None:
        state.add(j)
    return state.picks, state.logdet


def gram_logdet(unit_keys: torch.Tensor, indices: Sequence[int], eps: float) -> float:
    """log det(K_S + eps I) for unit-row keys [N, d]; -inf when the matrix is singular."""
    if len(indices) == 0:
        return 0.0
    xs = unit_keys[torch.as_tensor(list(indices), dtype=torch.long)].to(torch.float64)
    sign, logabs = torch.linalg.slogdet(xs @ xs.T + eps * torch.eye(len(indices), dtype=torch.float64))
    return float(logabs) if float(sign) > 0 else -math.inf


def select_library(
    lib: ToolLibrary,
    budget: int,
    method: str = "dpp",
    lam: float = 0.5,
    eps: float = 1e-4,
    min_per_control_point: int = 0,
    seed: int = 0,
    force_mode: str = "reference",
) -> tuple[ToolLibrary, SelectionResult]:
    """Select from a candidate library; the result's manifest records the selection under "selection"."""
    res = select_tools(
        lib.keys,
        lib.table["quality"].to_numpy(),
        lib.table["control_point"].to_numpy(),
        budget,
        method=method,
        lam=lam,
        eps=eps,
        min_per_control_point=min_per_control_point,
        seed=seed,
        force_mode=force_mode,
    )
    out = lib.subset(res.indices)
    out.manifest["selection"] = {
        "method": method,
        "budget": budget,
        "lam": lam,
        "eps": eps,
        "min_per_control_point": min_per_control_point,
        "force_mode": force_mode,
        "seed": seed,
        "n_candidates": res.n_candidates,
        "n_kept": len(res.indices),
        "n_dropped": res.n_dropped,
        "n_forced": res.n_forced,
        "logdet": res.logdet if math.isfinite(res.logdet) else None,  # -inf only with eps = 0 (strict JSON)
        "objective": res.objective if math.isfinite(res.objective) else None,
    }
    return out, res
