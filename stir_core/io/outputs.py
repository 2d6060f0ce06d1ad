"""Output directories: write only where nothing of the user's can be destroyed.

A run directory (`stir build/mine/eval --out`, the app's Build and Evaluate) carries a marker file,
`.stir-run.json`, so "ours" is checkable. A library directory is ours when it holds only library files.

    claim_run_dir(path)            absent or empty: create it and write the marker; ours: reuse it (resume);
                                   anything else: `OutputError`, nothing touched
    check_library_target(path, overwrite)
                                   absent or empty: fine; our library: only with `overwrite` (`--force`);
                                   anything else (a foreign file inside included): `OutputError`

Every output is recognised by a marker or by content only we write, never by file names alone:

    is_library_dir(path)           library files only, and a manifest.json that reads as one of ours
    owned_file_kind(path)          "export" (GGUF with our `stir.*` keys, a steering-vectors safetensors),
                                   "dashboard" (our HTML head, or the dashboard's JSON fields), "generate"
                                   (`stir generate --json`: one trace per method), or None
    check_file_target(path, kind, force)
                                   absent: fine; present: only with `force`, and only when it is ours
    claim_output_dir(path, kind, force)
                                   a directory of several files (`stir diff`), marked `.stir-output.json`
    lock_run_dir(path)             one writer at a time (an advisory lock held until the process exits)

Orphan temporaries left by a killed writer are removed on the next write to the same target
(`atomic.clean_orphans`) and reported by `report_orphans`.
"""

from __future__ import annotations

import json
import os
import struct
from datetime import datetime, timezone
from pathlib import Path

from stir_core.io import atomic
from stir_core.io.bounded import InputError, read_json

RUN_MARKER = ".stir-run.json"
RUN_LOCK = ".stir-run.lock"
OUTPUT_MARKER = ".stir-output.json"
LIBRARY_FILES = frozenset({"manifest.json", "tools.safetensors", "tools.parquet", "CARD.md", "build-config.yaml"})
# What a run directory written before markers existed may hold (accepted as ours, then marked).
RUN_OUTPUTS = frozenset({"mine_checkpoint", "candidates", "library", "build.json", "summary.json",
                         "examples.jsonl", "examples.csv", "sweep.csv", "partial.json", "task.json"})
_MANIFEST_SIGNATURE = ("format_version", "content_hash", "hook_point", "d_model", "counts")
_SNIFF_BYTES = 1 << 20  # how much of a file is read to tell whether we wrote it
_JSON_SNIFF_CAP = 256 << 20  # a JSON output bigger than this is not read to check it (refused as not ours)


class OutputError(ValueError):
    """An output location we refuse to write to; the message names it and says what to do."""


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(atomic.TMP_PREFIX))


def _json_or_none(path: Path, cap: int = _JSON_SNIFF_CAP) -> object:
    try:
        return read_json(path, "output", max_bytes=cap)
    except (InputError, OSError):
        return None


def _is_our_manifest(path: Path) -> bool:
    m = _json_or_none(path, 64 << 20)
    return isinstance(m, dict) and all(k in m for k in _MANIFEST_SIGNATURE)


def is_library_dir(path: Path) -> bool:
    """Holds nothing but library files, and a manifest.json that reads as a library manifest of ours (a
    web app's manifest.json next to a CARD.md is not a library)."""
    if not path.is_dir():
        return False
    names = _entries(path)
    return "manifest.json" in names and set(names) <= LIBRARY_FILES and _is_our_manifest(path / "manifest.json")


def _looks_like_old_run(path: Path, names: list[str]) -> bool:
    """A run directory written before markers existed: only run outputs, and at least one whose content
    is ours (a summary.json or build.json of ours, or a library)."""
    if not names or not all(n in RUN_OUTPUTS or ("=" in n and (path / n).is_dir()) for n in names):
        return False
    summary, build = _json_or_none(path / "summary.json"), _json_or_none(path / "build.json")
    return ((isinstance(summary, dict) and {"config", "methods"} <= set(summary))
            or (isinstance(build, dict) and "config" in build)
            or any(is_library_dir(path / n) for n in ("library", "candidates")))


def _marker(path: Path) -> dict:
    m = _json_or_none(path / RUN_MARKER, 1 << 20)
    return m if isinstance(m, dict) else {}


