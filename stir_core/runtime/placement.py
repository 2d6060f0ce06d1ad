"""One model across several devices: the `device_map` we hand TransformerLens 4, and where each layer runs.

TransformerLens 4.3's `TransformerBridge.boot_transformers(name, device_map=...)` passes the map to Hugging
Face (Accelerate dispatch); `device_map` and `device` are mutually exclusive, maps may hold GPUs, or CPU and
disk (offload), but not GPUs mixed with CPU/disk. Accelerate moves activations between devices itself; what
we add at a hook point must be moved to the activation's device (`engine._forward` does `add.to(x.device)`),
and captured states are brought to the CPU one layer at a time.

With a launcher and `device="split"`, each rank is one model replica on its own group of GPUs: the visible
GPUs are cut into LOCAL_WORLD_SIZE equal groups and rank LOCAL_RANK gets group LOCAL_RANK (`max_memory`
lists only those, so Accelerate places nothing elsewhere).
"""

from __future__ import annotations

import os

import torch

from stir_core.runtime.distributed import Dist


def replica_gpus(dist: Dist | None, n_gpus: int, local_world_size: int | None = None) -> list[int]:
    """The GPU indices of this process's model replica (all of them without a launcher)."""
    if dist is None:
        return list(range(n_gpus))
    local_world = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    per = n_gpus // max(1, local_world)
    if per < 1:
        raise ValueError(f"device 'split': {local_world} processes on this node but only {n_gpus} GPU(s); "
                         "use fewer processes per node than GPUs (each process is one replica)")
    return list(range(dist.local_rank * per, (dist.local_rank + 1) * per))


def device_map_kwargs(device_map: str | dict | None, dist: Dist | None) -> dict:
    """`boot_transformers` keyword arguments: the given map, or "auto" over this replica's GPUs."""
    if device_map is not None:
        return {"device_map": device_map}
    if not torch.cuda.is_available():
        raise ValueError("device 'split' spreads a model over GPUs, but torch sees no CUDA GPU")
    gpus = replica_gpus(dist, torch.cuda.device_count())
    kw: dict = {"device_map": "auto"}
    if dist is not None:
        kw["max_memory"] = {g: torch.cuda.get_device_properties(g).total_memory for g in gpus}
    return kw


def input_device(bridge) -> torch.device:
    """Where input ids go: the embedding's device (TransformerLens records it in `cfg.device`)."""
    return torch.device(bridge.cfg.device or "cpu")


def layer_device(bridge, layer: int) -> torch.device:
    """The device block `layer` runs on. An offloaded block's weights rest on `meta`; Accelerate's hook
    brings them to its execution device for the forward, which is the answer here."""
    hf_layer = bridge.blocks[layer].original_component
    hook = getattr(hf_layer, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    return next(hf_layer.parameters()).device


def layer_devices(bridge) -> dict[int, torch.device]:
    return {i: layer_device(bridge, i) for i in range(int(bridge.cfg.n_layers))}
