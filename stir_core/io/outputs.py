"""Output directories: write only where nothing of the user's can be destroyed.

A run directory (`stir build/mine/eval --out`, the app's Build and Evaluate) carries a marker file,
`.stir-run.json`, so "ours" is checkable. A library directory is ours when it holds only library files.

    claim_run_dir(path)            absent or empty: create it and write the marker; ours: reuse it (resume);
                                   anything else: `OutputError`, nothing touched
    check_library_target(path, overwrite)
                                   absent or empty: fine; our library: only with `overwrite` (`--force`);
                                   anything else (a foreign file inside included): `OutputError`

Orphan temporaries left by a killed writer are removed on the next write to the same target
(`atomic.clean_orphans`) and reported by `report_orphans`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from stir_core.io import atomic

RUN_MARKER = ".stir-run.json"
LIBRARY_FILES = frozenset({"manifest.json", "tools.safetensors", "tools.parquet", "CARD.md", "build-config.yaml"})
# What a run directory written before markers existed may hold (accepted as ours, then marked).
RUN_OUTPUTS = frozenset({"mine_checkpoint", "candidates", "library", "build.json", "summary.json",
                         "examples.jsonl", "examples.csv", "sweep.csv", "partial.json"})


class OutputError(ValueError):
    """An output location we refuse to write to; the message names it and says what to do."""


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(atomic.TMP_PREFIX))


def is_library_dir(path: Path) -> bool:
    """Holds a library manifest and nothing but library files."""
    if not path.is_dir():
        return False
    names = _entries(path)
    return "manifest.json" in names and set(names) <= LIBRARY_FILES


def _looks_like_old_run(path: Path, names: list[str]) -> bool:
    return bool(names) and all(n in RUN_OUTPUTS or ("=" in n and (path / n).is_dir()) for n in names)


def claim_run_dir(path: str | Path, kind: str) -> Path:
    """Make `path` a run directory of ours (see the module docstring); returns it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory; give a new or empty directory")
    if path.is_dir():
        names = _entries(path)
        if RUN_MARKER in names:
            return path
        if names and not _looks_like_old_run(path, names):
            shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
            raise OutputError(f"{path}: not empty and not a STIR run directory (holds {shown}); "
                              "give a new or empty directory, nothing was written")
    path.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path / RUN_MARKER, {"format": "stir-run", "kind": kind,
                                          "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return path


def run_kind(path: str | Path) -> str | None:
    """The kind recorded in a run directory's marker, or None when it has none."""
    try:
        return str(json.loads((Path(path) / RUN_MARKER).read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
