"""The tool library: one directory anyone can read without this package.

    <library>/
      tools.safetensors   tensors "keys" [N, d_model] and "vectors" [N, d_model], float32
      tools.parquet       one row per entry, aligned with the tensors (columns: `COLUMNS`, plus extras)
      manifest.json       format_version, model_id, model_revision, d_model, n_layers, hook_point, config,
                          seed, package_versions, counts, created_at, content_hash, plus free extras

Read it with plain tools: `safetensors.numpy.load_file(".../tools.safetensors")`,
`pandas.read_parquet(".../tools.parquet")`, `json.load(open(".../manifest.json"))`.

A correction's key is the mean negative state μ⁻ and its vector is Δ = μ⁺ − μ⁻; an anchor's key is the
mean positive state μ⁺ and its vector is all zeros. Keys are stored raw (unnormalised).

`content_hash` is "sha256:" + the SHA-256 of, in order: b"keys:[N, d]\\n", the keys' little-endian
float32 bytes, b"vectors:[N, d]\\n", the vectors' bytes, then the compact JSON (sorted keys, NaN as NaN)
of {column: list of values} over the table's columns in sorted order. It catches truncated or edited files;
`part_hashes` {"tensors", "table"} hash each part alone so that a mismatch can name the damaged file.
Everything here refuses to load silently broken data: every failure is a `LibraryError` naming the file.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import torch

from stir_core.io import atomic, jsonio, outputs, versions
from stir_core.io.layout import MANIFEST_FILE
from stir_core.runtime.backend import DEFAULT_HOOK_POINT

FORMAT_VERSION = 1
TENSORS_FILE = "tools.safetensors"
TABLE_FILE = "tools.parquet"
HOOK_POINT = DEFAULT_HOOK_POINT  # where the tools were mined and are steered (backend.hook_name)
KINDS = ("correction", "anchor")

INT_COLUMNS = ("layer", "control_point", "n_pos", "n_neg", "seed")
FLOAT_COLUMNS = ("quality", "norm", "shuffled_norm", "mean_reward_pos", "mean_reward_neg")
STR_COLUMNS = ("id", "kind", "task", "example_id", "rollout_ids", "model_id", "model_revision", "pair_id")
COLUMNS = (
    "id", "kind", "layer", "control_point", "quality", "norm", "shuffled_norm", "task", "example_id",
    "rollout_ids", "n_pos", "n_neg", "mean_reward_pos", "mean_reward_neg", "model_id", "model_revision",
    "seed", "pair_id",
)  # fmt: skip
REQUIRED_ROW_FIELDS = ("id", "kind", "layer", "control_point", "quality")
MANIFEST_KEYS = (
    "format_version", "model_id", "model_revision", "d_model", "n_layers", "hook_point", "config", "seed",
    "package_versions", "counts", "created_at", "content_hash",
)  # fmt: skip
NORM_RTOL = 1e-4


class LibraryError(ValueError):
    """A library that cannot be loaded or used; the message names the file and the problem."""


def _where(path: Path | None, file: str) -> str:
    return str(path / file) if path is not None else f"<in-memory library>/{file}"


# --- canonical content ------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    """A JSON-able Python value for hashing (numpy scalars -> Python, missing -> None)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    return str(v)


