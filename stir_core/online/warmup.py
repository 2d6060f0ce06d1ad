"""Decode graphs captured in the background, with eager decoding until they are ready (issue #20, item 3).

An `Engine` with graphs on ("cuda" on a CUDA device, or `STIR_GRAPHS=eager`) captures a decode step per
pool bucket, steer hook set and capture layers on first use (`Engine._graph_for`). Left alone, that capture
would land inside a user's first request. `warm_graphs` instead runs a few short real decodes (`runs`, e.g.
one `run_method` per Playground method) with capture allowed, each under the model's lock
(`stir_core.runtime.locks.model_lock`), one at a time: a request arriving meanwhile waits at most one of
them, and between them it decodes eagerly over the same pools (`engine.graph_capture` is False outside the
locked runs). When every run is done, capture is allowed again; on an error it stays off (decoding stays
eager) and the status carries the error's first line.

The capture time reported is the sum of the captured steps' own `capture_s` (the figure each
`engine.graph_log` line prints), measured around the capture alone: never part of a request's wall time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import torch

from stir_core.online.methods import METHODS
from stir_core.runtime.locks import model_lock

if TYPE_CHECKING:
    from stir_core.library.format import ToolLibrary
    from stir_core.runtime.engine import Engine


class GraphPhase(Enum):
    OFF = "off"  # `engine.graphs == "off"`: plain eager steps, nothing to capture
    CAPTURING = "capturing"  # the background runs are under way; decoding is eager meanwhile
    READY = "ready"
    FAILED = "failed"  # a run raised; decoding stays eager


@dataclass(frozen=True, kw_only=True)
class GraphStatus:
    """Where a model's background capture stands (a frozen record: the warm-up thread swaps in a new one,
    readers never see a half-updated status). `seconds`: the captures' own time, summed."""

    phase: GraphPhase
    mode: str = "off"  # engine.graphs
    device: str = "cpu"
    captured: int = 0
    seconds: float = 0.0
    error: str | None = None

    def line(self) -> str:
        """The one line the app shows."""
        if self.phase is GraphPhase.OFF:
            kind = self.device.split(":")[0]
            return f"Decode graphs: off ({'STIR_GRAPHS=off' if kind == 'cuda' else kind.upper()})"
        if self.phase is GraphPhase.CAPTURING:
            return "Decode graphs: capturing in the background (eager until ready)"
        if self.phase is GraphPhase.READY:
            eager = " (eager steps: STIR_GRAPHS=eager)" if self.mode == "eager" else ""
            return f"Decode graphs: ready, {self.captured} captured in {self.seconds:.2f} s{eager}"
        return f"Decode graphs: capture failed, decoding stays eager: {self.error}"


def offered_methods(library: ToolLibrary | None) -> list[str]:
    """The methods the Playground offers: every method with a non-empty library, else the two that need
    none."""
    return list(METHODS) if library is not None and len(library) else ["vanilla", "no_memory"]


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def start_status(engine: Engine) -> GraphStatus:
    """Before any background run: OFF when the engine has no graphs, else CAPTURING with capture switched
    off (`engine.graph_capture = False`), so every decode until `warm_graphs` finishes runs eagerly. Call it
    before the engine is handed to any user."""
    device = str(engine.model.device)
    if engine.graphs == "off":
        return GraphStatus(phase=GraphPhase.OFF, device=device)
    engine.graph_capture = False
    return GraphStatus(phase=GraphPhase.CAPTURING, mode=engine.graphs, device=device)


def failed(engine: Engine, err: BaseException, captured: int = 0, seconds: float = 0.0) -> GraphStatus:
    """FAILED with `err`'s first line; capture switched off (decoding stays eager)."""
    engine.graph_capture = False
    return GraphStatus(phase=GraphPhase.FAILED, mode=engine.graphs, device=str(engine.model.device),
                       captured=captured, seconds=seconds, error=one_line(err))


def warm_graphs(engine: Engine, runs: Sequence[Callable[[], object]],
                report: Callable[[GraphStatus], None] | None = None) -> GraphStatus:
    """Run each of `runs` (a short real decode on `engine`) under the model's lock with graph capture
    allowed inside that locked section only; then allow capture for good (READY). The first exception
    stops it: capture stays off, FAILED with its first line (it is returned, not raised). `report` gets
    every new status (CAPTURING first). Returns the final status; with graphs off, OFF and nothing runs."""
    status = start_status(engine)
    report = report or (lambda _: None)
    report(status)
    if status.phase is GraphPhase.OFF:
        return status
    seen = set(engine._graph_steps)  # the engine's captured steps, keyed by pool, hooks and capture layers
    captured, seconds = 0, 0.0
    device = torch.device(engine.model.device)
    try:
        for run in runs:
            # this thread's current CUDA device is the model's (a capture stream is made on the current one)
            with model_lock(engine.model), (torch.cuda.device(device) if device.type == "cuda"
                                            else contextlib.nullcontext()):
                engine.graph_capture = True
                try:
                    run()
                finally:
                    engine.graph_capture = False
                # read under the lock (no other decode adds any), afresh: dropping a pool replaces the dict
                steps = engine._graph_steps
                new = [k for k in steps if k not in seen]
                seen.update(new)
                captured += len(new)
                seconds += sum(steps[k].capture_s for k in new)
    except Exception as err:  # noqa: BLE001 - reported in the status (the app shows it), decoding stays eager
        status = failed(engine, err, captured, seconds)
        report(status)
        return status
    if engine.graphs == "off":  # a step failed to capture or to replay like the eager one: said, eager
        status = GraphStatus(phase=GraphPhase.FAILED, mode="off", device=status.device, captured=captured,
                             seconds=seconds, error=engine.graphs_off_reason)
        report(status)
        return status
    engine.graph_capture = True
    status = GraphStatus(phase=GraphPhase.READY, mode=engine.graphs, device=status.device, captured=captured,
                         seconds=seconds)
    report(status)
    return status
