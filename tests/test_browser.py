"""End to end in a real browser: start `streamlit run` on a free loopback port, drive headless Chromium with
Playwright (the system browser, nothing downloaded), run a comparison, check what the page shows against the
core, and save a screenshot to a temporary directory. To refresh the README's screenshot, name it:

    STIR_SCREENSHOT=assets/screenshots/playground.png python -m pytest -q tests/test_browser.py

The app runs on the embedded model and the shipped demo library when both exist (the zero-configuration
path); otherwise on the tiny test model and a test library (newline-delimited segments)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.server import free_port, wait_healthy

from stir_core.config import StirConfig, online_config, recommended
from stir_core.library.format import ToolLibrary
from stir_core.online.methods import run_method
from stir_core.online.trace import Trace
from stir_core.runtime.engine import Engine
from stir_core.runtime.model import DEFAULT_MODEL_DIR, load_model

REPO = Path(__file__).resolve().parents[1]
DEMO_LIBRARY = REPO / "assets" / "demo-library"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sys.path.insert(0, str(REPO))
from app.export import find_browser  # noqa: E402

BROWSER = find_browser()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        BROWSER is None,
        reason="no Chromium/Chrome installed (Debian: apt-get install chromium); "
        "the end-to-end test drives a real browser and downloads none",
    ),
]


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "app" / "Home.py"),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """(env for the server, prompt, delimiter, model dir, library dir)."""
    root = tmp_path_factory.mktemp("browser")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIR_")}
    env["STIR_RUNS"] = str(root / "runs")
    if (DEFAULT_MODEL_DIR / "config.json").is_file() and (DEMO_LIBRARY / "manifest.json").is_file():
        return env, "mod10 1+9-3+6-4\n", "\n\n", DEFAULT_MODEL_DIR, DEMO_LIBRARY
    from helpers.app_library import PROMPT, build_test_library

    build_test_library(tiny_model_dir, root / "lib")
    env.update(STIR_MODEL=str(tiny_model_dir), STIR_LIBRARY=str(root / "lib"))
    return env, PROMPT, "\n", tiny_model_dir, root / "lib"


def test_playground_end_to_end(setup, tmp_path):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (Python package) is not installed"
    )
    env, prompt, delimiter, model_dir, lib_dir = setup
    port = free_port()
    log = tmp_path / "streamlit.log"
    shot = Path(os.environ.get("STIR_SCREENSHOT") or tmp_path / "playground.png").resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    proc = start_server(port, env, log)
    try:
        wait_healthy(port, proc, log)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=BROWSER, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 2300})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            run = page.get_by_role("button", name="Run comparison")
            run.wait_for(timeout=90_000)
            box = page.get_by_role("textbox", name="Prompt")
            box.fill(prompt)  # always typed: reading the default raced the page's first render
            box.press("Control+Enter")
            if delimiter != "\n\n":
                field = page.get_by_role("textbox", name="Segment delimiter")
                field.fill(delimiter.encode("unicode_escape").decode())
                field.press("Enter")
            page.wait_for_timeout(500)
            run.click()
            columns = page.locator(".stir-tokens")
            columns.nth(2).wait_for(timeout=90_000)
            strip = page.locator(".st-key-gate_strip .js-plotly-plot")
            strip.wait_for(timeout=30_000)
            texts = [
                c.locator("span.tok").evaluate_all("els => els.map(e => e.textContent).join('')")
                for c in columns.all()
            ]
            cards = page.locator("[class*='st-key-gate_card_']").count()
            # export the gate strip as SVG through the app's menu (Kaleido in the server process)
            page.locator(".st-key-gate_strip").get_by_role("button", name="Export").click()
            with page.expect_download(timeout=90_000) as dl:
                page.get_by_role("button", name="SVG (paper column)").click()
            svg = Path(dl.value.path()).read_bytes()
            page.keyboard.press("Escape")
            page.screenshot(path=str(shot))
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    # what the browser shows is what the core decodes, column by column
    model = load_model(str(model_dir), device="cpu")
    lib = ToolLibrary.load(lib_dir)
    # the Playground starts from the library's recommended settings (the README's, for the demo library)
    cfg = online_config(lib).with_overrides(
        delimiter=delimiter, max_new_tokens=int(recommended(lib.manifest).get("max_new_tokens", 64))
    )
    refs = [
        run_method(Engine(model), [model.format_prompt(prompt)], m, lib, cfg)[0]
        for m in ("vanilla", "static", "stir")
    ]
    assert texts == [r.completion for r in refs]
    assert cards == len(refs[2].decisions[:24])
    assert shot.stat().st_size > 10_000
    assert svg.lstrip().startswith(b"<svg") and b"<image" not in svg  # a real, vector SVG


DASHBOARD_SHOT = REPO / "assets" / "screenshots" / "dashboard.png"


def test_library_dashboard_end_to_end(setup, tmp_path):
    """The Library page's tool dashboard in a real browser, for a demo tool, with firings from a saved run.
    The screenshot goes to tmp_path; `STIR_REFRESH_SCREENSHOTS=1 pytest tests/test_browser.py -k dashboard`
    also copies it to assets/screenshots/dashboard.png."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (Python package) is not installed"
    )
    env, _, _, model_dir, lib_dir = setup
    if lib_dir != DEMO_LIBRARY:
        pytest.skip("the dashboard test needs the embedded model and the demo library")
    from stir_core.analysis import dashboard as dash
    from stir_core.analysis.evaluate import evaluate, load_results
    from stir_core.tasks import get_task

    model = load_model(str(model_dir), device="cpu")
    engine = Engine(model)
    lib = ToolLibrary.load(lib_dir)
    run = Path(env["STIR_RUNS"]) / "dash-run"
    cfg = StirConfig(max_new_tokens=96)
    evaluate(engine, get_task("planted"), ["vanilla", "stir"], lib, cfg, n=24, split="val", seed=0,
             out_dir=run, show_progress=False)
    examples = load_results(run).examples
    committed = [d.chosen for t in examples.loc[examples["method"] == "stir", "trace_json"]
                 for d in Trace.from_json(t).decisions if d.chosen]
    tool = max(sorted(set(committed)), key=committed.count)  # the tool STIR committed most often
    ref = dash.build(lib, tool, model, engine, examples, str(run))
    port = free_port()
    log = tmp_path / "streamlit.log"
    proc = start_server(port, env, log)
    shot = tmp_path / "dashboard.png"
    try:
        wait_healthy(port, proc, log)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=BROWSER, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 2600})
            page.goto(f"http://127.0.0.1:{port}/library", wait_until="domcontentloaded")
            page.get_by_text("Tool dashboard").wait_for(timeout=120_000)
            box = page.get_by_role("combobox", name="Tool")
            box.click()
            box.fill(tool)
            box.press("Enter")
            page.get_by_text(f"pair `{ref.provenance.pair_id}`".replace("`", "")).wait_for(timeout=60_000)
            page.get_by_role("radio", name="saved run").click()
            page.get_by_role("tab", name="Where it fires").click()
            page.get_by_text(f"retrievals in {run}").wait_for(timeout=120_000)
            fired = page.get_by_text(f"retrievals in {run}").inner_text()
            page.get_by_role("tab", name="What it changes").click()
            sweep = page.locator(".stir-sweep")
            sweep.nth(4).wait_for(timeout=60_000)
            texts = [c.locator("span.tok").evaluate_all("els => els.map(e => e.textContent).join('')")
                     for c in sweep.all()]
            marked = page.locator(".stir-sweep span.diff").count()
            top = page.get_by_text("Tool dashboard").bounding_box()
            page.screenshot(path=str(shot), clip={"x": 0, "y": max(0, top["y"] - 24), "width": 1500, "height": 1450})
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert fired.startswith(f"{len(ref.firings)} retrievals")
    assert texts == [r.text for r in ref.sweep.rows]
    assert marked == sum(sum(r.differs) for r in ref.sweep.rows)
    assert shot.stat().st_size > 10_000
    if os.environ.get("STIR_REFRESH_SCREENSHOTS") == "1":
        DASHBOARD_SHOT.parent.mkdir(parents=True, exist_ok=True)
        DASHBOARD_SHOT.write_bytes(shot.read_bytes())
