"""Build: mine → select → index for the current model, with progress and a live candidate count; the new
library directory then appears in the sidebar's picker (run directory)."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from app import state, ui
from stir_core.config import check_layers, knobs
from stir_core.io import outputs
from stir_core.io.jobs import get_job, start_job
from stir_core.offline.build import BuildConfig, SelectConfig, build_library, check_build_output
from stir_core.offline.mine import MineConfig
from stir_core.tasks import task_names
from stir_core.tasks.files import FORMATS

ctx = state.context()
st.title("Build a library")

base = BuildConfig.small()
defaults = {
    "bd_task": base.mine.task,
    "bd_problems": base.mine.n_problems,
    "bd_rollouts": base.mine.k_rollouts,
    "bd_tokens": base.mine.max_new_tokens,
    "bd_layers": ", ".join(str(x) for x in base.mine.layers),
    "bd_top_c": base.mine.top_c,
    "bd_budget": base.select.budget,
    "bd_select": base.select.method,
    "bd_temperature": base.mine.temperature,
    "bd_both": base.mine.require_correct_and_incorrect,
    "bd_seed": base.mine.seed,
    "bd_mine_file": "",
    "bd_eval_file": "",
}
for k, v in defaults.items():
    st.session_state.setdefault(k, v)

st.caption(
    f"Mines tools from {ui.md_code(ctx.model_name)}'s own rollouts (Stage I), selects a diverse library with the "
    "quality-weighted DPP (Stage II) and indexes it (Stage III). Defaults: `BuildConfig.small()`."
)
names = task_names()
if st.session_state["bd_task"] not in names:
    st.session_state["bd_task"] = names[0]
c1, c2, c3, c4 = st.columns(4)
c1.selectbox("Task", names, key="bd_task", persist_state="session",
             help="File tasks (gsm8k, math500, ...) read your local JSONL/Parquet files, one per split")
c2.number_input("Problems", min_value=1, max_value=10000, step=8, key="bd_problems", persist_state="session")
c3.number_input(
    "Rollouts per problem (K)", min_value=2, max_value=64, step=1, key="bd_rollouts", persist_state="session"
)
c4.number_input(
    "Max new tokens (T_mine)", min_value=8, max_value=4096, step=16, key="bd_tokens", persist_state="session"
)
is_file_task = st.session_state["bd_task"] in FORMATS
if is_file_task:
    c1, c2 = st.columns(2)
    c1.text_input("Mining file (split `mine`)", key="bd_mine_file", persist_state="session",
                  placeholder="data/gsm8k/train.jsonl", help="JSONL, JSON or Parquet; mined problems come from here")
    c2.text_input("Evaluation file (split `eval`, optional)", key="bd_eval_file", persist_state="session",
                  placeholder="data/gsm8k/test.jsonl",
                  help="Checked to share no problem with the mining file; `stir eval --config` reads it")
c1, c2, c3, c4 = st.columns(4)
c1.text_input(
    "Layers",
    key="bd_layers",
    persist_state="session",
    help="Layer specs: ints (negative from the end), fractions, a/b",
)
c2.number_input(
    "Keep top C items", min_value=1, max_value=100000, step=16, key="bd_top_c", persist_state="session"
)
c3.number_input(
    "Library budget B", min_value=1, max_value=100000, step=16, key="bd_budget", persist_state="session"
)
c4.selectbox("Selection", ["dpp", "top", "random"], key="bd_select", persist_state="session")
c1, c2, c3 = st.columns(3)
c1.number_input(
    "Temperature", min_value=0.05, max_value=5.0, step=0.05, key="bd_temperature", persist_state="session"
)
c2.number_input("Seed", min_value=0, step=1, key="bd_seed", persist_state="session")
c3.checkbox("Need correct and incorrect rollouts", key="bd_both", persist_state="session")
MAIN_MINE = ("task", "n_problems", "k_rollouts", "max_new_tokens", "layers", "top_c", "temperature", "seed",
             "require_correct_and_incorrect")
advanced_error, advanced = None, {"mine": {}, "select": {}}
with st.expander("All mining and selection knobs"):
    try:
        advanced["mine"] = ui.config_editor(
            MineConfig, [k for k in knobs(MineConfig) if k not in MAIN_MINE], "bdm", vars(base.mine)
        )
        advanced["select"] = ui.config_editor(
            SelectConfig, [k for k in knobs(SelectConfig) if k not in ("budget", "method")], "bds", vars(base.select)
        )
    except ValueError as err:
        advanced_error = str(err)
st.session_state.setdefault("x_bd_out", str(state.runs_dir() / f"build-{time.strftime('%Y%m%d-%H%M%S')}"))
out_dir = st.text_input("Run directory", key="x_bd_out")


existing = outputs.is_library_dir(Path(out_dir) / "library") if out_dir.strip() else False
if existing:
    st.checkbox(
        "Replace the library already in this run directory (atomic: the old one stays until the new one "
        "is complete)",
        key="x_bd_force",
    )


def run_job(job, model_key, model, cfg: BuildConfig, out: str, overwrite: bool) -> str:
    """The build, in a background job (no Streamlit calls: it runs outside the script thread). Mining
    checkpoints per batch, so a cancelled build resumes when started again on the same directory."""
    state.use_model_threads(*model_key)

    def progress(stage: str, done: int, total: int, info: dict) -> None:
        job.report(done, total, stage, **{k: v for k, v in info.items() if k in ("candidates", "kept")})

    return str(build_library(model, cfg, out, progress=progress, show_progress=False, overwrite=overwrite))


def task_section() -> dict:
    """The config's task section: the name, plus the files per split for a file task."""
    name = st.session_state["bd_task"]
    if name not in FORMATS:
        return {"name": name}
    files = {split: st.session_state[key].strip() for split, key in (("mine", "bd_mine_file"),
                                                                      ("eval", "bd_eval_file"))}
    return {"name": name, "files": {k: v for k, v in files.items() if v}}


