"""Online STIR — retrieve, preview, commit — and the baselines that share its decoding loop.

Every method is a `Policy` for the one scheduler (`scheduler.run_continuous`; vanilla is the policy None). At a control
point the STIR policy retrieves tools by the delimiter state, previews the top-L corrections and the null
action as L+1 rows of one batched decode over a forked KV cache, scores them, and commits the winner
(scaled by its score) or nothing. Every decision is recorded as a `GateDecision`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from stir_core.config import StirConfig  # noqa: F401 - re-exported: `from stir_core.online.methods import StirConfig`
from stir_core.library.format import ToolLibrary
from stir_core.library.index import ToolIndex
from stir_core.online import gate
from stir_core.online.gate import Reason
from stir_core.online.policy import FunctionPolicy, NullPolicy, Plan, Policy
from stir_core.online.trace import Candidate, GateDecision, TokenRecord, Trace
from stir_core.runtime.backend import hook_name
from stir_core.runtime.engine import ControlPoint, Engine, GenerateResult, Row, Steer
from stir_core.runtime.locks import serialised
from stir_core.runtime.scheduler import Probe, Schedule, run_continuous

METHODS = ("vanilla", "no_memory", "static", "static_cp", "static_norm", "stir", "no_probing", "random_vector",
           "random_choice")
STIR_VARIANTS = ("stir", "no_probing", "random_vector", "random_choice")


def _stable_seed(*parts) -> int:
    """A seed that depends only on the content (prompt, m, ...) — not on batch position."""
    return zlib.crc32(repr(parts).encode())


class StaticPolicy(Policy):
    """One fixed vector (or one per control point) committed at every control point, at `static_scale`.

    `static` / `static_cp`: the mean Δ of the layer's corrections (per control point for `static_cp`).
    `static_norm` (norm-matched, ours): the direction of that mean rescaled to the median correction norm
    ‖Δ‖ at the layer, so that `static_scale` = STIR's mean committed α adds what a typical STIR commit adds
    (a mean of many directions is much shorter than any one tool: 21 vs a median of 86 on the demo library).
    """

    def __init__(self, library: ToolLibrary, config: StirConfig, per_control_point: bool,
                 norm_matched: bool = False):
        super().__init__()
        self.config = config
        corr = library.table["kind"].to_numpy() == "correction"
        if not corr.any():
            raise ValueError("the static baselines need a library with at least one correction")
        layers = library.table["layer"].to_numpy()
        layer = config.layer if config.layer is not None else int(
            library.table.loc[corr, "layer"].mode().iloc[0])
        sel = corr & (layers == layer)
        if not sel.any():
            raise ValueError(f"the library has no corrections at layer {layer}")
        self.layer = layer
        self.capture_layers = ()
        self.vectors: dict[int | None, torch.Tensor] = {None: library.vectors[torch.from_numpy(sel)].mean(0)}
        if norm_matched:
            mean = self.vectors[None].float()
            if not float(mean.norm()) > 0:
                raise ValueError(f"static_norm: the mean correction at layer {layer} is zero (no direction)")
            median = float(torch.linalg.vector_norm(library.vectors[torch.from_numpy(sel)].float(), dim=1).median())
            self.vectors[None] = mean / mean.norm() * median
        if per_control_point:
            cps = library.table["control_point"].to_numpy()
            for m in sorted(set(cps[sel].tolist())):
                self.vectors[int(m)] = library.vectors[torch.from_numpy(sel & (cps == m))].mean(0)
        self.per_cp = per_control_point
        self.hook = library.hook_point
        self.hook_names = (hook_name(layer, self.hook),)
        self.name = "static_cp" if per_control_point else ("static_norm" if norm_matched else "static")

    def plan(self, point, prompt):
        vec = self.vectors.get(point.m) if self.per_cp else self.vectors[None]
        dec = GateDecision(m=point.m, token_index=point.token_index, query_layers=[self.layer],
                           positions=self.config.positions)
        steer = None
        if vec is None:
            dec.reason = Reason.NO_ENTRIES.value
        else:
            steer = Steer(self.layer, vec, self.config.static_scale, self.config.positions,
                          tag=f"{self.name}@m{point.m}" if self.per_cp else self.name, hook=self.hook)
            dec.chosen, dec.reason, dec.alpha, dec.layer = steer.tag, Reason.STATIC.value, steer.scale, self.layer
            dec.added_norm = steer.added_norm
        return Plan(point, dec, context=steer)

    def resolve(self, plan, null, probes):
        return self._record(plan, plan.context)


class StirPolicy(Policy):
    """Retrieve → preview → commit, and its ablations (`no_probing`, `random_vector`, `random_choice`)."""

    def __init__(self, library: ToolLibrary, config: StirConfig, variant: str = "stir",
                 index: ToolIndex | None = None):
        super().__init__()
        if variant not in STIR_VARIANTS:
            raise ValueError(f"unknown STIR variant {variant!r}; use one of {STIR_VARIANTS}")
        self.library, self.config, self.variant = library, config, variant
        self.index = index if index is not None else ToolIndex(library, center_keys=config.center_keys)
        layers = library.layers
        if config.layer is not None:
            layers = [x for x in layers if x == config.layer]
        self.layers = layers
        self.capture_layers = tuple(layers)
        self.hook_names = tuple(hook_name(layer, library.hook_point) for layer in layers)
        t = library.table
        self._ids = t["id"].astype(str).tolist() if len(library) else []
        self._kinds = t["kind"].tolist() if len(library) else []
        self._q = t["quality"].astype(float).tolist() if len(library) else []
        self._layer = t["layer"].astype(int).tolist() if len(library) else []

    # -- retrieval and values --------------------------------------------------------------------
    def retrieve(self, point: ControlPoint) -> list[Candidate]:
        """Top `k_retrieve` entries at control point m over the library's layers, by cosine similarity."""
        found: list[Candidate] = []
        for layer in self.layers:
            query = point.states.get(layer)
            if query is None:
                continue
            sims, idx = self.index.search(query, layer=layer, control_point=point.m, k=self.config.k_retrieve)
            for s, i in zip(sims[0].tolist(), idx[0].tolist(), strict=True):
                found.append(Candidate(entry=i, tool_id=self._ids[i], kind=self._kinds[i],
                                       layer=self._layer[i], sim=s, quality=self._q[i], value=s * self._q[i]))
        found.sort(key=lambda c: (-c.sim, c.entry))
        return found[: self.config.k_retrieve]

    def plan(self, point: ControlPoint, prompt: Sequence[int]) -> Plan:
        cfg = self.config
        dec = GateDecision(m=point.m, token_index=point.token_index, query_layers=list(self.layers),
                           positions=cfg.positions)
        group = None
        if cfg.min_entries_count == "group":  # the reference counts the library's whole group at m
            sizes = self.index.group_sizes()
            group = sum(sizes.get((layer, point.m), 0) for layer in self.layers)
        short = gate.shortlist(self.retrieve(point), cfg.top_l, cfg.min_entries, cfg.min_sim, group,
                               m=point.m, min_tool_m=cfg.min_tool_m)
        dec.candidates = list(short.candidates)
        dec.null_value = short.null_value
        dec.score_null = cfg.beta * short.null_value
        probes = []
        if short.reason is None and self.variant != "no_probing":
            probes = [self._steer(c, cfg.probe_scale) for c in short.corrections]
        return Plan(point, dec, probes, (short, tuple(prompt)))

    def resolve(self, plan: Plan, null: Probe | None, probes: list[Probe] | None) -> Steer | None:
        cfg, dec = self.config, plan.decision
        short, prompt_key = plan.context
        gains = None
        if probes is not None:
            gains = {c.entry: pr.mean_logprob - null.mean_logprob
                     for c, pr in zip(short.corrections, probes, strict=True)}
            dec.null_probe_text, dec.null_probe_logprob = null.text, null.mean_logprob
            dec.probe_tokens = null.n_tokens + sum(pr.n_tokens for pr in probes)
        pick = None
        if self.variant == "random_choice" and short.reason is None:
            g = torch.Generator().manual_seed(_stable_seed(cfg.seed, prompt_key, plan.point.m))
            pick = int(torch.randint(len(short.corrections), (1,), generator=g))
        out = gate.decide(short, gains, cfg.beta, cfg.rho, cfg.tau_null, cfg.k_scale, pick,
                          pick_beats_null=cfg.random_choice_gate == "null")
        scored = {c.entry: c for c in out.scored}
        for i, c in enumerate(dec.candidates):
            if c.entry in scored:
                pr = None if probes is None else probes[short.corrections.index(c)]
                dec.candidates[i] = replace(scored[c.entry], previewed=pr is not None,
                                            probe_text=None if pr is None else pr.text,
                                            probe_logprob=None if pr is None else pr.mean_logprob)
        dec.reason = out.reason.value
        steer = None
        if out.chosen is not None:
            best = out.chosen
            steer = self._steer(best, out.alpha)
            if self.variant == "random_vector":
                g = torch.Generator().manual_seed(_stable_seed(cfg.seed, prompt_key, plan.point.m, "vec"))
                rnd = torch.randn(self.library.vectors.shape[1], generator=g)
                vec = self.library.vectors[best.entry].float()
                steer = Steer(best.layer, rnd / rnd.norm() * vec.norm(), out.alpha, cfg.positions,
                              f"random~{best.tool_id}", self.library.hook_point)
            dec.chosen, dec.chosen_entry = best.tool_id, best.entry
            dec.alpha, dec.layer, dec.added_norm = out.alpha, best.layer, steer.added_norm
        return self._record(plan, steer)

    def _steer(self, c: Candidate, scale: float, tag: str | None = None) -> Steer:
        return Steer(c.layer, self.library.vectors[c.entry], scale, self.config.positions, tag or c.tool_id,
                     self.library.hook_point)


