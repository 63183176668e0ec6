"""Timing and threads of a worker: when the heartbeat wakes next, and the
threads that run sync handlers."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("stackshift.worker")


class DuePlan:
    """When the next timer, retry or scheduled start falls due, as far as this
    process knows: the heartbeat wakes then, not at its next regular round.

    Maintenance notes the earliest due time it read from the store (runs and
    schedule ticks); the
    service's notifier brings the times recorded in this process since (a
    retry, a run parked until a time or an event's timeout, a delayed start).
    A time noted while the heartbeat sleeps wakes it to sleep again until then.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: float | None = None  # epoch seconds, as the service clock
        self.changed = threading.Event()

    def note(self, at: float) -> None:
        with self._lock:
            if self._due is None or at < self._due:
                self._due = at
                self.changed.set()

    def sleep(self, interval: float, now: float, stop: threading.Event) -> None:
        """Sleep ``interval`` at most, less if something falls due sooner, or until
        ``stop`` is set (whoever sets it sets ``changed`` next)."""
        self.changed.clear()  # what was noted so far is read below
        if stop.is_set():
            return
        with self._lock:
            due = self._due
        timeout = interval if due is None else min(interval, max(0.0, due - now))
        self.changed.wait(timeout)

    def take_passed(self, now: float) -> bool:
        """Forget the noted time if it has come; whether it had."""
        with self._lock:
            if self._due is None or self._due > now:
                return False
            self._due = None
            return True


class HandlerThreads:
    """The threads that run sync handlers, started as needed up to ``limit``.

    Leaner than a ``ThreadPoolExecutor`` (no future per call), and daemon
    threads: a handler still running after the worker stopped (its run
    released) does not keep the process from exiting.
    """

    def __init__(self, limit: int, name: str) -> None:
        self._limit = limit
        self._name = name
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._started < self._limit:
                thread = threading.Thread(target=self._serve, daemon=True,
                                          name=f"{self._name}_{self._started}")
                self._started += 1
                thread.start()
        self._calls.put(call)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                call()
            except BaseException:
                log.exception("a handler thread's call failed")
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Idle threads exit; busy ones once their call returns."""
        with self._lock:
            started, self._started = self._started, self._limit  # no more threads
        for _ in range(started):
            self._calls.put(None)
