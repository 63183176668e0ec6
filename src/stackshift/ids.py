"""Identifiers: time-ordered, so ids sort by creation like the runs they name."""

from __future__ import annotations

import math
import os
import re
import threading
import time

from .errors import ValidationError
from .wording import quoted

_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random part) of the last id made in this process


def _after_fork() -> None:
    """A forked child draws its own random part: carrying on from the parent's
    last id, both processes would make the same ids within that millisecond."""
    global _lock, _last
    _lock = threading.Lock()
    _last = (0, 0)


os.register_at_fork(after_in_child=_after_fork)


def new_id(prefix: str) -> str:
    """A 26-character, time-ordered, random id with a readable prefix (``run_...``).

    Within one process ids strictly increase, even for several in one millisecond
    or when the wall clock steps back: the random part of the last id is bumped.
    """
    global _last
    with _lock:
        millis = int(time.time() * 1000)
        last_millis, last_random = _last
        if millis <= last_millis:
            millis, rand = last_millis, last_random + 1
            if rand >= 1 << 56:
                millis, rand = millis + 1, 0
        else:
            # The top bit stays clear, leaving room to bump within a millisecond.
            rand = int.from_bytes(os.urandom(7), "big") >> 1
        _last = (millis, rand)
    return f"{prefix}_{millis:012x}{rand:014x}"


_ID = re.compile(r"[a-z]+_[0-9a-f]{26}")


def unknowable_id(value: object) -> bool:
    """An id no row can have: not text, or text PostgreSQL cannot hold (NUL). Such
    an id is unknown on every store alike, never sent to the database."""
    return not isinstance(value, str) or "\x00" in value


def check_cursor(cursor: str | None, prefix: str) -> str | None:
    """A page cursor as the list gave it (the last id of a page), or ``None``."""
    if cursor is not None and not (isinstance(cursor, str) and _ID.fullmatch(cursor)
                                   and cursor.startswith(prefix + "_")):
        article = "an" if prefix[0] in "aeiou" else "a"  # an evt_... id, a run_... id
        raise ValidationError(f"cursor {quoted(cursor)} is not one a list returned"
                              f" ({article} {prefix}_... id)")
    return cursor


def failure_cursor(finished_at: float, run_id: str) -> str:
    """The cursor after a run in a list by failure time (dead letters):
    ``<finished_at>:<run id>``, the time as exactly as it is stored."""
    return f"{finished_at!r}:{run_id}"


def check_failure_cursor(cursor: str | None) -> tuple[float, str] | None:
    """``(finished_at, run id)`` of a cursor :func:`failure_cursor` made, or ``None``."""
    if cursor is None:
        return None
    at, _, run_id = cursor.partition(":") if isinstance(cursor, str) else ("", "", "")
    try:
        finished_at = float(at)
    except ValueError:
        finished_at = math.nan
    if not (math.isfinite(finished_at) and _ID.fullmatch(run_id) and run_id.startswith("run_")):
        raise ValidationError(f"cursor {quoted(cursor)} is not one a list of dead letters returned"
                              " (a failure time and a run_... id)")
    return finished_at, run_id
