"""Words shared by the command line, the dashboard and the errors they show."""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Iterable


def plural(count: int, word: str) -> str:
    """``1 run``, ``2 runs``, ``1,204 runs``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'a' or 'b'?)`` with the names of ``known`` closest to
    ``name``; empty when none is close."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def unregistered(job: str, known: Iterable[str]) -> str:
    """That no worker has registered ``job``, with the closest names that some has."""
    return f"no worker has registered job {job!r}{did_you_mean(job, known)}"


#: Characters of a long input an error message quotes before it cuts it short.
QUOTED = 80


def quoted(value: object, limit: int = QUOTED) -> str:
    """``repr(value)``; for text of more than ``limit`` characters, its first
    ``limit`` quoted, then ``…`` and its length: an error names what it was
    given without repeating the whole of a long input."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    return repr(value)


def shell_word(text: str) -> str:
    """``text`` quoted for a shell. Text with control characters (a state key may
    hold any) is written ``$'...'`` with them escaped, as bash and zsh read it, so
    that the command stays on one line and no escape sequence reaches the terminal."""
    if text.isprintable():
        return shlex.quote(text)
    out = []
    for char in text:
        code = ord(char)
        if char in "\\'":
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "$'" + "".join(out) + "'"


def per_minute(rate: float) -> str:
    """Runs finished per minute, to a tenth; ``0.0`` only when none finished (two
    in a week read ``<0.1``)."""
    if 0 < rate < 0.05:
        return "<0.1"
    return f"{rate:.1f}"