def claim_run_dir(path: str | Path, kind: str, fingerprint: str | None = None, lock: bool = False) -> Path:
    """Make `path` a run directory of ours (see the module docstring); returns it.

    `fingerprint` (an evaluation's: task, split, n, seed, methods, library, model, settings): a run
    directory that holds another fingerprint, or results written without one, is refused, so a second
    `stir eval` into a finished run is the same evaluation or nothing. `lock`: take the directory's
    writer lock (`lock_run_dir`) before anything is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory; give a new or empty directory")
    marker: dict = {}
    if path.is_dir():
        names = _entries(path)
        if RUN_MARKER in names:
            marker = _marker(path)
            if not marker:
                raise OutputError(f"{path}/{RUN_MARKER}: unreadable run marker; give a new directory")
        elif names and not _looks_like_old_run(path, names):
            shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
            raise OutputError(f"{path}: not empty and not a STIR run directory (holds {shown}); "
                              "give a new or empty directory, nothing was written")
        if fingerprint is not None:
            old = marker.get("fingerprint")
            if old is not None and old != fingerprint:
                raise OutputError(f"{path}: holds an evaluation with other settings (fingerprint {old[:12]}, "
                                  f"this one {fingerprint[:12]}); give a new directory, nothing was written")
            if old is None and (path / "summary.json").exists():
                raise OutputError(f"{path}: holds results written without a fingerprint, so they cannot be "
                                  "resumed safely; give a new directory, nothing was written")
    path.mkdir(parents=True, exist_ok=True)
    if lock:
        lock_run_dir(path)
    if not marker or (fingerprint is not None and marker.get("fingerprint") != fingerprint):
        created = marker.get("created_at") or datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic.write_json(path / RUN_MARKER, {"format": "stir-run", "kind": marker.get("kind", kind),
                                              "created_at": created,
                                              **({"fingerprint": fingerprint} if fingerprint else {})})
    return path


_HELD_LOCKS: dict[Path, int] = {}


def lock_run_dir(path: str | Path) -> None:
    """Take `path`'s writer lock (`.stir-run.lock`, an advisory `flock` held until this process exits or
    `unlock_run_dir`); another process holding it -> `OutputError` naming its pid. Under a launcher only
    rank 0 takes it (its ranks write one run together). A no-op where the OS has no `fcntl` (Windows)."""
    try:
        import fcntl
    except ImportError:
        return
    # One launch's ranks share the directory: rank 0 holds the lock. torchrun and accelerate both set RANK;
    # read here directly (not through runtime.distributed, which validates it) to keep io below runtime.
    if os.environ.get("RANK", "0").strip() not in ("", "0"):
        return
    path = Path(path).resolve()
    if path in _HELD_LOCKS:
        return
    fd = os.open(path / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise OutputError(f"{path}: another STIR process (pid {holder}) is writing to this run directory; "
                          "wait for it to finish or give another directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD_LOCKS[path] = fd


def unlock_run_dir(path: str | Path) -> None:
    """Release a lock taken by `lock_run_dir` in this process (closing the descriptor drops the flock)."""
    fd = _HELD_LOCKS.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)


def run_kind(path: str | Path) -> str | None:
    """The kind recorded in a run directory's marker, or None when it has none."""
    kind = _marker(Path(path)).get("kind")
    return str(kind) if kind is not None else None


