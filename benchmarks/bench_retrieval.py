"""Benchmark Stage III: exact top-k cosine retrieval per control point, on CPU, in one run.

N keys of width d (random, so no structure helps) are spread evenly over `layers` x `points` groups, as
`ToolIndex` groups them. At a control point the controller searches every layer's group at that point
(`StirPolicy.retrieve`), so the time per control point is the sum of `layers` searches over N / points keys.
Each layout is timed at 1 and 2 torch threads, against the previous index (float32 unit keys, one matrix
product and `topk`) on the same groups, and every answer is checked against a float64 brute force (chunked
loop, best first, ties by the lower entry index). The library is built directly (anchors, vectors a zero
view): the index reads only keys, layers and control points.

    .venv/bin/python benchmarks/bench_retrieval.py                       # N=100,000, d=2,048, k=8
    .venv/bin/python benchmarks/bench_retrieval.py --layouts 1x1 2x8     # layers x points
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import pandas as pd
import torch

from stir_core.library.format import ToolLibrary
from stir_core.library.index import ToolIndex, l2_normalize


def brute_force(keys: torch.Tensor, members: torch.Tensor, q: torch.Tensor, k: int) -> list[int]:
    """Float64 cosines over the group's rows in chunks; best first, ties by the lower entry index."""
    qd = q.double() / q.double().norm().clamp_min(1e-12)
    sims = torch.cat(
        [(l2_normalize(keys.index_select(0, c).double()) * qd).sum(1) for c in members.split(4096)]
    )
    order = torch.sort(-sims, stable=True).indices[:k]  # members ascend: ties keep the lower entry first
    return members[order].tolist()


def point_search(index: ToolIndex, old: dict | None, queries: torch.Tensor, m: int, k: int) -> None:
    """What the controller does at control point m: one search per layer (queries [layers, d]); with `old`,
    the previous index's float32 matrix product + topk over the same groups."""
    for layer, q in enumerate(queries):
        if old is None:
            index.search(q, layer=layer, control_point=m, k=k)
        else:
            torch.topk(old[(layer, m)] @ l2_normalize(q), k)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--layouts", nargs="+", default=["1x8", "2x8", "4x8", "1x4", "1x1"],
                    help="LAYERSxPOINTS groupings of the N keys")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--queries", type=int, default=20, help="timed control points per layout and thread count")
    ap.add_argument("--check", type=int, default=6, help="control points checked against brute force")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n, d, k = args.n, args.d, args.k
    g = torch.Generator().manual_seed(args.seed)
    keys = torch.randn(n, d, generator=g)
    keys[1::997] = keys[0::997][: len(keys[1::997])]  # exact duplicates in every layout: ties to break
    print(f"N={n:,} keys, d={d:,}, k={k}, cores available: {len(os.sched_getaffinity(0))}, "
          f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    all_ok = True
    for layout in args.layouts:
        n_layers, n_points = (int(x) for x in layout.split("x"))
        layer = torch.arange(n) % n_layers
        point = 1 + (torch.arange(n) // n_layers) % n_points
        table = pd.DataFrame({"layer": layer.numpy(), "control_point": point.numpy()})
        lib = ToolLibrary(keys=keys, vectors=torch.zeros(1, d).expand(n, d), table=table,
                          manifest={"d_model": d})
        t0 = time.perf_counter()
        index = ToolIndex(lib)
        build = time.perf_counter() - t0
        # the previous index, for the ratio: float32 unit rows per group, matrix product + topk
        old = {key: l2_normalize(keys.index_select(0, grp.entries)) for key, grp in index.groups.items()}

        ok = True
        for c in range(args.check):
            m = 1 + c % n_points
            for lay in range(n_layers):
                grp = index.groups[(lay, m)]
                q = keys[grp.entries[c]] if c % 2 == 0 else torch.randn(d, generator=g)  # hits a duplicate too
                _, idx = index.search(q, layer=lay, control_point=m, k=k)
                ok &= idx[0].tolist() == brute_force(keys, grp.entries, q, k)
        all_ok &= ok
        group = n // (n_layers * n_points)
        line = f"{layout:>5} ({group:,} keys/group, {n // n_points:,} per control point), build {build:5.1f} s"
        for th in args.threads:
            torch.set_num_threads(th)
            times = {"new": [], "old": []}
            for r in range(args.queries + 1):  # the first is a warm-up
                m = 1 + r % n_points
                queries = torch.randn(n_layers, d, generator=g)
                for name in ("new", "old"):
                    t = time.perf_counter()
                    point_search(index, old if name == "old" else None, queries, m, k)
                    if r:
                        times[name].append(1e3 * (time.perf_counter() - t))
            new, old_ms = statistics.median(times["new"]), statistics.median(times["old"])
            line += (f" | {th} thr: {new:6.2f} ms/point (min {min(times['new']):5.2f}), old fp32 {old_ms:6.2f} ms,"
                     f" old/new {old_ms / new:4.1f}x")
        print(line + f" | identical top-{k} to float64 brute force: {ok}")
        del index, old
    print("6 ms goal per control point:", "see the ms/point columns above (median over "
          f"{args.queries} control points, fresh random queries)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
