"""The slot pool's size against the steps it costs: STIR's extra slots (`max_preview_rows` = N) on the CPU.

STIR's pool is one slot per prompt plus extra slots for probes and segment-scope drivers: by default the
worst case (top_l per prompt), with `max_preview_rows` = N only max(N, top_l), previews and drivers waiting
for a free slot. Tokens and decisions never change (checked here and by tests/test_scheduler.py); what
changes is the sequential steps (model forwards) and the KV memory, which is the pool: S × (T + 1)
positions. One run, on the embedded model and the demo library with bench_stir's gate settings, 128 `val`
problems (seed 7), at two batch sizes; the KV bytes are `memory.pool_bytes` for Qwen2.5-1.5B's shape at
T = 200 + 1000 positions, bf16 (the pool's bytes are exact: a fixed allocation, no GPU needed to count it).

    python benchmarks/bench_pool.py [--out results/bench_pool.txt]
"""

from __future__ import annotations

import argparse
import math

from _common import REPO, emit, load_bench_model

from stir_core.library.format import ToolLibrary
from stir_core.online.methods import StirConfig, run_method
from stir_core.runtime.engine import Engine
from stir_core.runtime.memory import QWEN25, pool_bytes, pool_positions, pool_rows
from stir_core.tasks import get_task

GATE = {"layer": 3, "tau_null": 0.5, "min_sim": 0.9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = load_bench_model()
    lib = ToolLibrary.load(str(REPO / "assets" / "demo-library"), d_model=model.d_model, n_layers=model.n_layers)
    task = get_task("planted")
    prompts = [model.format_prompt(task.prompt(ex)) for ex in task.load("val", args.n, 7)]
    engine = Engine(model)
    cfg = StirConfig(max_new_tokens=128, max_control_points=8, top_l=4, probe_tokens=4, **GATE)
    shape, t_real = QWEN25["1.5B"], pool_positions(200, 1000, cfg.probe_tokens, "stir")
    lines = [f"{args.n} val problems (seed 7), embedded model, demo library, gate {GATE}, top_l {cfg.top_l}, "
             f"scope {cfg.scope}; KV GiB: {shape.name} bf16, T = {t_real} positions",
             "batch  N (max_preview_rows)  slots S  S/vanilla  KV GiB  forwards  forwards/vanilla  same tokens"]
    for batch in (32, 128):
        engine.forwards = 0
        vanilla = run_method(engine, prompts, "vanilla", lib, cfg, batch=batch)
        v_fw = engine.forwards
        v_kv = pool_bytes(shape, pool_rows(batch), t_real) / 1024**3
        lines.append(f"{batch:5d}  vanilla               {batch:7d}  {1:9.2f}  {v_kv:6.2f}  {v_fw:8d}  {1:16.2f}  -")
        ref = None
        for cap in (None, batch, math.ceil(batch / 2), math.ceil(batch / 4), cfg.top_l):
            engine.forwards = engine.peak_pool_rows = 0
            traces = run_method(engine, prompts, "stir", lib, cfg.with_overrides(max_preview_rows=cap), batch=batch)
            key = [(t.completion, [(d.m, d.reason, d.chosen) for d in t.decisions]) for t in traces]
            ref = key if ref is None else ref
            s = pool_rows(batch, "stir", cfg.top_l, cap, cfg.scope)
            assert engine.peak_pool_rows <= s
            kv = pool_bytes(shape, s, t_real) / 1024**3
            lines.append(f"{batch:5d}  {str(cap):20s}  {s:7d}  {s / batch:9.2f}  {kv:6.2f}  {engine.forwards:8d}  "
                         f"{engine.forwards / v_fw:16.2f}  {key == ref}")
        del vanilla
    emit(lines, args.out)


if __name__ == "__main__":
    main()
