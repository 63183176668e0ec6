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

from fastapi import Request, Response
from fastapi.routing import APIRoute

from ..serialization import unique_keys


class JsonBodyRequest(Request):
    """A request whose :meth:`json` refuses repeated keys; FastAPI calls it once
    per body and it keeps the value, so the body is parsed once."""

    _json: Any

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=unique_keys)
        return self._json


class JsonBodyRoute(APIRoute):
    """A route that reads its body as a :class:`JsonBodyRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(JsonBodyRequest(request.scope, request.receive))

        return handle
