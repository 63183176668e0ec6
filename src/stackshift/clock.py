"""Time as a dependency: every component asks a ``Clock`` for the time.

Tests and users' own tests swap in :class:`stackshift.testing.FakeClock` so that
sleeps, TTLs, backoff and timeouts are driven without waiting.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Current time as epoch seconds."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()
