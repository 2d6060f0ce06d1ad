"""`stir import-vector`: a GGUF control vector or a safetensors `{layer: vector}` file → a one-entry library.

The entry is a correction at the chosen layer, control point 1, quality 1, with the file's vector as Δ and
an all-zero key (an imported vector has no retrieval key). It is meant for the `static` / `static_cp`
baselines, which commit the mean correction of a layer and never look at keys — so a repeng or CAA vector
can be compared with STIR on the same problems (`stir eval --methods static --library DIR`). Width and
layer are checked against the model's config before anything is written or decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stir_core.library.format import ToolLibrary
from stir_core.library.interop.vectors import Directions
from stir_core.runtime.model import DEFAULT_MODEL_DIR, EMBEDDED_ID, resolve_model_path


@dataclass
class ModelDims:
    model_id: str  # as `load_model` records it
    d_model: int
    n_layers: int


def model_dims(model: str = "embedded") -> ModelDims:
    """Width and depth from the model's config (no weights loaded)."""
    from transformers import AutoConfig

    path = resolve_model_path(model)
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - offline / unknown id: one clear line
        raise ValueError(f"could not read the config of model {model!r}: {err}") from err
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    mid = EMBEDDED_ID if Path(path) == DEFAULT_MODEL_DIR else path
    return ModelDims(mid, int(text.hidden_size), int(text.num_hidden_layers))


def read_vector_file(path: str | Path) -> tuple[Directions, dict]:
    """Directions from a GGUF control vector or a safetensors file with 1-D tensors named by layer
    ("12" or "direction.12"); also returns the file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        from stir_core.library.interop.gguf_io import read_control_vector

        cv = read_control_vector(path)
        width = next(iter(cv.directions.values())).shape[0]
        meta = {"format": "gguf", "model_hint": cv.model_hint, "architecture": cv.arch}
        return Directions(directions=cv.directions, d_model=width), meta
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: not a GGUF file (no GGUF magic) and not a .safetensors file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as err:  # noqa: BLE001 - safetensors raises its own types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    directions: dict[int, np.ndarray] = {}
    for name, t in tensors.items():
        idx = name.removeprefix("direction.")
        if not idx.isdigit():
            raise ValueError(f"{path}: tensor {name!r} is not named by a layer index ('12' or 'direction.12')")
        if t.ndim != 1:
            raise ValueError(f"{path}: tensor {name!r} has shape {list(t.shape)}, expected one vector [d_model]")
        directions[int(idx)] = t.float().numpy().astype(np.float32)
    if not directions:
        raise ValueError(f"{path}: no tensors")
    widths = {v.shape[0] for v in directions.values()}
    if len(widths) != 1:
        raise ValueError(f"{path}: vectors have different widths {sorted(widths)}")
    return Directions(directions=directions, d_model=widths.pop()), {"format": "safetensors", **meta}


def import_vector(path: str | Path, dims: ModelDims, layer: int | None = None, scale: float = 1.0,
                  tool_id: str | None = None) -> ToolLibrary:
    """The one-entry library (not yet saved). Refuses a width or layer that does not fit `dims`."""
    d, meta = read_vector_file(path)
    layers = sorted(d.directions)
    if d.d_model != dims.d_model:
        raise ValueError(f"{path}: vectors have width {d.d_model} but the model's d_model is {dims.d_model}")
    if layer is None:
        if len(layers) != 1:
            raise ValueError(f"{path} holds layers {layers}: choose one with --layer")
        layer = layers[0]
    if layer not in d.directions:
        raise ValueError(f"{path}: no vector for layer {layer} (it holds layers {layers})")
    if not 0 <= layer < dims.n_layers:
        raise ValueError(f"{path}: layer {layer} is out of range for a model with {dims.n_layers} layers")
    if not np.isfinite(scale) or scale == 0:
        raise ValueError(f"--scale must be a finite non-zero number, got {scale}")
    vec = torch.from_numpy(d.directions[layer] * np.float32(scale))
    if not torch.isfinite(vec).all() or float(vec.norm()) == 0:
        raise ValueError(f"{path}: the vector for layer {layer} is zero or not finite")
    tid = tool_id or f"imported/{Path(path).stem}/L{layer}"
    row = {"id": tid, "kind": "correction", "layer": layer, "control_point": 1, "quality": 1.0,
           "task": "", "example_id": "", "pair_id": tid}
    src = {"file": Path(path).name, "layer": layer, "scale": scale,
           **{k: v for k, v in meta.items() if isinstance(v, (str, int, float)) or v is None}}
    manifest = {"model_id": dims.model_id, "d_model": dims.d_model, "n_layers": dims.n_layers,
                "config": {"import": src}, "imported": True,
                "note": "imported vector: all-zero key, for the static baselines only"}
    return ToolLibrary.from_records(torch.zeros(1, dims.d_model), vec[None], [row], json.loads(json.dumps(manifest)))
