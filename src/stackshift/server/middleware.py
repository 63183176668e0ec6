"""Pure ASGI middleware: API key checks, the request body limit, UTF-8 paths and queries.

Both run before routing and before any body is parsed, so an unauthenticated
request gets its 401 whatever it sends, and an over-size body never reaches
the JSON parser.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio.to_thread
from starlette.responses import JSONResponse

from ..serialization import MiB
from ..store.database import SCHEMA_MISSING, is_database_unavailable, is_schema_missing
from .errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths served without a key.
OPEN_PATHS = frozenset({"/healthz"})

#: The API's paths outside ``/v1/``: their bodies are JSON too (none, ``{}`` or ``null``).
SERVER_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})

#: How much of an over-size body is read (and dropped) before answering 413, so
#: that a client still writing its body reads the answer instead of a reset.
DRAIN_LIMIT = 64 * MiB


async def send_error(send: Send, status: int, code: str, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = JSONResponse(error_body(code, message)).body  # as the routes' errors are written
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ],
    })
    await send({"type": "http.response.body", "body": body})


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class RequireApiKey:
    """``Authorization: Bearer <key>`` on every path but :data:`OPEN_PATHS`; else 401.

    ``verify`` returns the key's record or ``None`` (unknown or revoked); it
    touches the database, so it runs in a worker thread.
    """

    def __init__(self, app: ASGIApp, verify: Callable[[str], Any]) -> None:
        self.app = app
        self.verify = verify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        challenge = [(b"www-authenticate", b'Bearer realm="stackshift"')]
        token = bearer_token(scope)
        if token is None:
            await send_error(send, 401, "unauthorized",
                             "an API key is required: send 'Authorization: Bearer <key>'",
                             challenge)
            return
        try:
            key = await anyio.to_thread.run_sync(self.verify, token)
        except Exception as exc:
            if is_schema_missing(exc):
                said = SCHEMA_MISSING
            elif is_database_unavailable(exc):
                said = "the database is unavailable; try again"
            else:
                raise
            await send_error(send, 503, "database_unavailable", said)
            return
        if key is None:
            await send_error(send, 401, "unauthorized", "the API key is unknown or revoked",
                             challenge)
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)


def _says_json(scope: Scope) -> bool:
    """The request's Content-Type is JSON (``application/json``, ``...+json``) in
    UTF-8: without a ``charset``, or with ``charset=utf-8`` (the API reads no
    other; a body declared in another would be read as what it is not)."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            kind, *params = value.lower().split(b";")
            kind = kind.strip()
            charsets = [param.partition(b"=")[2].strip().strip(b'"') for param in params
                        if param.partition(b"=")[0].strip() == b"charset"]
            return ((kind == b"application/json" or kind.endswith(b"+json"))
                    and all(charset in (b"utf-8", b"utf8") for charset in charsets))
    return False


class RequireUtf8Path:
    """Refuse with 400 a path or query string that is not UTF-8 once percent-decoded.

    Left to the router, its bytes would become replacement characters: two
    different state keys (``caf%E9``, ``caf%E8``) the same one, and a filter
    (``?job=caf%E9``) quietly one for a name nobody sent.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            for part, code, what in ((raw.split(b"?", 1)[0], "bad_path", "path"),
                                     (scope.get("query_string", b""), "bad_query",
                                      "query string")):
                try:
                    unquote_to_bytes(part).decode("utf-8")
                except UnicodeDecodeError:
                    await send_error(send, 400, code,
                                     f"the request {what} is not UTF-8 once percent-decoded")
                    return
        await self.app(scope, receive, send)


class LimitBody:
    """Refuse request bodies over ``limit`` bytes with 413, and API bodies that
    are not said to be JSON with 415.

    The body is read here, counting bytes as they arrive (a missing or false
    ``Content-Length`` does not help), and handed on whole.
    """

    def __init__(self, app: ASGIApp, limit: int = MiB) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        over = False
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > DRAIN_LIMIT:
                await send_error(send, 413, "body_too_large", self._message(),
                                 [(b"connection", b"close")])
                return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                over = True
            elif message.get("body"):
                chunks.append(message["body"])
            if not message.get("more_body", False):
                break
            if size > DRAIN_LIMIT:
                break
        if over:
            await send_error(send, 413, "body_too_large", self._message(),
                             [(b"connection", b"close")] if size > DRAIN_LIMIT else None)
            return
        body = b"".join(chunks)
        path = scope["path"]
        if body and (path.startswith("/v1/") or path in SERVER_PATHS) and not _says_json(scope):
            await send_error(send, 415, "unsupported_media_type",
                             "the API reads JSON bodies in UTF-8: send Content-Type:"
                             " application/json")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _message(self) -> str:
        return f"the request body is over the limit of {self.limit} bytes"
