"""CPU-time A/B of bench_stir's runs (process time, best of 3: less sensitive to other jobs than wall time on a
shared machine). Run it under two checkouts and compare, e.g.

    (cd OLD && PYTHONPATH=OLD python NEW/benchmarks/ab_cpu_time.py); PYTHONPATH=. python benchmarks/ab_cpu_time.py

Prints best process seconds for: vanilla and STIR on 64 `val` problems in one batch, and on 8 problems one
at a time (the embedded model, demo library, bench_stir's gate settings); and mining's sampled rollouts
(`mine16x8`: 16 `train` problems x K = 8, 128 tokens, captures at one layer, one call).

    python benchmarks/ab_cpu_time.py [--repeats 3] [--only vanilla64,stir64]

`--repeats`: process-time runs per entry (the best is printed); `--only`: some entries.
"""
import argparse
import sys
import time

sys.path.insert(0, "benchmarks")
from _common import REPO, load_bench_model

from stir_core.config import MineConfig
from stir_core.library.format import ToolLibrary
from stir_core.offline.mine import sample_rollouts
from stir_core.online.methods import StirConfig, run_method
from stir_core.runtime.engine import Engine
from stir_core.tasks import get_task

ENTRIES = ("vanilla64", "stir64", "vanilla1x8", "stir1x8", "mine16x8")
GATE = {"layer": 3, "tau_null": 0.5, "min_sim": 0.9}
ap = argparse.ArgumentParser()
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--only", default=",".join(ENTRIES))
args = ap.parse_args()
names = [n for n in args.only.split(",") if n]
if unknown := sorted(set(names) - set(ENTRIES)):
    sys.exit(f"unknown entries {unknown}; choose from {', '.join(ENTRIES)}")
model = load_bench_model()
lib = ToolLibrary.load(str(REPO / "assets" / "demo-library"), d_model=model.d_model, n_layers=model.n_layers)
task = get_task("planted")
prompts = [model.format_prompt(task.prompt(ex)) for ex in task.load("val", 64, 7)]
engine = Engine(model)
cfg = StirConfig(max_new_tokens=128, max_control_points=8, top_l=4, probe_tokens=4, **GATE)
mcfg = MineConfig(task="planted", split="train", n_problems=16, k_rollouts=8, temperature=0.7, top_p=0.95,
                  max_new_tokens=128, layers=[-1], seed=1)
examples = task.load("train", 16, 1)
RUNS = {
    "vanilla64": lambda: run_method(engine, prompts, "vanilla", lib, cfg),
    "stir64": lambda: run_method(engine, prompts, "stir", lib, cfg),
    "vanilla1x8": lambda: [run_method(engine, [p], "vanilla", lib, cfg) for p in prompts[:8]],
    "stir1x8": lambda: [run_method(engine, [p], "stir", lib, cfg) for p in prompts[:8]],
    "mine16x8": lambda: sample_rollouts(engine, task, examples, mcfg, [model.n_layers - 1]),
}
run_method(engine, prompts[:8], "stir", lib, cfg)  # warm-up
out = {}
for name in names:
    best = 1e9
    for _ in range(args.repeats):
        t = time.process_time()
        RUNS[name]()
        best = min(best, time.process_time() - t)
    out[name] = best
print(" ".join(f"{k}={v:.3f}" for k, v in out.items()))
