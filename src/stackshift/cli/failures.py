"""Exit codes scripts can trust, and the translation of errors into them.

====  =====================================================================
0     the command did what it was asked
1     the operation failed (a run waited on failed, a refused transition,
      a database error, a wait that timed out)
2     usage or bad input: nothing was written
3     not found: no run, event, queue or state key with that name
4     idempotency conflict: the key belongs to another job or payload (or event)
====  =====================================================================

Messages go to stderr; a traceback only when ``STACKSHIFT_DEBUG`` is set.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Mapping
from enum import IntEnum
from typing import IO, TYPE_CHECKING, Any

import click

from ..errors import (
    EventNotFoundError,
    IdempotencyConflictError,
    QueueNotFoundError,
    RunNotFoundError,
    StackShiftError,
)

if TYPE_CHECKING:
    import httpx


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    NOT_FOUND = 3
    CONFLICT = 4


class CliFailure(click.ClickException):
    """Ends a command with ``message`` on stderr and exit code 1."""

    exit_code = int(ExitCode.FAILED)

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def output_gone(*streams: IO[Any]) -> None:
    """The reader of stdout or stderr went away (``| head``, a log collector that
    died): what is still printed goes nowhere, rather than failing the command
    (click's exit 1) or Python's flush at exit. ``streams``: the ones whose reader
    is known to have gone (stdout and stderr, if none is given)."""
    global _reader_gone
    _reader_gone = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in streams or (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):  # captured, None
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


#: Whether :func:`output_gone` was called: a command that prints until a run ends
#: (``runs logs --follow``) stops then.
_reader_gone = False


def reader_gone() -> bool:
    return _reader_gone


class _Output(io.TextIOWrapper):
    """stdout whose reader may go away: the rest of the output goes nowhere
    (:func:`output_gone`) and the command goes on to its end and exit code, the
    same however much it printed before (all of it fits in the pipe's buffer, or
    not)."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except BrokenPipeError:
            output_gone(self)  # stderr still says what fails after
            return len(text)

    def flush(self) -> None:
        try:
            super().flush()
        except BrokenPipeError:
            output_gone(self)
            super().flush()  # what was left in the buffer, now to /dev/null


def guard_output() -> None:
    """Before a command runs: a stdout closed by the shell (``>&-``) is /dev/null,
    and one whose reader goes away (``| head``) ends as :class:`_Output` says."""
    for name in ("stderr", "stdout"):
        if getattr(sys, name) is None:  # its descriptor is closed: the first free one
            setattr(sys, name, _Output(open(os.devnull, "wb"), encoding="utf-8"))  # noqa: SIM115
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper) and not isinstance(out, _Output):
        out.flush()  # the same buffer, written through this one from now on
        sys.stdout = _Output(out.buffer, encoding=out.encoding, errors=out.errors,
                             line_buffering=out.line_buffering)


class BadInput(CliFailure):
    exit_code = int(ExitCode.BAD_INPUT)


class NotFound(CliFailure):
    exit_code = int(ExitCode.NOT_FOUND)


class Conflict(CliFailure):
    exit_code = int(ExitCode.CONFLICT)


def bad_input(message: str) -> CliFailure:
    return BadInput(message)


def not_found(message: str) -> CliFailure:
    return NotFound(message)


def failed(message: str) -> CliFailure:
    return CliFailure(message)


def debugging() -> bool:
    return os.environ.get("STACKSHIFT_DEBUG", "") not in ("", "0")


def in_option_terms(message: str, options: Mapping[str, str]) -> str:
    """An SDK message with the SDK's parameter names (``scheduled_at``) given as the
    command's options the user typed (``--scheduled-at``); ``options`` maps each
    parameter name to its option.

    A name with an underscore is an identifier wherever it stands. A one-word
    name (``limit``, ``ttl``) may be plain English, so it is taken as a name only
    where the SDK puts one: as the subject the message opens with (``limit must
    be``, ``window: '0' is not``) and in ``give A or B, not both``. Quoted text
    (the user's values, as ``repr`` shows them) is left as it is.
    """
    both = re.fullmatch(r"give (\w+) or (\w+), not both", message)
    if both:
        first, second = (options.get(word, word) for word in both.groups())
        return f"give {first} or {second}, not both"
    parts = _QUOTED.split(message)  # the text between quotes, then each quoted part
    for name, option in options.items():
        if "_" in name:
            word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
            parts[::2] = [word.sub(option, part) for part in parts[::2]]
        elif re.match(rf"{re.escape(name)}(:| must | needs )", parts[0]):
            parts[0] = option + parts[0][len(name):]
    return "".join(parts)


_QUOTED = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def translate(exc: Exception) -> CliFailure:
    """The exit code and message for an error raised by the SDK."""
    if isinstance(exc, IdempotencyConflictError):
        return Conflict(str(exc))
    if isinstance(exc, RunNotFoundError | EventNotFoundError | QueueNotFoundError):
        return not_found(str(exc))
    if isinstance(exc, ValueError):  # ValidationError and the SDK's other refusals
        return bad_input(str(exc))
    if isinstance(exc, TimeoutError | StackShiftError):
        return failed(str(exc))
    hint = "" if debugging() else " (set STACKSHIFT_DEBUG=1 for the traceback)"
    # httpx is loaded by the commands that talk to a server, and only by them: an
    # error of its own cannot come from a command that has not loaded it.
    http = sys.modules.get("httpx")
    if http is not None and isinstance(exc, http.TransportError):  # STACKSHIFT_URL's server
        return failed(f"the server{_server_of(exc)} did not answer: "
                      f"{type(exc).__name__}: {exc}{hint}")
    return failed(f"{type(exc).__name__}: {exc}{hint}")


def _server_of(exc: httpx.TransportError) -> str:
    """`` at URL``: the server a request that failed was sent to (its origin)."""
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without its request
        return ""
    return f" at {url.scheme}://{url.netloc.decode('ascii')}"