def content_hashes(keys: torch.Tensor, vectors: torch.Tensor, table: pd.DataFrame) -> dict[str, str]:
    """{"content": over everything, "tensors": tensor part only, "table": table part only}, each "sha256:..."
    (recipe in the module docstring; the parts let a mismatch name the damaged file)."""
    h_tensors = hashlib.sha256()
    for name, t in (("keys", keys), ("vectors", vectors)):
        a = np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4")
        h_tensors.update(f"{name}:{list(a.shape)}\n".encode())
        h_tensors.update(a.reshape(-1).view(np.uint8))  # a view, no copy
    cols = {c: [_plain(v) for v in table[c].tolist()] for c in sorted(table.columns)}
    table_json = json.dumps(cols, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    h_all = h_tensors.copy()
    h_all.update(table_json)
    parts = {"content": h_all, "tensors": h_tensors, "table": hashlib.sha256(table_json)}
    return {k: "sha256:" + h.hexdigest() for k, h in parts.items()}


def compute_counts(table: pd.DataFrame) -> dict[str, Any]:
    """Entry counts by kind, control point and layer (JSON keys are strings)."""

    def per(col: str) -> dict[str, int]:
        vc = table[col].value_counts()
        return {str(int(k)): int(vc[k]) for k in sorted(vc.index)}

    return {
        "entries": len(table),
        "corrections": int((table["kind"] == "correction").sum()),
        "anchors": int((table["kind"] == "anchor").sum()),
        "per_control_point": per("control_point"),
        "per_layer": per("layer"),
    }


FORMAT_PACKAGES = ("numpy", "pandas", "pyarrow", "safetensors")  # what reads and writes the files


def package_versions() -> dict[str, str]:
    """The manifest's `package_versions`: Python, the package and its backends (`io.versions.PACKAGES`:
    torch, transformers and transformer-lens, which decide what a decode computes), and the file formats'."""
    return {"python": platform.python_version(), **versions.versions(versions.PACKAGES + FORMAT_PACKAGES)}


def _normalise_table(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """Required columns present, canonical order first, fixed dtypes (int64 / float64 / str)."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise LibraryError(f"{where}: missing columns {missing}")
    extras = [c for c in table.columns if c not in COLUMNS]
    t = table[list(COLUMNS) + extras].reset_index(drop=True).copy()
    if len(t) == 0:  # no values to check; just fix the dtypes
        return t.astype(
            {
                **dict.fromkeys(INT_COLUMNS, "int64"),
                **dict.fromkeys(FLOAT_COLUMNS, "float64"),
                **dict.fromkeys(STR_COLUMNS, str),
            }
        )
    for c in INT_COLUMNS:
        col = t[c]
        if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
            raise LibraryError(f"{where}: column '{c}' must hold integers, got dtype {col.dtype}")
        if not pd.api.types.is_integer_dtype(col):
            v = col.to_numpy(dtype="float64", na_value=np.nan)
            if not (np.isfinite(v).all() and (v == np.round(v)).all()):
                raise LibraryError(
                    f"{where}: column '{c}' must hold integers (found missing or fractional values)"
                )
        t[c] = col.astype("int64")
    for c in FLOAT_COLUMNS:
        if pd.api.types.is_bool_dtype(t[c]) or not pd.api.types.is_numeric_dtype(t[c]):
            raise LibraryError(f"{where}: column '{c}' must hold numbers, got dtype {t[c].dtype}")
        t[c] = t[c].astype("float64")
    for c in STR_COLUMNS:
        bad = [i for i, v in enumerate(t[c].tolist()) if not isinstance(v, str)]
        if bad:
            raise LibraryError(
                f"{where}: column '{c}' must hold strings (row {bad[0]} is {t[c].iloc[bad[0]]!r})"
            )
        t[c] = t[c].astype(str)
    return t


# --- validation ---------------------------------------------------------------------------------


def _check_manifest(manifest: Any, where: str) -> None:
    if not isinstance(manifest, dict):
        raise LibraryError(f"{where}: must be a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise LibraryError(
            f"{where}: format_version {version!r} is not supported (this reader reads {FORMAT_VERSION})"
        )
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise LibraryError(f"{where}: missing keys {missing}")
    d, n_layers = manifest["d_model"], manifest["n_layers"]
    if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
        raise LibraryError(f"{where}: d_model must be a positive integer, got {d!r}")
    if n_layers is not None and (
        not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers <= 0
    ):
        raise LibraryError(f"{where}: n_layers must be a positive integer or null, got {n_layers!r}")
    if not isinstance(manifest["hook_point"], str) or "{layer}" not in manifest["hook_point"]:
        raise LibraryError(
            f"{where}: hook_point must be a name template with '{{layer}}', got {manifest['hook_point']!r}"
        )
    if not isinstance(manifest["counts"], dict) or not isinstance(manifest["counts"].get("entries"), int):
        raise LibraryError(f"{where}: counts must be an object with an integer 'entries'")


def _check_contents(lib: ToolLibrary, path: Path | None, *, check_hash: bool = True) -> None:
    """Everything except file presence/parsing: shapes, finiteness, kinds, ids, norms, counts, hash."""
    w_t, w_p, w_m = (_where(path, f) for f in (TENSORS_FILE, TABLE_FILE, MANIFEST_FILE))
    keys, vectors, table, manifest = lib.keys, lib.vectors, lib.table, lib.manifest
    _check_manifest(manifest, w_m)
    d = manifest["d_model"]
    for name, t in (("keys", keys), ("vectors", vectors)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.ndim != 2:
            desc = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise LibraryError(f"{w_t}: '{name}' must be a float32 tensor [N, d_model], got {desc}")
        if t.shape[1] != d:
            raise LibraryError(f"{w_t}: '{name}' has width {t.shape[1]} but manifest d_model is {d}")
    n = keys.shape[0]
    if vectors.shape[0] != n:
        raise LibraryError(f"{w_t}: 'keys' has {n} rows but 'vectors' has {vectors.shape[0]}")
    if len(table) != n:
        raise LibraryError(f"{w_p}: has {len(table)} rows but {TENSORS_FILE} has {n} entries")
    if manifest["counts"]["entries"] != n:
        raise LibraryError(
            f"{w_m}: counts.entries is {manifest['counts']['entries']} but the library has {n} entries"
        )
    for name, t in (("keys", keys), ("vectors", vectors)):
        bad = (~torch.isfinite(t)).any(dim=1).nonzero().flatten()
        if len(bad):
            raise LibraryError(f"{w_t}: '{name}' has NaN/inf in {len(bad)} rows (first: row {int(bad[0])})")

    ids = table["id"]
    if (ids == "").any():
        raise LibraryError(f"{w_p}: empty id in row {int(np.flatnonzero(ids == '')[0])}")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise LibraryError(f"{w_p}: ids must be unique, {dup.iloc[0]!r} appears more than once")
    bad_kind = ~table["kind"].isin(KINDS)
    if bad_kind.any():
        i = int(np.flatnonzero(bad_kind)[0])
        raise LibraryError(f"{w_p}: kind must be one of {KINDS}, row {i} has {table['kind'].iloc[i]!r}")
    for col, lo in (("layer", 0), ("control_point", 1)):
        below = table[col] < lo
        if below.any():
            i = int(np.flatnonzero(below)[0])
            raise LibraryError(f"{w_p}: {col} must be >= {lo}, row {i} has {int(table[col].iloc[i])}")
    n_layers = manifest["n_layers"]
    if n_layers is not None and n and int(table["layer"].max()) >= n_layers:
        i = int(table["layer"].to_numpy().argmax())
        raise LibraryError(
            f"{w_p}: row {i} uses layer {int(table['layer'].iloc[i])} but the manifest says n_layers={n_layers}"
        )
    for col in ("quality", "norm"):
        nonfinite = ~np.isfinite(table[col].to_numpy())
        if nonfinite.any():
            raise LibraryError(f"{w_p}: {col} is NaN/inf in row {int(np.flatnonzero(nonfinite)[0])}")

    norms = torch.linalg.vector_norm(vectors.double(), dim=1).numpy()
    anchor = (table["kind"] == "anchor").to_numpy()
    if (anchor & (norms > 0)).any():
        i = int(np.flatnonzero(anchor & (norms > 0))[0])
        raise LibraryError(f"{w_p}: row {i} ({ids.iloc[i]!r}) is an anchor but its vector is not zero")
    # A correction may be zero: the reference keeps mined items with Δ = 0 (MineConfig.drop_zero_delta).
    off = ~np.isclose(table["norm"].to_numpy(), norms, rtol=NORM_RTOL, atol=1e-6)
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise LibraryError(
            f"{w_p}: row {i} norm is {table['norm'].iloc[i]} but its vector's norm is {norms[i]}"
        )
    for i, s in enumerate(table["rollout_ids"].tolist()):
        try:
            ok = isinstance(json.loads(s), list)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise LibraryError(f"{w_p}: rollout_ids in row {i} must be a JSON list, got {s!r}")

    counts = compute_counts(table)
    if manifest["counts"] != counts:
        raise LibraryError(f"{w_m}: counts {manifest['counts']} do not match the entries {counts}")
    if check_hash:
        h = content_hashes(keys, vectors, table)
        if manifest["content_hash"] != h["content"]:
            parts = manifest.get("part_hashes") if isinstance(manifest.get("part_hashes"), dict) else {}
            damaged = [w for part, w in (("tensors", w_t), ("table", w_p)) if parts.get(part) != h[part]]
            raise LibraryError(
                f"{' and '.join(damaged) if damaged else w_m}: content hash mismatch (manifest says "
                f"{manifest['content_hash']}, contents hash to {h['content']}): modified or corrupted"
            )


def validate_for_model(lib: ToolLibrary, d_model: int | None, n_layers: int | None) -> None:
    """Raise `LibraryError` unless the library fits a model with this width and depth (None: unchecked)."""
    w = _where(lib.path, MANIFEST_FILE)
    if d_model is not None and (lib.manifest.get("d_model") != d_model or lib.keys.shape[1] != d_model):
        raise LibraryError(
            f"{w}: library d_model is {lib.manifest.get('d_model')} but the model's d_model is {d_model}"
        )
    if n_layers is None:
        return
    lib_layers = lib.manifest.get("n_layers")
    if lib_layers is not None and lib_layers != n_layers:
        raise LibraryError(
            f"{w}: library was mined on a model with {lib_layers} layers, this model has {n_layers}"
        )
    if len(lib) and int(lib.table["layer"].max()) >= n_layers:
        i = int(lib.table["layer"].to_numpy().argmax())
        raise LibraryError(
            f"{_where(lib.path, TABLE_FILE)}: row {i} uses layer {int(lib.table['layer'].iloc[i])}, "
            f"out of range for a model with {n_layers} layers"
        )


# --- the library ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)  # tensors have no truth value: compare fields, not records
class Tool:
    """One library entry as a record: row `entry` of the table and of both tensors.

    A correction's `key` is μ⁻ and its `vector` Δ = μ⁺ − μ⁻; an anchor's key is μ⁺ and its vector zero
    (both `[d_model]` float32, views into the library's tensors). `provenance` holds every other column
    (norm, shuffled_norm, task, example_id, rollout_ids, n_pos, n_neg, rewards, model, seed, pair_id, extras).
    """

    entry: int
    id: str
    kind: str  # "correction" | "anchor"
    layer: int
    control_point: int
    quality: float
    key: torch.Tensor  # [d_model]
    vector: torch.Tensor  # [d_model]
    provenance: dict = field(default_factory=dict)



@dataclass(kw_only=True)
class ToolLibrary:
    """Aligned tensors + table + manifest. keys/vectors: [N, d_model] float32; table: N rows."""

    keys: torch.Tensor
    vectors: torch.Tensor
    table: pd.DataFrame
    manifest: dict
    path: Path | None = field(default=None, compare=False, repr=False)  # where it was loaded from / saved to

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.keys.shape[1])

    @property
    def hook_point(self) -> str:
        """The manifest's hook-name template (`backend.hook_name`): where the tools steer."""
        return str(self.manifest.get("hook_point", HOOK_POINT))

    @property
    def layers(self) -> list[int]:
        """The layers the library's entries live at, sorted (empty for an empty library)."""
        return sorted({int(x) for x in self.table["layer"]}) if len(self) else []

    def tools(self) -> list[Tool]:
        """Every entry as a `Tool`, in table order (use the tensors/columns directly in hot loops)."""
        records = self.table.to_dict("records")
        return [self._tool(i, r) for i, r in enumerate(records)]

    def tool(self, tool_id: str) -> Tool:
        """The entry with id `tool_id`; a `KeyError` naming it when the library has none."""
        hits = np.flatnonzero(self.table["id"].to_numpy() == tool_id) if len(self) else []
        if len(hits) == 0:
            raise KeyError(f"{_where(self.path, TABLE_FILE)}: no tool with id {tool_id!r}")
        i = int(hits[0])
        return self._tool(i, self.table.iloc[i].to_dict())

    def _tool(self, i: int, r: dict) -> Tool:
        prov = {k: _plain(v) for k, v in r.items() if k not in REQUIRED_ROW_FIELDS}
        return Tool(entry=i, id=str(r["id"]), kind=str(r["kind"]), layer=int(r["layer"]),
                    control_point=int(r["control_point"]), quality=float(r["quality"]), key=self.keys[i],
                    vector=self.vectors[i], provenance=prov)

    def validate(self) -> None:
        """Run every content check on the in-memory library (as `load` does)."""
        _check_contents(self, self.path)

    def _refreshed(self) -> ToolLibrary:
        """Same library with counts and content hash recomputed."""
        m = copy.deepcopy(self.manifest)
        m["counts"] = compute_counts(self.table)
        h = content_hashes(self.keys, self.vectors, self.table)
        m["content_hash"] = h["content"]
        m["part_hashes"] = {"tensors": h["tensors"], "table": h["table"]}
        return ToolLibrary(keys=self.keys, vectors=self.vectors, table=self.table, manifest=m)

    def subset(self, indices: Sequence[int]) -> ToolLibrary:
        """Entries `indices` (in that order); manifest kept, counts and hash recomputed."""
        idx = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
        n = len(self)
        if any(i < 0 or i >= n for i in idx):
            raise ValueError(
                f"subset: indices must lie in [0, {n}), got {[i for i in idx if i < 0 or i >= n][:5]}"
            )
        if len(set(idx)) != len(idx):
            raise ValueError("subset: indices must be unique")
        t = torch.as_tensor(idx, dtype=torch.long)
        table = self.table.iloc[idx].reset_index(drop=True)
        return ToolLibrary(keys=self.keys[t].contiguous(), vectors=self.vectors[t].contiguous(), table=table,
                           manifest=self.manifest)._refreshed()

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the library directory atomically (replacing a previous library only when `overwrite`).
        A directory holding anything but library files is never replaced (`outputs.OutputError`). Counts
        and hash are recomputed from the in-memory contents (and stored back in `self.manifest`);
        everything else is validated first, so an invalid library is never written."""
        path = Path(path)
        outputs.check_library_target(path, overwrite)
        lib = self._refreshed()
        _check_contents(lib, None, check_hash=False)
        tensors = safetensors.torch.save(
            {"keys": lib.keys.contiguous(), "vectors": lib.vectors.contiguous()},
            metadata={"format": "stir-library", "format_version": str(FORMAT_VERSION)},
        )
        buf = io.BytesIO()
        lib.table.to_parquet(buf, index=False)
        manifest = jsonio.dumps(lib.manifest, indent=2) + "\n"
        with atomic.atomic_dir(path) as tmp:
            (tmp / TENSORS_FILE).write_bytes(tensors)
            (tmp / TABLE_FILE).write_bytes(buf.getvalue())
            (tmp / MANIFEST_FILE).write_text(manifest, encoding="utf-8")
        self.manifest, self.path = lib.manifest, path
        return path

    @classmethod
    def load(
        cls, path: str | Path, *, d_model: int | None = None, n_layers: int | None = None
    ) -> ToolLibrary:
        """Read and validate a library directory; with d_model/n_layers also check it fits that model."""
        path = Path(path)
        if not path.is_dir():
            raise LibraryError(f"{path}: library directory not found")
        for f in (MANIFEST_FILE, TENSORS_FILE, TABLE_FILE):
            if not (path / f).is_file():
                raise LibraryError(f"{path / f}: missing file")
        w_t, w_p, w_m = (str(path / f) for f in (TENSORS_FILE, TABLE_FILE, MANIFEST_FILE))

        from stir_core.io.bounded import InputError, read_json

        try:  # size- and depth-capped (a manifest nested 200k deep used to overflow the stack)
            manifest = read_json(path / MANIFEST_FILE, "manifest", max_bytes=64 << 20)
        except InputError as e:
            raise LibraryError(str(e)) from None
        _check_manifest(manifest, w_m)
        try:
            tensors = safetensors.torch.load_file(str(path / TENSORS_FILE))
        except Exception as e:  # safetensors raises its own error types for truncated/garbled files
            raise LibraryError(f"{w_t}: not a readable safetensors file, truncated or corrupt ({e})") from e
        if set(tensors) != {"keys", "vectors"}:
            raise LibraryError(
                f"{w_t}: must hold exactly the tensors ['keys', 'vectors'], found {sorted(tensors)}"
            )
        try:
            table = pd.read_parquet(path / TABLE_FILE)
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise LibraryError(f"{w_p}: not a readable parquet file ({e})") from e
        n = tensors["keys"].shape[0] if tensors["keys"].ndim == 2 else -1
        if n >= 0 and len(table) != n:
            raise LibraryError(f"{w_p}: has {len(table)} rows but {TENSORS_FILE} has {n} entries")
        table = _normalise_table(table, w_p)
        lib = cls(keys=tensors["keys"], vectors=tensors["vectors"], table=table, manifest=manifest, path=path)
        _check_contents(lib, path)
        if d_model is not None or n_layers is not None:
            validate_for_model(lib, d_model, n_layers)
        return lib

    @staticmethod
    def set_recommended(path: str | Path, settings: dict[str, Any], *, split: str, n: int, seed: int,
                        task: str, how: str = "") -> dict:
        """Record the online settings this library recommends (`config.RECOMMENDED_KEY` in the manifest):
        validated `StirConfig` values plus the split, size, seed and task that chose them. Only
        manifest.json is rewritten (atomically): the content hash covers the tensors and the table, which
        do not change, and the library is re-validated first. Returns the new manifest."""
        from stir_core.config import RECOMMENDED_KEY, StirConfig, from_dict

        path = Path(path)
        lib = ToolLibrary.load(path)
        cfg = from_dict(StirConfig, settings, f"{RECOMMENDED_KEY}.settings")
        manifest = copy.deepcopy(lib.manifest)
        manifest[RECOMMENDED_KEY] = {
            "settings": {k: getattr(cfg, k) for k in settings},
            "chosen_on": {"task": task, "split": split, "n": int(n), "seed": int(seed)},
            "how": how,
        }
        atomic.write_json(path / MANIFEST_FILE, manifest)
        ToolLibrary.load(path)  # the written library still validates
        return manifest

    @classmethod
    def empty(cls, d_model: int, **manifest_fields: Any) -> ToolLibrary:
        """A library with no entries (useful as a 'no memory' baseline)."""
        z = torch.zeros(0, d_model, dtype=torch.float32)
        return cls.from_records(z, z.clone(), [], {"d_model": d_model, **manifest_fields})

    @classmethod
    def from_records(
        cls,
        keys: torch.Tensor | np.ndarray,
        vectors: torch.Tensor | np.ndarray,
        rows: list[dict],
        manifest: dict,
    ) -> ToolLibrary:
        """Build and validate a library. keys/vectors: [N, d_model]; rows: N dicts with at least
        `REQUIRED_ROW_FIELDS` (other columns get defaults: norm from the vector, NaN for unmeasured numbers,
        "" for text, model/seed from the manifest, pair_id = id). Manifest defaults fill the rest."""
        keys = torch.as_tensor(keys).detach().cpu().to(torch.float32).contiguous()
        vectors = torch.as_tensor(vectors).detach().cpu().to(torch.float32).contiguous()
        w_m = _where(None, MANIFEST_FILE)
        if keys.ndim != 2 or vectors.shape != keys.shape:
            raise LibraryError(
                f"{_where(None, TENSORS_FILE)}: keys and vectors must both be [N, d_model], "
                f"got {tuple(keys.shape)} and {tuple(vectors.shape)}"
            )
        if len(rows) != keys.shape[0]:
            raise LibraryError(f"{_where(None, TABLE_FILE)}: {len(rows)} rows for {keys.shape[0]} entries")
        d_model = manifest.get("d_model", keys.shape[1])
        m = {
            "format_version": FORMAT_VERSION,
            "model_id": "",
            "model_revision": "",
            "d_model": d_model,
            "n_layers": None,
            "hook_point": HOOK_POINT,
            "config": {},
            "seed": 0,
            "package_versions": package_versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **manifest,
        }
        try:
            # Refused, not nulled: a NaN in a caller's manifest is a bug to name (writers use `jsonio`).
            m = json.loads(json.dumps(m, allow_nan=False))  # JSON-clean now, so the round trip is exact
        except (TypeError, ValueError) as e:
            raise LibraryError(f"{w_m}: manifest is not strict JSON ({e})") from e

        norms = torch.linalg.vector_norm(vectors.double(), dim=1).tolist()
        defaults = {
            "shuffled_norm": float("nan"),
            "task": "",
            "example_id": "",
            "rollout_ids": "[]",
            "n_pos": 0,
            "n_neg": 0,
            "mean_reward_pos": float("nan"),
            "mean_reward_neg": float("nan"),
            "model_id": str(m["model_id"]),
            "model_revision": str(m["model_revision"]),
            "seed": m["seed"],
        }
        records = []
        for i, r in enumerate(rows):
            miss = [k for k in REQUIRED_ROW_FIELDS if k not in r]
            if miss:
                raise LibraryError(f"{_where(None, TABLE_FILE)}: row {i} lacks {miss}")
            rec = {**defaults, "norm": norms[i], "pair_id": r["id"], **r}
            if isinstance(rec["rollout_ids"], (list, tuple)):
                rec["rollout_ids"] = json.dumps([_plain(x) for x in rec["rollout_ids"]])
            records.append(rec)
        table = pd.DataFrame(records, columns=list(dict.fromkeys([*COLUMNS, *(k for r in rows for k in r)])))
        table = _normalise_table(table, _where(None, TABLE_FILE))
        lib = cls(keys=keys, vectors=vectors, table=table, manifest=m)._refreshed()
        _check_contents(lib, None)
        return lib
