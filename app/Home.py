"""STIR Workbench — entry point: `streamlit run app/Home.py`.

Navigation plus the sidebar (model, device, dtype, library, model facts, memory). The pages live in
`views/` (not `pages/`: that name turns on Streamlit's legacy page discovery, which breaks deep links to a
page); they only draw and drive `stir_core`, and every heavy object comes from the caches in `state.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only app/ on the path; pages import `app.*`
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import loading  # noqa: E402 - light: no torch (it imports torch in its own threads)

# An emoji icon: a Material icon here would be fetched from the web, and the app works offline.
st.set_page_config(page_title="STIR Workbench", page_icon="🧭", layout="wide")
# First paint before the heavy imports below (torch, stir_core: seconds on a cold start, done by the loader
# thread meanwhile; these imports wait for it): the browser shows the app is up at once.
_shell = None if loading.imports_done() else st.empty()
if _shell is not None:
    _shell.info("STIR Workbench is starting: importing PyTorch and loading the model…")
# The defaults start loading now if `python -m app` or app/serve.py has not already started them with the
# server. After the message above: the loader's imports hold the GIL for seconds and would hold it back
# (measured: first paint 1.1 s after the server is up, instead of 2.8-3.7 s when started before it).
loading.start_defaults()
loading.wait_imports()

import torch  # noqa: E402
from streamlit.delta_generator import DeltaGenerator  # noqa: E402

from app import state  # noqa: E402
from app.export import SavedView  # noqa: E402
from app.ui import md_code, md_text  # noqa: E402
from stir_core.io.versions import versions  # noqa: E402
from stir_core.library.format import LibraryError  # noqa: E402
from stir_core.online.warmup import GraphPhase  # noqa: E402
from stir_core.runtime.model import ModelLoadError  # noqa: E402

if _shell is not None:
    _shell.empty()

PAGES = [
    st.Page("views/playground.py", title="Playground", icon=":material/compare_arrows:", default=True),
    st.Page("views/library.py", title="Library", icon=":material/scatter_plot:"),
    st.Page("views/evaluate.py", title="Evaluate", icon=":material/monitoring:"),
    st.Page("views/build.py", title="Build", icon=":material/construction:"),
]
MODEL_SOURCES = ("embedded", "hub id", "local path")
LIBRARY_SOURCES = ("shipped", "run directory", "path", "none")


def _apply_query_params_once() -> None:
    """On a session's first run, a deep link (URL query parameters) or an env default sets the widgets."""
    if st.session_state.get("_init_done"):
        return
    st.session_state["_init_done"] = True
    params = {k: st.query_params[k] for k in st.query_params}
    if any(k in params for k in ("model", "lib", "prompt")) or any(
        k.startswith("c") and k[1:].isdigit() for k in params
    ):
        try:
            view = SavedView.from_query(params)
            st.session_state["pending_view"] = view
            st.session_state["pending_autorun"] = params.get("run") == "1"
            # a link sets only what it names: model/device/dtype/library keep their defaults otherwise
            st.session_state["pending_view_fields"] = {
                f
                for f, k in (("model", "model"), ("device", "device"), ("dtype", "dtype"), ("library", "lib"))
                if k in params
            }
        except ValueError as err:
            st.session_state["link_error"] = f"Ignoring the link's view: {err}"


def _apply_pending_view_to_sidebar() -> None:
    view: SavedView | None = st.session_state.get("pending_view")
    if view is None or st.session_state.get("_sidebar_view_applied") is view:
        return
    st.session_state["_sidebar_view_applied"] = view
    named = st.session_state.pop("pending_view_fields", None)  # None: a saved file names everything
    if named is None or "model" in named:
        if view.model in ("", "embedded"):
            st.session_state["sb_model_src"] = "embedded"
        else:
            looks_local = view.model.startswith((".", "/", "~")) or Path(view.model).exists()
            st.session_state["sb_model_src"] = "local path" if looks_local else "hub id"
            st.session_state["sb_model_name"] = view.model
    if named is None or "device" in named:
        st.session_state["sb_device"] = view.device
    if named is None or "dtype" in named:
        st.session_state["sb_dtype"] = view.dtype
    if named is None or "library" in named:
        st.session_state["sb_lib_src"] = "path" if view.library else "none"
        st.session_state["sb_lib_path"] = view.library or ""


