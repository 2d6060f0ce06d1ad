"""A local Streamlit server's port and health (the browser test and the app-start test)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> float:
    """Seconds until /_stcore/health answers "ok"."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no health answer in {timeout} s:\n{log.read_text()[-3000:]}")
