"""Library: the geometry of the tool library (UMAP/PCA of keys or vectors, similarities, distributions)
and a dashboard per tool (provenance, where it fires, what it changes, neighbours; `stir_core.analysis.dashboard`)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import streamlit as st

from app import dashboard_state as dstate
from app import figures, state, ui
from stir_core.analysis import dashboard, views
from stir_core.analysis import diff as library_diff
from stir_core.analysis.dashboard_html import render as render_dashboard
from stir_core.analysis.tokens import Span, spans_html
from stir_core.library.format import MANIFEST_FILE
from stir_core.online.methods import StirConfig

ctx = state.context()
st.title("Library")
lib = ctx.library
if lib is None or len(lib) == 0:
    st.info(
        "No tool library is loaded (or it is empty). Pick one in the sidebar, or build one on the Build page."
    )
    st.stop()

path, stamp = ctx.library_key
table = lib.table
m = lib.manifest
st.caption(
    f"{ui.md_code(ctx.library_path)} · {len(lib)} entries · model {ui.md_code(m.get('model_id', '?'))} · "
    f"d_model {lib.d_model} · created {ui.md_text(m.get('created_at', '?'))} · "
    f"{ui.md_text(str(m.get('content_hash', ''))[:19])}…"
)

defaults = {
    "lib_source": "keys",
    "lib_sim_source": "keys",
    "lib_method": "pca",
    "lib_dims": 2,
    "lib_color": "control_point",
    "lib_neighbors": 15,
    "lib_min_dist": 0.1,
    "lib_seed": 0,
}
for k, v in defaults.items():
    st.session_state.setdefault(k, v)

c1, c2, c3, c4 = st.columns(4)
source = c1.segmented_control(
    "Points",
    ["keys", "vectors"],
    key="lib_source",
    persist_state="session",
    help="keys: retrieval keys of every entry; vectors: Δ of the corrections (anchors have none)",
)
method = c2.segmented_control(
    "Projection",
    ["pca", "umap"],
    key="lib_method",
    persist_state="session",
    format_func=str.upper,
    help="UMAP uses the cosine metric; the first UMAP in a process compiles numba code (tens of seconds)",
)
dims = c3.segmented_control(
    "Dimensions", [2, 3], key="lib_dims", persist_state="session", format_func=lambda d: f"{d}-D"
)
color_by = c4.selectbox("Colour by", figures.COLOR_BY, key="lib_color", persist_state="session")
source, method, dims = source or "keys", method or "pca", dims or 2
if method == "umap":
    with st.expander("UMAP parameters"):
        u1, u2, u3 = st.columns(3)
        u1.number_input(
            "n_neighbors", min_value=2, max_value=200, step=1, key="lib_neighbors", persist_state="session"
        )
        u2.number_input(
            "min_dist", min_value=0.0, max_value=1.0, step=0.05, key="lib_min_dist", persist_state="session"
        )
        u3.number_input("seed", min_value=0, step=1, key="lib_seed", persist_state="session")

proj = state.projection(
    path,
    stamp,
    source,
    method,
    int(dims),
    int(st.session_state["lib_seed"]),
    int(st.session_state["lib_neighbors"]),
    float(st.session_state["lib_min_dist"]),
)
rows = np.asarray(proj["rows"])
if proj["note"]:
    st.info(proj["note"])
if proj["explained"] is not None:
    st.caption(
        "PCA explained variance: " + ", ".join(f"PC{i + 1} {v:.1%}" for i, v in enumerate(proj["explained"]))
    )
if not len(rows):
    st.warning("No points to show (no corrections in this library).")
    st.stop()

ids = table["id"].astype(str).tolist()
linked = st.query_params.get("tool")
if not st.session_state.get("lib_link_done"):  # a deep link `?tool=ID`: read once, when the session opens here
    st.session_state["lib_link_done"] = True  # (later the page writes the param itself)
    if linked is None:
        pass
    elif linked in ids:
        st.session_state["lib_tool"] = linked
    else:
        st.warning(ui.md_text(f"The link's tool {linked!r} is not in this library."))
st.session_state.setdefault("lib_tool", ids[int(rows[0])])
selected_row = (
    ids.index(st.session_state["lib_tool"]) if st.session_state["lib_tool"] in ids else int(rows[0])
)
sub = table.iloc[rows].reset_index(drop=True)
pos = np.flatnonzero(rows == selected_row)
fig = figures.library_scatter(
    proj["coords"],
    sub,
    color_by,
    title=f"{proj['method'].upper()} of {source} ({len(rows)} points)",
    selected=int(pos[0]) if len(pos) else None,
    axis_titles=figures.projection_axis_titles(proj["method"], int(dims), proj["explained"]),
)
if int(dims) == 2:
    event = st.plotly_chart(
        fig,
        theme=None,
        key="x_lib_scatter",
        on_select="rerun",
        selection_mode="points",
        config={"displaylogo": False},
    )
    points = event.selection.points if event and event.selection else []
    if points:
        clicked = ids[int(rows[int(points[0]["customdata"][0])])]
        if st.session_state.get("lib_last_click") != clicked:
            st.session_state["lib_last_click"] = clicked
            st.session_state["lib_tool"] = clicked
            st.rerun()
else:
    st.plotly_chart(fig, theme=None, key="x_lib_scatter3d", config={"displaylogo": False})
    st.caption(
        "3-D views are drawn with WebGL: their SVG/PDF exports hold a raster image. Pick a tool below."
    )
ui.figure_exports(fig, f"library-{method}-{source}-{dims}d", "x_lib_scatter_exp")

# --- tool dashboard (computed in stir_core.analysis.dashboard; drawn here) -----------------------------------------
st.subheader("Tool dashboard")


def _goto(tool_id: str) -> None:
    st.session_state["lib_tool"] = tool_id


def _sweep_html(tokens: list[str], differs: list[bool]) -> str:
    """One sweep column through the one token renderer: tokens that differ from the first column marked."""
    return spans_html([Span(text=t, background="#ffd54f" if d else "", marked=d) for t, d in
                       zip(tokens, differs, strict=True)], css_class="stir-sweep")


tool = st.selectbox(
    "Tool",
    ids,
    key="lib_tool",
    persist_state="session",
    help="Click a point in the 2-D scatter, a neighbour below, or pick here.",
)
st.query_params["tool"] = tool  # this tool's link
row = ids.index(tool)
rec = table.iloc[row]
k1, k2, k3, k4, k5 = st.columns(5)
k1.metric("kind", rec["kind"])
k2.metric("control point m", int(rec["control_point"]))
k3.metric("layer", int(rec["layer"]))
k4.metric("quality q", f"{rec['quality']:.4g}")
k5.metric(
    "norm ‖Δ‖",
    f"{rec['norm']:.4g}",
    help=f"label-shuffled control norm: {rec['shuffled_norm']:.4g}"
    if np.isfinite(rec["shuffled_norm"])
    else None,
)

# Where the firings come from: a saved evaluation run, an on-demand run, or none.
runs = [str(p) for p in dstate.eval_runs()]
# with saved runs, a click on a point lists where that tool fired in the newest one at once
st.session_state.setdefault("dash_source", "saved run" if runs else "none")
o1, o2, o3 = st.columns([2, 3, 2])
source_kind = o1.segmented_control(
    "Firings from", ["none", "saved run", "on demand"], key="dash_source", persist_state="session"
) or "none"
examples, source, source_stamp = None, "", ""
if source_kind == "saved run":
    if not runs:
        o2.caption("No saved evaluation runs (Evaluate page, or `stir eval --out DIR` under the runs directory).")
    else:
        source = o2.selectbox("Run", runs, key="dash_run", persist_state="session")
        source_stamp = dstate.run_stamp(source)
        examples = dstate.run_examples(source, source_stamp)
elif source_kind == "on demand":
    st.session_state.setdefault("dash_n", 32)
    n_od = o2.number_input("Problems (vanilla + STIR)", min_value=2, max_value=500, step=2, key="dash_n",
                           persist_state="session")
    task_name = str(rec["task"]) or "planted"
    od_key = (task_name, int(n_od))
    if o3.button("Run", key="x_dash_run", width="stretch"):
        st.session_state["dash_od"] = od_key
    if st.session_state.get("dash_od") == od_key and not ctx.model_error:
        cfg_json = json.dumps(asdict(StirConfig(max_new_tokens=128)), sort_keys=True)
        try:
            examples = dstate.on_demand(ctx.model_key, ctx.library_key, task_name, int(n_od), "val", 0, cfg_json)
            source, source_stamp = f"on demand: {task_name} val, {int(n_od)} problems, seed 0", cfg_json
        except ValueError as err:
            o3.error(ui.md_text(err))
    else:
        o3.caption(f"decodes {task_name} `val` problems")

with st.expander("α-sweep settings"):
    w1, w2, w3 = st.columns([4, 2, 2])
    st.session_state.setdefault("dash_scales", views.format_scales(views.DEFAULT_SCALES))
    st.session_state.setdefault("dash_positions", "last")
    st.session_state.setdefault("dash_prompt", "")
    sweep_prompt = w1.text_area(
        "Prompt (empty: the source problem, decoded up to the tool's control point)",
        key="dash_prompt", persist_state="session", height=80,
    )
    scales_text = w2.text_input("Scales α", key="dash_scales", persist_state="session")
    positions = w3.segmented_control(
        "Positions", ["last", "segment", "last+segment"], key="dash_positions", persist_state="session"
    ) or "last"
scales, scales_warning = views.parse_scales(scales_text)
if scales_warning:
    st.warning(scales_warning)

board = None
if ctx.model_error:  # the dashboard decodes with the model: say so once, keep the rest of the page
    st.info("The tool dashboard needs the model, which did not load (see the sidebar).")
else:
    try:  # a model failing while we wait is a ValueError (ModelLoadError): one line, not a traceback
        board = dstate.tool_dashboard(
            ctx.model_key, ctx.library_key, tool, source, source_stamp, examples,
            sweep_prompt if sweep_prompt.strip() else None, scales, positions, 48,
        )
    except ValueError as err:
        st.error(f"Tool dashboard unavailable: {ui.md_text(err)}")
if board is not None:
    tables = views.tool_tables(board, rec)
    for note in board.notes:
        st.caption(note)
    x1, x2 = st.columns([1, 5])
    with x1:
        ui.export_menu(
            f"tool-{tool.replace('/', '_')}",
            "x_dash_exp",
            [("HTML (one file)", "html", lambda: render_dashboard(board).encode()),
             ("JSON", "json", lambda: dashboard.to_json(board).encode())],
        )

    prov = board.provenance
    tab_p, tab_f, tab_c, tab_n = st.tabs(["Provenance", "Where it fires", "What it changes", "Neighbours"])
    with tab_p:
        left, right = st.columns(2)
        with left:
            st.markdown(
                f"pair {ui.md_code(prov.pair_id)} · task {ui.md_code(prov.task or '?')} · "
                f"example {ui.md_code(prov.example_id or '?')} · "
                f"mean reward + {prov.mean_reward_pos if prov.mean_reward_pos is not None else '—'} / − "
                f"{prov.mean_reward_neg if prov.mean_reward_neg is not None else '—'}"
            )
            if prov.norm_ratio is not None:
                st.markdown(
                    f"norm / label-shuffled norm **{prov.norm_ratio:.3g}**"
                    + (f" (above {prov.ratio_percentile:.0%} of this library's corrections)"
                       if prov.ratio_percentile is not None else "")
                )
            if prov.problem is None:
                st.caption("problem text not available")
            else:
                p = prov.problem
                st.markdown(f"split {ui.md_code(p['split'])} · gold **{ui.md_text(p['answer'])}**")
                st.code(p["prompt"] + (("\n" + p["solution"]) if p.get("solution") else ""), language=None)
            st.markdown("**Metadata**")
            st.dataframe(tables.metadata, hide_index=True, width="stretch", height=260)
        with right:
            st.markdown("**Contrasted prefixes** (positive: correct, best reward; negative: incorrect)")
            st.dataframe(tables.contrasts, hide_index=True, width="stretch")
    with tab_f:
        if board.firings is None:
            st.caption("Pick a saved run or an on-demand run above to see where this tool is retrieved.")
        elif not board.firings:
            st.caption(f"Never retrieved in {board.run}.")
        else:
            st.caption(f"{len(board.firings)} retrievals in {board.run}, by similarity")
            st.dataframe(tables.firings, hide_index=True, width="stretch", height=320)
            ui.table_exports(tables.firings, f"firings-{tool.replace('/', '_')}", "x_fire_exp")
        if board.paired is not None:
            q = board.paired
            a1, a2, a3, a4 = st.columns(4)
            a1.metric(f"committed ({q.method})", q.n_committed)
            a2.metric("fixed", len(q.fixed), help=", ".join(q.fixed) or None)
            a3.metric("broken", len(q.broken), help=", ".join(q.broken) or None)
            a4.metric("unchanged right / wrong", f"{q.both_right} / {q.both_wrong}")
    with tab_c:
        if board.effects:
            st.markdown(f"**The effect of each commit over time** (the first {len(board.effects)} commits of this "
                        f"tool in {ui.md_text(board.run)}; KL(steered ‖ vanilla) of the next-token distribution, "
                        "vanilla computed on the steered text; ◆: the top token changed)")
            efig = figures.commit_effects_figure(
                [{**e, "m": f"{e['m']} {e['example_id']}"} for e in board.effects])
            st.plotly_chart(efig, theme=None, key="x_dash_eff_chart", config={"displaylogo": False})
            ui.figure_exports(efig, f"commit-effects-{tool.replace('/', '_')}", "x_dash_eff_exp")
            if max(e["logprob_error"] for e in board.effects) > 1e-3:
                st.caption("The recomputation differs from the run's recorded log-probs (run with scope=persist, "
                           "or batched decoding noise): read the curves as approximate.")
        elif board.effects is not None:
            st.caption("This tool was not committed in the picked run: no effect over time to show.")
        if tables.lens is not None:
            st.markdown("**Logit lens** (through the final norm's gain and the unembedding)")
            st.dataframe(tables.lens, hide_index=True, width="stretch")
            ui.table_exports(tables.lens, f"logit-lens-{tool.replace('/', '_')}", "x_lens_exp")
        if board.sweep is not None:
            st.markdown(
                f"**α-sweep** at layer {board.sweep.layer}, positions `{board.sweep.positions}` "
                "(highlighted: tokens that differ from the first column)"
            )
            st.code(board.sweep.prompt[-300:], language=None)
            cols = st.columns(len(board.sweep.rows))
            for col, r in zip(cols, board.sweep.rows, strict=True):
                col.markdown(f"α = {r.scale:g}")
                col.html(_sweep_html(r.tokens, r.differs))
    with tab_n:
        st.markdown("**Nearest neighbours** (cosine)")
        nb = tables.neighbours
        if len(nb):
            st.dataframe(nb, hide_index=True, width="stretch")
            ui.table_exports(nb, f"neighbours-{tool.replace('/', '_')}", "x_nb_exp")
            for by in ("keys", "vectors"):
                sub_nb = [n for n in board.neighbours if n.by == by]
                if sub_nb:
                    st.caption(f"open a neighbour by {by}")
                    bcols = st.columns(len(sub_nb))
                    for j, (bc, n) in enumerate(zip(bcols, sub_nb, strict=True)):
                        bc.button(f"{n.id} ({n.cos:.2f})", key=f"x_nb_{by}_{j}", on_click=_goto, args=(n.id,),
                                  width="stretch")
        else:
            st.caption("No neighbours.")

# --- export (interop) and library diff ---------------------------------------------------------------------
st.subheader("Export tools")
e1, e2, e3, e4 = st.columns([2, 4, 2, 1])
st.session_state.setdefault("exp_format", "gguf")
fmt = e1.selectbox("Format", ["gguf", "repeng", "steering-vectors"], key="exp_format", persist_state="session",
                   help="gguf: a llama.cpp control vector (direction.k = output of block k; layer 0 cannot be "
                   "steered there); repeng: the same GGUF layout, layer 0 allowed; steering-vectors: safetensors "
                   "{layer: vector} that `stir_core.library.interop.export.load_steering_vector` turns into its SteeringVector")
corr_ids = [i for i, k in zip(ids, table["kind"], strict=True) if k == "correction"]
st.session_state.setdefault("exp_ids", [tool] if tool in corr_ids else [])
chosen = e2.multiselect("Tools (empty: every correction)", corr_ids, key="exp_ids")
st.session_state.setdefault("exp_rule", "mean")
rule = e3.selectbox("Combine per layer", ["mean", "quality_mean", "sum"], key="exp_rule", persist_state="session",
                    help="mean: the static baseline's vector; quality_mean: weighted by q; sum: llama.cpp's rule "
                    "for several directions at one layer")
st.session_state.setdefault("exp_scale", 1.0)
scale = e4.number_input("Scale", key="exp_scale", persist_state="session")
try:
    data, ext = dstate.export_file(path, stamp, fmt, tuple(chosen), rule, float(scale))
    st.download_button(f"Download .{ext}", data=data, file_name=f"stir-{fmt}.{ext}", key="x_exp_dl",
                       on_click="ignore", mime="application/octet-stream")
except ValueError as err:
    st.warning(str(err))

st.subheader("Library diff")
others = [str(p) for p in state.find_dirs(state.runs_dir(), MANIFEST_FILE, max_depth=4)]
others = [p for p in dict.fromkeys([str(state.DEMO_LIBRARY), *others]) if p != path]
f1, f2, f3, f4 = st.columns([4, 3, 2, 2])
st.session_state.setdefault("diff_other", "")
other = f1.selectbox("Compare with", others, key="diff_pick", index=None,
                     placeholder="a library under the runs directory, or type a path →")
typed = f2.text_input("…or a library path", key="diff_other", persist_state="session").strip()
st.session_state.setdefault("diff_source", "vectors")
dsource = f3.segmented_control("Of", ["vectors", "keys"], key="diff_source", persist_state="session") or "vectors"
st.session_state.setdefault("diff_min_cos", 0.5)
min_cos = f4.number_input("Match if cos ≥", min_value=-1.0, max_value=1.0, step=0.05, key="diff_min_cos",
                          persist_state="session")
target = typed or other
if target:
    try:
        ld = dstate.library_diff(path, stamp, target, state.library_stamp(target), dsource, float(min_cos))
    except (ValueError, OSError) as err:  # LibraryError is a ValueError
        st.warning(str(err))
    else:
        st.caption(f"A = this library ({len(ld.a_ids)} {dsource}), B = {ui.md_code(target)} ({len(ld.b_ids)}): "
                   f"{len(ld.pairs)} matched, {len(ld.only_a)} only in A, {len(ld.only_b)} only in B")
        dfig = library_diff.diff_figure(ld, "A", "B")
        st.plotly_chart(dfig, theme=None, key="x_diff_chart", config={"displaylogo": False})
        ui.figure_exports(dfig, "library-diff", "x_diff_exp")
        g1, g2, g3 = st.columns(3)
        for col, (label, frame, key) in zip(
            (g1, g2, g3),
            (("Matched pairs", ld.pairs, "pairs"), ("Only in A", ld.only_a, "only_a"), ("Only in B", ld.only_b, "only_b")),
            strict=True,
        ):
            col.markdown(f"**{label}**")
            col.dataframe(frame, hide_index=True, width="stretch", height=240)
            with col:
                ui.table_exports(frame, f"diff-{key}", f"x_diff_{key}")
        ui.table_exports(pd.DataFrame(ld.cos, index=ld.a_ids, columns=ld.b_ids).reset_index(names="id_a"),
                         "diff-cosine", "x_diff_cos")

# --- similarities and distributions --------------------------------------------------------------------
st.subheader("Cosine similarity")
s1, s2 = st.columns([1, 3])
sim_source = (
    s1.segmented_control("Of", ["keys", "vectors"], key="lib_sim_source", persist_state="session") or "keys"
)
st.session_state.setdefault("lib_sim_limit", 120)
limit = s2.number_input(
    "Entries shown",
    min_value=10,
    max_value=400,
    step=10,
    key="lib_sim_limit",
    persist_state="session",
    help="Ordered by layer, control point, kind, then quality",
)
sim = state.similarity(path, stamp, sim_source, int(limit))
if len(sim["rows"]):
    if sim["total"] > len(sim["rows"]):
        st.caption(f"Showing {len(sim['rows'])} of {sim['total']} entries.")
    labels = views.similarity_labels(table, sim["rows"])
    heat = figures.similarity_heatmap(sim["sims"], labels, title=f"Cosine similarity of {sim_source}")
    heat.update_layout(height=620)
    st.plotly_chart(heat, theme=None, key="x_sim_chart", config={"displaylogo": False})
    ui.figure_exports(heat, f"similarity-{sim_source}", "x_sim_exp")

st.subheader("Quality and norm")
dist = figures.distribution_figure(table)
st.plotly_chart(dist, theme=None, key="x_dist_chart", config={"displaylogo": False})
ui.figure_exports(dist, "quality-norm", "x_dist_exp")
with st.expander("All entries (table)"):
    st.dataframe(table, hide_index=True, width="stretch")
    ui.table_exports(table, "library-entries", "x_table_exp")
