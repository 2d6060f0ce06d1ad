"""Measure the app on its defaults: (1) server start to an interactive Playground, (2) a three-column
comparison (vanilla, static, stir) of 64 tokens — in the core, and clicked in a real browser.

    .venv/bin/python benchmarks/bench_app.py                      # embedded model + shipped demo library
    .venv/bin/python benchmarks/bench_app.py --model PATH --library DIR --repeats 5 --json out.json
    taskset -c 0,1 .venv/bin/python benchmarks/bench_app.py       # pin to 2 cores, as the goals assume

Goals (issues 6 and 12, 2 CPU cores): first paint < 2 s after the server is up; usable Playground (model
loaded, Run enabled) < 5 s after server start; comparison < 3 s. The server part runs each way of starting
the app once: `python -m app` (what `make app` and `stir app` run), `streamlit run app/serve.py` and
`streamlit run app/Home.py`.
The browser part needs Chromium and Playwright; `--no-browser` measures the core only.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

METHODS = ("vanilla", "static", "stir")


def bench_core(
    model_name: str, library: str, prompt: str | None, repeats: int, tokens: int, delimiter: str = "\n\n"
) -> dict:
    """Load as the app does (same thread policy), warm up, then time `repeats` uncached comparisons."""
    t0 = time.perf_counter()
    import torch

    from app.loading import thread_policy
    from stir_core.library.format import ToolLibrary
    from stir_core.online.methods import StirConfig, run_method
    from stir_core.runtime.engine import Engine
    from stir_core.runtime.model import load_model
    from stir_core.runtime.scheduler import generate

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load_model(model_name, device="cpu", threads=thread_policy())
    threads = torch.get_num_threads()
    lib = ToolLibrary.load(library, d_model=model.d_model, n_layers=model.n_layers)
    engine = Engine(model)
    generate(engine, [model.format_prompt("1+1=")], 2)  # the app's warm-up
    t_load = time.perf_counter() - t0
    if prompt is None:
        from stir_core.tasks import get_task

        task = get_task("planted")
        prompt = task.prompt(task.load("eval", 1, 0)[0])
    formatted = model.format_prompt(prompt)
    cfg = StirConfig(max_new_tokens=tokens, delimiter=delimiter)
    runs = []
    for _ in range(repeats):
        cols = {}
        t_all = time.perf_counter()
        for m in METHODS:
            t = time.perf_counter()
            tr = run_method(engine, [formatted], m, lib, cfg)[0]
            cols[m] = {
                "s": time.perf_counter() - t,
                "tokens": tr.n_tokens,
                "probe_tokens": tr.probe_tokens,
                "interventions": tr.interventions,
            }
        runs.append({"total_s": time.perf_counter() - t_all, "columns": cols})
    totals = [r["total_s"] for r in runs]
    return {
        "import_s": t_import,
        "load_s": t_load,
        "torch_threads": threads,
        "params": model.n_params,
        "prompt": prompt,
        "comparison_median_s": statistics.median(totals),
        "comparison_min_s": min(totals),
        "runs": runs,
    }


SERVE = {  # how the server is started: the launcher, the st.App with a start hook, the plain page script
    "python -m app": ["-m", "app"],
    "streamlit run app/serve.py": ["-m", "streamlit", "run", str(REPO / "app" / "serve.py")],
    "streamlit run app/Home.py": ["-m", "streamlit", "run", str(REPO / "app" / "Home.py")],
}


def bench_server(env: dict, command: str, timeout: float = 120.0) -> dict:
    """Server start (process spawned) -> health -> first paint (any app text) -> Playground drawn (Run
    button) -> model ready (sidebar model facts: loaded and warmed up) -> one click to three columns and the
    gate strip. Also the load average at the start (the machine may be shared)."""
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM_ARGS, free_port, wait_healthy

    from app.export import find_browser

    browser_path = find_browser()
    if browser_path is None:
        raise SystemExit("no Chromium/Chrome installed; rerun with --no-browser")
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "streamlit.log"
    cmd = [
        sys.executable,
        *SERVE[command],
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
    ]
    wait_ms = timeout * 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)  # started before t0
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            health = wait_healthy(port, proc, log, timeout)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.get_by_text("STIR Workbench").first.wait_for(timeout=wait_ms)
            paint = time.perf_counter() - t0  # the app's first text is on screen
            run = page.get_by_role("button", name="Run comparison")
            run.wait_for(timeout=wait_ms)
            ui = time.perf_counter() - t0  # the Playground's widgets are drawn
            page.get_by_text("Model facts").wait_for(timeout=wait_ms)
            ready = time.perf_counter() - t0  # the model is loaded and warmed up: Run decodes at once
            enabled = run.is_enabled()
            t1 = time.perf_counter()
            run.click()
            page.locator(".stir-tokens").nth(2).wait_for(timeout=wait_ms)
            texts = time.perf_counter() - t1  # the three decoded columns are on screen
            page.locator(".st-key-gate_strip .js-plotly-plot").wait_for(timeout=wait_ms)
            click = time.perf_counter() - t1  # ... and the gate strip is drawn (plotly.js in the browser)
        finally:
            browser.close()
            proc.terminate()
            proc.wait(timeout=15)
    return {
        "command": command,
        "load_average_at_start": load,
        "health_s": health,
        "first_paint_s": paint,
        "ui_s": ui,
        "model_ready_s": ready,
        "run_enabled": enabled,
        "click_to_texts_s": texts,
        "click_to_strip_s": click,
    }


FLOOR = """
import sys, time
t = [time.perf_counter()]
from stir_core.runtime.scheduler import generate
from stir_core.runtime.startup import pause_gc
resume = pause_gc()  # as the server does while it loads (app/__main__.py, app.loading)
import streamlit, torch; t.append(time.perf_counter())
import app.state, app.export, app.figures, app.ui; t.append(time.perf_counter())
from transformer_lens.model_bridge import TransformerBridge; t.append(time.perf_counter())
from app import loading
loading.loaded(loading.default_model()); t.append(time.perf_counter())
resume()
print(*(round(b - a, 3) for a, b in zip(t, t[1:])))
"""


def bench_floor(env: dict) -> dict:
    """What the server process must do before the model is usable, alone, in a fresh process and one
    thread (no server, no browser): the floor under `model_ready_s`."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FLOOR], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True)
    total = time.perf_counter() - t0
    parts = [float(x) for x in out.stdout.split()]
    return dict(zip(("streamlit_torch_s", "app_modules_s", "transformer_lens_s", "load_warm_s"), parts, strict=True),
                process_s=total)


