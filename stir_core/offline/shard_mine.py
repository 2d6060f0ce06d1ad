"""Stage I over several processes: each rank mines whole batches of problems, rank 0 merges the shards.

    <run>/shards/mine-RRR-of-WWW/   rank R's checkpoint (items.safetensors + state.json), written atomically
                                    after each of its batches; it is also the shard rank 0 merges
    <run>/run.log                   per-rank throughput of each run (rank 0 appends)

Batch j (problems [j·P, (j+1)·P) of the one-process order) goes to rank j mod W, so every batch — its
prompts, padding and kernel shapes — is exactly the one a single process forms, and rollouts are seeded per
problem (`mine._seed`), never per process. Ranks advance in rounds (one batch each) and report to rank 0
after every round; a failed or silent rank stops the job with its number (`distributed.ControlPlane`).

The merge reproduces one process exactly: each rank keeps its own top-C under the same key (quality, then
discovery order; a rank's discovery order agrees with the global one on its own items), the union is
re-ordered by (problem index, discovery order) — the global discovery order — and cut to the top C again.
Top-C of a union of per-part top-Cs is the top-C of the whole, so the candidates equal the one-process set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from stir_core.config import MineConfig, resolve_layers
from stir_core.library.format import ToolLibrary
from stir_core.offline.checkpoint import check_run_dir, load_checkpoint, save_checkpoint, shard_dir
from stir_core.offline.item import Item
from stir_core.offline.mine import finish_candidates, mine_batch, new_stats
from stir_core.runtime import distributed
from stir_core.runtime.distributed import ControlPlane, Dist, DistributedError
from stir_core.runtime.engine import Engine
from stir_core.runtime.model import LoadedModel
from stir_core.tasks import Task, get_task


def _shard_info(rank: int, world_size: int, n_problems: int) -> dict:
    return {"rank": rank, "world_size": world_size, "n_problems": n_problems}


def _fmt_rate(n: int, secs: float) -> str:
    return f"{n / secs:.2f} problems/s" if secs > 0 and n else "-"


def mine_sharded(model: LoadedModel, cfg: MineConfig, run_dir: str | Path | None, dist: Dist,
                 progress: Callable[[int, int, dict], None] | None = None, task: Task | None = None,
                 show_progress: bool = True) -> ToolLibrary | None:
    """This rank's share of Stage I; rank 0 returns the merged candidates, the other ranks None."""
    if run_dir is None:
        raise ValueError("mining under a launcher needs a run directory (--out): every rank writes its shard there")
    run_dir = Path(run_dir)
    task = task or get_task(cfg.task)
    layers = resolve_layers(cfg.layers, model.n_layers)
    examples = task.load(cfg.split, cfg.n_problems, cfg.seed)
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task {task.name!r} gave duplicate example ids; sharded mining orders problems by id")
    all_batches = distributed.batches(len(examples), cfg.problems_per_batch)
    mine = distributed.shard(all_batches, dist)
    info = _shard_info(dist.rank, dist.world_size, len(examples))
    ckpt = shard_dir(run_dir, dist.rank, dist.world_size)
    engine = Engine(model)
    items: list[Item] = []
    stats, next_problem, error = new_stats(), 0, None
    with ControlPlane(dist, model.device) as plane:
        try:
            check_run_dir(run_dir, dist.world_size)
            if (loaded := load_checkpoint(ckpt, cfg, shard=info)) is not None:
                items, next_problem, stats = loaded
        except Exception as err:  # noqa: BLE001 - reported to rank 0 in the first round, which names us
            error = distributed.error_text(err)
        resumed = stats["problems"]
        order = max((it.order for it in items), default=-1) + 1
        bar = tqdm(total=len(examples), desc=f"mine ×{dist.world_size}", unit="problem",
                   disable=not (show_progress and dist.is_main))
        work_s, t_start = 0.0, time.perf_counter()
        statuses: list[dict] = []
        for j in range(distributed.n_rounds(len(all_batches), dist.world_size)):
            if error is None and j < len(mine) and mine[j][1] > next_problem:
                lo, hi = mine[j]
                try:
                    t0 = time.perf_counter()
                    items, order = mine_batch(engine, task, examples[lo:hi], cfg, layers, items, stats, order)
                    distributed.maybe_inject_fault(dist, j)
                    save_checkpoint(ckpt, items, hi, stats, cfg, shard=info)
                    next_problem = hi
                    work_s += time.perf_counter() - t0
                except Exception as err:  # noqa: BLE001
                    error = distributed.error_text(err)
            status = {"error": error} if error else {"problems": stats["problems"], "resumed": resumed,
                                                     "work_s": work_s, "candidates": 2 * len(items)}
            statuses = plane.gather(status) or []
            if dist.is_main:
                done = sum(s["problems"] for s in statuses)
                bar.update(done - bar.n)
                if progress is not None:
                    progress(done, len(examples), {"candidates": sum(s["candidates"] for s in statuses)})
        bar.close()
        if error is not None:  # a failure after the last round has nobody to report to; fail here
            raise DistributedError(f"rank {dist.rank} failed: {error}")
    if not dist.is_main:
        return None
    wall = time.perf_counter() - t_start
    _log_throughput(run_dir, dist, statuses, wall)
    return merge_shards(run_dir, model, cfg, dist.world_size, task, layers)


