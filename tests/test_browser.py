"""End to end in a real browser: start `streamlit run` on a free loopback port, drive headless Chromium with
Playwright (the system browser, nothing downloaded), run a comparison, check what the page shows against the
core, and save a screenshot to a temporary directory. To refresh the README's screenshot, name it:

    STIR_SCREENSHOT=assets/screenshots/playground.png python -m pytest -q tests/test_browser.py

The app runs on the embedded model and the shipped demo library when both exist (the zero-configuration
path); otherwise on the tiny test model and a test library (newline-delimited segments)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.server import free_port, wait_healthy

from stir_core.analysis.views import tuned_static
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


@contextlib.contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[int]:
    """The app served on a free loopback port until the block ends (healthy before it starts); yields the port."""
    port = free_port()
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
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc, log)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_comparison(page, port: int, prompt: str, delimiter: str):
    """Open the Playground, type `prompt` (and a non-default delimiter), run the three-column comparison
    and wait for its third column; returns the token-strip locator."""
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
    return columns


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
    log = tmp_path / "streamlit.log"
    shot = Path(os.environ.get("STIR_SCREENSHOT") or tmp_path / "playground.png").resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    with serving(env, log) as port, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 2300})
        columns = run_comparison(page, port, prompt, delimiter)
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
    # what the browser shows is what the core decodes, column by column
    model = load_model(str(model_dir), device="cpu")
    lib = ToolLibrary.load(lib_dir)
    # the Playground starts from the library's recommended settings (the README's, for the demo library)
    cfg = online_config(lib).with_overrides(
        delimiter=delimiter, max_new_tokens=int(recommended(lib.manifest).get("max_new_tokens", 64))
    )
    tuned = tuned_static(lib_dir, REPO / "results" / "tune_static" / "best.json")  # README: static at 2.0
    refs = [
        run_method(Engine(model), [model.format_prompt(prompt)], m, lib,
                   cfg.with_overrides(**{k: v for k, v in tuned.get(m, {}).items() if k == "static_scale"}))[0]
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
    log = tmp_path / "streamlit.log"
    shot = tmp_path / "dashboard.png"
    with serving(env, log) as port, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 2600})
        page.goto(f"http://127.0.0.1:{port}/library", wait_until="domcontentloaded")
        page.get_by_text("Tool dashboard").wait_for(timeout=120_000)
        box = page.get_by_role("combobox", name="Tool")
        box.click()
        box.fill(tool)
        box.press("Enter")
        page.get_by_text(f"pair `{ref.provenance.pair_id}`".replace("`", "")).wait_for(timeout=60_000)
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
    assert fired.startswith(f"{len(ref.firings)} retrievals")
    assert texts == [r.text for r in ref.sweep.rows]
    assert marked == sum(sum(r.differs) for r in ref.sweep.rows)
    assert shot.stat().st_size > 10_000
    if os.environ.get("STIR_REFRESH_SCREENSHOTS") == "1":
        DASHBOARD_SHOT.parent.mkdir(parents=True, exist_ok=True)
        DASHBOARD_SHOT.write_bytes(shot.read_bytes())


WHY_SHOT = REPO / "assets" / "screenshots" / "why.png"
SWEEP_SHOT = REPO / "assets" / "screenshots" / "sweep.png"


def test_why_on_the_token_and_a_sweep_end_to_end(setup, tmp_path):
    """#23 in a real browser: a control point's token carries the gate's reasons in its hover title (as the
    core decodes it); the KL colour mode; the Why panel; the gate-card column picker follows the pick in
    the same run; a strength sweep over one prompt (N columns) and a small batch. Screenshots go to
    tmp_path; `STIR_REFRESH_SCREENSHOTS=1` also copies them to assets/screenshots/ (why.png, sweep.png)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (Python package) is not installed"
    )
    env, prompt, delimiter, model_dir, lib_dir = setup
    log = tmp_path / "streamlit.log"
    why_shot, sweep_shot = tmp_path / "why.png", tmp_path / "sweep.png"
    with serving(env, log) as port, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 2600})
        columns = run_comparison(page, port, prompt, delimiter)
        titles = columns.nth(2).locator("span.why").evaluate_all("els => els.map(e => e.title)")
        page.get_by_role("radio", name="KL(steered ‖ vanilla)").click()
        page.locator(".st-key-gate_strip .colorbar").first.wait_for(timeout=30_000)
        panel = page.locator(".st-key-pg_why_panel")
        panel.get_by_text("Score_null").first.wait_for(timeout=30_000)
        why_text = panel.inner_text()
        top = page.get_by_role("radio", name="KL(steered ‖ vanilla)").bounding_box()
        bottom = panel.bounding_box()
        page.screenshot(path=str(why_shot), clip={"x": 0, "y": max(0, top["y"] - 16), "width": 1500,
                                                  "height": min(1500, bottom["y"] + bottom["height"] - top["y"] + 32)})
        # the gate-card column picker follows the pick at once (it lagged one run)
        picker = page.get_by_role("combobox", name="Column", exact=True)
        option = page.get_by_role("option", name="2. static")
        for _ in range(3):  # a click during a rerun may not open the list
            page.wait_for_timeout(500)
            picker.click()
            try:
                option.wait_for(timeout=5_000)
                break
            except sync_api.TimeoutError:
                continue
        option.click()
        page.locator("[class*='st-key-gate_card_0']").get_by_text("committed static").wait_for(timeout=30_000)
        # a strength sweep: one prompt -> vanilla + one column per k_scale value, then a small batch
        page.get_by_text("Strength sweep (one knob over a range)").click()
        page.get_by_role("button", name="Sweep this prompt").click()
        columns.nth(4).wait_for(timeout=120_000)
        n_cols = columns.count()
        sweep_texts = [c.locator("span.tok").evaluate_all("els => els.map(e => e.textContent).join('')")
                       for c in columns.all()]
        header = page.get_by_text("Strength sweep (one knob over a range)")

        def open_sweep() -> None:
            """Click the expander's header once the rerun has settled (a stale copy doubles it)."""
            for _ in range(100):
                if header.count() == 1:
                    break
                page.wait_for_timeout(300)
            header.click()

        batch = page.get_by_role("button", name="Sweep a batch (val, seed 1)")
        if not batch.is_visible():  # the expander may have closed with the rerun
            open_sweep()
        batch.click()
        done = page.get_by_text("paired with vanilla on the same problems")
        done.wait_for(state="attached", timeout=240_000)
        if not done.is_visible():
            open_sweep()
        done.wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        head = page.get_by_text("Strength sweep (one knob over a range)").bounding_box()
        page.screenshot(path=str(sweep_shot), clip={"x": 0, "y": max(0, head["y"] - 8), "width": 1500,
                                                    "height": 1300})
        browser.close()
    model = load_model(str(model_dir), device="cpu")
    lib = ToolLibrary.load(lib_dir)
    cfg = online_config(lib).with_overrides(
        delimiter=delimiter, max_new_tokens=int(recommended(lib.manifest).get("max_new_tokens", 64))
    )
    stir = run_method(Engine(model), [model.format_prompt(prompt)], "stir", lib, cfg)[0]
    assert len(titles) == len(stir.decisions) > 0
    for title, d in zip(titles, stir.decisions, strict=True):
        assert f"control point m={d.m}" in title and f"Score_null = {d.score_null:.4g}" in title
        assert f"τ_null = {cfg.tau_null:.4g}" in title
        assert all(f"sim {c.sim:.3f}" in title for c in d.candidates)
    assert "Score_null" in why_text and "reason:" in why_text
    assert n_cols == 5  # vanilla + the four default k_scale values
    for text, k in zip(sweep_texts[1:], (0.25, 0.5, 1.0, 2.0), strict=True):
        ref = run_method(Engine(model), [model.format_prompt(prompt)], "stir", lib, cfg.with_overrides(k_scale=k))[0]
        assert text == ref.completion
    assert why_shot.stat().st_size > 10_000 and sweep_shot.stat().st_size > 10_000
    if os.environ.get("STIR_REFRESH_SCREENSHOTS") == "1":
        WHY_SHOT.parent.mkdir(parents=True, exist_ok=True)
        WHY_SHOT.write_bytes(why_shot.read_bytes())
        SWEEP_SHOT.write_bytes(sweep_shot.read_bytes())


