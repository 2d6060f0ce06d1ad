"""Library: the geometry of the tool library (UMAP/PCA of keys or vectors, similarities, distributions)
and a card per tool (metadata, neighbours, source problem, logit-lens readout)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from app import figures, state, ui

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
    f"`{ctx.library_path}` · {len(lib)} entries · model `{m.get('model_id', '?')}` · d_model {lib.d_model} · "
    f"created {m.get('created_at', '?')} · {m.get('content_hash', '')[:19]}…"
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

# --- tool card -----------------------------------------------------------------------------------------
st.subheader("Tool card")
tool = st.selectbox(
    "Tool",
    ids,
    key="lib_tool",
    persist_state="session",
    help="Click a point in the 2-D scatter, or pick here.",
)
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
left, right = st.columns(2)
with left:
    st.markdown("**Metadata**")
    st.dataframe(
        pd.DataFrame({"field": list(rec.index), "value": [str(v) for v in rec.to_numpy()]}),
        hide_index=True,
        width="stretch",
        height=300,
    )
    st.markdown("**Nearest neighbours** (cosine)")
    nb_rows = []
    for src in ("keys", "vectors"):
        for j, s in state.neighbours(path, stamp, src, row, 5):
            nb_rows.append(
                {
                    "by": src,
                    "id": ids[j],
                    "kind": table["kind"].iat[j],
                    "m": int(table["control_point"].iat[j]),
                    "layer": int(table["layer"].iat[j]),
                    "cos": s,
                }
            )
    nb = pd.DataFrame(nb_rows)
    if len(nb):
        st.dataframe(nb, hide_index=True, width="stretch")
        ui.table_exports(nb, f"neighbours-{tool}", "x_nb_exp")
    else:
        st.caption("No neighbours.")
with right:
    st.markdown("**Source problem**")
    split_hint = ((m.get("config") or {}).get("mine") or {}).get("split")
    ex = state.find_example(str(rec["task"]), str(rec["example_id"]), split_hint) if rec["task"] else None
    if ex is None:
        st.caption(
            f"task `{rec['task'] or '?'}`, example `{rec['example_id'] or '?'}` (problem text not available)"
        )
    else:
        st.markdown(
            f"task `{rec['task']}` · split `{ex['split']}` · example `{ex['id']}` · gold **{ex['answer']}**"
        )
        st.code(ex["prompt"] + (("\n" + ex["solution"]) if ex.get("solution") else ""), language=None)
    rollouts = [str(r) for r in json.loads(rec["rollout_ids"])]
    if rollouts:
        st.caption(
            f"rollouts contrasted ({len(rollouts)}): "
            + ", ".join(rollouts[:16])
            + (" …" if len(rollouts) > 16 else "")
        )
    st.markdown("**Logit lens** (through the final norm's gain and the unembedding)")
    if rec["kind"] == "anchor":
        st.caption("An anchor has no vector: it argues for doing nothing.")
    else:
        out = state.lens(path, stamp, ctx.model_key, row, 10, True)
        lens_df = pd.DataFrame(
            {
                "promoted": [repr(out["texts"][i]) for i, _ in out["promoted"]],
                "logit +": [s for _, s in out["promoted"]],
                "suppressed": [repr(out["texts"][i]) for i, _ in out["suppressed"]],
                "logit −": [s for _, s in out["suppressed"]],
            }
        )
        st.dataframe(lens_df, hide_index=True, width="stretch")
        ui.table_exports(lens_df, f"logit-lens-{tool}", "x_lens_exp")

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
    labels = [
        f"{ids[j]} (m{int(table['control_point'].iat[j])}, L{int(table['layer'].iat[j])})"
        for j in sim["rows"]
    ]
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