def _log_throughput(run_dir: Path, dist: Dist, statuses: list[dict], wall: float) -> None:
    """Per-rank throughput of this run into `<run>/run.log` (appended) and onto stderr."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    lines = [f"{stamp} mine: {dist.world_size} processes, {wall:.1f} s wall"]
    for r, s in enumerate(statuses):
        new = s["problems"] - s["resumed"]
        lines.append(f"{stamp}   rank {r}: {new} problems in {s['work_s']:.1f} s "
                     f"({_fmt_rate(new, s['work_s'])}), {s['resumed']} resumed from its checkpoint")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "run.log", "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for line in lines:
        tqdm.write(line)


def merge_shards(run_dir: str | Path, model: LoadedModel, cfg: MineConfig, world_size: int,
                 task: Task | None = None, layers: list[int] | None = None) -> ToolLibrary:
    """The candidate library from the `world_size` complete shards under `run_dir`, equal to one process's.

    Refuses (DistributedError) a shard that is missing, incomplete, or written with another config or
    process count.
    """
    task = task or get_task(cfg.task)
    layers = layers if layers is not None else resolve_layers(cfg.layers, model.n_layers)
    examples = task.load(cfg.split, cfg.n_problems, cfg.seed)
    position = {ex.id: i for i, ex in enumerate(examples)}
    all_batches = distributed.batches(len(examples), cfg.problems_per_batch)
    pooled: list[tuple[int, int, Item]] = []
    stats = new_stats()
    for r in range(world_size):
        path = shard_dir(Path(run_dir), r, world_size)
        try:
            loaded = load_checkpoint(path, cfg, shard=_shard_info(r, world_size, len(examples)))
        except ValueError as err:
            raise DistributedError(f"refusing to merge shard {r}: {err}") from None
        mine = distributed.shard(all_batches, Dist(r, world_size, r))
        expected = mine[-1][1] if mine else 0
        if expected and loaded is None:
            raise DistributedError(f"refusing to merge: shard {r} ({path}) is missing")
        items, next_problem, st = loaded if loaded is not None else ([], 0, new_stats())
        if next_problem != expected:
            raise DistributedError(f"refusing to merge: shard {r} ({path}) stops at problem {next_problem}, "
                                   f"expected {expected}; rerun the same command to finish it")
        for it in items:
            if it.example_id not in position:
                raise DistributedError(f"refusing to merge: shard {r} holds example {it.example_id!r}, "
                                       f"which is not among this config's problems")
            pooled.append((position[it.example_id], it.order, it))
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v
    pooled.sort(key=lambda t: (t[0], t[1]))  # the global discovery order
    items = []
    for order, (_, _, it) in enumerate(pooled):
        it.order = order
        items.append(it)
    items = sorted(items, key=lambda it: it.key, reverse=True)[: cfg.top_c]
    return finish_candidates(items, model, cfg, stats, layers, extra={"parallel": {"world_size": world_size}})
