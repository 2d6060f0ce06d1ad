"""GGUF control-vector files: llama.cpp's and repeng's layout (one float32 `direction.{layer}` per layer).

Keys: `general.architecture = "controlvector"`, `controlvector.model_hint` (the model type, e.g.
"llama"), `controlvector.layer_count`, plus our provenance under `stir.*` (both loaders ignore unknown
keys). Layer indices: see `stir_core.library.interop` (direction.k = resid_post of block k; llama.cpp rejects k=0).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stir_core.io import atomic, jsonio
from stir_core.library.interop.vectors import Directions

ARCH = "controlvector"
FLAVOURS = ("llamacpp", "repeng")


def _gguf():
    try:
        import gguf
    except ImportError as err:
        raise ValueError("the 'gguf' package is missing: pip install 'stir-workbench[interop]'") from err
    return gguf


def write_control_vector(path: str | Path, d: Directions, model_hint: str, flavour: str = "llamacpp",
                         provenance: dict | None = None) -> Path:
    """Write `d` as a GGUF control vector (atomically). llamacpp refuses layer 0, which it cannot steer."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown GGUF flavour {flavour!r}; use one of {FLAVOURS}")
    if not d.directions:
        raise ValueError("nothing to export: no directions")
    if flavour == "llamacpp" and 0 in d.directions:
        raise ValueError("llama.cpp cannot steer block 0 (its loader rejects direction.0); select tools at "
                         "layer >= 1, or use --format repeng")
    gguf = _gguf()
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "cv.gguf"
        w = gguf.GGUFWriter(str(f), ARCH)
        w.add_string(f"{ARCH}.model_hint", model_hint)
        w.add_uint32(f"{ARCH}.layer_count", len(d.directions))
        w.add_string("stir.combine", d.rule)
        w.add_float32("stir.scale", float(d.scale))
        w.add_string("stir.tool_ids", json.dumps(d.tool_ids))
        w.add_string("stir.provenance", jsonio.dumps(provenance or {}, sort_keys=True))
        for layer, v in sorted(d.directions.items()):
            w.add_tensor(f"direction.{layer}", np.ascontiguousarray(v, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return atomic.write_bytes(path, f.read_bytes())


@dataclass
class ControlVectorFile:
    """What a GGUF control vector holds. `directions[layer]` is float32 [d_model]."""

    directions: dict[int, np.ndarray]
    model_hint: str | None
    arch: str | None
    fields: dict[str, object]


def _field_value(field) -> object:
    try:
        return field.contents()
    except Exception:  # noqa: BLE001 - older gguf readers lack contents(); fall back to the raw last part
        return bytes(field.parts[-1]).decode("utf-8", errors="replace")


def read_control_vector(path: str | Path) -> ControlVectorFile:
    """Read a GGUF control vector the way llama.cpp does (1-D float32 `direction.k`, k ≥ 0, equal widths;
    duplicate k summed). Raises ValueError naming the file and the problem."""
    gguf = _gguf()
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - the reader raises several kinds for non-GGUF input
        raise ValueError(f"{path}: not a readable GGUF file ({err})") from err
    fields = {name: _field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    arch = fields.get("general.architecture")
    directions: dict[int, np.ndarray] = {}
    width = None
    for t in reader.tensors:
        head, _, idx = t.name.partition(".")
        if head != "direction" or not idx.isdigit():
            raise ValueError(f"{path}: tensor {t.name!r} is not a 'direction.<layer>' tensor")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{path}: tensor {t.name} is {t.tensor_type.name}, expected F32")
        v = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if len(t.shape) != 1:
            raise ValueError(f"{path}: tensor {t.name} is not 1-D (shape {list(t.shape)})")
        if width is not None and v.shape[0] != width:
            raise ValueError(f"{path}: tensor {t.name} has width {v.shape[0]}, the others {width}")
        width = v.shape[0]
        k = int(idx)
        directions[k] = directions[k] + v if k in directions else v.copy()
    if not directions:
        raise ValueError(f"{path}: no direction tensors")
    hint = fields.get(f"{ARCH}.model_hint")
    return ControlVectorFile(directions, None if hint is None else str(hint),
                             None if arch is None else str(arch), fields)
