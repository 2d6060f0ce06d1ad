"""Online STIR — retrieve, preview, commit — and the baselines that share its decoding loop.

Every method is a `Policy` for `Engine.generate_segmented` (vanilla is plain greedy decoding). At a control
point the STIR policy retrieves tools by the delimiter state, previews the top-L corrections and the null
action as L+1 rows of one batched decode over a forked KV cache, scores them, and commits the winner
(scaled by its score) or nothing. Every decision is recorded as a `GateDecision`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from stir_core.config import StirConfig  # noqa: F401 - re-exported: `from stir_core.controller import StirConfig`
from stir_core.engine import ControlPoint, DecodeState, Engine, Policy, Steer
from stir_core.index import ToolIndex
from stir_core.library import ToolLibrary
from stir_core.locks import serialised
from stir_core.trace import Candidate, GateDecision, TokenRecord, Trace

METHODS = ("vanilla", "no_memory", "static", "static_cp", "stir", "no_probing", "random_vector", "random_choice")
STIR_VARIANTS = ("stir", "no_probing", "random_vector", "random_choice")


def _stable_seed(*parts) -> int:
    """A seed that depends only on the content (prompt, m, ...) — not on batch position."""
    return zlib.crc32(repr(parts).encode())


@dataclass
class _RowLog:
    decisions: list[GateDecision] = field(default_factory=list)
    probe_tokens: int = 0


class _LoggingPolicy(Policy):
    """Keeps per-row decision logs, keyed by the row's prompt position in the batch."""

    def __init__(self) -> None:
        self.logs: dict[int, _RowLog] = {}

    def log(self, row: int) -> _RowLog:
        return self.logs.setdefault(row, _RowLog())


class StaticPolicy(_LoggingPolicy):
    """One fixed vector (or one per control point) committed at every control point."""

    def __init__(self, library: ToolLibrary, config: StirConfig, per_control_point: bool):
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
        if per_control_point:
            cps = library.table["control_point"].to_numpy()
            for m in sorted(set(cps[sel].tolist())):
                self.vectors[int(m)] = library.vectors[torch.from_numpy(sel & (cps == m))].mean(0)
        self.per_cp = per_control_point
        self.name = "static_cp" if per_control_point else "static"

    def decide(self, engine, state, points):
        out = []
        for p in points:
            vec = self.vectors.get(p.m) if self.per_cp else self.vectors[None]
            dec = GateDecision(p.m, p.token_index, [self.layer], positions=self.config.positions)
            if vec is None:
                dec.reason = "no_entries"
                out.append(None)
            else:
                s = Steer(self.layer, vec, self.config.static_scale, self.config.positions,
                          tag=f"{self.name}@m{p.m}" if self.per_cp else self.name)
                dec.chosen, dec.reason, dec.alpha, dec.layer = s.tag, "static", s.scale, self.layer
                dec.added_norm = s.added_norm
                out.append(s)
            self.log(p.row).decisions.append(dec)
        return out