def build_policy(method: str, library: ToolLibrary | None, config: StirConfig) -> Policy | None:
    """The policy for `method` (None for vanilla)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method == "vanilla":
        return None
    if method == "no_memory":
        return NullPolicy()
    if library is None:
        raise ValueError(f"method {method!r} needs a tool library (--library)")
    if method in ("static", "static_cp", "static_norm"):
        return StaticPolicy(library, config, per_control_point=method == "static_cp",
                            norm_matched=method == "static_norm")
    return StirPolicy(library, config, variant=method)


@serialised  # the engine is not safe for concurrent callers (stir_core/runtime/locks.py)
def run_method(engine: Engine, prompts: Sequence[str], method: str, library: ToolLibrary | None = None,
               config: StirConfig | None = None, example_ids: Sequence[str] | None = None,
               batch: int | None = None, on_trace: Callable[[int, Trace], None] | None = None) -> list[Trace]:
    """Decode `prompts` (already formatted) with one method, batched; returns one Trace per prompt. `batch`:
    most prompts decoding at once in a fixed pool (None: all); the rest join as rows finish.
    `on_trace(i, trace)` as each prompt finishes (in finishing order; it may raise to cancel the run)."""
    config = config or StirConfig()
    if library is not None and len(library) and library.vectors.shape[1] != engine.model.d_model:
        raise ValueError(f"library vectors have width {library.vectors.shape[1]} but the model's d_model is "
                         f"{engine.model.d_model}")
    policy = build_policy(method, library, config)
    logs = policy.logs if policy is not None else {}

    def trace_of(b: int, row: Row) -> Trace:  # once a row is finished its log is complete
        log = logs.get(b)
        return make_trace(method, prompts[b], row, log.decisions if log else [], log.probe_tokens if log else 0,
                          None if example_ids is None else example_ids[b])

    traces: dict[int, Trace] = {}

    def finished(b: int, row: Row) -> None:
        traces[b] = trace_of(b, row)
        if on_trace is not None:
            on_trace(b, traces[b])

    replay(engine, prompts, policy, config, batch, on_row=finished)
    return [traces[b] for b in range(len(prompts))]


def schedule_of(config: StirConfig) -> Schedule:
    return Schedule(config.max_new_tokens, config.max_control_points, config.probe_tokens, config.top_l,
                    config.probe_stop == "delimiter", config.scope, config.preview)


def replay(engine: Engine, prompts: Sequence[str], policy: Policy | None, config: StirConfig,
           batch: int | None = None, on_row: Callable[[int, Row], None] | None = None) -> list:
    """Greedy decoding of formatted prompts with `policy` at the control points (None: vanilla); the rows.

    One scheduler for every method (`stir_core/runtime/scheduler.py`); the segment-synchronous algorithm it
    must equal lives in `tests/oracle/` as a test oracle. `schedule` is accepted for old configs: both
    values run the scheduler, whose tokens and decisions equal the segment-synchronous path's.
    """
    for i, p in enumerate(prompts):
        if not p or not p.strip():
            raise ValueError(f"prompt {i} is empty")
    ids = [engine.model.encode(p) for p in prompts]
    rows = run_continuous(engine, ids, policy, schedule_of(config), config.delimiter, config.max_preview_rows,
                          batch=batch, on_row=on_row)
    engine.finish(rows)
    return rows


def make_trace(method: str, prompt: str, row, decisions: list[GateDecision], probe_tokens: int,
               example_id: str | None = None) -> Trace:
    """Assemble a Trace from an engine row: per-token records plus the decisions' commit lengths."""
    tokens, segment = [], 0
    for i, (tok, piece, lp, added, ends) in enumerate(zip(row.tokens, row.pieces, row.logprobs, row.added,
                                                          row.stream.boundaries, strict=True)):
        tokens.append(TokenRecord(index=i, token_id=tok, text=piece, logprob=lp, segment=segment,
                                  tool=added[0] if added else None, added_norm=added[1] if added else 0.0,
                                  is_delimiter=ends > 0))
        segment += ends
    bounds = [d.token_index for d in decisions] + [len(tokens) - 1]
    for d, nxt in zip(decisions, bounds[1:], strict=True):
        d.commit_tokens = max(0, nxt - d.token_index)
    return Trace(method=method, prompt=prompt, completion=row.text, tokens=tokens, decisions=decisions,
                 probe_tokens=probe_tokens, example_id=example_id)


def generate_segmented(engine: Engine, prompts: Sequence[str], policy: Policy | Callable | None,
                       max_new_tokens: int, delimiter: str = "\n\n", max_control_points: int | None = None,
                       capture_layers: Sequence[int] | None = None) -> tuple[GenerateResult, list[list]]:
    """Greedy segmented decoding of text prompts with `policy` (or `fn(row, m, text, states)`) deciding at
    every control point, commits persisting. Returns (GenerateResult, decisions per row)."""
    if policy is not None and not isinstance(policy, Policy):
        layers = capture_layers if capture_layers is not None else range(engine.model.n_layers)
        policy = FunctionPolicy(policy, layers)
    for i, p in enumerate(prompts):
        if not p or not p.strip():
            raise ValueError(f"prompt {i} is empty")
    ids = [engine.model.encode(p) for p in prompts]
    rows = run_continuous(engine, ids, policy, Schedule(max_new_tokens, max_control_points, scope="persist"),
                          delimiter, capture_layers=capture_layers)
    engine.finish(rows)
    decisions = [policy.logs[b].decisions if policy and b in policy.logs else [] for b in range(len(prompts))]
    return GenerateResult.of(rows), decisions
