"""Exact token ids of the embedded model on fixed prompts: vanilla and STIR with the demo library."""

from __future__ import annotations

import json

import pytest
from golden_decoding import GOLDEN, METHODS, decode_all, first_difference


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def decoded(golden) -> dict:
    return decode_all(golden["prompts"])


def test_golden_file_is_complete(golden):
    assert len(golden["prompts"]) == 20
    for method in METHODS:
        assert len(golden["tokens"][method]) == 20 and all(golden["tokens"][method])


@pytest.mark.parametrize("method", METHODS)
def test_decoding_matches_golden(golden, decoded, method):
    diff = first_difference(golden["tokens"][method], decoded["tokens"][method])
    if diff is not None:
        i, j = diff
        exp, got = golden["tokens"][method][i], decoded["tokens"][method][i]
        pytest.fail(
            f"{method}: decoding changed at problem {i}, generated token {j} "
            f"(expected {exp[j] if j < len(exp) else 'end'}, got {got[j] if j < len(got) else 'end'}).\n"
            f"installed: {decoded['versions']}\ngolden made with: {golden['versions']}\n"
            "If the change is intended, explain it and run `python tests/golden_decoding.py --write`."
        )


def test_stir_differs_from_vanilla(golden):
    """The golden set exercises steering: otherwise a broken steer path would pass unnoticed."""
    assert golden["tokens"]["stir"] != golden["tokens"]["vanilla"]
