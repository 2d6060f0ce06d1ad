"""Playground: one prompt, N columns side by side (vanilla and steered configurations), gate firing per
token, a card per control point, the control points × candidates score heatmap."""

from __future__ import annotations

import time

import streamlit as st

from app import export, figures, state, ui
from app.export import ColumnSpec, SavedView
from stir_core.analysis import sweeps, tokens, views
from stir_core.config import recommended
from stir_core.library.checks import context_problem
from stir_core.online.warmup import offered_methods

SAMPLE_TASKS = ("planted", "plain")
FALLBACK_PROMPT = "mod10 3+4-2+6-5\n"
MAX_COLUMNS = 6
MAX_CARDS = 24

ctx = state.context()
lib_layers = ctx.library.layers if ctx.library is not None else []
methods = offered_methods(ctx.library)
base = ctx.online_config()  # defaults, then the library's recommended settings (chosen on val)
TOKEN_CAP = state.max_tokens_cap()


@st.cache_data(show_spinner=False)
def samples(task_name: str, n: int = 20) -> list[dict]:
    """The first `n` eval problems of a task: id, raw prompt, gold answer."""
    from stir_core.tasks import get_task

    task = get_task(task_name)
    return [{"id": ex.id, "prompt": task.prompt(ex), "answer": ex.answer} for ex in task.load("eval", n, 0)]


def default_prompt() -> str:
    try:
        return samples("planted")[0]["prompt"]
    except Exception:  # noqa: BLE001 - the task registry is optional for the Playground
        return FALLBACK_PROMPT


def default_columns() -> list[ColumnSpec]:
    # the static baselines at their tuned settings for this library (README: `static` at scale 2.0), where
    # benchmarks/tune_static.py tuned them; else the schema's defaults
    tuned = views.tuned_static(ctx.library_path, state.REPO / "results" / "tune_static" / "best.json")

    def spec(method: str) -> ColumnSpec:
        knobs_ = {k: getattr(base, k) for k in ui.METHOD_KNOBS.get(method, ())}
        knobs_.update({k: v for k, v in tuned.get(method, {}).items() if k in knobs_})
        return ColumnSpec(method, knobs_)

    if "stir" in methods:
        return [spec("vanilla"), spec("static"), spec("stir")]
    return [spec("vanilla")]


def apply_view(view: SavedView) -> None:
    """Load a saved view / deep link into the widgets (before they render)."""
    st.session_state["pg_prompt"] = view.prompt
    st.session_state["pg_seed"] = view.seed
    if view.max_new_tokens > TOKEN_CAP:
        st.session_state["pg_notice"] = (
            f"max_new_tokens={view.max_new_tokens} is above this server's per-request cap; using {TOKEN_CAP}"
        )
    st.session_state["pg_tokens"] = min(view.max_new_tokens, TOKEN_CAP)
    st.session_state["pg_delim"] = export.escape_delimiter(view.delimiter)
    st.session_state["pg_ncols"] = min(len(view.columns), MAX_COLUMNS)
    for i, c in enumerate(view.columns[:MAX_COLUMNS]):
        st.session_state[f"pg_m{i}"] = c.method if c.method in methods else "vanilla"
        ui.set_knob_widgets(f"pg{i}", c.knobs, lib_layers)


def init_defaults() -> None:
    """Defaults for every Playground setting the session does not have yet."""
    if "pg_ncols" in st.session_state:
        return
    view = SavedView(
        prompt=st.session_state.get("pg_prompt") or default_prompt(),
        columns=default_columns(),
        # the library's recommended budget (the README's 128 for the demo library), else the view default
        max_new_tokens=int(recommended(ctx.library.manifest if ctx.library else None).get(
            "max_new_tokens", SavedView.max_new_tokens)),
        delimiter=base.delimiter,
        seed=base.seed,
    )
    apply_view(view)


def current_view(n_cols: int, knobs: list[dict]) -> SavedView:
    return SavedView(
        model=ctx.model_name,
        device=ctx.device,
        dtype=ctx.dtype,
        library=ctx.library_path,
        prompt=st.session_state["pg_prompt"],
        seed=int(st.session_state["pg_seed"]),
        max_new_tokens=int(st.session_state["pg_tokens"]),
        delimiter=export.unescape_delimiter(st.session_state["pg_delim"]),
        columns=[ColumnSpec(st.session_state[f"pg_m{i}"], knobs[i]) for i in range(n_cols)],
    )


