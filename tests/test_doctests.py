"""The examples in docstrings run: a doctest that drifts from the code fails here."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["stir_core.config", "stir_core.runtime.backend", "stir_core.io.jsonio"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no doctest any more: drop it from MODULES"
    assert result.failed == 0
