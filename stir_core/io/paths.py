"""Which server paths the app may read a library or a model from (`?lib=`, `?model=`, the path boxes).

Served beyond 127.0.0.1 (`stir app --address 0.0.0.0`), whoever opens the page chooses the path, so the app
reads only under allowed roots: the working directory, the shipped assets and the Hugging Face cache, plus
any listed in `STIR_ALLOWED_ROOTS` (separated by the OS path separator, `:` on Linux). Paths are resolved
(symlinks and `..` followed) before the check, so a link inside a root that points outside it is refused.

    allowed_roots()            -> [Path]
    check_allowed(path, what)  -> Path (resolved), or `PathNotAllowed` naming the path and the roots
    is_path_like(name)         a model name that is a filesystem path (not a hub id)
    is_loopback(address)       the app's server address reaches only this machine
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = "STIR_ALLOWED_ROOTS"


class PathNotAllowed(ValueError):
    """A path outside the allowed roots; the message names it and how to allow it."""


def _hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser()


def allowed_roots() -> list[Path]:
    """The resolved roots a served app may read from (see the module docstring)."""
    roots = [Path.cwd(), REPO / "assets", _hf_cache()]
    roots += [Path(p).expanduser() for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]
    out: list[Path] = []
    for r in roots:
        r = r.resolve()
        if r not in out:
            out.append(r)
    return out


def check_allowed(path: str | os.PathLike, what: str = "path", extra: tuple[str | os.PathLike, ...] = ()) -> Path:
    """`path` resolved, when it lies under an allowed root (or one of `extra`); else `PathNotAllowed`."""
    resolved = Path(path).expanduser().resolve()
    roots = allowed_roots() + [Path(e).expanduser().resolve() for e in extra]
    if any(resolved == r or resolved.is_relative_to(r) for r in roots):
        return resolved
    shown = ", ".join(str(r) for r in roots)
    raise PathNotAllowed(f"{what} {str(path)[:200]}: outside the folders this app may read ({shown}); "
                         f"add its folder to {ENV} where the app is started to allow it")


def is_path_like(name: str) -> bool:
    """A model name meant as a local path (absolute, ~, ./ or ../, or an existing path), not a hub id."""
    # the same test as runtime.model.resolve_model_path (a hub id is "org/name": one slash)
    return name.startswith((".", "/", "~")) or os.path.isabs(name) or name.count("/") > 1 or Path(name).exists()


def is_loopback(address: str | None) -> bool:
    """True for addresses only this machine can reach (localhost, 127.x, ::1); "" and 0.0.0.0 are not."""
    a = (address or "").strip().strip("[]").lower()
    return a == "localhost" or a.startswith("127.") or a == "::1"
