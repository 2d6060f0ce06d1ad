"""Data parallelism under a launcher we did not write: ranks, shards, a control plane, failure reports.

`torchrun`, `accelerate launch` and Slurm (through torchrun) start the processes and set `RANK`,
`WORLD_SIZE`, `LOCAL_RANK` and the rendezvous address; this module only reads them. Without them (or with
`WORLD_SIZE=1`) nothing here runs and every stage behaves exactly as in one process.

The work is embarrassingly parallel over problems. What ranks exchange is small: one JSON status per rank
per round of batches (progress, errors), gathered to rank 0 over point-to-point `send`/`recv`, so that a
rank that failed or stopped answering is named by its number. Messages are JSON in uint8 tensors (nothing
is pickled). Every collective has the process group's timeout (`STIR_DIST_TIMEOUT_S`, default 1800 s), so
rank 0 never waits forever. Tensors (candidate items) travel through files, not the process group.

Backend: gloo on CPU; on CUDA the group is `cpu:gloo,cuda:nccl` — our control messages are CPU tensors and
go over gloo (which raises a Python error naming the peer instead of aborting the process), while anything a
user adds on CUDA tensors gets NCCL.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

TIMEOUT_ENV = "STIR_DIST_TIMEOUT_S"
FAULT_ENV = "STIR_FAULT"  # test hook: "RANK:BATCH:kill|raise", see `maybe_inject_fault`
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(RuntimeError):
    """A rank failed, stopped answering, or left shards that cannot be merged; the message names which."""


@dataclass(frozen=True)
class Dist:
    """This process's place in a launched job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(environ, name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise DistributedError(f"launcher environment: {name} is not set (WORLD_SIZE is); "
                                   "start the job with torchrun or accelerate launch")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"launcher environment: {name}={raw!r} is not an integer") from None


def from_env(environ=None) -> Dist | None:
    """The launch environment (torchrun / accelerate set RANK, WORLD_SIZE, LOCAL_RANK), or None when this
    process runs alone (no WORLD_SIZE, or WORLD_SIZE=1)."""
    environ = os.environ if environ is None else environ
    world = _env_int(environ, "WORLD_SIZE", 1)
    if world <= 1:
        return None
    rank = _env_int(environ, "RANK")
    local = _env_int(environ, "LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise DistributedError(f"launcher environment: RANK={rank} is outside 0..{world - 1}")
    return Dist(rank, world, local)


def timeout_s(environ=None) -> float:
    environ = os.environ if environ is None else environ
    raw = environ.get(TIMEOUT_ENV, "")
    try:
        t = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if t <= 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw}")
    return t


