"""The batched half of ab_cpu_time.py with 10 repeats (best process time): vanilla and STIR on 64 `val`
problems in one batch. Run under two checkouts, alternating (results/bench_cpu_one_loop.txt)."""
import sys
import time

sys.path.insert(0, "benchmarks")
from _common import REPO, load_bench_model

from stir_core.library.format import ToolLibrary
from stir_core.online.methods import StirConfig, run_method
from stir_core.runtime.engine import Engine
from stir_core.tasks import get_task

GATE = {"layer": 3, "tau_null": 0.5, "min_sim": 0.9}
model = load_bench_model()
lib = ToolLibrary.load(str(REPO / "assets" / "demo-library"), d_model=model.d_model, n_layers=model.n_layers)
task = get_task("planted")
prompts = [model.format_prompt(task.prompt(ex)) for ex in task.load("val", 64, 7)]
engine = Engine(model)
cfg = StirConfig(max_new_tokens=128, max_control_points=8, top_l=4, probe_tokens=4, **GATE)
run_method(engine, prompts, "stir", lib, cfg)
out = {}
for method in ("vanilla", "stir"):
    best = 9
    for _ in range(10):
        t = time.process_time()
        run_method(engine, prompts, method, lib, cfg)
        best = min(best, time.process_time() - t)
    out[method + "64"] = best
print(" ".join(f"{k}={v:.3f}" for k, v in out.items()))
