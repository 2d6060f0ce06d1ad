"""Fixed names on disk: where the bundled assets live and what a library directory's manifest is called.

Torch-free on purpose: the CLI and the app read these before (or without) loading torch, so they import
them from here instead of keeping copies (`runtime.model` and `library.format` use the same names).
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_MODEL_DIR = ASSETS_DIR / "toy-reasoner"  # the embedded testbed model (`load_model()` with no name)
DEMO_LIBRARY = ASSETS_DIR / "demo-library"  # the library the CLI and the app open by default
MANIFEST_FILE = "manifest.json"  # a library directory's manifest (`library.format`)