def bench_script(model: str, library: str) -> dict:
    """Server-side script time of Playground runs (AppTest, no browser): first uncached comparison, one
    with the stir column changed (two columns cached), and a cached rerun."""
    from streamlit.testing.v1 import AppTest

    if model != "embedded":
        os.environ["STIR_MODEL"] = model
    os.environ["STIR_LIBRARY"] = library
    at = AppTest.from_file(str(REPO / "app" / "Home.py"), default_timeout=300)
    t = time.perf_counter()
    at.run()
    out = {"first_run_s": time.perf_counter() - t}
    for name, change in (("uncached_s", None), ("stir_changed_s", 0.5), ("cached_s", None)):
        if change is not None:
            at.number_input(key="pg2_k_scale").set_value(change)
        at.button(key="x_run").click()
        t = time.perf_counter()
        at.run()
        out[name] = time.perf_counter() - t
        if at.exception:
            raise RuntimeError(at.exception[0].value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--library", default=str(REPO / "assets" / "demo-library"))
    ap.add_argument("--prompt", default=None, help="default: the first planted eval problem")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--delimiter", default="\\n\\n", help="segment delimiter, escaped (default \\n\\n)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--server-only", action="store_true", help="only the browser measurements")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    out = {
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    }
    if not args.server_only:
        out["core"] = bench_core(
            args.model,
            args.library,
            args.prompt,
            args.repeats,
            args.tokens,
            codecs.decode(args.delimiter, "unicode_escape"),
        )
        c = out["core"]
        print(f"cores {out['cpu_affinity']} · torch threads {c['torch_threads']} · {c['params']:,} params")
        print(f"core: imports {c['import_s']:.2f} s, model+library load {c['load_s']:.2f} s")
        print(
            f"three-column comparison of {args.tokens} tokens: median {c['comparison_median_s']:.3f} s, "
            f"min {c['comparison_min_s']:.3f} s (goal < 3 s)"
        )
        for m, col in c["runs"][-1]["columns"].items():
            print(
                f"  {m:8s} {col['s']:.3f} s  {col['tokens']} tokens, {col['probe_tokens']} probe, "
                f"{col['interventions']} interventions"
            )
        out["script"] = bench_script(args.model, args.library)
        sc = out["script"]
        print(
            f"Playground script (server side, no browser): first comparison {sc['uncached_s']:.2f} s, stir column "
            f"changed {sc['stir_changed_s']:.2f} s, cached rerun {sc['cached_s']:.2f} s"
        )
    if not args.no_browser:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STIR_")}
        if args.model != "embedded":
            env["STIR_MODEL"] = args.model
        env["STIR_LIBRARY"] = args.library
        out["floor"] = f = bench_floor(env)
        print(
            f"floor (one fresh process, no server): imports streamlit+torch {f['streamlit_torch_s']:.2f} s, app "
            f"modules {f['app_modules_s']:.2f} s, TransformerLens bridge {f['transformer_lens_s']:.2f} s, model "
            f"load + warm-up {f['load_warm_s']:.2f} s; the whole process {f['process_s']:.2f} s"
        )
        out["server"] = [bench_server(env, command) for command in SERVE]
        for s in out["server"]:
            print(
                f"server `{s['command']}` (load average {s['load_average_at_start']:.1f} at start): healthy "
                f"after {s['health_s']:.2f} s; first paint {s['first_paint_s']:.2f} s "
                f"({s['first_paint_s'] - s['health_s']:.2f} s after healthy, goal < 2 s); Playground drawn "
                f"{s['ui_s']:.2f} s; model ready, Run enabled={s['run_enabled']} after {s['model_ready_s']:.2f} s "
                f"(goal < 5 s); first comparison: click to three columns {s['click_to_texts_s']:.2f} s, to "
                f"the drawn gate strip {s['click_to_strip_s']:.2f} s (goal < 3 s)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
