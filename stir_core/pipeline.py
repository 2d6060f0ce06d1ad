"""`stir build`: mine → select → index from one YAML config, every output under one run directory.

    <run>/candidates/   Stage I output (a library directory of all mined entries)
    <run>/library/      Stage II+III output: the selected library, ready for `ToolIndex`
    <run>/build.json    what ran: config, counts, selection report, timings
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from stir_core import atomic
from stir_core.index import ToolIndex
from stir_core.library import ToolLibrary
from stir_core.mine import MineConfig, mine_candidates
from stir_core.model import LoadedModel
from stir_core.select import select_library


@dataclass
class SelectConfig:
    """Stage II knobs (STIR_SPEC.md): budget B, method dpp|top|random, λ, ε, min_per_control_point."""

    budget: int = 256
    method: str = "dpp"
    lam: float = 0.5
    eps: float = 1e-4
    min_per_control_point: int = 0


@dataclass
class BuildConfig:
    model: str | None = None  # None: the embedded testbed model
    mine: MineConfig = field(default_factory=MineConfig)
    select: SelectConfig = field(default_factory=SelectConfig)

    @classmethod
    def small(cls) -> BuildConfig:
        """The quick default for the embedded testbed model (a few minutes on 2 CPU cores)."""
        return cls(mine=MineConfig(n_problems=256, k_rollouts=8, max_new_tokens=96, layers=[2, 3], top_c=192,
                                   problems_per_batch=16),
                   select=SelectConfig(budget=192))

    @classmethod
    def from_dict(cls, d: dict) -> BuildConfig:
        d = dict(d or {})
        unknown = set(d) - {"model", "mine", "select"}
        if unknown:
            raise ValueError(f"build config: unknown section(s) {sorted(unknown)}; expected model, mine, select")
        return cls(model=d.get("model"), mine=_make(MineConfig, d.get("mine"), "mine"),
                   select=_make(SelectConfig, d.get("select"), "select"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> BuildConfig:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"build config {p} not found")
        try:
            return cls.from_dict(yaml.safe_load(p.read_text()) or {})
        except yaml.YAMLError as err:
            raise ValueError(f"build config {p}: not valid YAML ({err})") from err

    def to_dict(self) -> dict:
        return asdict(self)


def _make(kind, d: dict | None, section: str):
    d = dict(d or {})
    names = {f.name for f in fields(kind)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"build config [{section}]: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    return kind(**d)


def select_and_index(candidates: ToolLibrary, cfg: SelectConfig, seed: int = 0) -> tuple[ToolLibrary, dict]:
    """Stage II + III: the selected library (validated by building its index) and a selection report."""
    lib, res = select_library(candidates, cfg.budget, method=cfg.method, lam=cfg.lam, eps=cfg.eps,
                              min_per_control_point=cfg.min_per_control_point, seed=seed)
    index = ToolIndex(lib)
    report = {"method": cfg.method, "budget": cfg.budget, "n_candidates": res.n_candidates, "kept": len(lib),
              "dropped": res.n_dropped, "logdet": res.logdet, "objective": res.objective,
              "index_groups": {f"L{layer}/m{m}": n for (layer, m), n in sorted(index.group_sizes().items())}}
    lib.manifest["selection"] = report
    return lib, report


def build_library(model: LoadedModel, config: BuildConfig, out_dir: str | Path,
                  progress: Callable[[str, int, int, dict], None] | None = None,
                  show_progress: bool = True) -> Path | None:
    """Run all three stages; returns the library directory `<out_dir>/library` (None on ranks other than 0
    under a launcher: they only mine their shard)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mine_cb = (lambda done, total, info: progress("mine", done, total, info)) if progress else None
    candidates = mine_candidates(model, config.mine, run_dir=out, progress=mine_cb, show_progress=show_progress)
    if candidates is None:  # a rank other than 0 under a launcher: its shard is written, rank 0 goes on
        return None
    candidates.save(out / "candidates")
    t_mine = time.perf_counter() - t0
    if progress:
        progress("select", 0, 1, {"candidates": len(candidates)})
    if len(candidates) == 0:
        raise ValueError("mining produced no candidates (no problem had both correct and incorrect rollouts "
                         "at a control point); mine more problems or rollouts")
    lib, report = select_and_index(candidates, config.select, seed=config.mine.seed)
    lib.manifest["config"] = config.to_dict()
    lib.save(out / "library")
    if progress:
        progress("index", 1, 1, {"candidates": len(candidates), "kept": len(lib)})
    summary = {"config": config.to_dict(), "mining_stats": candidates.manifest.get("mining_stats"),
               "selection": report, "timings_s": {"mine": t_mine, "total": time.perf_counter() - t0},
               **({"parallel": candidates.manifest["parallel"]} if "parallel" in candidates.manifest else {})}
    atomic.write_text(out / "build.json", json.dumps(summary, indent=2, default=str))
    return out / "library"
