"""The one decode loop: every decode in the product (rollouts, `generate`, every method) runs here.

The physical batch holds *lanes*: each sequence's `main` lane, plus short-lived ones. At a control point the
policy plans (retrieval, no model). If it wants previews, L `probe` lanes (copies of the main lane) re-run
the delimiter with a candidate added and decode the probe, while the main lane itself *is* the null
action's probe: it keeps decoding, greedily, exactly as vanilla would. When every probe is done:

- the null action wins (most control points): the main lane's probe tokens are kept as real progress, so
  the null action cost no step at all;
- a correction wins: the main lane rolls back to the control point (its slot's length set back, its
  records truncated) and re-runs the delimiter with α·v (the winner's probe lane is not reused: α is the
  gate's score-scaled value, which almost never equals the probe scale, so that branch never ran);
- commit scope `segment` (the reference): the committed segment is decoded by a `driver` lane with the
  vector while the main lane *shadows* it, fed the same tokens without the vector. When the segment closes
  the driver leaves and the main lane holds the unsteered cache: the reference's re-prefill, for free.

Without a policy (vanilla, mining's rollouts, `generate`) the same loop runs main lanes only: seeded
sampling per sequence, a steer a sequence holds for its whole decode (`steers`: a commit at the prompt's
end), `fanout` sequences per prompt (K rollouts: the prompt prefilled once, its slot copied K - 1 times).

The pool is fixed (S = `memory.pool_rows(batch, ...)` slots, allocated once, never rebuilt) and the batch
is its occupied prefix. Lanes that finish free their slot (the last lane's filled range moves into the
hole); previews and drivers take free slots (a copy of one slot's filled range); then waiting prompts do,
prefilled into their slot (continuous batching: N prompts, at most `batch` decoding at once). On CUDA the
pool is a bucketed graph pool and each step replays a captured graph (`Engine.empty_state`,
`stir_core/runtime/graphs.py`).

Tokens and decisions equal the segment-synchronous oracle's (`tests/oracle/segmented.py`, test code only)
under greedy decoding, and the oracle's plain decode loop under seeded sampling: parity tests.
`preview="reprefill"` (the authors' way) recomputes a probe's slot from its tokens instead of keeping the
copy. A policy is anything with `plan`, `resolve`, `fused` and `capture_layers` (`Decider`; the methods'
are in `stir_core/online/policy.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import torch

from stir_core.runtime.engine import (
    DELIMITER,
    Capture,
    ControlPoint,
    Engine,
    GenerateResult,
    Row,
    Sampling,
    Steer,
)
from stir_core.runtime.memory import pool_positions, pool_rows
from stir_core.runtime.segment import TextStream


@dataclass
class Probe:
    """One previewed continuation: its text, mean token log-prob and length."""

    text: str
    mean_logprob: float
    n_tokens: int


class Decider(Protocol):
    """What the scheduler asks of a policy (`stir_core/online/policy.py`). `plan` returns a record whose
    `probes` lists the steers to preview ([]: decide at once); `resolve` gates their results."""

    capture_layers: tuple[int, ...]
    hook_names: tuple[str, ...]  # where its steers may add (their buffers exist from the start)

    def plan(self, point: ControlPoint, prompt: Sequence[int]) -> Any: ...

    def resolve(self, plan: Any, null: Probe | None, probes: list[Probe] | None) -> Steer | None: ...

    def fused(self, point: ControlPoint) -> None: ...


@dataclass(frozen=True)
class Schedule:
    """How a policy's decisions are carried out (the knobs that are not the gate's)."""

    max_new_tokens: int
    max_control_points: int | None = None
    probe_tokens: int = 4
    top_l: int = 4
    probe_stop: bool = True  # a probe ends at the delimiter (the reference)
    scope: str = "segment"  # segment | persist
    preview: str = "fork"  # fork | reprefill
    stop: bool = False  # a sequence ends at its first control point (`generate(stop=...)`)


class Role(Enum):
    """What a lane (one slot of the pool) is doing."""

    MAIN = "main"  # a prompt's own row: exactly one per unfinished prompt
    PROBE = "probe"  # a candidate's preview
    DRIVER = "driver"  # scope `segment`: decodes the committed segment with the vector
    FREE = "free"  # a slot no lane uses: it leaves the batch at the next regroup


@dataclass(kw_only=True)
class Snapshot:
    """Where a main lane can roll back to: its records' length, text stream, logits and cache width."""

    n_tokens: int
    stream: TextStream
    logits: torch.Tensor  # [d_vocab]
    length: int  # the lane's slot length then; a roll-back sets it back
    finished: bool
    n_captures: int


