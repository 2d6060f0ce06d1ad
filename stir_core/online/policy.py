"""What a method decides at a control point, separated from how the decoding is scheduled.

A `Policy` answers in two steps, so the scheduler (`stir_core/runtime/scheduler.py`; its oracle, the segment-synchronous
algorithm, lives in `tests/oracle/segmented.py`) can run previews however it likes:

1. `plan(point, prompt)` — no model: retrieval and the shortlist; returns the decision record being
   filled and the steers to preview (none: decide at once);
2. `resolve(plan, null, probes)` — the gate on the previews' results; returns the steer to commit or None.

Every decision, including control points that were never asked (fused delimiters, past the limit), ends
up in `logs[row].decisions` in control-point order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stir_core.online.gate import Reason
from stir_core.online.trace import GateDecision
from stir_core.runtime.engine import ControlPoint, Steer
from stir_core.runtime.scheduler import Probe


@dataclass
class Plan:
    point: ControlPoint
    decision: GateDecision  # the record this control point fills in
    probes: list[Steer] = field(default_factory=list)  # corrections to preview ([] = decide now)
    context: Any = None  # the policy's own (e.g. its shortlist)


@dataclass
class RowLog:
    decisions: list[GateDecision] = field(default_factory=list)
    probe_tokens: int = 0


class Policy:
    """Base: logs decisions per row (the prompt's index). Subclasses implement `plan` and `resolve`."""

    capture_layers: tuple[int, ...] = ()
    positions: str = "last"
    # Hook names the policy's steers may use: their steer buffers exist from the start, so a captured decode
    # step (keyed by them) is not captured again the first time a tool of another layer commits.
    hook_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.logs: dict[int, RowLog] = {}

    def log(self, row: int) -> RowLog:
        return self.logs.setdefault(row, RowLog())

    def note(self, point: ControlPoint, reason: Reason) -> None:
        """Record a control point the policy was not asked about (fused delimiter, past the limit)."""
        self.log(point.row).decisions.append(
            GateDecision(m=point.m, token_index=point.token_index, query_layers=list(self.capture_layers),
                         reason=reason.value, positions=self.positions))

    def fused(self, point: ControlPoint) -> None:
        """A control point fused with the next one (their delimiters complete in one token)."""
        self.note(point, Reason.FUSED)

    def plan(self, point: ControlPoint, prompt: Sequence[int]) -> Plan:
        raise NotImplementedError

    def resolve(self, plan: Plan, null: Probe | None, probes: list[Probe] | None) -> Steer | None:
        raise NotImplementedError

    def _record(self, plan: Plan, steer: Steer | None) -> Steer | None:
        log = self.log(plan.point.row)
        log.decisions.append(plan.decision)
        log.probe_tokens += plan.decision.probe_tokens
        return steer


class NullPolicy(Policy):
    """`no_memory`: decoding that records every control point and never steers."""

    def plan(self, point, prompt):
        return Plan(point, GateDecision(m=point.m, token_index=point.token_index, query_layers=[],
                                        reason=Reason.NO_ENTRIES.value))

    def resolve(self, plan, null, probes):
        return self._record(plan, None)


class FunctionPolicy(Policy):
    """Wraps `fn(row, m, text, states) -> Steer | None` (one decision per row, no previews)."""

    def __init__(self, fn: Callable[[int, int, str, dict[int, torch.Tensor]], Steer | None],
                 capture_layers: Sequence[int]):
        super().__init__()
        self.fn, self.capture_layers = fn, tuple(capture_layers)

    def plan(self, point, prompt):
        steer = self.fn(point.row, point.m, point.text, point.states)
        dec = GateDecision(m=point.m, token_index=point.token_index, query_layers=list(self.capture_layers),
                           reason=(Reason.COMMITTED if steer is not None else Reason.NO_CANDIDATES).value)
        if steer is not None:
            dec.chosen, dec.alpha, dec.layer, dec.added_norm = steer.tag, steer.scale, steer.layer, steer.added_norm
        return Plan(point, dec, context=steer)

    def resolve(self, plan, null, probes):
        return self._record(plan, plan.context)