def check_library_target(path: str | Path, overwrite: bool = False) -> None:
    """Refuse to write a library over anything that is not an earlier library of ours, and over one of
    ours unless `overwrite`."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory; nothing was written")
    names = _entries(path)
    if not names:
        return
    if is_library_dir(path):
        if not overwrite:
            raise OutputError(f"{path}: already holds a library; replace it explicitly (--force on the "
                              "command line, the Replace box in the app; the replacement is atomic)")
        return
    foreign = [n for n in names if n not in LIBRARY_FILES]
    if not foreign:
        raise OutputError(f"{path}: its manifest.json is not a STIR library manifest; refusing to replace it "
                          "— give a new or empty directory, nothing was written")
    shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
    raise OutputError(f"{path}: holds files that are not part of a library ({shown}); refusing to replace "
                      "it — give a new or empty directory, nothing was written")


def report_orphans(path: str | Path) -> list[str]:
    """Remove the orphan temporaries of `path` and say what happened, one line each."""
    removed = atomic.clean_orphans(path)
    _, unknown = atomic.orphans(path)
    lines = [f"removed {p} (left by an interrupted write)" for p in removed]
    lines += [f"left {p} in place (a temporary of another write, or of an older version; delete it "
              "if no write is running)" for p in unknown]
    return lines


# --- single files and multi-file outputs -----------------------------------------------------------

_DASHBOARD_HTML_HEAD = b"<!doctype html><html><head><meta charset='utf-8'><title>STIR tool "
_CASES_HTML_HEAD = b"<!doctype html><html><head><meta charset='utf-8'><title>Cases: "  # analysis/cases.py
_CASES_MD_HEAD = b"# Cases: "
_DASHBOARD_KEYS = {"tool_id", "library", "provenance", "neighbours", "lens", "run", "firings", "paired", "sweep"}
_TRACE_KEYS = {"method", "prompt", "completion", "tokens", "decisions", "probe_tokens"}


def _safetensors_metadata(head: bytes) -> dict | None:
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n > len(head) - 8:
        return None
    try:
        meta = json.loads(head[8: 8 + n]).get("__metadata__")
    except (ValueError, AttributeError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


def owned_file_kind(path: str | Path) -> str | None:
    """Which of our outputs the file at `path` is, from its content (never its name): "export",
    "dashboard", "generate", "cases", or None (not ours, or not a file)."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(b"GGUF"):
        return "export" if b"stir.provenance" in head else None
    meta = _safetensors_metadata(head)
    if meta is not None:
        return "export" if meta.get("format") == "steering-vectors" and "tool_ids" in meta else None
    if head.startswith(_DASHBOARD_HTML_HEAD):
        return "dashboard"
    if head.startswith(_CASES_HTML_HEAD) or head.startswith(_CASES_MD_HEAD):
        return "cases"
    if not head.lstrip().startswith(b"{"):
        return None
    obj = _json_or_none(path)
    if isinstance(obj, dict) and set(obj) >= _DASHBOARD_KEYS:
        return "dashboard"
    if (isinstance(obj, dict) and obj and all(isinstance(v, dict) and set(v) >= _TRACE_KEYS and v["method"] == k
                                              for k, v in obj.items())):
        return "generate"
    return None


def check_file_target(path: str | Path, kind: str, force: bool = False) -> None:
    """Refuse to write a one-file output (`kind`: export | dashboard | generate | cases) over anything but an
    earlier output of the same kind, and over that only with `force`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file path, nothing was written")
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        raise OutputError(f"{path}: already exists; choose another path or pass --force (only a file that "
                          f"stir {kind} wrote is ever replaced)")
    if path.is_symlink() or owned_file_kind(path) != kind:
        raise OutputError(f"{path}: was not written by stir {kind}; refusing to replace it even with --force "
                          "— choose another path, nothing was written")


def claim_output_dir(path: str | Path, kind: str, force: bool = False) -> Path:
    """Make `path` an output directory of `kind` (e.g. "diff"): absent or empty: created and marked;
    one of ours of that kind: only with `force`; anything else (a library, a user's directory): refused."""
    path = check_output_dir(path, kind, force)
    if not (path / OUTPUT_MARKER).is_file():
        path.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path / OUTPUT_MARKER, {"format": "stir-output", "kind": kind, "created_at":
                                                 datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return path


def check_output_dir(path: str | Path, kind: str, force: bool = False) -> Path:
    """What `claim_output_dir` refuses, checked without writing anything; returns the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory; give a new or empty directory")
    if path.is_dir():
        names = _entries(path)
        if names:
            marker = _json_or_none(path / OUTPUT_MARKER, 1 << 20)
            ours = isinstance(marker, dict) and marker.get("format") == "stir-output" and marker.get("kind") == kind
            if not ours:
                shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
                raise OutputError(f"{path}: not empty and not a stir {kind} output (holds {shown}); refusing "
                                  "to write into it even with --force — give a new or empty directory")
            if not force:
                raise OutputError(f"{path}: already exists (a stir {kind} output); choose another directory or "
                                  "pass --force to replace it")
    return path