def test_library_strings_cannot_inject_markup(setup, tmp_path):
    """A shared library is untrusted input (issue #24): a tool id and a pair id that try to leave a Markdown
    code span (a backtick, then a Markdown image and an <img> naming a URL) must be shown as text. Checked in
    a real browser: the dashboard shows the strings literally, no element carries the URL, and the page asks
    for nothing at it. The URL is a closed loopback port, so a failure sends no traffic off this machine."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (Python package) is not installed"
    )
    from urllib.parse import quote, urlsplit

    env, _, _, _, lib_dir = setup
    trap_port = free_port()
    trap = f"http://127.0.0.1:{trap_port}/stir-injection.png"
    lib = ToolLibrary.load(lib_dir)
    table = lib.table.copy()
    evil_id = f"evil`![x]({trap}?md) <img src=\"{trap}?html\">`/corr"
    table.loc[0, "id"] = evil_id
    table.loc[0, "pair_id"] = f"pair`![x]({trap}?pair) <img src=\"{trap}?pairhtml\">`"
    evil_lib = tmp_path / "evil-lib"
    ToolLibrary(keys=lib.keys, vectors=lib.vectors, table=table, manifest=dict(lib.manifest)).save(evil_lib)
    env = {**env, "STIR_LIBRARY": str(evil_lib)}
    log = tmp_path / "streamlit.log"
    asked: list[str] = []
    with serving(env, log) as port, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 2600})
        page.on("request", lambda r: asked.append(r.url))
        page.goto(f"http://127.0.0.1:{port}/library?tool={quote(evil_id, safe='')}",
                  wait_until="domcontentloaded")
        page.get_by_text("Tool dashboard").wait_for(timeout=120_000)
        # Shown as text: the URL is visible characters on the page, not an attribute of an element.
        page.get_by_text("stir-injection.png?pair", exact=False).first.wait_for(timeout=120_000)
        page.wait_for_timeout(2_000)  # let any late image load start before counting requests
        tagged = page.locator(f"[src*='{trap_port}'], [href*='{trap_port}']").count()
        browser.close()
    assert tagged == 0
    origins = {(s.hostname, s.port) for s in map(urlsplit, asked) if s.scheme in ("http", "https")}
    assert origins == {("127.0.0.1", port)}, origins  # nothing at the trap, nothing anywhere else
