"""One rank of a two-process job that only talks over `distributed.ControlPlane` (no model): run by
test_distributed.py with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set, as `srun` or torchrun would.

argv[1] is what rank 1 does in round 2: ok | raise | kill | hang. Rank 0 prints one line per round.
"""

import os
import signal
import sys
import time

import torch

from stir_core.runtime.distributed import ControlPlane, DistributedError, from_env

mode = sys.argv[1]
dist = from_env()
try:
    with ControlPlane(dist, torch.device("cpu")) as plane:
        for rnd in (1, 2):
            status = {"round": rnd, "rank": dist.rank}
            if dist.rank == 1 and rnd == 2:
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if mode == "hang":
                    time.sleep(3600)
                if mode == "raise":
                    status = {"error": "RuntimeError: boom"}
            t0 = time.perf_counter()
            got = plane.gather(status)
            print(f"rank {dist.rank} round {rnd}: {got}", flush=True)
except DistributedError as err:
    print(f"rank {dist.rank} error after {time.perf_counter() - t0:.1f} s: {err}", flush=True)
    sys.exit(3)
