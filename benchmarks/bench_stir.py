"""STIR vs vanilla: wall time, sequential steps, and token identity of the scheduler and its test oracle.

On the embedded model with the demo library (M=8, L=4, probe_tokens=4, the library's recommended gate
settings), one run, ratios:
- wall time of a batched run (all problems in one batch, as `stir eval` runs them): vanilla, STIR with the
  product's one scheduler, STIR segment-synchronous (the test oracle `tests/oracle/segmented.py`);
- the scheduler's and the oracle's completions and decisions must be identical (greedy): checked;
- sequential steps per problem at batch 1 (model forwards): vanilla, continuous STIR, and the floor —
  the tokens STIR commits, plus per commit one delimiter re-run and the discarded probe tokens of the
  rolled-back null row (a null win costs no step: the null row is vanilla's own continuation).

    python benchmarks/bench_stir.py [--n 128] [--steps-n 32] [--out results/bench_stir.txt]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import REPO, load_bench_model

from stir_core.library.format import ToolLibrary
from stir_core.online.methods import StirConfig, run_method
from stir_core.runtime.engine import Engine
from stir_core.tasks import get_task

# The demo library's gate settings chosen on `val` (README), applied to both schedulers alike.
GATE = {"layer": 3, "tau_null": 0.5, "min_sim": 0.9}


def timed(engine, prompts, method, lib, cfg, run=run_method):
    engine.forwards = engine.row_positions = 0
    t = time.perf_counter()
    traces = run(engine, prompts, method, lib, cfg)
    return time.perf_counter() - t, engine.forwards, traces, engine.row_positions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128, help="problems in the batched wall-time run")
    ap.add_argument("--steps-n", type=int, default=32, help="problems decoded one by one for step counts")
    ap.add_argument("--library", default=str(REPO / "assets" / "demo-library"))
    ap.add_argument("--seed", type=int, default=7, help="val-split seed of the problems")
    ap.add_argument("--out", default=None, help="also write the report here")
    args = ap.parse_args()
    model = load_bench_model()
    lib = ToolLibrary.load(args.library, d_model=model.d_model, n_layers=model.n_layers)
    task = get_task("planted")
    prompts = [model.format_prompt(task.prompt(ex)) for ex in task.load("val", args.n, args.seed)]
    engine = Engine(model)
    cfg = StirConfig(max_new_tokens=128, max_control_points=8, top_l=4, probe_tokens=4, **GATE)
    run_method(engine, prompts[:8], "stir", lib, cfg)  # warm-up
    lines = [f"model {model.model_id}; library {args.library} ({len(lib)} entries); {args.n} val problems "
             f"(seed {args.seed}); M=8 L=4 probe_tokens=4; gate {GATE}; scope {cfg.scope}"]
    sys.path.insert(0, str(REPO / "tests"))
    from oracle.segmented import oracle_method  # the test oracle: benchmarks may, the product may not

    runs = {}
    for name, method, run in [("vanilla", "vanilla", run_method), ("stir continuous", "stir", run_method),
                              ("stir sync", "stir", oracle_method)]:
        runs[name] = timed(engine, prompts, method, lib, cfg, run)
        t, fw, traces, rp = runs[name]
        lines.append(f"{name:16s} {t:7.2f} s  {fw:6d} forwards  {rp:6d} row positions  committed "
                     f"{sum(x.n_tokens for x in traces):6d}  probe {sum(x.probe_tokens for x in traces):6d}  "
                     f"interventions {sum(x.interventions for x in traces)}")
    a, b = runs["stir continuous"][2], runs["stir sync"][2]
    same_tokens = all([t.token_id for t in x.tokens] == [t.token_id for t in y.tokens] for x, y in zip(a, b, strict=False))
    same_dec = all([(d.m, d.reason, d.chosen) for d in x.decisions] == [(d.m, d.reason, d.chosen)
                                                                       for d in y.decisions] for x, y in zip(a, b, strict=False))
    v = runs["vanilla"][0]
    lines.append(f"scheduler == oracle (sync): tokens {same_tokens}, decisions {same_dec}")
    lines.append(f"stir continuous / vanilla = {runs['stir continuous'][0] / v:.2f}x wall time (goal <= 1.3x)")
    lines.append(f"stir sync / vanilla       = {runs['stir sync'][0] / v:.2f}x wall time")
    # On a CPU every row of a batch costs compute, so the floor of the wall-time ratio is the ratio of row
    # steps (tokens decoded, probe rows included); on a GPU wide batches are nearly free and the sequential
    # steps below are what count.
    work = sum(x.n_tokens + x.probe_tokens for x in a) / sum(x.n_tokens for x in runs["vanilla"][2])
    lines.append(f"row steps (tokens decoded incl. probes): stir / vanilla = {work:.2f}x (the CPU floor)")
    rp = runs["stir continuous"][3] / runs["vanilla"][3]
    lines.append(f"row positions computed (prefill, probes, re-runs, idle rows): stir / vanilla = {rp:.2f}x")
    # Sequential steps per problem, one problem at a time (no batching effects).
    steps = {"vanilla": 0, "stir": 0, "floor": 0}
    wall1 = {"vanilla": 0.0, "stir": 0.0}
    for p in prompts[: args.steps_n]:
        engine.forwards = 0
        t = time.perf_counter()
        (tv,) = run_method(engine, [p], "vanilla", lib, cfg)
        wall1["vanilla"] += time.perf_counter() - t
        steps["vanilla"] += engine.forwards
        engine.forwards = 0
        t = time.perf_counter()
        (ts,) = run_method(engine, [p], "stir", lib, cfg)
        wall1["stir"] += time.perf_counter() - t
        steps["stir"] += engine.forwards
        lost = sum(1 + min(cfg.probe_tokens, d.commit_tokens) for d in ts.decisions if d.committed)
        steps["floor"] += 1 + ts.n_tokens + lost  # prefill + committed tokens + per commit
    k = args.steps_n
    lines.append(f"steps per problem (batch 1, {k} problems): vanilla {steps['vanilla'] / k:.1f}, "
                 f"stir {steps['stir'] / k:.1f}, floor {steps['floor'] / k:.1f}; "
                 f"stir / vanilla = {steps['stir'] / steps['vanilla']:.2f}x, stir / floor = "
                 f"{steps['stir'] / steps['floor']:.2f}x")
    # One problem at a time the batch is 1 row (vanilla) or at most 1 + L rows (previews): on this tiny
    # model a forward's cost is mostly per step, not per row, which is the regime of a GPU.
    lines.append(f"wall time at batch 1 ({k} problems one by one): vanilla {wall1['vanilla']:.2f} s, stir "
                 f"{wall1['stir']:.2f} s; stir / vanilla = {wall1['stir'] / wall1['vanilla']:.2f}x")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