@dataclass(eq=False, kw_only=True)
class Lane:
    seq: int  # the prompt this lane works for
    role: Role = Role.MAIN
    steer: Steer | None = None  # added at generated tokens when its positions include `segment`
    refeed: Steer | None = None  # next step: re-run the last token with this steer added (`last`)
    pending_token: int | None = None  # next step: feed this already-recorded token (picked, not yet fed)
    start: int = 0  # first probe token's index (probe lanes, and a main lane in its null probe)
    made: int = 0
    done: bool = False  # probe finished / driver's segment closed
    shadow: bool = False  # main in scope `segment`: fed its driver's tokens, unsteered
    queue: list[int] = field(default_factory=list)
    shadow_state: torch.Tensor | None = None  # [n_capture_layers, d_model] at the last fed token
    rollback_to: Snapshot | None = None  # a late probe copy: roll back to its control point once copied
    fresh: bool = False  # preview "reprefill": recompute this probe's slot from its tokens once copied
    hold: bool = False  # `steer` acts for the whole decode (a policy-free sequence's steer), not one segment


@dataclass(kw_only=True)
class Pending:
    """A control point whose previews are in flight."""

    plan: Any  # the policy's plan (its `probes`: the steers previewed)
    snapshot: Snapshot
    probes: list[Lane]
    keep: Snapshot | None = None  # the null probe's end of real progress (delimiter or budget) if it ran on


