"""TEST ORACLE (not product code): segment-synchronous decoding with a policy, the straightforward reference
that the product's one scheduler (`stir_core/runtime/scheduler.py`) must equal token for token and decision
for decision under greedy float32 decoding. Nothing under `stir_core/` imports it.

Every row decodes to its next control point; the policy plans for all rows at once; previews run as a
forked batch (or by fresh prefills, `preview="reprefill"`, the authors' way); commits re-run the delimiter
with the vector; then the next segment. Simple, and slow: every row waits for the slowest one. The
continuous scheduler (`scheduler.py`) must produce the same tokens and decisions (parity tests).

Commit scope (`scope`): `persist` leaves a committed segment's steered cache in place for the rest of the
generation; `segment` (the reference) re-runs the segment's tokens unsteered once it closes, so later
queries, previews and segments see the text as if no vector had been added — what the reference gets by
re-prefilling the text at every segment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from stir_core.online.gate import Reason
from stir_core.online.policy import Plan, Policy
from stir_core.runtime.engine import (
    DELIMITER,
    Capture,
    ControlPoint,
    DecodeState,
    Engine,
    GenerateResult,
    Sampling,
    Steer,
)
from stir_core.runtime.scheduler import Probe, Schedule
from stir_core.runtime.steering import SteerSlots


def prefill(engine: Engine, prompts: Sequence[Sequence[int]], capture_layers: Sequence[int] = (),
            seeds: Sequence[int] | None = None, delimiter: str = DELIMITER,
            capacity: int | None = None) -> DecodeState:
    """Run the prompts (token ids) in one forward, one slot each, in a pool of their own (the oracle's
    states; the product's decode loop adds prompts to a fixed pool, `Engine.add_rows`); returns the state
    ready to decode.

    `capacity`: positions per slot (the longest prompt plus the budget; default: `HEADROOM` past the
    longest prompt, growing by a copy when exceeded). Only the last position's logits are computed
    (`[batch, d_vocab]`), never `[batch, pos, d_vocab]`.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prefill needs at least one non-empty prompt")
    ids, qpos = engine._padded(prompts)
    cache = (engine.new_pool(len(prompts), ids.shape[1]) if capacity is None
             else engine.backend.new_cache(len(prompts), max(int(capacity), ids.shape[1])))
    steer = SteerSlots(len(prompts), engine.model.d_model, engine.device)
    logits, _ = engine._forward(cache, ids, qpos, None, None, ())
    rows = [engine.new_row(p, delimiter, None if seeds is None else seeds[b]) for b, p in enumerate(prompts)]
    return DecodeState(cache=cache, lengths=torch.tensor([len(p) for p in prompts], dtype=torch.long),
                       logits=logits[:, -1], rows=rows, steer=steer,
                       capture_layers=tuple(capture_layers), delimiter=delimiter)


def fork(engine: Engine, state: DecodeState, rows: Sequence[int]) -> DecodeState:
    """An independent state with the given rows (repeats allowed), e.g. one prefix into L+1 previews:
    a new pool holding copies of those slots' filled ranges."""
    idx = torch.tensor(list(rows), dtype=torch.long)
    lengths = state.lengths.index_select(0, idx)
    return DecodeState(cache=state.cache.select(idx, int(lengths.max())), lengths=lengths,
                       logits=state.logits.index_select(0, idx.to(state.logits.device)),
                       rows=[state.rows[i].clone() for i in rows], steer=state.steer.select(list(rows)),
                       capture_layers=state.capture_layers, delimiter=state.delimiter)


def refeed_last(engine: Engine, state: DecodeState, steers: Sequence[Steer | None]) -> None:
    """Re-run the last token of every row whose steer acts at `last`, with the vector added there.

    The re-run token overwrites its own position in place (same position id), so the impulse reaches
    every later token through the KV cache.
    """
    feed = torch.tensor([s is not None and s.at_last for s in steers])
    if not bool(feed.any()):
        return
    tokens = torch.tensor([(r.tokens[-1] if r.tokens else r.prompt[-1]) for r in state.rows])
    engine.set_steers(state, steers)
    engine.step(state, tokens, feed, live=feed, replace_last=feed)
    for b, s in enumerate(steers):
        if feed[b] and state.rows[b].added:
            state.rows[b].added[-1] = (s.tag, s.added_norm)


def decode(engine: Engine, state: DecodeState, max_new_tokens: int | Sequence[int], stop: str | None = None,
           sampling: Sampling | None = None, steers: Sequence[Steer | None] | None = None,
           capture_at: str | None = None, active: Sequence[bool] | None = None) -> list[int]:
    """The straightforward decode loop (the product's was this, before the one scheduler): decode every
    active row of `state` until it emits EOS, completes `stop` or spends its budget.

    `stop` and `capture_at` name the state's delimiter (control points are the rows' text streams').
    Each sampled token is fed (so its state is captured and the next logits are ready); `steers[b]`
    acts at every generated token when its positions include `segment`. Returns new tokens per row.
    """
    for name, val in (("stop", stop), ("capture_at", capture_at)):
        if val is not None and val != state.delimiter:
            raise ValueError(f"{name}={val!r} but this state's delimiter is {state.delimiter!r}")
    n = len(state.rows)
    budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != n:
        raise ValueError(f"max_new_tokens has {len(budgets)} entries for {n} rows")
    steers = list(steers) if steers is not None else [None] * n
    live = torch.tensor([(True if active is None else bool(active[b])) and not r.finished and budgets[b] > 0
                         for b, r in enumerate(state.rows)])
    if sampling is not None and any(r.generator is None for b, r in enumerate(state.rows) if live[b]):
        raise ValueError("sampling needs seeded rows: pass seeds= to prefill")
    made = [0] * n
    eos = engine.model.eos_token_id
    engine.set_steers(state, steers)
    at_segment = torch.tensor([s is not None and s.at_segment for s in steers], dtype=torch.bool)
    while bool(live.any()):
        tokens, lp = engine.choose(state, live, sampling)
        captured = engine.step(state, tokens, live, live=live & at_segment)
        for b in torch.nonzero(live).flatten().tolist():
            row = state.rows[b]
            ends = row.accept(int(tokens[b]), float(lp[b]), steers[b], eos)
            made[b] += 1
            if capture_at:
                row.capture(ends, captured, b, state.capture_layers)
            if row.finished or made[b] >= budgets[b] or (stop and ends):
                live[b] = False
    return made


def control_points(engine: Engine, state: DecodeState, b: int, handled: int, limit: int | None,
                   policy: Policy) -> ControlPoint | None:
    """The control point row `b` now stands at, if the policy should act there.

    A token that completes several delimiters yields several control points; all but the last are noted as
    `fused`. Control points past `limit` are not acted on (nor recorded).
    """
    row = state.rows[b]
    last = row.control_points
    if last <= handled or row.finished:
        return None
    act = last if limit is None else min(last, limit)
    if act <= handled:
        return None
    t = len(row.tokens) - 1
    states = {}
    if row.captures and row.captures[-1].token_index == t:
        states = dict(zip(state.capture_layers, row.captures[-1].states, strict=True))
    text = row.text
    for m in range(handled + 1, act):
        policy.note(ControlPoint(row=b, m=m, token_index=t, text=text, states=states), Reason.FUSED)
    return ControlPoint(row=b, m=act, token_index=t, text=text, states=states)


def probe_result(row, start: int, made: int) -> Probe:
    lps = row.logprobs[start:start + made]
    return Probe("".join(row.pieces[start:start + made]), sum(lps) / len(lps) if lps else 0.0, made)


def preview(engine: Engine, state: DecodeState, plans: Sequence[Plan], sched: Schedule
            ) -> dict[int, tuple[Probe, list[Probe]]]:
    """Null + candidate probes for every plan that has some: rows of one batched decode over a fork."""
    rows, steers, owners = [], [], []
    for k, plan in enumerate(plans):
        if not plan.probes:
            continue
        for j, s in enumerate([None, *plan.probes]):
            rows.append(plan.point.row)
            steers.append(s)
            owners.append((k, j))
    if not rows:
        return {}
    stop = state.delimiter if sched.probe_stop else None
    if sched.preview == "reprefill":
        probed_rows, made = [], []
        for b, s in zip(rows, steers, strict=True):
            src = state.rows[b]
            fresh = prefill(engine, [src.prompt + src.tokens], delimiter=state.delimiter)
            fresh.rows[0] = src.clone()  # the cache holds prompt + tokens: the row's own record continues
            refeed_last(engine, fresh, [s])
            made += decode(engine, fresh, sched.probe_tokens, stop=stop, steers=[s])
            probed_rows.append(fresh.rows[0])
        starts = [len(state.rows[b].tokens) for b in rows]
    else:
        forked = fork(engine, state, rows)
        starts = [len(r.tokens) for r in forked.rows]
        refeed_last(engine, forked, steers)
        made = decode(engine, forked, sched.probe_tokens, stop=stop, steers=steers)
        probed_rows = forked.rows
    out: dict[int, tuple[Probe | None, list[Probe]]] = {}
    for b, (k, j) in enumerate(owners):
        res = probe_result(probed_rows[b], starts[b], made[b])
        null, cands = out.get(k, (None, []))
        if j == 0:
            null = res
        else:
            cands.append(res)
        out[k] = (null, cands)
    return out


def unsteer(engine: Engine, state: DecodeState, commits: dict[int, tuple[int, int]]) -> None:
    """Scope `segment`: re-run committed segments unsteered from the cache before the commit.

    `commits[b] = (position, token_index)`: the delimiter's position in the row's slot and its index among
    the row's tokens. The slot is rolled back to the delimiter and the delimiter and the segment's tokens
    are fed again without any vector.
    """
    seqs = {}
    for b, (pos, t0) in commits.items():
        engine.rollback(state, b, pos)
        seqs[b] = state.rows[b].tokens[t0:]
    captured = engine.feed_many(state, seqs)
    for b in seqs:
        row = state.rows[b]
        t = len(row.tokens) - 1
        if captured and row.captures and row.captures[-1].token_index == t:
            states = torch.stack([captured[layer][b].cpu() for layer in state.capture_layers])
            row.captures = [c for c in row.captures if c.token_index != t]
            row.captures += [Capture(t, states)] * row.stream.boundaries[t]


def run_segmented(engine: Engine, state: DecodeState, policy: Policy | None, sched: Schedule) -> None:
    """Decode segment by segment, asking `policy` at each control point; then finish unsteered."""
    n = len(state.rows)
    left = lambda: [max(0, sched.max_new_tokens - len(r.tokens)) for r in state.rows]  # noqa: E731
    cap = state.delimiter if state.capture_layers else None
    decode(engine, state, left(), stop=state.delimiter, capture_at=cap)
    handled = [0] * n
    while policy is not None:
        points = []
        for b, row in enumerate(state.rows):
            if len(row.tokens) >= sched.max_new_tokens:
                continue
            p = control_points(engine, state, b, handled[b], sched.max_control_points, policy)
            if p is not None:
                points.append(p)
                handled[b] = row.control_points
        if not points:
            break
        plans = [policy.plan(p, state.rows[p.row].prompt) for p in points]
        probes = preview(engine, state, plans, sched)
        steers: list[Steer | None] = [None] * n
        for k, plan in enumerate(plans):
            null, cands = probes.get(k, (None, None))
            steers[plan.point.row] = policy.resolve(plan, null, cands)
        commits = {}
        if sched.scope == "segment":
            for b, s in enumerate(steers):
                if s is not None:
                    commits[b] = (int(state.lengths[b]) - 1, len(state.rows[b].tokens) - 1)
        refeed_last(engine, state, steers)
        active = [False] * n
        for p in points:
            active[p.row] = True
        decode(engine, state, left(), stop=state.delimiter, steers=steers, capture_at=cap, active=active)
        if commits:
            live = {b: c for b, c in commits.items()
                    if not state.rows[b].finished and len(state.rows[b].tokens) < sched.max_new_tokens}
            if live:
                unsteer(engine, state, live)
    decode(engine, state, left(), stop=None, capture_at=cap)


def run_oracle(engine: Engine, prompts: Sequence[str], policy: Policy | None, config) -> list:
    """The oracle's `replay`: greedy decoding of formatted prompts with `policy` (None: vanilla); the rows."""
    sched = Schedule(config.max_new_tokens, config.max_control_points, config.probe_tokens, config.top_l,
                     config.probe_stop == "delimiter", config.scope, config.preview)
    ids = [engine.model.encode(p) for p in prompts]
    state = prefill(engine, ids, policy.capture_layers if policy is not None else (), delimiter=config.delimiter)
    if policy is None:
        decode(engine, state, config.max_new_tokens)
    else:
        run_segmented(engine, state, policy, sched)
    engine.finish(state.rows)
    return state.rows


def oracle_method(engine: Engine, prompts: Sequence[str], method: str, library=None, config=None) -> list:
    """`run_method` with the oracle's decoding in place of the scheduler: Traces to compare with."""
    from stir_core.online.methods import StirConfig, build_policy, make_trace

    config = config or StirConfig()
    policy = build_policy(method, library, config)
    rows = run_oracle(engine, prompts, policy, config)
    logs = policy.logs if policy is not None else {}
    return [make_trace(method, prompts[b], row, logs[b].decisions if b in logs else [],
                       logs[b].probe_tokens if b in logs else 0) for b, row in enumerate(rows)]


def generate_segmented(engine: Engine, prompts: Sequence[str], policy: Policy | Callable | None,
                       max_new_tokens: int, delimiter: str = "\n\n", max_control_points: int | None = None,
                       capture_layers: Sequence[int] | None = None):
    """Greedy segmented decoding of text prompts with `policy` (or `fn(row, m, text, states)`) deciding at
    every control point, commits persisting. Returns (GenerateResult, decisions per row)."""
    from stir_core.online.policy import FunctionPolicy

    if policy is not None and not isinstance(policy, Policy):
        layers = capture_layers if capture_layers is not None else range(engine.model.n_layers)
        policy = FunctionPolicy(policy, layers)
    layers = tuple(capture_layers if capture_layers is not None else (policy.capture_layers if policy else ()))
    for i, p in enumerate(prompts):
        if not p or not p.strip():
            raise ValueError(f"prompt {i} is empty")
    state = prefill(engine, [engine.model.encode(p) for p in prompts], layers, delimiter=delimiter)
    run_segmented(engine, state, policy, Schedule(max_new_tokens, max_control_points, scope="persist"))
    engine.finish(state.rows)
    decisions = [policy.logs[b].decisions if policy and b in policy.logs else [] for b in range(len(prompts))]
    return GenerateResult.of(state.rows), decisions
