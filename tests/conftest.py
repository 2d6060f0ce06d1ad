from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers.app_library import build_test_library  # noqa: E402
from helpers.tiny_model import build_tiny_model  # noqa: E402

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


@pytest.fixture(scope="module")
def app_env(tiny_model_dir, tmp_path_factory):
    """Point the app at the tiny model, a test library and a temporary runs directory (one per module)."""
    import torch

    root = tmp_path_factory.mktemp("app")
    build_test_library(tiny_model_dir, root / "lib")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STIR_MODEL", str(tiny_model_dir))
        mp.setenv("STIR_LIBRARY", str(root / "lib"))
        mp.setenv("STIR_RUNS", str(root / "runs"))
        mp.setenv("STIR_TORCH_THREADS", str(torch.get_num_threads()))  # leave this process's threads alone
        yield {"model": tiny_model_dir, "library": root / "lib", "runs": root / "runs"}


# Tests over ~5 s (measured: results/test_durations.txt) in files other work owns right now; they carry
# `@pytest.mark.slow` here until their files do. `make test-fast` skips every `slow` test, CI runs them all.
SLOW_ELSEWHERE = {
    "tests/test_app.py::test_library_page",
    "tests/test_app_start.py::test_launcher_loads_the_model_before_any_browser",
    "tests/test_arch_matrix.py::test_kv_cached_decode_matches_full_forward",
    "tests/test_scheduler.py::test_continuous_equals_sync_on_the_embedded_model",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[")[0] in SLOW_ELSEWHERE:
            item.add_marker(pytest.mark.slow)