class _Run:
    def __init__(self, engine: Engine, prompts: Sequence[Sequence[int]], policy: Decider | None, sched: Schedule,
                 delimiter: str, max_preview_rows: int | None, capture_layers: Sequence[int] | None = None,
                 batch: int | None = None, *, sampling: Sampling | None = None, seeds: Sequence[int] | None = None,
                 steers: Sequence[Steer | None] | None = None, fanout: int = 1,
                 budgets: Sequence[int] | None = None, on_row: Callable[[int, Row], None] | None = None):
        self.engine, self.policy, self.sched = engine, policy, sched
        layers = capture_layers if capture_layers is not None else (policy.capture_layers if policy else ())
        # Sequences: `fanout` per prompt, sequence s decoding prompt s // fanout.
        self.fanout = fanout
        self.prompts = [list(p) for p in prompts]
        n_seq = len(prompts) * fanout
        self.budgets = [sched.max_new_tokens] * n_seq if budgets is None else list(budgets)
        self.sampling, self.seeds = sampling, seeds
        self.steers = list(steers) if steers is not None else [None] * n_seq
        self.on_row = on_row
        method = "vanilla" if policy is None else "policy"
        # Positions per slot (`memory.pool_positions`): the longest prompt, the budget, and a null probe's
        # run past it under a policy.
        capacity = pool_positions(max(len(p) for p in prompts), max(self.budgets), sched.probe_tokens, method)
        # Sequences decoding at once (whole prompts' groups of `fanout`); the rest wait and take the slots
        # finished rows leave (continuous batching). The pool is fixed at S = `memory.pool_rows(batch, ...)`
        # slots, allocated once.
        self.batch = min(batch or n_seq, n_seq)
        self.n_slots = pool_rows(self.batch, "vanilla" if policy is None else "stir", sched.top_l,
                                 max_preview_rows, sched.scope)
        self.state = engine.empty_state(self.n_slots, capacity, layers, delimiter)
        for name in getattr(policy, "hook_names", ()):
            self.state.steer.ensure(name)
        self.admitted = 0  # sequences [0, admitted) have had a main lane
        self.lanes: list[Lane] = []
        self._pos: dict[int, int] = {}  # id(lane) -> its row (`idx`)
        self.done_rows: list[Row | None] = [None] * n_seq
        self.handled = [0] * n_seq
        self.pending: dict[int, Pending] = {}
        self.spawns: list[tuple[Lane, Lane]] = []  # (source, new lane) to add at the next regroup
        self.eos = engine.model.eos_token_id
        self.admit_prompts()

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def idx(self, lane: Lane) -> int:
        """The lane's row in the batch (a cached position, rebuilt when lanes moved: a scan per call cost
        O(batch) each time, thousands of calls a run)."""
        i = self._pos.get(id(lane))
        if i is None or i >= len(self.lanes) or self.lanes[i] is not lane:
            self._pos = {id(ln): k for k, ln in enumerate(self.lanes)}
            i = self._pos[id(lane)]
        return i

    def row(self, lane: Lane) -> Row:
        return self.state.rows[self.idx(lane)]

    def main(self, seq: int) -> Lane:
        return next(ln for ln in self.lanes if ln.seq == seq and ln.role is Role.MAIN)

    def live(self) -> bool:
        return self.admitted < len(self.done_rows) or any(ln.role is not Role.FREE for ln in self.lanes)

    def regroup(self) -> None:
        """Free slots leave the batch, queued spawns take free slots, then waiting prompts do.

        The pool is fixed: the batch is its occupied prefix. A lane that is done leaves a hole, filled by
        moving a lane from the tail (one slot's filled range); a spawn is a copy of one slot into the next
        free slot; a waiting prompt is prefilled into a free slot. Spawns that find no free slot wait.
        """
        keep = [i for i, ln in enumerate(self.lanes) if ln.role is not Role.FREE]
        if len(keep) < len(self.lanes):
            n = len(keep)
            holes = [i for i in range(n) if self.lanes[i].role is Role.FREE]
            tail = [i for i in keep if i >= n]
            fill = dict(zip(holes, tail, strict=True))
            order = [fill.get(j, j) for j in range(n)]
            self.engine.compact(self.state, order)
            self.lanes = [self.lanes[i] for i in order]
        if self.spawns:
            take = self.spawns[: self.n_slots - len(self.lanes)]
            if take:
                self.engine.append_copies(self.state, [self.idx(src) for src, _ in take])
                for src, new in take:
                    if new.role is Role.PROBE and len(self.row(src).tokens) > new.start:
                        new.rollback_to = self.pending[new.seq].snapshot  # the null probe ran on meanwhile
                    self.lanes.append(new)
                self.spawns = self.spawns[len(take):]
        self.admit_prompts()
        self.late_rollbacks()

    def admit_prompts(self) -> None:
        """Waiting prompts take free slots (never ahead of queued spawns), whole groups of `fanout`
        sequences, up to `batch` sequences at once: each prompt prefilled once, its slot copied for the rest
        of its group; every sequence gets its own seed and steer."""
        if self.spawns:
            return
        running = self.admitted - sum(r is not None for r in self.done_rows)
        k = min(len(self.done_rows) - self.admitted, self.batch - running, self.n_slots - len(self.lanes))
        groups = k // self.fanout
        if groups <= 0:
            return
        first = self.admitted // self.fanout
        n = len(self.lanes)
        self.engine.add_rows(self.state, self.prompts[first: first + groups])
        if self.fanout > 1:
            self.engine.append_copies(self.state, [n + g for g in range(groups) for _ in range(self.fanout - 1)])
        # slot order: the groups' first sequences, then each group's copies
        seqs = [(first + g) * self.fanout for g in range(groups)]
        seqs += [(first + g) * self.fanout + c for g in range(groups) for c in range(1, self.fanout)]
        for j, seq in enumerate(seqs):
            row, steer = self.state.rows[n + j], self.steers[seq]
            row.seed = None if self.seeds is None else int(self.seeds[seq])
            row.generator = None if row.seed is None else self.engine.generator(row.seed)
            lane = Lane(seq=seq, steer=steer, hold=steer is not None,
                        refeed=steer if steer is not None and steer.at_last else None)
            self.lanes.append(lane)
        self.admitted += groups * self.fanout

    def late_rollbacks(self) -> None:
        """Roll late probe copies back to their control point; then (preview "reprefill") recompute the
        new probes' slots from their tokens, as a fresh prefill would, in one forward."""
        fresh = {}
        for ln in self.lanes:
            if ln.rollback_to is not None:
                self.rollback(ln, ln.rollback_to)
                ln.rollback_to = None
            if ln.fresh:
                b, row = self.idx(ln), self.row(ln)
                self.engine.rollback(self.state, b, 0)
                fresh[b] = row.prompt + row.tokens
                ln.fresh = False
        if fresh:
            self.engine.feed_many(self.state, fresh)

    def snapshot(self, lane: Lane) -> Snapshot:
        b = self.idx(lane)
        row = self.state.rows[b]
        return Snapshot(n_tokens=len(row.tokens), stream=row.stream.copy(), logits=self.state.logits[b].clone(),
                        length=int(self.state.lengths[b]), finished=row.finished, n_captures=len(row.captures))

    def rollback(self, lane: Lane, snap: Snapshot) -> None:
        b = self.idx(lane)
        self.engine.rollback(self.state, b, snap.length)
        self.state.logits[b] = snap.logits
        row = self.state.rows[b]
        row.truncate(snap.n_tokens, snap.stream.copy())
        row.finished = snap.finished
        del row.captures[snap.n_captures:]

    # ---- control points and decisions ----------------------------------------------------------------
    def point_at(self, lane: Lane) -> ControlPoint | None:
        """The control point main `lane` stands at, if the policy should act (fused ones are noted)."""
        row, sched = self.row(lane), self.sched
        if self.policy is None or row.finished or len(row.tokens) >= self.budgets[lane.seq] or not row.tokens:
            return None
        last, handled = row.control_points, self.handled[lane.seq]
        act = last if sched.max_control_points is None else min(last, sched.max_control_points)
        if act <= handled or not row.stream.boundaries[-1]:
            return None
        t = len(row.tokens) - 1
        states = {}
        if row.captures and row.captures[-1].token_index == t:
            states = dict(zip(self.state.capture_layers, row.captures[-1].states, strict=True))
        text = row.text
        for m in range(handled + 1, act):
            self.policy.fused(ControlPoint(row=lane.seq, m=m, token_index=t, text=text, states=states))
        self.handled[lane.seq] = last
        return ControlPoint(row=lane.seq, m=act, token_index=t, text=text, states=states)

    def start(self, lane: Lane, point: ControlPoint) -> None:
        """Plan at a control point: decide at once, or queue its probe lanes (they take free slots)."""
        plan = self.policy.plan(point, self.row(lane).prompt)
        if not plan.probes:
            self.commit(lane, self.policy.resolve(plan, None, None))
            return
        n = len(self.row(lane).tokens)
        pend = Pending(plan=plan, snapshot=self.snapshot(lane), probes=[])
        self.pending[lane.seq] = pend
        lane.start, lane.made, lane.done = n, 0, False  # the null probe starts now, whatever the free slots
        for s in plan.probes:
            # a copy of the main lane when a slot takes it (`regroup`), rolled back to the control point if the
            # main lane has run on as the null probe meanwhile
            probe = Lane(seq=lane.seq, role=Role.PROBE, steer=s, refeed=s if s.at_last else None, start=n,
                         fresh=self.sched.preview == "reprefill")
            pend.probes.append(probe)
            self.spawns.append((lane, probe))

    def commit(self, lane: Lane, steer: Steer | None) -> None:
        """Carry out a decision for a main lane standing at its control point."""
        lane.steer = None
        if steer is None:
            return
        if self.sched.scope == "persist":
            lane.steer, lane.refeed = steer, steer if steer.at_last else None
            return
        driver = Lane(seq=lane.seq, role=Role.DRIVER, steer=steer, refeed=steer if steer.at_last else None)
        lane.shadow, lane.queue, lane.shadow_state = True, [], None
        self.spawns.append((lane, driver))

    def ready(self) -> list[int]:
        """Prompts whose control point has every probe done."""
        return [s for s, p in self.pending.items()
                if self.main(s).done and all(pr.done for pr in p.probes)]

    def resolve_ready(self) -> None:
        """Gate every control point whose probes are all done, and carry the decisions out."""
        for seq in self.ready():
            pend = self.pending.pop(seq)
            lane = self.main(seq)
            null = _probe(self.row(lane), lane.start, lane.made)
            probes = [_probe(self.row(pr), pr.start, pr.made) for pr in pend.probes]
            steer = self.policy.resolve(pend.plan, null, probes)
            lane.done, lane.made = False, 0
            for pr in pend.probes:
                pr.role = Role.FREE
            if steer is None:
                if pend.keep is not None and len(self.row(lane).tokens) > pend.keep.n_tokens:
                    self.rollback(lane, pend.keep)  # what ran past the delimiter or the budget was probe only
                self.after_progress(lane)
                continue
            self.rollback(lane, pend.snapshot)
            self.commit(lane, steer)

    def after_progress(self, lane: Lane) -> None:
        """A main lane whose last token completed a delimiter stands at a control point: act on it."""
        row = self.row(lane)
        if row.tokens and row.stream.boundaries[-1] and row.control_points > self.handled[lane.seq]:
            point = self.point_at(lane)
            if point is not None:
                self.start(lane, point)

    def handover(self) -> None:
        """Scope `segment`: a driver whose segment closed, once its shadow has caught up, hands over."""
        for drv in [ln for ln in self.lanes if ln.role is Role.DRIVER and ln.done]:
            lane = self.main(drv.seq)
            if lane.queue:
                continue
            b, d = self.idx(lane), self.idx(drv)
            drow, mrow = self.state.rows[d], self.state.rows[b]
            captures = list(mrow.captures)
            if drow.stream.boundaries and drow.stream.boundaries[-1] and lane.shadow_state is not None:
                captures += [Capture(len(drow.tokens) - 1, lane.shadow_state)] * drow.stream.boundaries[-1]
            self.state.rows[b] = Row(prompt=mrow.prompt, stream=drow.stream, tokens=drow.tokens,
                                     logprobs=drow.logprobs, added=drow.added, captures=captures,
                                     finished=drow.finished, generator=mrow.generator)
            lane.shadow, lane.shadow_state = False, None
            drv.role = Role.FREE
            self.after_progress(lane)

    def retire(self) -> None:
        """Main lanes that are finished leave the batch."""
        for lane in self.lanes:
            if lane.role is not Role.MAIN or lane.seq in self.pending or lane.refeed or lane.shadow:
                continue
            if lane.pending_token is not None:
                continue
            row = self.row(lane)
            if row.finished or len(row.tokens) >= self.budgets[lane.seq] or self.stopped(row):
                row.stream.finish()  # release text its detokenizer withheld: the row is final
                self.done_rows[lane.seq] = row
                lane.role = Role.FREE
                if self.on_row is not None:
                    self.on_row(lane.seq, row)

    # ---- one step ----------------------------------------------------------------------------------
    def decodes(self, lane: Lane, row: Row) -> bool:
        if lane.refeed is not None or lane.pending_token is not None or lane.shadow or row.finished:
            return False
        pend = self.pending.get(lane.seq) if lane.role is Role.MAIN else None
        if pend is not None:
            # The null probe may run past the budget (what does is rolled back); once it is scored the lane
            # runs on, speculatively, up to its next delimiter or the budget: kept if the null action wins.
            return not lane.done or pend.keep is None
        if lane.done:
            return False
        return lane.role is Role.PROBE or (len(row.tokens) < self.budgets[lane.seq] and not self.stopped(row))

    def stopped(self, row: Row) -> bool:
        """Schedule `stop`: the sequence ends at its first control point."""
        return self.sched.stop and row.control_points > 0

    def pick(self, probes_only: bool = False) -> None:
        """Choose and record the next token of every lane that decodes; it is fed by the next forward
        (`pending_token`), except a probe's last one, which only needs scoring."""
        st = self.state
        want = [ln.role is not Role.FREE and (ln.role is Role.PROBE or not probes_only)
                and self.decodes(ln, st.rows[k]) for k, ln in enumerate(self.lanes)]
        if not any(want):
            return
        chosen, lps = self.engine.choose(st, torch.tensor(want, dtype=torch.bool), self.sampling)
        chosen, lps = chosen.tolist(), lps.tolist()
        for k in [k for k, w in enumerate(want) if w]:
            ln, row = self.lanes[k], st.rows[k]
            tok = chosen[k]
            ends = row.accept(tok, lps[k], ln.steer, self.eos)  # its capture once fed (`after_feed`)
            if ln.role is Role.PROBE:
                ln.made += 1
                if ln.made >= self.sched.probe_tokens or (self.sched.probe_stop and ends) or row.finished:
                    ln.done = True  # scored; its last token need not be fed
                    continue
            elif ln.role is Role.DRIVER:
                self.main(ln.seq).queue.append(tok)
                if ends or row.finished or len(row.tokens) >= self.budgets[ln.seq]:
                    ln.done = True  # the shadow feeds the closing token; the driver is done
                    continue
            ln.pending_token = tok

    def step(self) -> bool:
        """Pick, one forward for every lane with something to feed, then the probes' eager picks (so a
        probe's last choice never costs its main lane a step of waiting)."""
        self.pick()
        st, n = self.state, len(self.lanes)
        # Python lists, one tensor each at the end: per-element tensor writes cost more than the step's
        # bookkeeping on a CPU
        tokens, feed, replace, at_seg = [0] * n, [False] * n, [False] * n, [False] * n
        for k, ln in enumerate(self.lanes):
            if ln.role is Role.FREE:
                continue
            if ln.refeed is not None:
                row = st.rows[k]
                tokens[k] = row.tokens[-1] if row.tokens else row.prompt[-1]
                feed[k] = replace[k] = True
            elif ln.pending_token is not None:
                tokens[k], feed[k] = ln.pending_token, True
                at_seg[k] = ln.steer is not None and ln.steer.at_segment
            elif ln.shadow and ln.queue:  # the driver's token of this very step, unsteered
                tokens[k], feed[k] = ln.queue.pop(0), True
        if not any(feed):
            return False
        fed = [k for k in range(n) if feed[k]]
        tokens, feed = torch.tensor(tokens, dtype=torch.long), torch.tensor(feed, dtype=torch.bool)
        replace, at_seg = torch.tensor(replace, dtype=torch.bool), torch.tensor(at_seg, dtype=torch.bool)
        # A lane's slot carries its re-run steer or its segment steer (the same Steer for every lane that
        # has both); the step adds it where the lane re-runs its delimiter or decodes a steered segment.
        self.engine.set_steers(st, [ln.refeed if replace[k] else ln.steer if at_seg[k] else None
                                    for k, ln in enumerate(self.lanes)])
        captured = self.engine.step(st, tokens, feed, live=replace | at_seg, replace_last=replace)
        replaced = replace.tolist()
        for k in fed:
            self.after_feed(self.lanes[k], st.rows[k], replaced[k], captured, k)
        self.pick(probes_only=True)
        return True

    def after_feed(self, lane: Lane, row: Row, replaced: bool, captured: dict, k: int) -> None:
        layers = self.state.capture_layers
        if replaced:
            if row.added:
                row.added[-1] = (lane.refeed.tag, lane.refeed.added_norm)
            lane.refeed = None
            return
        if lane.shadow:
            if captured:
                lane.shadow_state = torch.stack([captured[layer][k, -1].cpu() for layer in layers])
            return
        lane.pending_token = None
        if lane.role is not Role.MAIN:
            return
        ends = row.stream.boundaries[-1]
        if ends and not lane.hold:
            lane.steer = None  # a committed segment ends at its delimiter
        row.capture(ends, captured, k, layers)
        pend = self.pending.get(lane.seq)
        if pend is None:
            if ends:
                self.after_progress(lane)
            return
        stop = ends or len(row.tokens) >= self.budgets[lane.seq] or row.finished
        if pend.keep is None and stop:
            pend.keep = self.snapshot(lane)
        if not lane.done:  # the null probe
            lane.made += 1
            if lane.made >= self.sched.probe_tokens or (self.sched.probe_stop and ends) or row.finished:
                lane.done = True

    def check(self) -> None:
        """Invariant: every prompt not yet done has exactly one main lane (queued spawns are never main)."""
        mains = [ln.seq for ln in self.lanes if ln.role is Role.MAIN]
        for seq, row in enumerate(self.done_rows):
            n = mains.count(seq)
            if n != (0 if row is not None or seq >= self.admitted else 1):
                raise AssertionError(f"prompt {seq}: {n} main lanes ({'done' if row is not None else 'running'})")

    def run(self) -> list[Row]:
        while self.live():
            self.check()
            self.resolve_ready()
            self.handover()
            self.retire()
            self.regroup()
            if not self.live():
                break
            if not self.step() and not self.ready():  # a step may only finish probes (nothing to feed)
                raise RuntimeError("scheduler stalled: no lane can make progress")  # a bug, never user error
            self.regroup()
        missing = [seq for seq, r in enumerate(self.done_rows) if r is None]
        if missing:  # a bug, never user error: name the prompts left without a result
            raise RuntimeError(f"scheduler ended without a result for prompt(s) {missing}")
        return list(self.done_rows)


