"""`stir export`: selected tools of a library → a GGUF control vector (llama.cpp / repeng) or a
steering-vectors file. One function per format, all through `vectors.pick` + `vectors.combine`.

The steering-vectors file is safetensors `{"<layer>": [d_model]}` with metadata
`{"format": "steering-vectors", "layer_type": "decoder_block", ...}` (that library has no file format of its
own; `load_steering_vector` turns the file into its `SteeringVector`, and `stir import-vector` reads it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import safetensors.torch
import torch

from stir_core.io import atomic, jsonio
from stir_core.library.format import ToolLibrary
from stir_core.library.interop import gguf_io
from stir_core.library.interop.vectors import Directions, combine, pick
from stir_core.runtime.model import DEFAULT_MODEL_DIR, EMBEDDED_ID

FORMATS = ("gguf", "repeng", "steering-vectors")


def model_hint(manifest: dict) -> str:
    """The Hugging Face `model_type` of the library's model, read from its config without loading weights."""
    mid = str(manifest.get("model_id") or "")
    cfg_path = DEFAULT_MODEL_DIR / "config.json" if mid in (EMBEDDED_ID, "embedded") else Path(mid) / "config.json"
    if mid and cfg_path.is_file():
        return str(json.loads(cfg_path.read_text())["model_type"])
    if mid:
        try:
            from transformers import AutoConfig

            return str(AutoConfig.from_pretrained(mid, local_files_only=True).model_type)
        except Exception:  # noqa: BLE001 - not cached / not a model id: ask the user instead
            pass
    raise ValueError(f"cannot tell the model type of {mid or '<no model id>'} offline; pass --model-hint")


def provenance(lib: ToolLibrary) -> dict:
    m = lib.manifest
    return {"library": str(lib.path) if lib.path else None, "content_hash": m.get("content_hash"),
            "model_id": m.get("model_id"), "hook_point": m.get("hook_point")}


def select_directions(lib: ToolLibrary, ids: Sequence[str] | None = None, kind: str = "correction",
                      rule: str = "mean", scale: float = 1.0) -> Directions:
    return combine(lib, pick(lib, ids, kind), rule, scale)


def save_steering_vector_file(path: str | Path, d: Directions, extra: dict | None = None) -> Path:
    tensors = {str(k): torch.from_numpy(v.copy()) for k, v in sorted(d.directions.items())}
    meta = {"format": "steering-vectors", "layer_type": "decoder_block", "combine": d.rule,
            "scale": str(d.scale), "tool_ids": json.dumps(d.tool_ids), **(extra or {})}
    return atomic.write_bytes(path, safetensors.torch.save(tensors, metadata=meta))


def load_steering_vector(path: str | Path):
    """A steering-vectors file (see module docstring) as that library's `SteeringVector`."""
    from stir_core.library.interop.import_vector import read_vector_file
    from stir_core.library.interop.steering_vectors_adapter import to_steering_vector

    return to_steering_vector(read_vector_file(path)[0])


def export_library(lib: ToolLibrary, fmt: str, out: str | Path, ids: Sequence[str] | None = None,
                   kind: str = "correction", rule: str = "mean", scale: float = 1.0,
                   hint: str | None = None) -> tuple[Path, Directions]:
    """Write the selection in `fmt`; returns (path, what was written)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    d = select_directions(lib, ids, kind, rule, scale)
    prov = provenance(lib)
    if fmt == "steering-vectors":
        return save_steering_vector_file(out, d, {"provenance": jsonio.dumps(prov)}), d
    flavour = "llamacpp" if fmt == "gguf" else "repeng"
    return gguf_io.write_control_vector(out, d, hint or model_hint(lib.manifest), flavour, prov), d


def export_bytes(lib: ToolLibrary, fmt: str, ids: Sequence[str] | None = None, kind: str = "correction",
                 rule: str = "mean", scale: float = 1.0, hint: str | None = None) -> tuple[bytes, str]:
    """The exported file's bytes and a file extension (for a download button)."""
    import tempfile

    ext = "safetensors" if fmt == "steering-vectors" else "gguf"
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export_library(lib, fmt, Path(tmp) / f"export.{ext}", ids, kind, rule, scale, hint)
        return path.read_bytes(), ext
