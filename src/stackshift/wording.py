"""Words shared by the command line, the dashboard and the errors they show."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def plural(count: int, word: str) -> str:
    """``1 run``, ``2 runs``, ``1,204 runs``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'a' or 'b'?)`` with the names of ``known`` closest to
    ``name``; empty when none is close."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