def _probe(row: Row, start: int, made: int) -> Probe:
    lps = row.logprobs[start:start + made]
    return Probe("".join(row.pieces[start:start + made]), sum(lps) / len(lps) if lps else 0.0, made)


def run_continuous(engine: Engine, prompts: Sequence[Sequence[int]], policy: Decider | None, sched: Schedule,
                   delimiter: str, max_preview_rows: int | None = None,
                   capture_layers: Sequence[int] | None = None, batch: int | None = None, *,
                   sampling: Sampling | None = None, seeds: Sequence[int] | None = None,
                   steers: Sequence[Steer | None] | None = None, fanout: int = 1,
                   budgets: Sequence[int] | None = None,
                   on_row: Callable[[int, Row], None] | None = None) -> list[Row]:
    """Decode token-id prompts with `policy` at the control points (None: no control point acted on); the
    finished rows, one per sequence, in order (sequence s = prompt s // fanout).

    `capture_layers` default to the policy's. `batch`: most sequences decoding at once (None: all); the
    others wait for a finished row's slot, in a pool of `memory.pool_rows(batch, ...)` slots. Policy-free
    only: `sampling` (None: greedy) with `seeds` per sequence, `steers` per sequence (held for the whole
    decode; `last` re-runs the prompt's last token with it), `fanout` sequences per prompt. `budgets`: new
    tokens per sequence (default `sched.max_new_tokens`). `on_row(seq, row)` as each sequence finishes.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("the scheduler needs at least one non-empty prompt")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if fanout < 1:
        raise ValueError(f"fanout must be at least 1, got {fanout}")
    n_seq = len(prompts) * fanout
    if batch is not None and batch < fanout:
        raise ValueError(f"batch {batch} cannot hold one prompt's {fanout} sequences")
    for name, val in (("seeds", seeds), ("steers", steers), ("budgets", budgets)):
        if val is not None and len(val) != n_seq:
            raise ValueError(f"{name} has {len(val)} entries for {n_seq} sequences")
    if budgets is not None and any(b < 0 for b in budgets):
        raise ValueError("budgets must be >= 0")
    if policy is not None and (sampling is not None or steers is not None):
        raise ValueError("sampling and per-sequence steers are for policy-free decodes; a policy decodes greedily")
    if sampling is not None and seeds is None:
        raise ValueError("sampling needs a seed per sequence (seeds=)")
    return _Run(engine, prompts, policy, sched, delimiter, max_preview_rows, capture_layers, batch,
                sampling=sampling, seeds=seeds, steers=steers, fanout=fanout, budgets=budgets,
                on_row=on_row).run()


def generate(engine: Engine, prompts: Sequence[str], max_new_tokens: int | Sequence[int], stop: str | None = None,
             sampling: Sampling | None = None, seed: int = 0, seeds: Sequence[int] | None = None,
             capture_layers: Sequence[int] = (), capture_at: str | None = DELIMITER,
             steers: Sequence[Steer | None] | None = None, fanout: int = 1,
             batch: int | None = None) -> GenerateResult:
    """Prompts (text, already formatted) in, completions out (one per sequence: `fanout` per prompt); greedy
    when `sampling` is None (seeds default to `seed * 1_000_003 + sequence`).

    `stop`: each sequence ends at its first delimiter. `capture_layers` are captured at every control point
    (`capture_at`, the delimiter). `steers[s]` acts for sequence s's whole decode: at the prompt's last token
    (`last`, re-run with it, as a commit at a control point) and/or at every generated token (`segment`).
    """
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    for i, p in enumerate(prompts):
        if not p or not p.strip():
            raise ValueError(f"prompt {i} is empty")
    if stop is not None and capture_at is not None and capture_layers and stop != capture_at:
        raise ValueError("stop and capture_at must be the same delimiter")
    n_seq = len(prompts) * fanout
    budgets = None if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if sampling is not None and seeds is None:
        seeds = [seed * 1_000_003 + b for b in range(n_seq)]
    ids = [engine.model.encode(p) for p in prompts]
    budget = max_new_tokens if isinstance(max_new_tokens, int) else max(max_new_tokens, default=0)
    rows = run_continuous(engine, ids, None, Schedule(budget, stop=stop is not None), stop or capture_at or DELIMITER,
                          capture_layers=tuple(capture_layers) if capture_at else (), batch=batch,
                          sampling=sampling, seeds=seeds, steers=steers, fanout=fanout, budgets=budgets)
    return GenerateResult.of(rows)
