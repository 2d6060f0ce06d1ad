"""`python -m app [streamlit options]`: the app server, with the default model and library loading from the
first second.

`streamlit run app/Home.py` starts loading only when the first browser session runs the script; this
launcher starts it (in background threads of the same process, see `app.loading`: torch and TransformerLens
are imported there, not here) before the server starts, so the model is ready sooner. Extra arguments go to
`streamlit run`, e.g. `python -m app --server.port 8502`.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from stir_core.runtime.startup import pause_gc  # light: no torch

    resume_gc = pause_gc()  # from the first import on, until the default model is loaded (see stir_core.runtime.startup)
    from streamlit.web import cli  # first, in this thread: the loader thread imports streamlit modules too

    from app import loading

    fut = loading.start_defaults()  # returns at once: the imports and loads run in app.loading's threads
    if fut is None:
        resume_gc()
    else:
        fut.add_done_callback(lambda _: resume_gc())

    sys.argv = ["streamlit", "run", str(Path(__file__).with_name("Home.py")), *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
