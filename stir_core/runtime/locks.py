"""Who may decode on a model right now: one caller at a time, first come first served.

The engine is NOT safe for concurrent callers: a forward attaches hooks to the one shared bridge (steering,
capture), and two threads decoding at once would see each other's hooks and KV-cache rows (measured before
this lock: 2 of 3 threads raised IndexError, one completion changed). So every function in `stir_core`
that decodes holds `model_lock(model)`, a FIFO lock per loaded model, through `@serialised`:
`methods.run_method`, each mining batch (`mine.sample_rollouts`, `mine._gold_states`), the dashboard's
`sweep_prompt` and `alpha_sweep`, and the toy control's `oracle_accuracy` and `evaluate_task`. The `Engine`
methods and `scheduler.generate` / `run_continuous` do not lock: a caller of them directly takes the lock itself
(the app's `loading.generation` does):

    with model_lock(model).turn(on_wait=lambda pos: print("position", pos)):
        ...  # decode; reentrant, so run_method inside takes it again for free

Fairness comes from the granularity: long jobs (an evaluation, a build) take the lock per batch, so a
Playground request waits at most one batch, and waiters are served in arrival order.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any


class FairLock:
    """A reentrant FIFO lock that can tell a waiter its position in the queue (1 = next)."""

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._queue: deque[int] = deque()  # ids of waiting tickets, in arrival order
        self._owner: int | None = None  # thread id
        self._depth = 0
        self._next = 0

    def waiting(self) -> int:
        """How many callers are queued (not counting the holder)."""
        with self._cv:
            return len(self._queue)

    def busy(self) -> bool:
        with self._cv:
            return self._owner is not None

    def acquire(self, on_wait: Callable[[int], None] | None = None, poll_s: float = 0.5,
                timeout_s: float | None = None) -> bool:
        """Wait for our turn; `on_wait(position)` is called (outside the lock) while waiting, every
        `poll_s`. False when `timeout_s` passed first (and the caller is no longer queued)."""
        me = threading.get_ident()
        with self._cv:
            if self._owner == me:
                self._depth += 1
                return True
            ticket = self._next
            self._next += 1
            self._queue.append(ticket)
        waited = 0.0
        try:
            while True:
                with self._cv:
                    if self._owner is None and self._queue[0] == ticket:
                        self._queue.popleft()
                        self._owner, self._depth = me, 1
                        return True
                    position = list(self._queue).index(ticket) + 1
                    if timeout_s is not None and waited >= timeout_s:
                        self._queue.remove(ticket)
                        self._cv.notify_all()
                        return False
                    self._cv.wait(poll_s)
                    waited += poll_s
                if on_wait is not None:
                    on_wait(position)
        except BaseException:
            with self._cv:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._cv.notify_all()
            raise

    def release(self) -> None:
        with self._cv:
            if self._owner != threading.get_ident():
                raise RuntimeError("FairLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cv.notify_all()

    @contextlib.contextmanager
    def turn(self, on_wait: Callable[[int], None] | None = None, poll_s: float = 0.5) -> Iterator[None]:
        self.acquire(on_wait, poll_s)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> FairLock:
    """The FairLock of a loaded model (keyed by its bridge: every Engine on the model shares it)."""
    key = getattr(model, "bridge", model)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = FairLock()
        return lock


def serialised(fn: Callable) -> Callable:
    """Decorator for functions whose first argument is an Engine: run them holding the model's lock."""
    import functools

    @functools.wraps(fn)
    def wrapper(engine: Any, *args: Any, **kwargs: Any) -> Any:
        with model_lock(engine.model):
            return fn(engine, *args, **kwargs)

    return wrapper
