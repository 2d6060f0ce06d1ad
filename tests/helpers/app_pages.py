"""The Streamlit app under `streamlit.testing` (AppTest): open a page with a query, check it drew cleanly."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app" / "Home.py"
sys.path.insert(0, str(REPO))  # the `app` package (not installed; `streamlit run` adds it the same way)


def open_app(**query):
    """An AppTest of app/Home.py with `query` as its URL parameters (not run yet)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params.update(query)
    return at


def assert_ok(at) -> None:
    """The page ran without an exception or an error box."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
