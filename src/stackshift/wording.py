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


#: Characters of a long input an error message quotes before it cuts it short.
QUOTED = 80


def quoted(value: object, limit: int = QUOTED) -> str:
    """``repr(value)``; for text of more than ``limit`` characters, its first
    ``limit`` quoted, then ``…`` and its length: an error names what it was
    given without repeating the whole of a long input."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    return repr(value)
