"""Where Stage I's state lives on disk, and how it is written and read back (safetensors + JSON, atomically).

    <run>/mine_checkpoint/               a one-process run's checkpoint
    <run>/shards/mine-RRR-of-WWW/        rank R's checkpoint in a run of W processes (`shard_mine`)

Each holds `items.safetensors` (μ⁺/μ⁻ of every kept item) and `state.json` (the next problem, the
counters, the mining config, the items' other fields, and the shard layout when sharded). A checkpoint is
resumed only by the same config and layout; anything else is refused with one line naming the file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import safetensors.torch

from stir_core.config import MineConfig
from stir_core.io import atomic, jsonio
from stir_core.offline.item import Item

CHECKPOINT = "mine_checkpoint"
SHARDS = "shards"


class CheckpointError(ValueError):
    """A mining checkpoint that cannot be resumed; the message names the file and how to recover."""


def shard_dir(run_dir: Path, rank: int, world_size: int) -> Path:
    """Rank `rank`'s checkpoint directory in a run of `world_size` processes."""
    return Path(run_dir) / SHARDS / f"mine-{rank:03d}-of-{world_size:03d}"


def save_checkpoint(path: Path, items: list[Item], next_problem: int, stats: dict, cfg: MineConfig,
                    shard: dict | None = None) -> None:
    """Write the kept items, the next problem and the counters to `path` atomically (a crash leaves the
    previous checkpoint). `shard` (rank, world size; sharded runs only) is recorded so that a shard is never resumed or
    merged by a run with another layout."""
    tensors = {}
    meta = []
    for i, it in enumerate(items):
        tensors[f"pos.{i}"], tensors[f"neg.{i}"] = it.mu_pos.contiguous(), it.mu_neg.contiguous()
        meta.append({k: v for k, v in asdict(it).items() if k not in ("mu_pos", "mu_neg")})
    with atomic.atomic_dir(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp / "items.safetensors"))
        (tmp / "state.json").write_text(jsonio.dumps({"next_problem": next_problem, "stats": stats,
                                                      "config": asdict(cfg), "items": meta,
                                                      **({"shard": shard} if shard else {})}))


def load_checkpoint(path: Path, cfg: MineConfig, shard: dict | None = None) -> tuple[list[Item], int, dict] | None:
    """(items, next problem, stats) from the checkpoint at `path`, None when there is none. Refuses
    (`CheckpointError`, naming the file and the way out) a damaged one, or one written with another config
    or shard layout."""
    if not (path / "state.json").exists():
        return None
    recover = "rerun with --restart to discard it and mine from the start"
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        next_problem, stats, metas, saved_cfg = state["next_problem"], state["stats"], state["items"], state["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path / 'state.json'}: damaged checkpoint ({type(err).__name__}: {err}); "
                              f"{recover}") from None
    if saved_cfg != json.loads(json.dumps(asdict(cfg))):
        raise CheckpointError(f"{path}: checkpoint was written with a different mining config; "
                              f"{recover}, or use another run directory")
    if state.get("shard") != shard:
        raise CheckpointError(f"{path}: checkpoint was written as shard {state.get('shard')} but is read as "
                              f"{shard}; rerun with the process count that wrote it, or use another run directory")
    try:
        tensors = safetensors.torch.load_file(str(path / "items.safetensors"))
        items = [Item(**m, mu_pos=tensors[f"pos.{i}"], mu_neg=tensors[f"neg.{i}"]) for i, m in enumerate(metas)]
    except Exception as err:  # noqa: BLE001 - safetensors raises its own types for truncated files
        raise CheckpointError(f"{path / 'items.safetensors'}: damaged checkpoint ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:200]}); {recover}") from None
    return items, next_problem, stats


def check_checkpoint(run_dir: str | Path, cfg: MineConfig) -> int | None:
    """Read a run directory's mining checkpoint without a model (so a damaged one is reported before any
    model loads): the problem it resumes at, or None when there is none. Raises `CheckpointError`."""
    loaded = load_checkpoint(Path(run_dir) / CHECKPOINT, cfg)
    return None if loaded is None else loaded[1]


def discard_checkpoint(run_dir: str | Path) -> bool:
    """Delete a run directory's mining checkpoint (`--restart`); True when there was one."""
    ckpt = Path(run_dir) / CHECKPOINT
    if not ckpt.is_dir():
        return False
    shutil.rmtree(ckpt)
    return True


def check_run_dir(run_dir: Path, world_size: int) -> None:
    """Refuse a run directory holding mining state of another process count (a one-process checkpoint is
    world size 1): it would be neither resumed nor merged correctly."""
    worlds = set()
    for p in (run_dir / SHARDS).glob("mine-*-of-*"):
        try:
            worlds.add(int(p.name.rsplit("-", 1)[1]))
        except ValueError:
            continue
    if (run_dir / CHECKPOINT).exists():
        worlds.add(1)
    other = sorted(worlds - {world_size})
    if other:
        what = " and ".join("one process" if w == 1 else f"{w} processes" for w in other)
        hint = "without a launcher" if other == [1] else f"with --nproc_per_node {other[0]}"
        raise ValueError(f"{run_dir} holds mining state written by {what}; this run has "
                         f"{'one process' if world_size == 1 else f'{world_size} processes'}. "
                         f"Resume it {hint}, or use another --out")