def column_label(i: int, spec: ColumnSpec) -> str:
    changed = [f"{k}={v}" for k, v in spec.knobs.items() if getattr(base, k) != v]
    return f"{i + 1}. {spec.method}" + (f" ({', '.join(changed)})" if changed else "")


def run_comparison(view: SavedView) -> dict:
    """Decode every column, each in its own turn on the model (other sessions interleave between columns);
    stops early, saying so, at the per-request time cap."""
    cols, skipped = [], []
    cap = state.time_cap_s()
    waiting = st.empty()

    def on_wait(position: int) -> None:
        waiting.info(f"Waiting for the model: position {position} in the queue.")

    # Refused, as the README says (and as `stir eval` does), before any column decodes: one line naming the
    # problem, instead of truncating the prompt with the same warning in every column.
    model = ctx.model
    why = context_problem(len(model.encode(model.format_prompt(view.prompt))), view.max_new_tokens, model.n_ctx)
    if why:
        raise ValueError(f"{why}; shorten the prompt or lower max_new_tokens")
    t0 = time.perf_counter()
    for i, spec in enumerate(view.columns):
        if i > 0 and time.perf_counter() - t0 > cap:  # the first column always runs
            skipped.append(column_label(i, spec))
            continue
        trace, wall = state.generate(ctx, view.prompt, spec.method, view.config(i), on_wait=on_wait)
        waiting.empty()
        cols.append(views.playground_column(column_label(i, spec), spec.method, spec.knobs, trace, wall))
    notice = (
        f"Stopped at this server's per-request time cap ({cap:g} s): not run: {', '.join(skipped)}"
        if skipped
        else None
    )
    return views.playground_result(view.to_json(), cols, time.perf_counter() - t0, notice)


# --- pending view (saved file, deep link, or an Evaluate example) ------------------------------------
pending: SavedView | None = st.session_state.pop("pending_view", None)
if pending is not None:
    apply_view(pending)
init_defaults()
if "pg_opened_result" in st.session_state:  # an example opened from the Evaluate page
    st.session_state["pg_result"] = st.session_state.pop("pg_opened_result")

st.title("Playground")
st.caption(
    "Vanilla and steered decoding of one prompt, side by side. Decoding is greedy (as in the paper); "
    "the seed drives the random ablations. Tokens that differ from vanilla are underlined in pink; "
    "hover a token for its log-probability."
)
if ctx.library is None:
    st.info(
        "No tool library is loaded, so only vanilla and no_memory are available. Pick one in the sidebar "
        "or build one on the Build page."
    )

with st.expander("Sample problems"):
    c1, c2, c3 = st.columns([2, 3, 1], vertical_alignment="bottom")
    task_name = c1.selectbox("Task", SAMPLE_TASKS, key="pg_sample_task", persist_state="session")
    try:
        options = samples(task_name)
    except Exception as err:  # noqa: BLE001
        options = []
        st.caption(f"Samples unavailable: {err}")
    if options:
        pick = c2.selectbox(
            "Problem",
            range(len(options)),
            key="pg_sample_pick",
            persist_state="session",
            format_func=lambda j: (
                f"{options[j]['id']}: {options[j]['prompt'].strip()} (gold {options[j]['answer']})"
            ),
        )

        def _use_sample() -> None:
            st.session_state["pg_prompt"] = options[st.session_state["pg_sample_pick"]]["prompt"]

        c3.button("Use", on_click=_use_sample, key="x_sample_use")

st.text_area(
    "Prompt",
    key="pg_prompt",
    persist_state="session",
    height=90,
    help="The raw prompt; the model's chat template (if it has one) is applied before decoding.",
)
c1, c2, c3, c4 = st.columns(4)
c1.number_input("Seed", min_value=0, step=1, key="pg_seed", persist_state="session")
c2.number_input(  # no min/max on the widget: an out-of-range entry is refused below, by name
    "Max new tokens",
    step=16,
    key="pg_tokens",
    persist_state="session",
    help=f"At most {TOKEN_CAP} on this server (STIR_APP_MAX_TOKENS)",
)
c3.text_input(
    "Segment delimiter", key="pg_delim", persist_state="session", help="Escaped, e.g. \\n\\n (the default)"
)
c4.number_input(
    "Columns", min_value=1, max_value=MAX_COLUMNS, step=1, key="pg_ncols", persist_state="session"
)
n_cols = int(st.session_state["pg_ncols"])

