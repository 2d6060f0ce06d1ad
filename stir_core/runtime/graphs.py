"""The decode step with static shapes, captured as a CUDA graph per slot-count bucket.

A `GraphStep` owns the inputs of one decode step over a pool of `bucket` slots — ids `[S, 1]`, positions
`[S, 1]` and the steer gain `[S]` — as fixed tensors on the device, and runs the forward from them. On CUDA
the forward is captured once (`torch.cuda.CUDAGraph`) and each step is a copy into those tensors and one
replay; the KV pool, the steer vectors and the hooks' capture outputs are tensors the graph reads and
writes in place, so nothing about a step changes the graph. Elsewhere (`mode="eager"`) the same function
runs eagerly: that is what the CPU tests check against the ordinary step. Sampling stays on the device
(`Engine.choose`); only the chosen ids come back.

Buckets (`BUCKETS`) keep the number of captured graphs small: a batch of n rows decodes in the smallest
bucket ≥ n, its extra slots idle (fed nothing, written to the scratch column). Positions per slot are
rounded up to `POSITION_STEP` so a graph is reused across requests of similar length.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# A replayed step may differ from the eager one by this much (relative to the largest eager logit):
# the same kernels run, so anything larger means the graph baked in something that changes between steps.
REPLAY_TOLERANCE = 1e-2


class GraphMismatch(RuntimeError):
    """A captured step's first replay disagreed with the same step run eagerly."""


def disagreement(graph: tuple[torch.Tensor, dict[int, torch.Tensor]],
                 eager: tuple[torch.Tensor, dict[int, torch.Tensor]]) -> float:
    """The largest difference between two step outputs (logits `[S, d_vocab]`, captures `{layer: [S, d]}`),
    relative to the eager ones' largest magnitude; inf when a greedy choice differs."""
    (g_logits, g_caps), (e_logits, e_caps) = graph, eager
    if not torch.equal(g_logits.argmax(-1), e_logits.argmax(-1)):
        return float("inf")
    worst = 0.0
    for g, e in [(g_logits, e_logits)] + [(g_caps[k], e_caps[k]) for k in e_caps]:
        worst = max(worst, float((g.float() - e.float()).abs().max() / e.float().abs().max().clamp_min(1.0)))
    return worst
POSITION_STEP = 256


def bucket_for(n: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The smallest bucket holding `n` rows (n itself past the largest)."""
    if n < 1:
        raise ValueError("a bucket holds at least one row")
    return next((b for b in buckets if b >= n), n)


def positions_for(n: int, step: int = POSITION_STEP) -> int:
    """Positions per slot, rounded up to a multiple of `step`."""
    return -(-int(n) // step) * step


class GraphStep:
    """One decode step over a fixed pool of `n_slots` slots, from fixed input tensors.

    `forward(ids [S, 1], qpos [S, 1], gain [S])` must return (logits `[S, d_vocab]` float32, captured
    `{layer: [S, d_model]}`), reading nothing else that changes between steps but tensors updated in place.
    `mode`: "cuda" (capture once, replay per step) or "eager" (call it each step).
    """

    def __init__(self, forward: Callable[..., tuple[torch.Tensor, dict[int, torch.Tensor]]], n_slots: int,
                 device: torch.device, mode: str):
        if mode not in ("cuda", "eager"):
            raise ValueError(f"unknown graph mode {mode!r}")
        self.forward, self.mode = forward, mode
        self.ids = torch.zeros(n_slots, 1, dtype=torch.long, device=device)
        self.qpos = torch.full((n_slots, 1), -1, dtype=torch.long, device=device)
        self.gain = torch.zeros(n_slots, device=device)
        self.graph: Any = None
        self.out: tuple[torch.Tensor, dict[int, torch.Tensor]] | None = None
        self.capture_s = 0.0
        self.verified = False  # the first replay is checked against the eager step (`run`)
        if mode == "cuda":
            self._capture()

    def _capture(self) -> None:
        t = time.perf_counter()
        torch.cuda.set_device(self.ids.device)  # the model's GPU, whatever this thread's current device
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the graph (allocator, lazy inits)
            for _ in range(2):
                self.forward(self.ids, self.qpos, self.gain)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.forward(self.ids, self.qpos, self.gain)
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - t

    def run(self, ids: torch.Tensor, qpos: torch.Tensor, gain: torch.Tensor
            ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Copy the step's inputs in (`[S, 1]`, `[S, 1]`, `[S]`) and run; the outputs are the graph's own
        tensors on CUDA (valid until the next replay)."""
        self.ids.copy_(ids)
        self.qpos.copy_(qpos)
        self.gain.copy_(gain)
        if self.graph is None:
            return self.forward(self.ids, self.qpos, self.gain)
        if not self.verified:
            # The first replay against the same step run eagerly (both write the same K/V at the same
            # positions, so running both changes nothing): a graph that baked in something it should read
            # afresh is caught here, not trusted.
            logits, caps = self.forward(self.ids, self.qpos, self.gain)
            eager = (logits.clone(), {k: v.clone() for k, v in caps.items()})
            self.graph.replay()
            d = disagreement(self.out, eager)
            if not d <= REPLAY_TOLERANCE:
                raise GraphMismatch(f"the captured step ({self.ids.shape[0]} slots) differs from the eager one "
                                    f"by {d:.3g} (relative) on its first replay")
            self.verified = True
            return self.out
        self.graph.replay()
        return self.out