class StirPolicy(_LoggingPolicy):
    """Retrieve → preview → commit, and its ablations (`no_probing`, `random_vector`, `random_choice`)."""

    def __init__(self, library: ToolLibrary, config: StirConfig, variant: str = "stir",
                 index: ToolIndex | None = None):
        super().__init__()
        if variant not in STIR_VARIANTS:
            raise ValueError(f"unknown STIR variant {variant!r}; use one of {STIR_VARIANTS}")
        self.library, self.config, self.variant = library, config, variant
        self.index = index if index is not None else ToolIndex(library, center_keys=config.center_keys)
        layers = sorted({int(x) for x in library.table["layer"]}) if len(library) else []
        if config.layer is not None:
            layers = [x for x in layers if x == config.layer]
        self.layers = layers
        self.capture_layers = tuple(layers)
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
                found.append(Candidate(i, self._ids[i], self._kinds[i], self._layer[i], s, self._q[i], s * self._q[i]))
        found.sort(key=lambda c: (-c.sim, c.entry))
        return found[: self.config.k_retrieve]

    def decide(self, engine: Engine, state: DecodeState, points: list[ControlPoint]) -> list[Steer | None]:
        cfg = self.config
        decisions, shortlists = [], []
        for p in points:
            dec = GateDecision(p.m, p.token_index, list(self.layers), positions=cfg.positions)
            dec.candidates = self.retrieve(p)
            anchors = [c for c in dec.candidates if c.kind == "anchor"]
            dec.null_value = max(0.0, max((c.value for c in anchors), default=0.0))
            dec.score_null = cfg.beta * dec.null_value
            corrections = sorted((c for c in dec.candidates if c.kind == "correction"),
                                 key=lambda c: (-c.value, c.entry))[: cfg.top_l]
            if len(dec.candidates) < max(1, cfg.min_entries):
                dec.reason = "no_entries"
                corrections = []
            elif cfg.min_sim is not None and dec.candidates[0].sim < cfg.min_sim:
                dec.reason = "low_sim"
                corrections = []
            elif not corrections:
                dec.reason = "no_candidates"
            decisions.append(dec)
            shortlists.append(corrections)
        if self.variant != "no_probing":
            self._preview(engine, state, points, decisions, shortlists)
        steers = [self._gate(p, d, c, state) for p, d, c in zip(points, decisions, shortlists, strict=True)]
        for p, d in zip(points, decisions, strict=True):
            self.log(p.row).decisions.append(d)
            self.log(p.row).probe_tokens += d.probe_tokens
        return steers

    def _steer(self, c: Candidate, scale: float, tag: str | None = None) -> Steer:
        return Steer(c.layer, self.library.vectors[c.entry], scale, self.config.positions, tag or c.tool_id)

    def _preview(self, engine, state, points, decisions, shortlists) -> None:
        """Null + L candidate probes for every point, as rows of one batched decode over a forked cache.

        `preview="reprefill"` runs each probe as its own fresh prefill + decode instead, as the reference
        does; it gives the same probes and exists to measure what forking saves.
        """
        rows, steers, owners = [], [], []
        for k, (p, cands) in enumerate(zip(points, shortlists, strict=True)):
            if not cands:
                continue
            rows.append(p.row)
            steers.append(None)
            owners.append((k, None))
            for c in cands:
                rows.append(p.row)
                steers.append(self._steer(c, self.config.probe_scale))
                owners.append((k, c))
        if not rows:
            return
        if self.config.preview == "reprefill":
            fork, start, made = self._reprefill_probes(engine, state, rows, steers)
        else:
            fork = engine.fork(state, rows)
            start = [len(r.tokens) for r in fork.rows]
            engine.refeed_last(fork, steers)
            made = engine.decode(fork, self.config.probe_tokens, steers=steers)
        null_lp: dict[int, float] = {}
        for b, (k, c) in enumerate(owners):
            lps = fork.rows[b].logprobs[start[b]:]
            mean_lp = sum(lps) / len(lps) if lps else 0.0
            text = "".join(fork.rows[b].pieces[start[b]:])
            decisions[k].probe_tokens += made[b]
            if c is None:
                null_lp[k] = mean_lp
                decisions[k].null_probe_text, decisions[k].null_probe_logprob = text, mean_lp
            else:
                c.previewed, c.probe_text, c.probe_logprob = True, text, mean_lp
        for k, c in owners:
            if c is not None:
                c.gain = c.probe_logprob - null_lp[k]

    def _reprefill_probes(self, engine, state, rows, steers):
        """The slow way: one fresh prefill of the whole prefix per probe (no cache sharing)."""
        out_rows, made = [], []
        for b, s in zip(rows, steers, strict=True):
            src = state.rows[b]
            fresh = engine.prefill([src.prompt + src.tokens])
            engine.refeed_last(fresh, [s])
            made += engine.decode(fresh, self.config.probe_tokens, steers=[s])
            out_rows.append(fresh.rows[0])
        fake = DecodeState(None, torch.zeros(0), torch.zeros(0), out_rows)
        return fake, [0] * len(out_rows), made

    def _gate(self, p: ControlPoint, dec: GateDecision, cands: list[Candidate], state) -> Steer | None:
        cfg = self.config
        if not cands:
            return None
        for c in cands:
            c.score = cfg.beta * c.value + (0.0 if self.variant == "no_probing" else cfg.rho * (c.gain or 0.0))
        prompt_key = tuple(state.rows[p.row].prompt)
        if self.variant == "random_choice":
            g = torch.Generator().manual_seed(_stable_seed(cfg.seed, prompt_key, p.m))
            best = cands[int(torch.randint(len(cands), (1,), generator=g))]
        else:
            best = max(cands, key=lambda c: (c.score, -c.entry))
        if best.score < dec.score_null:
            dec.reason = "anchor_won"
            return None
        if best.score == dec.score_null:
            dec.reason = "tie"
            return None
        if best.score < cfg.tau_null:
            dec.reason = "below_tau"
            return None
        alpha = cfg.k_scale * best.score
        if not alpha > 0:
            dec.reason = "nonpositive_alpha"
            return None
        steer = self._steer(best, alpha)
        if self.variant == "random_vector":
            g = torch.Generator().manual_seed(_stable_seed(cfg.seed, prompt_key, p.m, "vec"))
            rnd = torch.randn(self.library.vectors.shape[1], generator=g)
            vec = self.library.vectors[best.entry].float()
            steer = Steer(best.layer, rnd / rnd.norm() * vec.norm(), alpha, cfg.positions, f"random~{best.tool_id}")
        dec.chosen, dec.chosen_entry, dec.reason = best.tool_id, best.entry, "committed"
        dec.alpha, dec.layer, dec.added_norm = alpha, best.layer, steer.added_norm
        return steer


