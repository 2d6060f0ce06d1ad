"""`stir build`: mine → select → index from one YAML config, every output under one run directory.

    <run>/candidates/   Stage I output (a library directory of all mined entries)
    <run>/library/      Stage II+III output: the selected library, ready for `ToolIndex`, and its
                        CARD.md (`report.library_card`)
    <run>/build.json    what ran: config, counts, selection report, timings
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from stir_core import atomic, config, outputs
from stir_core.config import ConfigError, knob, validate
from stir_core.index import ToolIndex
from stir_core.library import ToolLibrary
from stir_core.mine import MineConfig, discard_checkpoint, mine_candidates
from stir_core.model import LoadedModel
from stir_core.report import library_card
from stir_core.select import select_library


@dataclass
class SelectConfig:
    """Stage II knobs (STIR_SPEC.md): budget B, method dpp|top|random, λ, ε, min_per_control_point."""

    budget: int = knob(256, int, "B: entries kept", "select", min=1)
    method: str = knob("dpp", str, "quality-DPP, top quality, or random", "select", choices=("dpp", "top", "random"))
    lam: float = knob(0.5, float, "λ: quality weight of the DPP kernel", "select", min=0.0)
    eps: float = knob(1e-4, float, "ε: kernel diagonal jitter", "select", min=0.0)
    min_per_control_point: int = knob(0, int, "entries kept per control point at least", "select", min=0)

    def __post_init__(self) -> None:
        validate(self, "select")


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
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"build config: expected a mapping with sections model, mine, select; got {d!r}")
        unknown = set(d) - {"model", "mine", "select"}
        if unknown:
            raise ConfigError(f"build config: unknown section(s) {sorted(unknown)}; expected model, mine, select")
        model = d.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ConfigError(f"build config: model must be a hub id or a path, got {model!r}")
        return cls(model=model, mine=config.from_dict(MineConfig, d.get("mine"), "mine"),
                   select=config.from_dict(SelectConfig, d.get("select"), "select"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> BuildConfig:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"build config {p}: not found" + (" (it is a directory)" if p.is_dir() else ""))
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"build config {p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"build config {p}: not valid YAML ({' '.join(str(err).split())})") from None
        try:
            return cls.from_dict(data or {})
        except ConfigError as err:
            raise ConfigError(f"build config {p}: {str(err).removeprefix('build config: ')}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def check_build_output(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Claim `out_dir` as a build run directory, refusing before any work what `build_library` would
    refuse to overwrite; returns the path."""
    out = outputs.claim_run_dir(out_dir, "build")
    outputs.check_library_target(out / "library", overwrite)
    outputs.check_library_target(out / "candidates", overwrite=True)  # an intermediate of ours: rewritten
    return out


def select_and_index(candidates: ToolLibrary, cfg: SelectConfig, seed: int = 0) -> tuple[ToolLibrary, dict]:
    """Stage II + III: the selected library (validated by building its index) and a selection report."""
    lib, _ = select_library(candidates, cfg.budget, method=cfg.method, lam=cfg.lam, eps=cfg.eps,
                            min_per_control_point=cfg.min_per_control_point, seed=seed)
    index = ToolIndex(lib)
    # select.py writes the selection section; the index only adds its group sizes to it.
    lib.manifest["selection"]["index_groups"] = {f"L{layer}/m{m}": n
                                                 for (layer, m), n in sorted(index.group_sizes().items())}
    return lib, lib.manifest["selection"]


def build_library(model: LoadedModel, config: BuildConfig, out_dir: str | Path,
                  progress: Callable[[str, int, int, dict], None] | None = None,
                  show_progress: bool = True, overwrite: bool = False, restart: bool = False) -> Path:
    """Run all three stages; returns the library directory `<out_dir>/library`.

    `out_dir` must be new, empty or a run directory of ours (`outputs.claim_run_dir`); an existing
    `<out_dir>/library` is replaced only with `overwrite`. `restart` discards a mining checkpoint."""
    out = check_build_output(out_dir, overwrite)
    if restart:
        discard_checkpoint(out)
    t0 = time.perf_counter()
    mine_cb = (lambda done, total, info: progress("mine", done, total, info)) if progress else None
    candidates = mine_candidates(model, config.mine, run_dir=out, progress=mine_cb, show_progress=show_progress)
    candidates.save(out / "candidates")
    t_mine = time.perf_counter() - t0
    if progress:
        progress("select", 0, 1, {"candidates": len(candidates)})
    if len(candidates) == 0:
        raise ValueError("mining produced no candidates (no problem had both correct and incorrect rollouts "
                         "at a control point); mine more problems or rollouts")
    lib, report = select_and_index(candidates, config.select, seed=config.mine.seed)
    lib.manifest["config"] = config.to_dict()
    lib.save(out / "library", overwrite=overwrite)
    if progress:
        progress("index", 1, 1, {"candidates": len(candidates), "kept": len(lib)})
    summary = {"config": config.to_dict(), "mining_stats": candidates.manifest.get("mining_stats"),
               "selection": report, "timings_s": {"mine": t_mine, "total": time.perf_counter() - t0}}
    atomic.write_json(out / "build.json", summary)
    atomic.write_text(out / "library" / "CARD.md", library_card(out))
    return out / "library"
