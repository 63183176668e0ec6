"""Words shared by the command line and the dashboard."""

from __future__ import annotations


def plural(count: int, word: str) -> str:
    """``1 run``, ``2 runs``, ``1,204 runs``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"