knobs: list[dict] = []
cfg_cols = st.columns(n_cols)
field_errors: list[str] = []  # every invalid field, one line each; Run is disabled while there is any
for i in range(n_cols):
    with cfg_cols[i]:
        if st.session_state.get(f"pg_m{i}") not in methods:
            st.session_state[f"pg_m{i}"] = "stir" if i > 0 and "stir" in methods else "vanilla"
        method = st.selectbox(f"Column {i + 1}", methods, key=f"pg_m{i}", persist_state="session")
        if ui.METHOD_KNOBS.get(method):
            with st.popover("Knobs", width="stretch"):
                try:
                    knobs.append(ui.knob_editor(method, f"pg{i}", lib_layers, vars(base)))
                except ValueError as err:
                    field_errors.append(f"Column {i + 1}: {err}")
                    knobs.append({})
        else:
            knobs.append({})

ui.show_notices()
tokens_value = st.session_state["pg_tokens"]
if tokens_value is None or not 1 <= int(tokens_value) <= TOKEN_CAP:
    field_errors.append(f"max_new_tokens={tokens_value}: must be between 1 and {TOKEN_CAP} on this server "
                        "(STIR_APP_MAX_TOKENS)")
view: SavedView | None = None
if not field_errors:
    try:
        view = current_view(n_cols, knobs)
    except ValueError as err:
        field_errors.append(str(err))
for line in field_errors:
    st.error(ui.md_text(line))
if "pg_notice" in st.session_state:
    st.warning(st.session_state.pop("pg_notice"))

blocked = view is None or bool(ctx.model_error)
run_clicked = st.button("Run comparison", type="primary", key="x_run", disabled=blocked,
                        help="Fix the fields above first" if view is None else (
                            "The model is not loaded (see the sidebar)" if ctx.model_error else None)) and not blocked
autorun = st.session_state.pop("pending_autorun", False) and not blocked
if view is None:
    pass  # the errors above say why nothing runs
elif (run_clicked or autorun) and not view.prompt.strip():
    st.error("The prompt is empty.")
elif run_clicked or autorun:
    try:  # a model that fails to load while we wait for it is a ValueError too (ModelLoadError): one line
        if ctx.library is not None and ctx.check_library() is None:
            st.error(f"The library does not fit this model: {ui.md_text(ctx.library_error)}")
        else:
            with st.spinner("Decoding…"):
                st.session_state["pg_result"] = run_comparison(view)
    except ValueError as err:
        st.error(f"Generation failed: {ui.md_text(err)}")

with st.expander("Saved view"):
    if view is None:
        st.caption("Fix the fields above to download this view.")
    else:
        st.download_button(
            "Download this view (JSON)",
            data=export.view_bytes(view),
            file_name="stir-view.json",
            mime="application/json",
            key="x_view_dl",
            on_click="ignore",
        )
    up = st.file_uploader("Open a saved view", type=["json"], key="x_view_up")
    if up is not None and st.session_state.get("pg_view_seen") != up.file_id:
        st.session_state["pg_view_seen"] = up.file_id
        try:
            st.session_state["pending_view"] = SavedView.from_json(up.getvalue())
            st.session_state["pending_autorun"] = True
            st.rerun()
        except ValueError as err:
            st.error(ui.md_text(err))

# --- strength sweeps ----------------------------------------------------------------------------------
SWEEP_DEFAULTS = {"k_scale": "0.25, 0.5, 1, 2", "tau_null": "0, 0.25, 0.5, 1", "top_l": "1, 2, 4",
                  "static_scale": "0.5, 1, 2, 4"}
