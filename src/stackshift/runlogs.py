"""Saves log records emitted while a handler runs with that run, attempt and step.

One handler on the root logger serves every worker in the process; the
invocation a record belongs to is found through context variables, which follow
a handler into its threads (``asyncio.to_thread``) and tasks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .tracebacks import format_exception

if TYPE_CHECKING:
    from .worker.invocation import Invocation

CURRENT: ContextVar[Invocation | None] = ContextVar("stackshift_invocation", default=None)
CURRENT_STEP: ContextVar[str | None] = ContextVar("stackshift_step", default=None)
#: True while the engine makes a request of its own (a remote client's call to the
#: server): what the HTTP library logs about it belongs to no run.
ENGINE_CALL: ContextVar[bool] = ContextVar("stackshift_engine_call", default=False)


@contextmanager
def engine_call() -> Iterator[None]:
    """Mark the records logged inside as the engine's own, not the handler's."""
    token = ENGINE_CALL.set(True)
    try:
        yield
    finally:
        ENGINE_CALL.reset(token)

#: ``ctx.log`` writes here; it records everything from DEBUG up unless configured.
RUN_LOGGER = "stackshift.run"

#: Characters of a record's message (traceback included) kept with the run: a longer
#: one keeps its beginning and its end (where a traceback names the exception).
#: A remote worker sends the records with its next checkpoint, which must fit the
#: server's request body limit: a record of megabytes would fail the step.
MAX_MESSAGE = 64 * 1024


def shortened(message: str) -> str:
    """``message``, or its first and last ``MAX_MESSAGE // 2`` characters with
    what was cut between them."""
    if len(message) <= MAX_MESSAGE:
        return message
    keep = MAX_MESSAGE // 2
    return (f"{message[:keep]}\n[... {len(message) - 2 * keep} characters cut ...]\n"
            f"{message[-keep:]}")


class _CaptureHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        invocation = CURRENT.get()
        if invocation is None or ENGINE_CALL.get():
            return
        invocation.add_log(record.levelname, record.name, shortened(stored_message(record)),
                           CURRENT_STEP.get())


_formatter = logging.Formatter()


def stored_message(record: logging.LogRecord) -> str:
    """The text kept for ``record``: its message, then its exception's traceback and
    its stack (``stack_info=True``), as :class:`logging.Formatter` lays them out
    (the traceback without StackShift's own frames).

    A message that cannot be formatted (``log.info("%d", "x")``: arguments that
    do not fit it) keeps its unformatted text, its arguments and a line saying
    why, rather than break the handler or lose what was logged.
    """
    try:
        message = record.getMessage()
    except Exception as error:
        message = (f"{_text(record.msg)}\n[formatting the message failed: "
                   f"{type(error).__name__}: {_text(error)}; its arguments: "
                   f"{_text(record.args, repr)}]")
    if record.exc_info:
        try:
            message += "\n" + _exception_text(record.exc_info)
        except Exception as error:
            message += f"\n[formatting the exception failed: {type(error).__name__}]"
    if record.stack_info:
        message += "\n" + _formatter.formatStack(record.stack_info)
    return message


def _exception_text(exc_info: Any) -> str:
    """A record's exception as :class:`logging.Formatter` lays it out, less
    StackShift's own frames (see :mod:`stackshift.tracebacks`)."""
    value = exc_info[1]
    if isinstance(value, BaseException) and value.__traceback__ is exc_info[2]:
        return format_exception(value).rstrip("\n")
    return _formatter.formatException(exc_info)


def _text(value: object, show: Callable[[object], str] = str) -> str:
    """``show(value)``, or a placeholder when the object's own method raises."""
    try:
        return show(value)
    except Exception as error:
        return f"<{show.__name__}() of a {type(value).__name__} raised {type(error).__name__}>"


_handler = _CaptureHandler(level=logging.DEBUG)
_users = 0
_lock = threading.Lock()


def install() -> None:
    """Start capturing (reference-counted: one handler however many workers)."""
    global _users
    with _lock:
        if _users == 0:
            logging.getLogger().addHandler(_handler)
            run_logger = logging.getLogger(RUN_LOGGER)
            if run_logger.level == logging.NOTSET:
                run_logger.setLevel(logging.DEBUG)
        _users += 1


def uninstall() -> None:
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0:
            logging.getLogger().removeHandler(_handler)