def rank_device(device: torch.device, dist: Dist | None) -> torch.device:
    """Each rank decodes on its own GPU: an unindexed `cuda` becomes `cuda:LOCAL_RANK` (modulo the GPUs
    visible, so more ranks than GPUs share them round-robin). Other devices are returned unchanged."""
    if dist is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", dist.local_rank % max(1, torch.cuda.device_count()))


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[lo, hi) of every batch of `n` problems, in problem order — the same batches one process forms."""
    return [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]


def shard(all_batches: list[tuple[int, int]], dist: Dist) -> list[tuple[int, int]]:
    """This rank's batches: whole batches, round-robin (batch j goes to rank j mod world). Whole batches,
    because a problem's rollouts are only guaranteed bit-identical when its batch (hence its padding and
    kernel shapes) is the same as in one process."""
    return all_batches[dist.rank::dist.world_size]


def n_rounds(n_batches: int, world_size: int) -> int:
    return -(-n_batches // world_size)


def maybe_inject_fault(dist: Dist, batch_index: int, environ=None) -> None:
    """Test hook: `STIR_FAULT=R:B:kill` SIGKILLs rank R while it works on its B-th batch (0-based, before
    that batch is checkpointed); `R:B:raise` raises there instead. Unset: does nothing."""
    spec = (os.environ if environ is None else environ).get(FAULT_ENV, "")
    if not spec:
        return
    try:
        r, b, kind = spec.split(":")
        r, b = int(r), int(b)
    except ValueError:
        raise DistributedError(f"{FAULT_ENV}={spec!r}: expected RANK:BATCH:kill|raise") from None
    if r != dist.rank or b != batch_index:
        return
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "raise":
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")
    raise DistributedError(f"{FAULT_ENV}={spec!r}: kind must be kill or raise")


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def destroy() -> None:
    """Tear down the process group, if one is up (at exit; tests call it between launches)."""
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.destroy_process_group()


class ControlPlane:
    """The process group for one job: statuses to rank 0, a verdict back. Use as a context manager.

    `gather(status)` is called by every rank once per round. Rank 0 receives each rank's status in rank
    order; if any rank reported `{"error": ...}` or could not be heard from within the timeout, every rank
    (rank 0 included) raises `DistributedError` naming the rank(s) and their errors.
    """

    def __init__(self, dist: Dist, device: torch.device, timeout: float | None = None):
        self.dist = dist
        self.device = device
        self.timeout = timeout_s() if timeout is None else timeout

    def __enter__(self) -> ControlPlane:
        import torch.distributed as tdist

        if not tdist.is_available():
            raise DistributedError("this torch build has no torch.distributed")
        if not tdist.is_initialized():
            backend = "cpu:gloo,cuda:nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            try:
                tdist.init_process_group(backend, rank=self.dist.rank, world_size=self.dist.world_size,
                                         timeout=timedelta(seconds=self.timeout))
            except Exception as err:  # noqa: BLE001 - rendezvous fails in many ways; say which rank and why
                raise DistributedError(f"rank {self.dist.rank}: could not join the process group "
                                       f"({error_text(err)})") from err
            # One group per process, kept for later stages (a `stir eval --sweep` runs several) and torn
            # down at exit; re-joining a torchrun rendezvous after destroying the group is not supported.
            atexit.register(destroy)
        return self

    def __exit__(self, *exc) -> None:
        return None

    # ---- JSON over point-to-point -----------------------------------------------------------------
    @staticmethod
    def _send(obj: Any, dst: int) -> None:
        import torch.distributed as tdist

        data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
        tdist.send(torch.tensor([data.numel()], dtype=torch.int64), dst)
        tdist.send(data, dst)

    @staticmethod
    def _recv(src: int) -> Any:
        import torch.distributed as tdist

        size = torch.zeros(1, dtype=torch.int64)
        tdist.recv(size, src)
        data = torch.empty(int(size), dtype=torch.uint8)
        tdist.recv(data, src)
        return json.loads(bytes(data.numpy()).decode())

    def gather(self, status: dict) -> list[dict] | None:
        """Every rank's status on rank 0 (list in rank order), None elsewhere; raises on any failure."""
        if not self.dist.is_main:
            try:
                self._send(status, 0)
                verdict = self._recv(0)
            except Exception as err:  # noqa: BLE001 - any transport error means rank 0 is gone
                raise DistributedError(f"rank {self.dist.rank}: lost contact with rank 0 "
                                       f"({error_text(err)})") from err
            if verdict.get("abort"):
                raise DistributedError(verdict["abort"])
            return None
        statuses: list[dict] = [status]
        for r in range(1, self.dist.world_size):
            try:
                statuses.append(self._recv(r))
            except Exception as err:  # noqa: BLE001
                statuses.append({"error": f"stopped answering (died, or silent for the {self.timeout:g} s timeout; "
                                          f"the launcher's log has its exit code) — {error_text(err)}",
                                 "lost": True})
        failed = [(r, s) for r, s in enumerate(statuses) if s.get("error")]
        abort = "; ".join(f"rank {r} failed: {s['error']}" for r, s in failed) if failed else ""
        for r in range(1, self.dist.world_size):
            if statuses[r].get("lost"):
                continue
            with contextlib.suppress(Exception):  # a rank that died after reporting; rank 0 reports below
                self._send({"abort": abort}, r)
        if abort:
            raise DistributedError(abort)
        return statuses