with st.expander("Strength sweep (one knob over a range)"):
    sweepable = [k for k, m in sweeps.SWEEP_KNOBS.items() if m in methods]
    if not sweepable:
        st.caption("Load a library to sweep STIR's or the static baseline's knobs.")
    else:
        s1, s2 = st.columns([1, 3])
        knob = s1.selectbox("Knob", sweepable, key="pg_sw_knob", persist_state="session")
        # a new knob gets its own default range (so does a session back from another page, which dropped it)
        if st.session_state.get("pg_sw_knob_seen") != knob or "pg_sw_values" not in st.session_state:
            st.session_state["pg_sw_knob_seen"] = knob
            st.session_state["pg_sw_values"] = SWEEP_DEFAULTS[knob]
        text = s2.text_input("Values", key="pg_sw_values", persist_state="session",
                             help="comma-separated; each checked like the knob's field")
        try:
            values = sweeps.sweep_values(knob, text)
            sweep_error = None
        except ValueError as err:
            values, sweep_error = [], str(err)
        if sweep_error:
            st.error(ui.md_text(sweep_error))
        method_of = sweeps.SWEEP_KNOBS[knob]
        b1, b2, b3, b4 = st.columns([2, 1, 1, 2], vertical_alignment="bottom")
        if b1.button(f"Sweep this prompt ({len(values[: MAX_COLUMNS - 1])} columns + vanilla)", key="x_sw_prompt",
                     disabled=bool(sweep_error) or blocked) and view is not None:
            base_knobs = {k: getattr(base, k) for k in ui.METHOD_KNOBS.get(method_of, ())}
            if method_of == "static":
                base_knobs.update({k: v for k, v in views.tuned_static(
                    ctx.library_path, state.REPO / "results" / "tune_static" / "best.json").get("static", {}).items()
                    if k in base_knobs})
            st.session_state["pending_view"] = SavedView(
                model=view.model, device=view.device, dtype=view.dtype, library=view.library, prompt=view.prompt,
                seed=view.seed, max_new_tokens=view.max_new_tokens, delimiter=view.delimiter,
                columns=[ColumnSpec("vanilla", {})] + [ColumnSpec(method_of, {**base_knobs, knob: v})
                                                       for v in values[: MAX_COLUMNS - 1]])
            st.session_state["pending_view_fields"] = set()
            st.session_state["pending_autorun"] = True
            st.rerun()
        sw_task = b2.selectbox("Task", SAMPLE_TASKS, key="pg_sw_task", persist_state="session")
        st.session_state.setdefault("pg_sw_n", 16)
        sw_n = b3.number_input("Problems", min_value=2, max_value=128, step=8, key="pg_sw_n", persist_state="session")
        if b4.button("Sweep a batch (val, seed 1)", key="x_sw_batch", disabled=bool(sweep_error) or blocked):
            try:
                with st.spinner(f"Decoding {int(sw_n)} problems × {len(values)} settings + vanilla…"):
                    # the library's recommended settings, with this view's budget, delimiter and seed
                    sw_cfg = base if view is None else base.with_overrides(
                        max_new_tokens=view.max_new_tokens, delimiter=view.delimiter, seed=view.seed)
                    table = state.strength_sweep(ctx, sw_task, knob, tuple(values), int(sw_n), sw_cfg)
                st.session_state["pg_sweep"] = {"knob": knob, "task": sw_task, "table": table}
            except ValueError as err:
                st.error(f"Sweep failed: {ui.md_text(err)}")
        done = st.session_state.get("pg_sweep")
        if done:
            st.caption(f"`{done['task']}` val, seed 1: {sweeps.SWEEP_KNOBS[done['knob']]} at each "
                       f"{done['knob']}, paired with vanilla on the same problems (exact McNemar).")
            sfig = figures.sweep_figure(done["table"], done["knob"])
            st.plotly_chart(sfig, theme=None, key="x_sweep_chart", config={"displaylogo": False})
            ui.figure_exports(sfig, f"sweep-{done['knob']}", "x_sweep_exp")
            st.dataframe(done["table"], hide_index=True, width="stretch")
            ui.table_exports(done["table"], f"sweep-{done['knob']}", "x_sweep_tab")