class NullPolicy(_LoggingPolicy):
    """`no_memory`: segmented decoding that records every control point and never steers."""

    def decide(self, engine, state, points):
        for p in points:
            self.log(p.row).decisions.append(GateDecision(p.m, p.token_index, [], reason="no_entries"))
        return [None] * len(points)


def build_policy(method: str, library: ToolLibrary | None, config: StirConfig) -> _LoggingPolicy | None:
    """The policy for `method` (None for vanilla)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method == "vanilla":
        return None
    if method == "no_memory":
        return NullPolicy()
    if library is None:
        raise ValueError(f"method {method!r} needs a tool library (--library)")
    if method in ("static", "static_cp"):
        return StaticPolicy(library, config, per_control_point=method == "static_cp")
    return StirPolicy(library, config, variant=method)


@serialised  # the engine is not safe for concurrent callers (stir_core/locks.py)
def run_method(engine: Engine, prompts: Sequence[str], method: str, library: ToolLibrary | None = None,
               config: StirConfig | None = None, example_ids: Sequence[str] | None = None) -> list[Trace]:
    """Decode `prompts` (already formatted) with one method, batched; returns one Trace per prompt."""
    config = config or StirConfig()
    if library is not None and len(library) and library.vectors.shape[1] != engine.model.d_model:
        raise ValueError(f"library vectors have width {library.vectors.shape[1]} but the model's d_model is "
                         f"{engine.model.d_model}")
    policy = build_policy(method, library, config)
    if policy is None:
        res = engine.generate(prompts, config.max_new_tokens)
        decisions_by_row: dict[int, _RowLog] = {}
    else:
        res, _ = engine.generate_segmented(prompts, policy, config.max_new_tokens, config.delimiter,
                                           config.max_control_points)
        decisions_by_row = policy.logs
    traces = []
    for b, row in enumerate(res.rows):
        log = decisions_by_row.get(b, _RowLog())
        traces.append(make_trace(method, prompts[b], row, log.decisions, log.probe_tokens, config.delimiter,
                                 None if example_ids is None else example_ids[b]))
    return traces


def make_trace(method: str, prompt: str, row, decisions: list[GateDecision], probe_tokens: int,
               delimiter: str, example_id: str | None = None) -> Trace:
    """Assemble a Trace from an engine row: per-token records plus the decisions' commit lengths."""
    tokens, text, segment = [], "", 0
    for i, (tok, piece, lp, added) in enumerate(zip(row.tokens, row.pieces, row.logprobs, row.added, strict=True)):
        before = text
        text += piece
        is_delim = text.count(delimiter) > before.count(delimiter)
        tokens.append(TokenRecord(i, tok, piece, lp, segment, added[0] if added else None,
                                  added[1] if added else 0.0, is_delim))
        if is_delim:
            segment += 1
    bounds = [d.token_index for d in decisions] + [len(tokens) - 1]
    for d, nxt in zip(decisions, bounds[1:], strict=True):
        d.commit_tokens = max(0, nxt - d.token_index)
    return Trace(method, prompt, row.text, tokens, decisions, probe_tokens, example_id)

