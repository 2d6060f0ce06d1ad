"""`stir eval` over several processes: whole batches round-robin, traces gathered on rank 0.

For each method, batch j of the one-process order (problems [j·B, (j+1)·B)) is decoded by rank j mod W, so
every batch is exactly the one a single process forms (greedy decoding is then bit-identical). After each
round every rank sends its batch's traces, as JSON, to rank 0 (`distributed.ControlPlane`), which puts them
back in problem order; `evaluate` then scores and summarises exactly as in one process. A failed or silent
rank stops the job with its number.

With an output directory, every batch's traces are also written (atomically) to
`<out>/shards/eval/<method>/batch-JJJJJ.json` with a fingerprint of what produced them (task, split, n, seed,
batch size, method, StirConfig, model, library content hash). A rerun of the same command loads the batches
already there instead of decoding them again, so a killed rank loses only its batch in flight. Batches are
numbered in the one-process order, so a rerun may even use another process count. A file with another
fingerprint is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from stir_core.io import atomic, jsonio
from stir_core.library.format import ToolLibrary
from stir_core.online.methods import StirConfig, run_method
from stir_core.online.trace import Trace
from stir_core.runtime import distributed
from stir_core.runtime.distributed import ControlPlane, Dist
from stir_core.runtime.engine import Engine
from stir_core.tasks import Example


def fingerprint(engine: Engine, examples: list[Example], method: str, library: ToolLibrary | None,
                config: StirConfig, batch_size: int, task: str, split: str, seed: int) -> str:
    """What a batch's traces depend on, hashed: a checkpoint with another fingerprint is not reused."""
    what = {"task": task, "split": split, "seed": seed, "examples": [ex.id for ex in examples],
            "batch_size": batch_size, "method": method, "stir": asdict(config), "model": engine.model.model_id,
            "library": None if library is None else library.manifest.get("content_hash")}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _load_batch(path: Path, fp: str, n: int) -> list[dict] | None:
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("fingerprint") != fp or len(saved.get("traces", [])) != n:
        raise ValueError(f"{path}: written by another evaluation (task, problems, batch size, method, config, "
                         "model or library differ); use another --out")
    return saved["traces"]


def run_sharded(engine: Engine, examples: list[Example], prompts: list[str], methods: Sequence[str],
                library: ToolLibrary | None, config: StirConfig, batch_size: int, dist: Dist,
                progress: Callable[[int, int, str], None] | None = None, show_progress: bool = True,
                out_dir: str | Path | None = None, task: str = "", split: str = "",
                seed: int = 0) -> dict[str, tuple[list[Trace], float]] | None:
    """{method: (traces in problem order, wall seconds)} on rank 0; None on the other ranks.

    With `out_dir`, batches are checkpointed under `<out_dir>/shards/eval/` and reused by a rerun."""
    all_batches = distributed.batches(len(examples), batch_size)
    mine = distributed.shard(all_batches, dist)
    rounds = distributed.n_rounds(len(all_batches), dist.world_size)
    total = len(methods) * len(examples)
    bar = tqdm(total=total, desc=f"eval ×{dist.world_size}", unit="problem",
               disable=not (show_progress and dist.is_main))
    out: dict[str, tuple[list[Trace], float]] = {}
    work_s = {r: 0.0 for r in range(dist.world_size)}
    done_by = {r: 0 for r in range(dist.world_size)}
    resumed_by = {r: 0 for r in range(dist.world_size)}
    t_all = time.perf_counter()
    with ControlPlane(dist, engine.model.device) as plane:
        for method in methods:
            t0 = time.perf_counter()
            slots: list[Trace | None] = [None] * len(examples)
            fp = fingerprint(engine, examples, method, library, config, batch_size, task, split, seed)
            for j in range(rounds):
                status: dict = {"lo": None, "traces": [], "resumed": False, "work_s": 0.0}
                if j < len(mine):
                    lo, hi = mine[j]
                    path = None if out_dir is None else (Path(out_dir) / "shards" / "eval" / method /
                                                         f"batch-{j * dist.world_size + dist.rank:05d}.json")
                    try:
                        t = time.perf_counter()
                        dicts = None if path is None else _load_batch(path, fp, hi - lo)
                        resumed = dicts is not None
                        if dicts is None:
                            traces = run_method(engine, prompts[lo:hi], method, library, config,
                                                example_ids=[ex.id for ex in examples[lo:hi]])
                            distributed.maybe_inject_fault(dist, j)
                            dicts = [tr.to_dict() for tr in traces]
                            if path is not None:
                                atomic.write_text(path, jsonio.dumps({"fingerprint": fp, "traces": dicts}))
                        status = {"lo": lo, "traces": dicts, "resumed": resumed,
                                  "work_s": 0.0 if resumed else time.perf_counter() - t}
                    except Exception as err:  # noqa: BLE001 - reported to rank 0, which names this rank
                        status = {"error": distributed.error_text(err)}
                statuses = plane.gather(status)
                if statuses is None:
                    continue
                for r, s in enumerate(statuses):
                    if s["lo"] is None:
                        continue
                    for k, d in enumerate(s["traces"]):
                        slots[s["lo"] + k] = Trace.from_dict(d)
                    work_s[r] += s["work_s"]
                    (resumed_by if s["resumed"] else done_by)[r] += len(s["traces"])
                    bar.update(len(s["traces"]))
                if progress:
                    progress(bar.n, total, method)
            if dist.is_main:
                missing = [i for i, t in enumerate(slots) if t is None]
                if missing:
                    raise distributed.DistributedError(f"eval: no trace came back for problems {missing[:5]}…")
                out[method] = (slots, time.perf_counter() - t0)
    bar.close()
    if not dist.is_main:
        return None
    wall = time.perf_counter() - t_all
    tqdm.write(f"eval: {dist.world_size} processes, {wall:.1f} s wall")
    for r in range(dist.world_size):
        rate = f"{done_by[r] / work_s[r]:.2f} problems/s" if work_s[r] > 0 else "-"
        tqdm.write(f"  rank {r}: {done_by[r]} problem-methods in {work_s[r]:.1f} s ({rate}), "
                   f"{resumed_by[r]} resumed from checkpoints")
    return out
