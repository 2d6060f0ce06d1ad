"""Build: mine → select → index for the current model, with progress and a live candidate count; the new
library directory then appears in the sidebar's picker (run directory)."""

from __future__ import annotations

import time

import streamlit as st

from app import state
from stir_core.pipeline import BuildConfig, build_library
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
    f"Mines tools from `{ctx.model_name}`'s own rollouts (Stage I), selects a diverse library with the "
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
st.session_state.setdefault("x_bd_out", str(state.runs_dir() / f"build-{time.strftime('%Y%m%d-%H%M%S')}"))
out_dir = st.text_input("Run directory", key="x_bd_out")


def parse_layers(text: str) -> list:
    out: list = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(float(part) if "." in part else int(part) if "/" not in part else part)
        except ValueError as err:
            raise ValueError(f"bad layer spec {part!r}") from err
    if not out:
        raise ValueError("give at least one layer")
    return out


def task_section() -> dict:
    """The config's task section: the name, plus the files per split for a file task."""
    name = st.session_state["bd_task"]
    if name not in FORMATS:
        return {"name": name}
    files = {split: st.session_state[key].strip() for split, key in (("mine", "bd_mine_file"),
                                                                      ("eval", "bd_eval_file"))}
    return {"name": name, "files": {k: v for k, v in files.items() if v}}


if st.button("Build library", type="primary", key="x_bd_run"):
    try:
        cfg = BuildConfig.from_dict(
            {
                "model": ctx.model_name,
                "task": task_section(),
                "mine": {
                    **{k: v for k, v in vars(base.mine).items() if k != "task"},
                    "n_problems": int(st.session_state["bd_problems"]),
                    "k_rollouts": int(st.session_state["bd_rollouts"]),
                    "max_new_tokens": int(st.session_state["bd_tokens"]),
                    "layers": parse_layers(st.session_state["bd_layers"]),
                    "top_c": int(st.session_state["bd_top_c"]),
                    "temperature": float(st.session_state["bd_temperature"]),
                    "seed": int(st.session_state["bd_seed"]),
                    "require_correct_and_incorrect": bool(st.session_state["bd_both"]),
                },
                "select": {
                    **vars(base.select),
                    "budget": int(st.session_state["bd_budget"]),
                    "method": st.session_state["bd_select"],
                },
            }
        )
        cfg.make_task()  # files, split disjointness, clean_prefixes: before any work starts
    except ValueError as err:
        st.error(str(err))
        st.stop()
    bars = {s: st.progress(0.0, text=f"{s}: waiting") for s in ("mine", "select", "index")}
    live = st.empty()

    def progress(stage: str, done: int, total: int, info: dict) -> None:
        bars[stage].progress(min(1.0, done / max(total, 1)), text=f"{stage}: {done}/{total}")
        if stage != "mine":
            bars["mine"].progress(1.0, text="mine: done")
        if stage == "index":
            bars["select"].progress(1.0, text="select: done")
        live.metric(
            "candidates", info.get("candidates", 0), help="2 per kept item (a correction and an anchor)"
        )

    t0 = time.perf_counter()
    try:
        model = ctx.model  # before the lock: the background load's warm-up takes it too
        with state.generation(*ctx.model_key):
            lib_dir = build_library(model, cfg, out_dir, progress=progress, show_progress=False)
    except ValueError as err:
        st.error(f"Build failed: {err}")
        st.stop()
    st.session_state["bd_last"] = str(lib_dir)
    st.success(
        f"Built {lib_dir} in {time.perf_counter() - t0:.1f} s. Pick it in the sidebar (Library → run directory)."
    )

if st.session_state.get("bd_last"):

    def _use_last() -> None:
        st.session_state["sb_lib_src"] = "path"
        st.session_state["sb_lib_path"] = st.session_state["bd_last"]

    c1, c2 = st.columns([3, 1], vertical_alignment="center")
    c1.caption(f"Last build: `{st.session_state['bd_last']}`")
    c2.button("Use this library", on_click=_use_last, key="x_bd_use")
