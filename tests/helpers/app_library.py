"""A small library built from the tiny model's own delimiter states, so the gate has real similarities to
work with (the app tests, the dashboard tests and the browser test share it)."""

from __future__ import annotations

from pathlib import Path

import torch

from stir_core.library.format import ToolLibrary
from stir_core.runtime.engine import Engine
from stir_core.runtime.model import load_model
from stir_core.runtime.scheduler import generate

PROMPT = "3+4=7\n\n"  # the tiny model answers with ".\n" repeated: newline-delimited segments
LIB_PROMPTS = ["3+4=7\n\n", "a\n\n", "5+5\n\n\n", "x\n\n"]


def build_test_library(model_dir: Path, out: Path, layer: int = 1) -> ToolLibrary:
    """Keys: the model's states at its first three newline control points on a few prompts (anchors exactly,
    corrections with a little noise); vectors: seeded random directions. Saved to `out`."""
    model = load_model(str(model_dir), device="cpu")
    res = generate(Engine(model), LIB_PROMPTS, 40, capture_layers=[layer], capture_at="\n")
    g = torch.Generator().manual_seed(0)
    keys, vectors, rows = [], [], []
    for b, caps in enumerate(res.captures):
        for m, cap in enumerate(caps[:3], start=1):
            state = cap.states[0]
            pid = f"p{b}m{m}"
            keys += [state + 0.01 * torch.randn(model.d_model, generator=g), state]
            vectors += [torch.randn(model.d_model, generator=g), torch.zeros(model.d_model)]
            common = {
                "layer": layer,
                "control_point": m,
                "task": "planted",
                "example_id": f"ex{b}",
                "pair_id": pid,
            }
            rows += [
                {"id": f"{pid}c", "kind": "correction", "quality": 0.5 + 0.1 * b, **common},
                {"id": f"{pid}a", "kind": "anchor", "quality": 0.05, **common},
            ]
    lib = ToolLibrary.from_records(
        torch.stack(keys),
        torch.stack(vectors),
        rows,
        {"model_id": str(model_dir), "n_layers": model.n_layers, "d_model": model.d_model},
    )
    lib.save(out)
    return lib
