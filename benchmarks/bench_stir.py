"""Wall time of `stir` vs `vanilla` on the same problems and committed-token budget (M=8, L=4,
probe_tokens=4), and of `stir` with previews run the slow way (a fresh prefill per probe, as the
reference does), to show what cache forking saves. Prints ratios measured in one run.

    python benchmarks/bench_stir.py [--n 32] [--library assets/demo-library]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import REPO, load_bench_model

from stir_core.controller import StirConfig, run_method
from stir_core.engine import Engine
from stir_core.library import ToolLibrary
from stir_core.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--library", default=str(REPO / "assets" / "demo-library"))
    ap.add_argument("--task", default="planted")
    args = ap.parse_args()
    model = load_bench_model()
    if not Path(args.library).exists():
        raise SystemExit(f"no library at {args.library}: build one with `stir build` first")
    lib = ToolLibrary.load(args.library, d_model=model.d_model, n_layers=model.n_layers)
    task = get_task(args.task)
    prompts = [model.format_prompt(task.prompt(ex)) for ex in task.load("val", args.n, 7)]
    engine = Engine(model)
    cfg = StirConfig(max_new_tokens=128, max_control_points=8, top_l=4, probe_tokens=4)
    run_method(engine, prompts[:4], "stir", lib, cfg)  # warm-up
    times, tokens = {}, {}
    for name, method, c in [("vanilla", "vanilla", cfg), ("stir (forked previews)", "stir", cfg),
                            ("stir (re-prefilled previews)", "stir", cfg.with_overrides(preview="reprefill"))]:
        t = time.perf_counter()
        traces = run_method(engine, prompts, method, lib, c)
        times[name] = time.perf_counter() - t
        tokens[name] = (sum(x.n_tokens for x in traces), sum(x.probe_tokens for x in traces),
                        sum(x.interventions for x in traces))
    print(f"model {model.model_id}, library {args.library} ({len(lib)} entries), {args.n} problems, "
          f"M=8 L=4 probe_tokens=4")
    for name, t in times.items():
        committed, probe, inter = tokens[name]
        print(f"{name:30s} {t:7.2f} s   committed {committed:6d}  probe {probe:6d}  interventions {inter}")
    v, f, r = times.values()
    print(f"stir / vanilla            = {f / v:.2f}x wall time (goal <= 1.3x)")
    print(f"re-prefilled / forked     = {r / f:.2f}x wall time (the gain of cache forking)")


if __name__ == "__main__":
    main()
