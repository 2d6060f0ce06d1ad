"""Evaluate: run methods over a task (progress bar) or open saved results; accuracy vs tokens (the
paper's Pareto view), per-example wins/losses vs vanilla, and any example's traces in the Playground."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from app import figures, state, ui
from app.export import ColumnSpec, SavedView
from stir_core.analysis import views
from stir_core.analysis.evaluate import evaluate, load_results
from stir_core.config import StirConfig, check_layers, knobs
from stir_core.io import outputs
from stir_core.io.jobs import get_job, start_job
from stir_core.online.methods import METHODS
from stir_core.tasks import get_task, task_names

ctx = state.context()
st.title("Evaluate")

methods_ok = list(METHODS) if ctx.library is not None and len(ctx.library) else ["vanilla", "no_memory"]
base = ctx.online_config()  # defaults, then the library's recommended settings (chosen on val)
for k, v in {
    "ev_task": "planted",
    "ev_x": "mean_total_tokens",
    "ev_f_outcome": "all",
    "ev_n": 50,
    "ev_split": "eval",
    "ev_seed": 123,
    "ev_methods": [m for m in ("vanilla", "static", "stir") if m in methods_ok],
}.items():
    st.session_state.setdefault(k, v)
lib_layers = ctx.library.layers if ctx.library is not None else []


def run_job(job, model_key, engine, library, warnings, task_name: str, methods: list[str], cfg: StirConfig,
            n: int, split: str, seed: int, out_dir: str) -> str:
    """The evaluation, in a background job (no Streamlit calls here: it runs outside the script thread);
    results are written per method, progress reported per batch (where a Cancel takes effect)."""
    state.use_model_threads(*model_key)
    evaluate(engine, get_task(task_name), methods, library, cfg, n=n, split=split, seed=seed,
             out_dir=out_dir, show_progress=False, warnings=warnings,
             progress=lambda done, total, method: job.report(done, total, method))
    return out_dir


run_tab, open_tab = st.tabs(["Run", "Open saved results"])
with run_tab:
    names = task_names()
    if st.session_state["ev_task"] not in names:
        st.session_state["ev_task"] = names[0]
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Task", names, key="ev_task", persist_state="session")
    c2.number_input("Problems", min_value=1, max_value=5000, step=10, key="ev_n", persist_state="session")
    c3.selectbox("Split", ["eval", "val"], key="ev_split", persist_state="session")
    c4.number_input("Seed", min_value=0, step=1, key="ev_seed", persist_state="session")
    st.multiselect("Methods", methods_ok, key="ev_methods", persist_state="session")
    knob_error = None
    with st.expander("STIR knobs (all; start: the library's recommended settings)"):
        try:
            knob_values = ui.config_editor(StirConfig, list(knobs(StirConfig)), "evk", vars(base), lib_layers)
        except ValueError as err:
            knob_error, knob_values = str(err), {}
    ui.show_notices()
    st.session_state.setdefault(
        "x_ev_out",
        str(state.runs_dir() / f"eval-{st.session_state['ev_task']}-{time.strftime('%Y%m%d-%H%M%S')}"),
    )
    out_dir = st.text_input("Write results to", key="x_ev_out")
    running = get_job(st.session_state.get("ev_job"))
    if st.button("Run evaluation", type="primary", key="x_ev_run", disabled=bool(running and running.active)):
        try:
            if knob_error:
                raise ValueError(knob_error)
            if not st.session_state["ev_methods"]:
                raise ValueError("pick at least one method")
            cfg = StirConfig(**knob_values)
            steered = any(m not in ("vanilla", "no_memory") for m in st.session_state["ev_methods"])
            check_layers(cfg, None, lib_layers if steered and lib_layers else None)
            task = get_task(st.session_state["ev_task"])
            task.load(st.session_state["ev_split"], 1, int(st.session_state["ev_seed"]))
            library = ctx.check_library()
            if ctx.library_error:
                raise ValueError(f"library not usable with this model: {ctx.library_error}")
            outputs.claim_run_dir(out_dir, "eval")
            args = (
                ctx.model_key,
                ctx.engine,
                library,
                list(ctx.library_warnings),
                st.session_state["ev_task"],
                list(st.session_state["ev_methods"]),
                cfg,
                int(st.session_state["ev_n"]),
                st.session_state["ev_split"],
                int(st.session_state["ev_seed"]),
                out_dir,
            )
            job = start_job("eval", lambda j: run_job(j, *args), label=out_dir)
            st.session_state["ev_job"] = job.id
        except ValueError as err:
            st.error(str(err))
    ui.job_panel("ev_job", "Evaluation")
    finished = get_job(st.session_state.get("ev_job"))
    if (
        finished is not None
        and finished.status in ("done", "cancelled")
        and st.session_state.get("ev_job_opened") != finished.id
        and (Path(finished.label) / "summary.json").is_file()
    ):
        st.session_state["ev_job_opened"] = finished.id  # once: the user may open other results after
        st.session_state["ev_dir"] = finished.label

with open_tab:
    found = [str(p) for p in state.find_dirs(state.runs_dir(), "summary.json")]
    if found:
        pick = st.selectbox("Results found under runs/", found, key="x_ev_found")
        if st.button("Open", key="x_ev_open_found"):
            st.session_state["ev_dir"] = pick
    typed = st.text_input("…or a results directory", key="x_ev_typed")
    if st.button("Open directory", key="x_ev_open_typed") and typed.strip():
        st.session_state["ev_dir"] = typed.strip()

ev_dir = st.session_state.get("ev_dir")
if not ev_dir:
    st.caption("Run an evaluation or open saved results to see them here.")
    st.stop()
try:
    res = load_results(ev_dir)
except (ValueError, OSError) as err:
    st.error(f"Could not open {ev_dir}: {err}")
    st.stop()

st.subheader(f"Results: {Path(ev_dir).name}")
cfg = res.config
page = views.evaluate_page(res, st.session_state.get("ev_f_method"), st.session_state.get("ev_f_outcome") or "all")
st.caption(page.header)
summary = page.summary
st.dataframe(summary, hide_index=True, width="stretch")
ui.table_exports(summary, "eval-summary", "x_ev_sum_exp")
diagnostics = res.diagnostics_table()
st.markdown("**Diagnostics** (rates in [0, 1]; tokens and probe tokens per problem)")
if len(diagnostics):
    st.dataframe(diagnostics, hide_index=True, width="stretch")
else:
    st.caption("Not recorded in these results (written before diagnostics existed).")

x_axis = (
    st.segmented_control(
        "Tokens",
        ["mean_total_tokens", "mean_tokens"],
        key="ev_x",
        persist_state="session",
        format_func=lambda s: "committed + probe" if s == "mean_total_tokens" else "committed",
    )
    or "mean_total_tokens"
)
pareto = figures.pareto_figure(res.summary, x=x_axis, title="Accuracy vs tokens")
st.plotly_chart(pareto, theme=None, key="x_ev_pareto", config={"displaylogo": False})
ui.figure_exports(pareto, "accuracy-vs-tokens", "x_ev_pareto_exp")

st.subheader("Per example")
ex = res.examples
if "vanilla" in set(ex["method"]):
    f1, f2 = st.columns(2)
    if page.methods:
        f1.selectbox("Method", page.methods, key="ev_f_method", persist_state="session")
    f2.segmented_control("Outcome vs vanilla", list(views.OUTCOMES), key="ev_f_outcome", persist_state="session")
else:
    st.caption("No vanilla run in these results: wins/losses need it.")
view = page.examples
st.dataframe(view, hide_index=True, width="stretch")
ui.table_exports(view, "eval-examples", "x_ev_ex_exp")

ids = list(dict.fromkeys(view["example_id"].astype(str))) if len(view) else []
if ids:
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    chosen = c1.selectbox("Example", ids, key="ev_example", persist_state="session")
    if c2.button("Open in Playground", key="x_ev_to_pg"):
        rows = ex[ex["example_id"].astype(str) == chosen]
        cols = views.eval_example_columns(ex, chosen)
        # The Playground takes raw prompts (it applies the chat template itself): take the task's own text.
        found = state.find_example(str(cfg.get("task")), chosen, cfg.get("split"))
        stir_cfg = cfg.get("stir") or {}
        view = SavedView(
            model=ctx.model_name,
            device=ctx.device,
            dtype=ctx.dtype,
            library=ctx.library_path,
            prompt=found["prompt"] if found else str(rows.iloc[0]["prompt"]),
            seed=int(stir_cfg.get("seed", 0)),
            max_new_tokens=int(stir_cfg.get("max_new_tokens", 64)),
            delimiter=stir_cfg.get("delimiter", "\n\n"),
            columns=[
                ColumnSpec(
                    c["method"],
                    {k: stir_cfg[k] for k in ui.METHOD_KNOBS.get(c["method"], ()) if k in stir_cfg},
                )
                for c in cols
            ],
        )
        st.session_state["pending_view"] = view
        st.session_state["pending_view_fields"] = set()  # keep the sidebar's model and library
        st.session_state["pg_opened_result"] = views.playground_result(
            view.to_json(), cols, 0.0, source=f"{ev_dir} (example {chosen})"
        )
        st.switch_page("views/playground.py")
