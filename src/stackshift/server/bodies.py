"""How the API reads a JSON request body: once, refusing a key repeated in an object.

``{"name": "a", "name": "b"}`` is valid JSON that readers disagree on (Python's
parser keeps the last value, others the first), so the API refuses it at any
depth, payloads and state values included, instead of guessing: the parse
raises :class:`~stackshift.serialization.DuplicateKeyError`, which FastAPI hands
on as the cause of its ``400`` and :mod:`.app` answers as a ``422
validation_error`` naming the key. Every router of the API builds its routes
with :class:`JsonBodyRoute`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from ..serialization import unique_keys
from .errors import ApiError


class JsonBodyRequest(Request):
    """A request whose :meth:`json` refuses repeated keys; FastAPI calls it once
    per body and it keeps the value, so the body is parsed once."""

    _json: Any

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # UTF-8 only (a leading byte order mark is allowed): json.loads would
            # take UTF-16 and UTF-32 bytes as well, which JSON over HTTP is not.
            text = (await self.body()).decode("utf-8-sig")
            self._json = json.loads(text, object_pairs_hook=unique_keys)
        return self._json


class JsonBodyRoute(APIRoute):
    """A route that reads its body as a :class:`JsonBodyRequest`.

    A route that takes no body (``POST /v1/runs/{id}/retry``, ``POST
    /v1/queues/{name}/pause``, ...) refuses one that names fields, as bodies
    refuse unknown fields: an option it does not have (``{"until": ...}``) is an
    error, not silently ignored. An empty body, ``{}`` and ``null`` are fine.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def handle(request: Request) -> Response:
            request = JsonBodyRequest(request.scope, request.receive)
            if not takes_body and await request.body():
                await _no_fields(request)
            return await handler(request)

        return handle


async def _no_fields(request: JsonBodyRequest) -> None:
    """Refuse the body of a route that takes none, unless it is ``{}`` or ``null``."""
    try:
        body = await request.json()
    except UnicodeDecodeError as exc:
        raise HTTPException(400, "the request body is not UTF-8 text") from exc
    except (ValueError, RecursionError) as exc:  # as FastAPI reports a body it cannot read
        raise HTTPException(400, "the request body is not valid JSON") from exc
    if body is None or body == {}:
        return
    if isinstance(body, dict):
        names = ", ".join(repr(name) for name in list(body)[:5])
        more = f" (and {len(body) - 5} more)" if len(body) > 5 else ""
        raise ApiError(422, "validation_error",
                       f"this endpoint takes no request body: {names}{more} not permitted")
    raise ApiError(422, "validation_error",
                   "this endpoint takes no request body (send none, or {})")
