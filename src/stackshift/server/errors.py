"""How failures become HTTP responses: ``{"error": {"code", "message"}}``.

Every error the service raises on purpose maps to a 4xx with a stable code;
the remote client maps the code back to the same exception class, so callers
catch the same errors in both shapes. A database that cannot be reached is a 503
``database_unavailable``. Anything else is a 500 ``internal_error`` (and logged),
which a client's input must never be able to cause.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from ..errors import (
    ApiKeyNotFoundError,
    EndpointNotFoundError,
    EventNotFoundError,
    IdempotencyConflictError,
    InvalidTransitionError,
    LockNotAcquiredError,
    PayloadTooLargeError,
    QueueNotFoundError,
    RunNotFoundError,
)
from ..store.database import SCHEMA_MISSING, is_database_unavailable, is_schema_missing

log = logging.getLogger("stackshift.server")


class ApiError(Exception):
    """An error response decided by the server itself (auth, limits, routing)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


#: A quoted value (a string as Python writes it; not the apostrophe of "server's")
#: or a word of a message.
_QUOTED_OR_WORD = re.compile(
    r"""(?<!\w)(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|[A-Za-z_][A-Za-z0-9_]*""")


def rename_fields(message: str, rename: Callable[[str], str]) -> str:
    """``message`` with each of its words passed through ``rename``; quoted values
    (``'scheduled_at'`` as a client sent it) are kept as they are.

    The service names fields as the SDK's keywords (``scheduled_at: 'x' is not an
    ISO-8601 time``); over HTTP the server renames them as the API's JSON spells
    them (``scheduledAt``), and the remote client renames them back.
    """
    return _QUOTED_OR_WORD.sub(
        lambda found: found[0] if found[0][0] in "'\"" else rename(found[0]), message)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _is_database_data_error(exc: BaseException) -> bool:
    """A database refusing a value (PostgreSQL ``DataError``): the input's fault."""
    return any(
        cls.__name__ == "DataError" and cls.__module__.startswith("psycopg")
        for cls in type(exc).__mro__
    )


def classify(exc: BaseException) -> tuple[int, str, str, dict[str, Any]]:
    """``(status, code, message, extra)`` for an exception raised while serving."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message, exc.extra
    if isinstance(exc, IdempotencyConflictError):
        if exc.existing_event_id is not None:
            return 409, "idempotency_conflict", message, {
                "existingEventId": exc.existing_event_id}
        return 409, "idempotency_conflict", message, {"existingRunId": exc.existing_run_id}
    if isinstance(exc, RunNotFoundError):
        return 404, "run_not_found", message, {}
    if isinstance(exc, EventNotFoundError):
        return 404, "event_not_found", message, {}
    if isinstance(exc, ApiKeyNotFoundError):
        return 404, "api_key_not_found", message, {}
    if isinstance(exc, EndpointNotFoundError):
        return 404, "endpoint_not_found", message, {}
    if isinstance(exc, QueueNotFoundError):
        return 404, "queue_not_found", message, {}
    if isinstance(exc, InvalidTransitionError):
        return 409, "invalid_transition", message, {}
    if isinstance(exc, LockNotAcquiredError):
        return 409, "lock_not_acquired", message, {}
    if isinstance(exc, PayloadTooLargeError):
        return 413, "payload_too_large", message, {}
    if isinstance(exc, TypeError):
        return 422, "invalid_type", message, {}
    if isinstance(exc, ValueError | OverflowError) or _is_database_data_error(exc):
        # ValidationError is a ValueError; so is UnicodeEncodeError (lone surrogates).
        return 422, "validation_error", message, {}
    if is_schema_missing(exc):  # emptied, or dropped and made again, under the server
        log.warning("%s (%s: %s)", SCHEMA_MISSING, type(exc).__name__, message.splitlines()[0])
        return 503, "database_unavailable", SCHEMA_MISSING, {}
    if is_database_unavailable(exc):
        log.warning("the database is unavailable: %s: %s", type(exc).__name__, message)
        return 503, "database_unavailable", "the database is unavailable; try again", {}
    log.exception("unexpected error while serving a request", exc_info=exc)
    return 500, "internal_error", "the server failed to handle the request", {}