# --- results -------------------------------------------------------------------------------------------
result = st.session_state.get("pg_result")
if result:
    if view is not None:
        st.query_params.from_dict({**view.to_query(), "run": "1"})
    page = views.playground_page(result)
    traces, labels, reference = page.traces, page.labels, page.reference
    colors = figures.tool_colors(traces)
    col_knobs = [c.get("knobs") or {} for c in result["columns"]]
    # KL(steered ‖ vanilla) per token and per commit (teacher-forced; stir_core.analysis.effects), cached
    effects: list[dict | None] = []
    for i, t in enumerate(traces):
        if not any(tok.tool for tok in t.tokens):  # nothing added anywhere: the distributions are vanilla's
            effects.append({"kl": [0.0] * t.n_tokens, "commits": []})
        elif ctx.model_error:
            effects.append({"error": "the model is not loaded"})
        else:
            try:
                effects.append(state.trace_effects(
                    ctx.model_key, ctx.library_key if ctx.library is not None else ("", ""), t.to_json(),
                    str(col_knobs[i].get("scope", base.scope))))
            except ValueError as err:  # e.g. a model that failed meanwhile
                effects.append({"error": str(err)})
    tviews = [tokens.token_views(t, reference, kl=(effects[i] or {}).get("kl"),
                                 tau_null=col_knobs[i].get("tau_null"))
              for i, t in enumerate(traces)]
    mode = st.segmented_control(
        "Colour tokens by", list(tokens.COLOR_MODES), key="pg_color", persist_state="session",
        format_func=tokens.COLOR_MODE_LABELS.get,
        help="the committed tool; the token's log-probability; KL(steered ‖ vanilla) of the distribution it "
        "was chosen from (vanilla on the same steered prefix); the probe gain of the commit governing it. "
        "Hover a token for what acted on it; at a control point (dotted outline), for why.",
    ) or "tool"
    rng = None if mode == "tool" else figures.mode_range(tviews, mode)
    if result.get("notice"):
        st.warning(result["notice"])
    if page.gold is None and ctx.model_name == "embedded":
        st.info(views.EMBEDDED_FORMATS)
    st.caption(page.header + (f" · graded by the `{page.gold.task}` task: gold {page.gold.answer}"
                              if page.gold is not None else ""))
    out_cols = st.columns(len(traces))
    for i, t in enumerate(traces):
        with out_cols[i], st.container(key=f"pg_out_{i}", border=True):
            st.markdown(f"**{ui.md_text(labels[i])}**")
            if page.graded:
                st.markdown(f"**{ui.md_text(page.graded[i])}**", help="the task's own answer rule against gold")
            st.caption(page.captions[i])
            for w in t.warnings:
                st.warning(ui.md_text(w))
            st.markdown(figures.tokens_html(tviews[i], None, colors, mode, rng), unsafe_allow_html=True)

    st.subheader("Gate firing per token")
    strip = figures.token_strip(list(zip(labels, tviews, strict=True)), mode=mode)
    with st.container(key="gate_strip"):
        event = st.plotly_chart(strip, theme=None, key="x_strip_chart", config={"displaylogo": False},
                                on_select="rerun", selection_mode="points")
        ui.figure_exports(strip, "gate-strip", "x_strip_exp")
    picked = event.selection.points if event and event.selection else []
    hits = [p for p in picked if p.get("customdata") is not None]
    if hits:  # a click on a token: explain the control point that governs it
        row, index = (int(x) for x in hits[0]["customdata"][:2])
        tv = next((x for x in tviews[row] if x.index == index), None) if row < len(tviews) else None
        if tv is not None and (tv.why or tv.m is not None):
            st.session_state["pg_why"] = (row, index if tv.why else next(
                d.token_index for d in traces[row].decisions if d.m == tv.m))
    why = st.session_state.get("pg_why")
    with st.container(key="pg_why_panel", border=True):
        st.markdown("**Why** (click a token in the strip; control points are ringed)")
        points = [(r, d) for r in page.steered for d in traces[r].decisions]
        if not points:
            st.caption("No control points in these columns.")
        else:
            keys = [f"{r}:{d.token_index}" for r, d in points]
            if why is not None and f"{why[0]}:{why[1]}" in keys:
                st.session_state["pg_why_pick"] = f"{why[0]}:{why[1]}"
                st.session_state.pop("pg_why")
            if st.session_state.get("pg_why_pick") not in keys:  # start at the last steered column (STIR's),
                last = [(k, d) for k, (r, d) in zip(keys, points, strict=True) if r == page.steered[-1]]
                st.session_state["pg_why_pick"] = next((k for k, d in last if d.committed), last[0][0])  # a commit
            names = {k: f"{labels[r]} · m={d.m} @ token {d.token_index}" for k, (r, d) in zip(keys, points,
                                                                                            strict=True)}
            pick = st.selectbox("Control point", keys, key="pg_why_pick", format_func=names.get)
            r, d = points[keys.index(pick)]
            st.text("\n".join(tokens.why_lines(d, col_knobs[r].get("tau_null"))))

    with_commits = [i for i, t in enumerate(traces) if t.interventions]
    if with_commits:
        st.subheader("The effect of each commit over time")
        st.caption("KL(steered ‖ vanilla) of the next-token distribution, token by token after each commit; "
                   "vanilla's distribution is computed on the steered text (teacher forcing), so the curve "
                   "isolates the vector. ◆: the top token changed.")
        ecols = st.columns(len(with_commits))
        for c, i in zip(ecols, with_commits, strict=True):
            with c:
                st.markdown(f"**{ui.md_text(labels[i])}**")
                eff = effects[i] or {}
                if "error" in eff:
                    st.caption(f"Not available: {ui.md_text(eff['error'])}")
                    continue
                efig = figures.commit_effects_figure(eff["commits"])
                st.plotly_chart(efig, theme=None, key=f"x_eff_chart_{i}", config={"displaylogo": False})
                ui.figure_exports(efig, f"commit-effects-{i}", f"x_eff_exp_{i}")
                if eff.get("logprob_error", 0.0) > 1e-3:
                    st.caption(f"The teacher-forced recomputation differs from the decode's log-probs by up "
                               f"to {eff['logprob_error']:.2g} (batched decoding noise).")

    steered = page.steered
    if steered:
        st.subheader("Gate cards")
        if st.session_state.get("pg_card_col") not in steered:
            st.session_state["pg_card_col"] = steered[-1]
        pick = st.selectbox(
            "Column", steered, format_func=lambda i: labels[i], key="pg_card_col", persist_state="session"
        )
        t = traces[pick]
        cand = t.candidates_frame()
        cards = views.gate_cards(t, MAX_CARDS)
        for start in range(0, len(cards), 2):
            row = st.columns(2)
            for j, card in enumerate(cards[start : start + 2]):
                with row[j], st.container(border=True, key=f"gate_card_{start + j}"):
                    st.markdown(card.title)
                    st.caption(card.caption)
                    if len(card.candidates):
                        st.dataframe(card.candidates, hide_index=True, width="stretch")
                    else:
                        st.caption("No candidates retrieved.")
        if len(t.decisions) > MAX_CARDS:
            st.caption(
                f"Showing the first {MAX_CARDS} of {len(t.decisions)} control points; all are in the exports."
            )
        sm = views.score_matrix(t)
        if sm.z.size and len(sm.col_labels) > 1:
            st.subheader("Scores: control points × candidates")
            heat = figures.score_heatmap(sm)
            st.plotly_chart(heat, theme=None, key="x_score_chart", config={"displaylogo": False})
            ui.figure_exports(heat, "gate-scores", "x_score_exp")
        e1, e2, e3 = st.columns(3)
        with e1:
            st.caption("Tokens")
            ui.table_exports(t.tokens_frame(), f"tokens-{t.method}", "x_tok_exp")
        with e2:
            st.caption("Decisions")
            ui.table_exports(t.decisions_frame(), f"decisions-{t.method}", "x_dec_exp")
        with e3:
            st.caption("Candidates")
            ui.table_exports(cand, f"candidates-{t.method}", "x_cand_exp")
    all_tokens = page.all_tokens
    with st.expander("All tokens (table)"):
        st.dataframe(all_tokens, hide_index=True, width="stretch")
        ui.table_exports(all_tokens, "tokens-all-columns", "x_all_exp")
else:
    if view is not None:
        st.query_params.from_dict(view.to_query())
    st.subheader("Gate firing per token")
    # A placeholder chart: the browser loads its chart library now, while the model loads, not after Run.
    with st.container(key="gate_strip_empty"):
        st.plotly_chart(
            figures.message_figure("Run a comparison to see which tool acts at each token."),
            theme=None,
            key="x_strip_placeholder",
            config={"displayModeBar": False},
        )
