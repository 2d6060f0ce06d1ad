"""Atomic writes: a reader sees either the old file (or directory) or the new one, never half of one.

Files go to a temporary sibling in the same directory (same filesystem, so the rename is atomic), are
flushed and fsynced, then `os.replace`d over the target. Directories are written whole into a temporary
sibling and swapped in: on Linux with one atomic `renameat2(RENAME_EXCHANGE)`, elsewhere with two renames
(old -> backup, new -> target), which leaves a window of a few microseconds where the target is missing
but never one where it is half-written. Temporary names start with `.stir_tmp` (ignored by git) and carry
the writer's pid, so a temp left by a killed writer (`kill -9` mid-save) is recognised as an orphan and
removed by the next write to the same target (`clean_orphans`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stir_core.io import jsonio

TMP_PREFIX = ".stir_tmp"


def _tmp_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{TMP_PREFIX}-{tag}-{path.name}-p{os.getpid()}-{uuid.uuid4().hex[:12]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def orphans(path: str | Path) -> tuple[list[Path], list[Path]]:
    """Temporaries of earlier writes to `path`: (dead: their writer's pid is gone, so they are orphans;
    unknown: written before temp names carried a pid, or by a live process — left alone)."""
    path = Path(path)
    dead, unknown = [], []
    if not path.parent.is_dir():
        return dead, unknown
    for p in path.parent.glob(f"{TMP_PREFIX}-*-{path.name}-*"):
        tag = next((t for t in ("dir", "old", "file") if p.name.startswith(f"{TMP_PREFIX}-{t}-{path.name}-")), None)
        if tag is None:
            continue  # another target whose name ends like this one
        rest = p.name[len(f"{TMP_PREFIX}-{tag}-{path.name}-"):]  # "p<pid>-<hex>" (or "<hex>" before pids)
        pid, _, hexpart = rest.partition("-")
        if pid.startswith("p") and pid[1:].isdigit() and hexpart:
            (unknown if _pid_alive(int(pid[1:])) else dead).append(p)
        else:
            unknown.append(p)
    return sorted(dead), sorted(unknown)


def clean_orphans(path: str | Path) -> list[Path]:
    """Remove the orphan temporaries of `path` left by killed writers; returns what was removed."""
    dead, _ = orphans(path)
    for p in dead:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return dead


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry (so a rename inside it survives a power cut); a no-op where unsupported."""
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same dir, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path)
    tmp = _tmp_sibling(path, "file")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON atomically. Strict JSON: NaN/inf are refused (ValueError)."""
    return write_text(path, jsonio.dumps(obj, indent=indent) + "\n")


# --- directories ---------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2). False where the OS/filesystem can't."""
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # filesystem or kernel lacks the flag
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) failed: {os.strerror(err)}", str(a), None, str(b))


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in sorted({p.parent for p in root.rglob("*")} | {root}):
        fsync_dir(d)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Write a whole directory atomically.

    Yields an empty temporary sibling directory; fill it inside the `with`. On a clean exit it replaces
    `path` (any previous directory there is removed after the swap). On an exception the temporary
    directory is deleted and `path` is left exactly as it was. `path` must be a directory or absent.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path)
    tmp = _tmp_sibling(path, "dir")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous directory
        else:
            backup = _tmp_sibling(path, "old")
            os.rename(path, backup)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(backup, path)  # put the previous directory back
                raise
            shutil.rmtree(backup, ignore_errors=True)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
