"""Saves log records emitted while a handler runs with that run, attempt and step.

One handler on the root logger serves every worker in the process; the
invocation a record belongs to is found through context variables, which follow
a handler into its threads (``asyncio.to_thread``) and tasks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

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
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # a broken format string must not break the handler
            message = str(record.msg)
        invocation.add_log(record.levelname, record.name, shortened(message),
                           CURRENT_STEP.get())


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
