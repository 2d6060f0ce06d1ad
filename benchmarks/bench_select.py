"""Benchmark Stage II: the vectorised greedy quality-DPP against the naive algorithm.

The naive algorithm is the textbook one: a precomputed float64 Gram matrix, and at every step one
triangular solve per remaining candidate for its conditional variance. Both use the same tie rule, so the
picks must be identical; the script exits non-zero if they are not.

    .venv/bin/python benchmarks/bench_select.py            # N=2048, B=256, d=1536 (the issue's size)
    .venv/bin/python benchmarks/bench_select.py --quick    # N=512, B=64, d=384
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np
import scipy.linalg
import torch

from stir_core.select import MIN_VARIANCE, TIE_TOL, select_tools


def naive_dpp(
    keys: np.ndarray, q: np.ndarray, budget: int, lam: float, eps: float
) -> tuple[list[int], float]:
    """Greedy quality-DPP with a triangular solve per candidate per step (float64)."""
    x = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-300)
    gram = x @ x.T
    n = len(q)
    chol = np.zeros((budget, budget))
    chosen: list[int] = []
    free = np.ones(n, dtype=bool)
    gain = np.log1p(q)
    logdet = 0.0
    while len(chosen) < budget:
        t = len(chosen)
        best, best_i, best_s, best_z = -math.inf, -1, 0.0, None
        scores = {}
        for i in np.flatnonzero(free):
            if t:
                z = scipy.linalg.solve_triangular(
                    chol[:t, :t], gram[chosen, i], lower=True, check_finite=False
                )
                s = gram[i, i] + eps - z @ z
            else:
                z, s = np.zeros(0), gram[i, i] + eps
            if s > MIN_VARIANCE:
                scores[i] = (gain[i] + lam * math.log(s), s, z)
        if not scores:
            break
        best = max(v[0] for v in scores.values())
        best_i = min(i for i, v in scores.items() if v[0] >= best - TIE_TOL * max(1.0, abs(best)))
        _, best_s, best_z = scores[best_i]
        chol[t, :t], chol[t, t] = best_z, math.sqrt(best_s)
        chosen.append(int(best_i))
        free[best_i] = False
        logdet += math.log(best_s)
    return chosen, logdet


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--quick", action="store_true", help="N=512, B=64, d=384")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of the vectorised version (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, budget, d = (512, 64, 384) if args.quick else (args.n, args.budget, args.d)

    rng = np.random.default_rng(args.seed)
    keys = rng.standard_normal((n, d))
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)  # random unit keys
    q = rng.uniform(0.05, 1.0, n)
    print(f"N={n} candidates, B={budget}, d={d}, torch threads={torch.get_num_threads()}")

    select_tools(torch.from_numpy(keys), q, None, budget)  # warm-up (thread pools, allocator)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast = select_tools(torch.from_numpy(keys), q, None, budget)
        times.append(time.perf_counter() - t0)
    t_fast = statistics.median(times)
    print(f"vectorised: {t_fast * 1e3:9.1f} ms (median of {args.repeats}), logdet {fast.logdet:.6f}")

    t0 = time.perf_counter()
    slow_picks, slow_logdet = naive_dpp(keys, q, budget, 0.5, 1e-4)
    t_slow = time.perf_counter() - t0
    print(f"naive:      {t_slow * 1e3:9.1f} ms (one run), logdet {slow_logdet:.6f}")

    same = fast.indices == slow_picks
    print(f"speed-up: {t_slow / t_fast:.1f}x; identical picks: {same} ({len(fast.indices)} picked)")
    if not same:
        first = next(i for i, (a, b) in enumerate(zip(fast.indices, slow_picks, strict=False)) if a != b)
        print(
            f"first difference at step {first}: {fast.indices[first]} vs {slow_picks[first]}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
