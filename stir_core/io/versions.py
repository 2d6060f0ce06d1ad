"""The versions that decide what the workbench computes: this package and its backends.

Decoding is only as correct as the installed torch / transformers / transformer-lens (transformers 5.24
silently broke KV-cached decoding through TransformerLens 4.3), so every place that reports results — `stir
--version`, the app's Model facts, `summary.json`, the golden-decoding test — names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

PACKAGES = ("stir-workbench", "torch", "transformers", "transformer-lens")


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """`{distribution: version}` for the package and its backends, or for `packages` ('not installed' when
    absent).

    Read from installed metadata, so it costs no heavy import.
    """
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def version_line() -> str:
    """One line, e.g. `stir-workbench 0.2.0 (torch 2.13.0, transformers 5.24.0, transformer-lens 4.3.0)`."""
    v = versions()
    backends = ", ".join(f"{k} {v[k]}" for k in PACKAGES[1:])
    return f"stir-workbench {v['stir-workbench']} ({backends})"
