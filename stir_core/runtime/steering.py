"""Steering and capture as data: per-slot buffers read by one forward hook per hook point, installed once.

A decode step changes no hook: what a step adds and records is data. Per slot, `SteerSlots` holds the steer
it carries — a vector row `[S, d_model]` under its hook point's name (zero rows elsewhere) and a scale `[S]`
— and each forward says which slots' buffers are live (`live` `[S]` bool: the steps a `last` or `segment`
steer acts at). The hook at a hook point adds `vectors[name] * (scales * live)` to the residual stream
`[S, t, d_model]` and, at a capture layer, records it. `HookSet` installs those hooks permanently on the
bridge's hook points the first time a name is needed; outside an engine forward they return their input
untouched, so `run_with_cache` and hand-added test hooks see the plain model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stir_core.runtime.backend import hook_name


class SteerSlots:
    """Per-slot steers: `vectors[hook name]` `[S, d_model]` float32 and `scales` `[S]` float32 (zero: none)."""

    def __init__(self, n_slots: int, d_model: int, device: torch.device | str):
        self.n_slots, self.d_model, self.device = n_slots, d_model, device
        self.vectors: dict[str, torch.Tensor] = {}
        self.scales = torch.zeros(n_slots, device=device)
        self.held: list[Any] = [None] * n_slots  # the Steer each slot carries (identity: set() is a no-op)

    def ensure(self, name: str) -> None:
        """A (zero) vector buffer for hook `name`: a step that may steer there reads it from the start."""
        if name not in self.vectors:
            self.vectors[name] = torch.zeros(self.n_slots, self.d_model, device=self.device)

    def set(self, b: int, steer: Any) -> None:
        """Slot `b` carries `steer` (a `Steer`, or None for no steer)."""
        if self.held[b] is steer:
            return
        for v in self.vectors.values():
            v[b] = 0
        self.held[b] = steer
        if steer is None:
            self.scales[b] = 0.0
            return
        name = hook_name(steer.layer, steer.hook)
        self.ensure(name)
        self.vectors[name][b] = steer.vector.to(self.device, torch.float32)
        self.scales[b] = float(steer.scale)

    def select(self, idx: Sequence[int]) -> SteerSlots:
        """A new buffer whose slot i is this one's slot `idx[i]`."""
        new = SteerSlots(len(idx), self.d_model, self.device)
        i = torch.tensor(list(idx), dtype=torch.long, device=self.device)
        new.vectors = {n: v.index_select(0, i) for n, v in self.vectors.items()}
        new.scales = self.scales.index_select(0, i)
        new.held = [self.held[j] for j in idx]
        return new

    def copy(self, src: Sequence[int], dst: Sequence[int]) -> None:
        """Slots `dst` carry the steers of slots `src`, in place."""
        for s, d in zip(src, dst, strict=True):
            self.set(d, self.held[s])


@dataclass(kw_only=True)
class Live:
    """What the installed hooks do during one engine forward.

    `steer` and `gain` `[S]` (scale × live): added at every hook point `steer.vectors` names; `capture`
    maps hook names to capture layers; `captured[layer]` receives resid_post `[S, t, d_model]` float32.
    """

    steer: SteerSlots | None = None
    gain: torch.Tensor | None = None
    capture: dict[str, int] = field(default_factory=dict)
    captured: dict[int, torch.Tensor] = field(default_factory=dict)

    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.gain is not None and name in self.steer.vectors:
            # [batch, d_model]: the batch is the pool's first `batch` slots (`gain` is sized to it)
            add = self.steer.vectors[name][: self.gain.shape[0]] * self.gain[:, None]
            x = x + add[:, None].to(x.device, x.dtype)
        layer = self.capture.get(name)
        if layer is not None:
            self.captured[layer] = x.detach().float()
        return x


class HookSet:
    """One permanent forward hook per hook point of a bridge, installed the first time its name is needed.

    One set per bridge (`for_bridge`), shared by every engine on it, so making engines adds no hooks. Like
    the bridge itself it serves one forward at a time (`stir_core/runtime/locks.py`).
    """

    def __init__(self, bridge: Any):
        self.bridge = bridge
        self.installed: set[str] = set()
        self.handle_ids: set[int] = set()  # the torch hook handles of ours, to tell them from anyone else's
        self.live: Live | None = None

    @classmethod
    def for_bridge(cls, bridge: Any) -> HookSet:
        found = getattr(bridge, "_stir_hookset", None)
        if found is None:
            found = cls(bridge)
            bridge._stir_hookset = found
        return found

    def need(self, names: Sequence[str]) -> None:
        for name in names:
            if name in self.installed:
                continue
            points = self.bridge.hook_dict
            if name not in points:
                raise ValueError(f"the model has no hook point {name!r}")

            def fn(x, hook, name=name):
                live = self.live
                return x if live is None else live.apply(name, x)

            handle = points[name].add_hook(fn, dir="fwd", is_permanent=True)
            self.handle_ids.add(handle.hook.id)
            self.installed.add(name)


def foreign_hooks(bridge: Any) -> list[str]:
    """Hook points of `bridge` holding forward hooks other than the engine's own (inert outside its forwards):
    what a decode must never leave behind."""
    ours = getattr(bridge, "_stir_hookset", None)
    ids = ours.handle_ids if ours is not None else set()
    return [n for n, hp in bridge.hook_dict.items() if set(hp._forward_hooks) - ids]
