"""The package's layers hold: the import-linter contracts in pyproject.toml pass, and the low layers the
CLI and the app read before torch (config, io, tasks) import no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_contracts_are_kept():
    """`lint-imports` over this checkout (layers + no cycles); `make test` runs it too, this makes a bare
    `pytest` say it as well."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([str(LINT), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_low_layers_import_no_torch():
    code = ("import sys, stir_core.config, stir_core.io.layout, stir_core.io.versions, stir_core.io.jobs, "
            "stir_core.tasks; print(sorted(m for m in ('torch', 'transformers', 'transformer_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
