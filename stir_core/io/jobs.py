"""Background jobs: long work (an evaluation, a build) in a thread of its own, so a web page can rerun,
show progress and offer Cancel while it runs.

    job = start_job("eval", lambda job: evaluate(..., progress=job.progress_cb()))
    job.status, job.done, job.total, job.text   # poll from any thread
    job.cancel()                                # the next progress report raises `Cancelled`

Jobs live in a process-wide registry (`get_job(id)`), so they survive page reruns and
browser reconnects. Cancellation is cooperative: it takes effect at the job's next progress report (one
batch), and what the job already wrote stays (evaluations write per method, mining checkpoints per batch).
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class JobState(str, Enum):
    """Where a job is. A `str` enum, so a state also compares equal to its value ("done")."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Cancelled(Exception):
    """Raised inside a job at its next progress report after `cancel()`."""


@dataclass(kw_only=True)
class Job:
    """One background job: its state and progress (written by the job's thread, read by any)."""

    kind: str
    label: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: JobState = JobState.RUNNING
    done: int = 0
    total: int = 0
    text: str = ""
    info: dict = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    detail: str | None = None  # the traceback of an unexpected failure
    started: float = field(default_factory=time.time)
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.status is JobState.RUNNING

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def report(self, done: int, total: int, text: str = "", **info: Any) -> None:
        """Progress from inside the job; raises `Cancelled` once cancellation was asked for."""
        self.done, self.total, self.text = int(done), int(total), text
        self.info.update(info)
        if self._cancel.is_set():
            raise Cancelled(f"{self.kind} cancelled at {done}/{total}")


_JOBS: dict[str, Job] = {}
_GUARD = threading.Lock()
MAX_FINISHED = 32


def start_job(kind: str, fn: Callable[[Job], Any], label: str = "") -> Job:
    """Run `fn(job)` in a daemon thread; its return value becomes `job.result`. User errors (ValueError,
    OSError) become `job.error` as one line; anything else also keeps its traceback in `job.detail`."""
    job = Job(kind=kind, label=label)

    def run() -> None:
        status = JobState.FAILED  # the status is set last: a poller that sees it finished sees everything else
        try:
            job.result = fn(job)
            status = JobState.DONE
        except Cancelled as err:
            status, job.error = JobState.CANCELLED, str(err)
        except (ValueError, OSError) as err:
            job.error = str(err)
        except Exception as err:  # noqa: BLE001 - a job must never take the server down; keep the details
            job.error = f"internal error {type(err).__name__}: {err}"
            job.detail = traceback.format_exc()
        finally:
            job.finished = time.time()
            job.status = status

    with _GUARD:
        finished = [j for j in _JOBS.values() if not j.active]
        for old in sorted(finished, key=lambda j: j.started)[: max(0, len(finished) - MAX_FINISHED)]:
            del _JOBS[old.id]
        _JOBS[job.id] = job
    threading.Thread(target=run, name=f"stir-job-{kind}-{job.id}", daemon=True).start()
    return job


def get_job(job_id: str | None) -> Job | None:
    return _JOBS.get(job_id) if job_id else None
