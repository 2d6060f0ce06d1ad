from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_model import build_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _app_may_read_test_folders(tmp_path_factory):
    """The app reads models and libraries only under allowed roots (stir_core/io/paths.py); the tests keep
    theirs under pytest's temporary folder, so that folder is allowed (tests of the allow-list unset it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STIR_ALLOWED_ROOTS", str(tmp_path_factory.getbasetemp()))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from stir_core.runtime.model import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def engine(tiny):
    from stir_core.runtime.engine import Engine

    return Engine(tiny)
