"""Helpers for testing code that uses StackShift.

``FakeClock`` replaces the wall clock so that delays, sleeps, TTLs, backoff and
wait timeouts pass instantly; ``run_until_idle`` executes everything that is due
in the calling thread::

    clock = FakeClock()
    app = StackShift("sqlite:///test.db", clock=clock)
    run = app.start("remind", {})
    run_until_idle(app)          # runs until the handler sleeps
    clock.advance("3d")
    run_until_idle(app)          # wakes it and finishes
"""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime
from typing import Any

from .client import AsyncStackShift, StackShift
from .durations import MAX_DURATION, parse_duration, parse_epoch, parse_instant, to_datetime
from .errors import ValidationError

__all__ = ["FakeClock", "run_until_idle"]


class FakeClock:
    """A clock that moves only when told to. Thread-safe.

    Its time stays at least 100 years (the longest duration the engine takes)
    before the end of the year 9999: the engine stores the current time plus a
    delay, sleep, timeout or backoff, and every such time must read back.
    """

    def __init__(self, start: datetime | str | float | None = None) -> None:
        if start is None:
            self._now = time.time()
        elif isinstance(start, int | float):
            self._now = _room_left(parse_epoch(start, name="start"), f"start: {start!r}")
        else:
            self._now = _room_left(parse_instant(start, name="start"), f"start: {start!r}")
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, duration: Any) -> float:
        """Move forward by ``duration`` (``"3d"``, seconds, ``timedelta``)."""
        seconds = parse_duration(duration)
        with self._lock:
            self._now = _room_left(self._now + seconds,
                                   f"advance: {duration!r} takes the clock to a time that")
            return self._now

    def set(self, when: datetime | str | float) -> None:
        """Move to ``when``: epoch seconds as given, or a time (a ``datetime``, an
        ISO-8601 string) to the microsecond, its last instant.

        The engine keeps times as epoch seconds and shows them to the microsecond
        (``run.scheduled_at``, ``run.next_attempt_at``): a time read from a run is
        that instant rounded. Set to such a time, the clock reads the last
        instant that still shows as it, so what is due at a time shown at or
        before it is due.
        """
        if isinstance(when, int | float):
            moment = parse_epoch(when, name="when")
        else:
            moment = _last_instant_shown_as(parse_instant(when, name="when"))
        _room_left(moment, f"when: {when!r}")
        with self._lock:
            self._now = moment


def _room_left(moment: float, what: str) -> float:
    """``moment`` if the longest duration after it is still a time the engine can
    store; a :class:`ValidationError` saying ``what`` otherwise."""
    try:
        to_datetime(moment + MAX_DURATION)
    except (ValueError, OverflowError, OSError):
        raise ValidationError(
            f"{what} leaves less than 100 years, the longest delay, sleep or timeout,"
            " before the end of the year 9999") from None
    return moment


def _last_instant_shown_as(seconds: float) -> float:
    """The greatest epoch seconds that show (``to_datetime``) as ``seconds`` does."""
    shown = to_datetime(seconds)
    while True:
        later = math.nextafter(seconds, math.inf)
        try:
            if to_datetime(later) != shown:
                return seconds
        except (ValueError, OverflowError, OSError):  # past the year 9999
            return seconds
        seconds = later


def run_until_idle(app: StackShift | AsyncStackShift, *, max_invocations: int = 100_000,
                   **worker_options: Any) -> int:
    """Execute due runs (timers and rescues included) until nothing is due, or
    until ``max_invocations`` handler invocations (a job that starts runs
    without end), whichever comes first.

    Returns the number of handler invocations. Runs in the calling thread (async
    handlers on an event loop of their own, in a thread of their own when the
    calling thread runs one already, as an async test does, which it then holds
    up until it returns). ``worker_options`` are those of ``app.worker()``.
    """
    if not isinstance(app, StackShift | AsyncStackShift):
        raise TypeError(f"run_until_idle takes a StackShift or AsyncStackShift client, got"
                        f" {type(app).__name__}")
    client = app.sync if isinstance(app, AsyncStackShift) else app
    return int(client.worker(**worker_options).run_until_idle(max_invocations))
