"""The toy reasoner's training recipe and where it is written: light (no torch), so the CLI can build the
`stir toy-train` options without importing torch and transformers (2.8 s of every `stir` invocation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stir_core.tasks.planted import Planting

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "assets" / "toy-reasoner"


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Everything that determines the trained weights (with the seed)."""

    seed: int = 0
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 384
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    planted_share: float = 0.6  # fraction of each batch drawn from `planted` (the rest `plain`)
    n_problems: int = 20000  # training problems per task (traces are resampled every time)
    planting: Planting = field(default_factory=Planting)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.planted_share <= 1.0:
            raise ValueError(f"planted_share must be in [0, 1], got {self.planted_share}")
        if min(self.steps, self.batch_size, self.n_layers, self.n_problems) < 1:
            raise ValueError("steps, batch_size, n_layers and n_problems must be >= 1")
