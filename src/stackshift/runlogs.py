"""Saves log records emitted while a handler runs with that run, attempt and step.

One handler on the root logger serves every worker in the process; the
invocation a record belongs to is found through context variables, which follow
a handler into its threads (``asyncio.to_thread``) and tasks.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .serialization import utf8
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


#: Characters of JSON a record's fields (its ``extra``) take at most, and of one
#: field's value: a longer value is kept as the start of its JSON text.
MAX_FIELDS = 16 * 1024
MAX_FIELD_VALUE = 1024
#: Arrays and objects nested deeper than this in a field are kept as their ``repr``.
MAX_FIELD_DEPTH = 20

#: The attributes every record has: the others came with ``extra=`` (or were set
#: by a filter or an adapter), and are the record's fields.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


class _CaptureHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        invocation = CURRENT.get()
        if invocation is None or ENGINE_CALL.get():
            return
        try:
            message = stored_message(record)
            fields, left_out = record_fields(record)
            if left_out:
                message += (f"\n[fields left out, past {MAX_FIELDS} characters of them: "
                            f"{', '.join(left_out)}]")
            invocation.add_log(record.levelname, utf8(record.name), utf8(shortened(message)),
                               CURRENT_STEP.get(), None if fields is None else utf8(fields))
        except Exception:  # a logging call never fails the handler that made it
            self.handleError(record)


def record_fields(record: logging.LogRecord) -> tuple[str | None, list[str]]:
    """The JSON object of ``record``'s fields (``log.info("paid", extra={"order":
    "o-1"})``), in the order they were given, or None when it has none; and the
    names of the fields left out past ``MAX_FIELDS`` characters.

    A value that is not JSON is kept as text: a date or time as ISO 8601, any
    other as its ``repr``; a value whose JSON is longer than ``MAX_FIELD_VALUE``
    characters is kept as a string, its JSON text's start and what was cut."""
    names = [name for name in record.__dict__
             if name not in _STANDARD and not name.startswith("_")]
    if not names:
        return None, []
    kept: list[str] = []
    left_out: list[str] = []
    used = 2
    for name in names:
        item = f"{_json(name)}:{_field_json(record.__dict__[name])}"
        if used + len(item) + 1 > MAX_FIELDS:
            left_out.append(name)
            continue
        kept.append(item)
        used += len(item) + 1
    return ("{" + ",".join(kept) + "}" if kept else None), left_out


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _field_json(value: Any) -> str:
    """A field's value as JSON text, kept to ``MAX_FIELD_VALUE`` characters."""
    try:
        value = _as_json(value, 0)
        text = _json(value)
    except Exception:  # e.g. an int of more digits than Python turns into text
        value = _text(value, repr)
        text = _json(value)
    if len(text) <= MAX_FIELD_VALUE:
        return text
    return _json(f"{text[:MAX_FIELD_VALUE]}[... {len(text) - MAX_FIELD_VALUE} characters cut ...]")


def _as_json(value: Any, depth: int) -> Any:
    """``value`` as JSON data, each part that is not JSON as text (a date or time
    as ISO 8601, any other as its ``repr``)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if depth < MAX_FIELD_DEPTH:
        if isinstance(value, dict):
            return {_text(key): _as_json(item, depth + 1) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [_as_json(item, depth + 1) for item in value]
        try:
            if callable(getattr(value, "model_dump", None)) and hasattr(type(value),
                                                                       "model_fields"):
                return _as_json(value.model_dump(mode="json"), depth + 1)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return _as_json({f.name: getattr(value, f.name)
                                 for f in dataclasses.fields(value)}, depth + 1)
        except Exception:  # a model_dump() or a field of its own that broke
            pass
    return _text(value, repr)


def level_number(level: str) -> int:
    """A record's level as a number (``WARNING``: 30; ``Level 25``, the name of a
    level that has none: 25); 0 for a name of the program's own that this process
    does not know."""
    number = logging.getLevelName(level)
    if isinstance(number, int):
        return number
    unnamed = _UNNAMED_LEVEL.fullmatch(level)
    return int(unnamed.group(1)) if unnamed else 0


_UNNAMED_LEVEL = re.compile(r"Level ([0-9]{1,3})")


_BARE = re.compile(r"[^\s\"=\\]+")


def field_text(value: Any) -> str:
    """A field's value as a line of text shows it: a string without spaces,
    quotes, ``=`` or control characters as it is, any other value as JSON."""
    if isinstance(value, str) and value.isprintable() and _BARE.fullmatch(value):
        return value
    return _json(value)


def fields_line(fields: dict[str, Any]) -> str:
    """``fields`` as ``name=value`` pairs for a line of text."""
    return " ".join(f"{name}={field_text(value)}" for name, value in fields.items())


_formatter = logging.Formatter()


def stored_message(record: logging.LogRecord) -> str:
    """The text kept for ``record``: its message, then its exception's traceback and
    its stack (``stack_info=True``), as :class:`logging.Formatter` lays them out
    (the traceback without StackShift's own frames).

    A message that cannot be formatted (``log.info("%d", "x")``: arguments that
    do not fit it) keeps its unformatted text, its arguments and a line saying
    why, rather than break the handler or lose what was logged.
    """
    message = message_text(record)
    if record.exc_info:
        try:
            message += "\n" + _exception_text(record.exc_info)
        except Exception as error:
            message += f"\n[formatting the exception failed: {type(error).__name__}]"
    if record.stack_info:
        message += "\n" + _formatter.formatStack(record.stack_info)
    return message


def message_text(record: logging.LogRecord) -> str:
    """``record.getMessage()``, or, when its arguments do not fit its message, the
    unformatted message, its arguments and a line saying why."""
    try:
        return record.getMessage()
    except Exception as error:
        return (f"{_text(record.msg)}\n[formatting the message failed: "
                f"{type(error).__name__}: {_text(error)}; its arguments: "
                f"{_text(record.args, repr)}]")


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
        run_logger = logging.getLogger(RUN_LOGGER)
        if _users == 0:
            logging.getLogger().addHandler(_handler)
            if run_logger.level == logging.NOTSET:
                run_logger.setLevel(logging.DEBUG)
        # `logging.config.dictConfig` disables the loggers that exist when it is
        # called (its default), this one included: ctx.log is the handlers' own.
        run_logger.disabled = False
        _users += 1


def uninstall() -> None:
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0:
            logging.getLogger().removeHandler(_handler)
