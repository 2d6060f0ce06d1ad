"""Control-point capture during decoding (one pass per rollout) vs one forward per prefix (the reference's
re-prefill), on the embedded testbed model: same vectors, time ratio, forwards saved. Prints one run.

    python benchmarks/bench_capture.py [--n 32]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import load_bench_model

from stir_core.config import MineConfig
from stir_core.offline.mine import mine_candidates
from stir_core.runtime.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args()
    model = load_bench_model()
    cfg = MineConfig(n_problems=args.n, k_rollouts=8, max_new_tokens=96, layers=[2, 3], top_c=10_000)
    calls = {"n": 0}
    orig = Engine.forward_states

    def counting(self, seqs, layers):
        calls["n"] += len(seqs)
        return orig(self, seqs, layers)

    Engine.forward_states = counting
    t = time.perf_counter()
    fast = mine_candidates(model, cfg, show_progress=False)
    t_fast = time.perf_counter() - t
    fast_calls = calls["n"]
    t = time.perf_counter()
    slow = mine_candidates(model, MineConfig(**{**cfg.__dict__, "capture": "reprefill"}), show_progress=False)
    t_slow = time.perf_counter() - t
    slow_calls = calls["n"] - fast_calls
    Engine.forward_states = orig
    same_ids = fast.table["id"].tolist() == slow.table["id"].tolist()
    err = float((fast.vectors - slow.vectors).abs().max()) if same_ids else float("nan")
    rel = err / float(slow.vectors.abs().max()) if same_ids else float("nan")
    print(f"{args.n} problems x 8 rollouts, layers [2, 3], {len(fast)} entries")
    print(f"one pass (capture while decoding): {t_fast:6.2f} s, extra forwards: {fast_calls}")
    print(f"one forward per prefix (reference): {t_slow:6.2f} s, extra forwards: {slow_calls}")
    print(f"same entries: {same_ids}; max |Δ difference| = {err:.2e} (relative {rel:.1e})")
    print(f"time ratio re-prefill / one pass = {t_slow / t_fast:.2f}x; forwards saved: {slow_calls}")
    assert same_ids and torch.allclose(fast.vectors, slow.vectors, atol=1e-3, rtol=1e-4)


if __name__ == "__main__":
    main()
