"""Benchmark Stage III: exact top-k cosine retrieval latency on CPU.

All N keys sit in one (layer, control point) group, the worst case: every search scans them all. The
library is built directly (no validation, anchors only, vectors a zero view) because the index reads only
keys, layers and control points and 100,000 x 2,048 float32 vectors would double the memory for nothing.

    .venv/bin/python benchmarks/bench_retrieval.py                 # N=100,000, d=2,048, k=8
    .venv/bin/python benchmarks/bench_retrieval.py --n 20000       # smaller
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial

import pandas as pd
import torch

from stir_core.index import ToolIndex, l2_normalize
from stir_core.library import ToolLibrary


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n, d, k = args.n, args.d, args.k
    g = torch.Generator().manual_seed(args.seed)
    keys = torch.randn(n, d, generator=g)
    table = pd.DataFrame({"layer": [0] * n, "control_point": [1] * n})
    lib = ToolLibrary(keys, torch.zeros(1, d).expand(n, d), table, {"d_model": d})
    print(f"N={n:,} keys, d={d:,}, k={k}, torch threads={torch.get_num_threads()}")
    floor = median_ms(keys.sum, args.repeats)
    print(f"memory-scan floor: one pass over the keys (keys.sum()) takes {floor:.2f} ms")

    for center in (False, True):
        t0 = time.perf_counter()
        index = ToolIndex(lib, center_keys=center)
        build = time.perf_counter() - t0
        q1 = torch.randn(d, generator=g)
        qb = torch.randn(args.batch, d, generator=g)
        search = partial(index.search, layer=0, control_point=1, k=k)
        one = median_ms(partial(search, q1), args.repeats)
        batch = median_ms(partial(search, qb), max(3, args.repeats // 5))

        # correctness spot check against a chunked element-wise scan (a different code path)
        sims, idx = index.search(qb[:4], layer=0, control_point=1, k=k)
        mean = keys.double().mean(0).float() if center else torch.zeros(d)
        qn = l2_normalize(qb[:4] - mean)
        ref = torch.cat([(l2_normalize(c - mean)[:, None, :] * qn).sum(-1) for c in keys.split(4096)])
        ok = torch.equal(ref.topk(k, dim=0).indices.T, idx)
        print(
            f"center_keys={center!s:5}: build {build:6.2f} s | one query {one:7.2f} ms (median of {args.repeats})"
            f" | batch of {args.batch}: {batch:7.1f} ms = {batch / args.batch:6.2f} ms/query"
            f" ({one * args.batch / batch:.1f}x per query vs single) | same top-{k} as a scan: {ok}"
            f" | single query / scan floor: {one / floor:.2f}"
        )
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