def _model_picker() -> tuple[str, str, str]:
    env_model = state.default_model()
    if "sb_model_src" not in st.session_state:
        st.session_state["sb_model_src"] = "embedded" if env_model == "embedded" else "local path"
        st.session_state["sb_model_name"] = "" if env_model == "embedded" else env_model
    src = st.radio("Model", MODEL_SOURCES, key="sb_model_src", horizontal=True)
    if src == "embedded":
        name = "embedded"
    else:
        name = st.text_input(
            "Hub id" if src == "hub id" else "Local path",
            key="sb_model_name",
            placeholder="Qwen/Qwen2.5-0.5B-Instruct" if src == "hub id" else "/path/to/model",
        ).strip()
    devices = (
        ["auto", "cpu"]
        + (["cuda"] if torch.cuda.is_available() else [])
        + (["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
    )
    if st.session_state.get("sb_device") not in devices:
        st.session_state["sb_device"] = "auto"
    c1, c2 = st.columns(2)
    device = c1.selectbox("Device", devices, key="sb_device")
    dtype = c2.selectbox("Dtype", ["auto", "float32", "bfloat16", "float16"], key="sb_dtype")
    return name, device, dtype


def _library_picker() -> str | None:
    shipped = state.default_library()
    runs = state.find_dirs(state.runs_dir(), "manifest.json")
    if "sb_lib_src" not in st.session_state:
        st.session_state["sb_lib_src"] = "shipped" if shipped else ("run directory" if runs else "none")
    src = st.radio("Library", LIBRARY_SOURCES, key="sb_lib_src", horizontal=True)
    if src == "shipped":
        if shipped is None:
            st.caption("No shipped library found (assets/demo-library).")
        return shipped
    if src == "run directory":
        if not runs:
            st.caption(f"No library directories under {state.runs_dir()} yet (build one on the Build page).")
            return None
        labels = [str(p) for p in runs]
        if st.session_state.get("sb_lib_run") not in labels:
            st.session_state["sb_lib_run"] = labels[0]
        return st.selectbox("Run directory", labels, key="sb_lib_run")
    if src == "path":
        path = st.text_input("Library path", key="sb_lib_path", placeholder="runs/my-build/library").strip()
        return path or None
    return None


def sidebar() -> tuple[state.Context | None, DeltaGenerator | None]:
    """Pickers, the background model load, the library; returns the context and a slot for model facts."""
    with st.sidebar:
        st.markdown("### STIR Workbench")
        name, device, dtype = _model_picker()
        if not name:
            st.info("Enter a model.")
            return None, None
        if name == "embedded" and not state.embedded_model_present():
            st.error(
                "The embedded model is missing (assets/toy-reasoner). Train it with `stir toy-train`, "
                "or pick a hub id / local path."
            )
            return None, None
        ctx = state.Context(name, device, dtype)
        lib_path = _library_picker()
        if lib_path:
            try:
                ctx.library = state.get_library_file(lib_path, state.library_stamp(lib_path))
                ctx.library_path = lib_path
            except LibraryError as err:
                ctx.library_error = str(err)
                st.error(f"Library not loaded: {md_text(err)}")
            ctx.allow_mismatch = st.checkbox(
                "Allow a library mined on another model",
                key="sb_allow_mismatch",
                help="Off: a library whose manifest names another model is refused. On: it is used, with "
                "a warning shown and recorded in every trace.",
            )
        if ctx.model_error:  # a failed load is not retried on every rerun: only on request (or a new pick)
            st.error(f"Model not loaded: {md_text(ctx.model_error)}")
            st.button("Retry loading", key="x_model_retry", on_click=state.start_loading, args=ctx.model_key)
        facts = st.empty()  # filled after the page: model facts (or a loading note)
    return ctx, facts


def graph_line(model_key: tuple[str, str, str]) -> None:
    """The decode-graph status (app.loading: captured in the background after the load). While the capture
    runs, only this line redraws every 2 s (a fragment: the page is not rerun); the next full run of the
    page draws it without the timer."""
    status = loading.graph_status(*model_key)
    if status is None:
        return

    @st.fragment(run_every=2.0 if status.phase is GraphPhase.CAPTURING else None)
    def draw() -> None:
        now = loading.graph_status(*model_key) or status
        (st.warning if now.phase is GraphPhase.FAILED else st.caption)(md_text(now.line()))

    draw()


def model_facts(ctx: state.Context, slot: DeltaGenerator) -> None:
    """Model facts and memory (waits for the model); also reports a library that does not fit it."""
    if ctx.model_error:  # said once, above the facts slot (the sidebar), with its Retry button
        slot.empty()
        return
    with slot.container():
        try:
            model = ctx.model
        except ModelLoadError as err:
            st.error(f"Model not loaded: {md_text(err)}")
            return
        if ctx.library is not None and ctx.check_library() is None:
            st.error(f"Library not loaded: {md_text(ctx.library_error)}")
        graph_line(ctx.model_key)
        for w in ctx.library_warnings if ctx.library is not None else ():
            st.warning(md_text(w))
        with st.expander("Model facts", expanded=False):
            st.markdown(
                f"- **model**: {md_code(model.model_id)}\n- **layers**: {model.n_layers}\n- **d_model**: {model.d_model}\n"
                f"- **parameters**: {model.n_params:,}\n- **device / dtype**: {model.device} / "
                f"{str(model.dtype).removeprefix('torch.')}\n"
                + "\n".join(f"- **{name}**: {ver}" for name, ver in versions().items())
            )
            mem = state.memory_in_use(model.device)
            st.markdown(
                "\n".join(
                    f"- **{k.replace('_', ' ').replace('mib', '(MiB)')}**: {v:,.0f}" for k, v in mem.items()
                )
            )
            if ctx.library is not None:
                counts = ctx.library.manifest.get("counts", {})
                st.markdown(
                    f"- **library**: {counts.get('entries', len(ctx.library))} entries "
                    f"({counts.get('corrections', '?')} corrections, {counts.get('anchors', '?')} anchors)"
                )


_apply_query_params_once()
_apply_pending_view_to_sidebar()
if "link_error" in st.session_state:
    st.warning(st.session_state.pop("link_error"))
if (_exposed := state.exposure_notice()) is not None:  # served beyond 127.0.0.1: said on every page
    st.info(_exposed)
page = st.navigation(PAGES)
context, facts_slot = sidebar()
st.session_state[state.CONTEXT_KEY] = context
if context is None:
    st.title("STIR Workbench")
    st.info("Pick a model in the sidebar to start.")
else:
    if not context.ready and not context.model_error:
        facts_slot.caption("Loading the model…")
    try:
        page.run()  # draws first: the model (its import is most of a cold start) loads after, unless needed
    except ModelLoadError as err:  # a page that needed the model while it failed: one line, no traceback
        st.error(f"Model not loaded: {md_text(err)}")
    finally:  # also when the page stopped early (st.stop): the load goes on in the background
        if not context.model_error:
            state.start_loading(*context.model_key)
    model_facts(context, facts_slot)