running = get_job(st.session_state.get("bd_job"))
bd_blocked = bool(running and running.active) or bool(ctx.model_error)
if st.button("Build library", type="primary", key="x_bd_run", disabled=bd_blocked,
             help="The model is not loaded (see the sidebar)" if ctx.model_error else None) and not bd_blocked:
    try:
        if advanced_error:
            raise ValueError(advanced_error)
        cfg = BuildConfig.from_dict(
            {
                "model": ctx.model_name,
                "task": task_section(),
                "mine": {
                    **{k: v for k, v in vars(base.mine).items() if k != "task"},
                    **advanced["mine"],
                    "n_problems": int(st.session_state["bd_problems"]),
                    "k_rollouts": int(st.session_state["bd_rollouts"]),
                    "max_new_tokens": int(st.session_state["bd_tokens"]),
                    "layers": st.session_state["bd_layers"],
                    "top_c": int(st.session_state["bd_top_c"]),
                    "temperature": float(st.session_state["bd_temperature"]),
                    "seed": int(st.session_state["bd_seed"]),
                    "require_correct_and_incorrect": bool(st.session_state["bd_both"]),
                },
                "select": {
                    **vars(base.select),
                    **advanced["select"],
                    "budget": int(st.session_state["bd_budget"]),
                    "method": st.session_state["bd_select"],
                },
            }
        )
        if not out_dir.strip():
            raise ValueError("give a run directory")
        cfg.make_task()  # files, split disjointness, clean_prefixes: before any work starts
        model = ctx.model
        check_layers(cfg.mine, model.n_layers, section="mine")
        overwrite = bool(st.session_state.get("x_bd_force")) and existing
        check_build_output(out_dir, overwrite)  # refuses a foreign directory before any work
        job = start_job("build", lambda j: run_job(j, ctx.model_key, model, cfg, out_dir, overwrite), label=out_dir)
        st.session_state["bd_job"] = job.id
    except ValueError as err:
        st.error(ui.md_text(err))
ui.job_panel("bd_job", "Build")
finished = get_job(st.session_state.get("bd_job"))
if finished is not None and finished.status == "done" and st.session_state.get("bd_last_job") != finished.id:
    st.session_state["bd_last_job"] = finished.id
    st.session_state["bd_last"] = str(finished.result)
if finished is not None and finished.status == "done":
    st.success(
        f"Built {finished.result} in {(finished.finished or finished.started) - finished.started:.1f} s. "
        "Pick it in the sidebar (Library → run directory)."
    )

if st.session_state.get("bd_last"):

    def _use_last() -> None:
        st.session_state["sb_lib_src"] = "path"
        st.session_state["sb_lib_path"] = st.session_state["bd_last"]

    c1, c2 = st.columns([3, 1], vertical_alignment="center")
    c1.caption(f"Last build: {ui.md_code(st.session_state['bd_last'])}")
    c2.button("Use this library", on_click=_use_last, key="x_bd_use")
