"""`streamlit run app/serve.py`: the workbench (app/Home.py) as a Streamlit 1.67 `st.App`, whose lifespan hook
starts loading the default model and library as the server starts, before any browser connects.

`streamlit run app/Home.py` works too, but loads only when the first session runs the page; `python -m app`
(app/__main__.py, what `make app` and `stir app` run) starts the same loads from the process's first second.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

from app import loading  # noqa: E402 - light: torch is imported in the loader thread


@asynccontextmanager
async def lifespan(_app: st.App) -> AsyncIterator[None]:
    loading.start_defaults()  # returns at once
    yield


app = st.App(str(Path(__file__).with_name("Home.py")), lifespan=lifespan)
