"""Identifiers: time-ordered, so ids sort by creation like the runs they name."""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    """A 26-character, time-ordered, random id with a readable prefix (``run_...``)."""
    millis = int(time.time() * 1000)
    return f"{prefix}_{millis:012x}{os.urandom(7).hex()}"
