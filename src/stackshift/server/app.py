"""The ASGI application of ``stackshift server``.

Layers, outermost first: request counting, the API key check, the body limit,
then FastAPI's routing over :mod:`stackshift.server.routes`. Every route calls
the one :class:`~stackshift.service.Service`; nothing here touches storage.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, get_args

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from pydantic.alias_generators import to_snake
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount, Route, compile_path

from ..clock import SystemClock
from ..durations import parse_duration, parse_typed_duration
from ..errors import StackShiftError, ValidationError
from ..jobs import JobRegistry, check_name
from ..serialization import MAX_DEPTH, DuplicateKeyError, MiB
from ..service import Service
from ..settings import Settings, server_setting
from ..store import open_store
from ..store.database import SCHEMA_MISSING
from ..store.queries import latest_version
from . import flow_routes, metrics, push_routes, routes, worker_routes
from .bodies import JsonBodyRoute
from .errors import ApiError, classify, error_body, rename_fields
from .middleware import (
    ASGIApp,
    LimitBody,
    Receive,
    RequireApiKey,
    RequireUtf8Path,
    Scope,
    Send,
)
from .schemas import (
    DURATION_PATTERN,
    NAME_PATTERN,
    POSITIVE_DURATION_PATTERN,
    QUERY_DURATION_PATTERN,
    Health,
)

DESCRIPTION = """\
The StackShift HTTP API: start runs, send events, read and act on runs, and use
the state store, from any language.

Every endpoint but `/healthz` needs an API key (`stackshift keys create`) sent as
`Authorization: Bearer <key>`. Fields are camelCase. Errors are
`{"error": {"code": ..., "message": ...}}` with a stable `code`.
"""

try:
    VERSION = version("stackshift")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0.0.0"

# FastAPI raises 400 only for a body it cannot decode (e.g. not UTF-8).
_HTTP_CODES = {400: "malformed_json", 404: "not_found", 405: "method_not_allowed",
               413: "body_too_large", 415: "unsupported_media_type"}


def _json_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                **extra: Any) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="stackshift"'}
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


#: The part of an error's location that names a member of a union type (a duration
#: is a string or a number), not a field.
_UNION_MEMBER = re.compile(r"(constrained-)?(str|float|int|bool)|.*\[.*")


#: Where a request's value was sent, first in a validation error's location.
_SOURCES = {"body", "query", "path", "header", "cookie"}

#: What a name field names, as the SDK words it (``event name 'x' is invalid``).
_NAME_NOUNS = {"job": "job name", "queueName": "queue name", "name": "event name",
               "scheduleId": "schedule id"}


def _describe(errors: list[Any], rename: Callable[[str], str],
              body: type[BaseModel] | None) -> str:
    """One message for a request's validation errors, one part per field, its
    fields named as the API names them (``rename``: the SDK's name to the API's).

    A value that fits no member of a union (a duration that is neither a number
    nor a duration string) is described once, by the member of its own kind;
    names and durations in the wrong form are described as the service does. A
    field the body (``body``, its model) does not have keeps the name it was
    sent with, and the message lists the fields taken where it was sent.
    """
    fields: dict[str, list[Any]] = {}
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())]
        if loc and loc[0] in _SOURCES:  # where it was sent: the name says enough
            loc.pop(0)
        while loc and _UNION_MEMBER.fullmatch(loc[-1]):
            loc.pop()
        fields.setdefault(".".join(loc) or "body", []).append(error)
    parts = [_unknown_field(where, body) if found[0].get("type") == "extra_forbidden"
             else rename_fields(_field_message(where, found), rename)
             for where, found in list(fields.items())[:5]]
    more = f" (and {len(fields) - 5} more)" if len(fields) > 5 else ""
    return "; ".join(parts) + more


def _unknown_field(where: str, body: type[BaseModel] | None) -> str:
    """A field the body does not have, named as it was sent (``idempotency_key``
    is not ``idempotencyKey``), with the fields taken where it was sent."""
    parent, _, _ = where.rpartition(".")
    taken = _fields_at(body, parent.split(".") if parent else [])
    said = f"{where}: Extra inputs are not permitted"
    return f"{said} ({parent or 'the body'} takes {', '.join(taken)})" if taken else said


def _fields_at(model: type[BaseModel] | None, path: list[str]) -> list[str]:
    """The API's names of the fields of the object at ``path`` in a body of
    ``model`` (none when the path leads to no single model: a union of models,
    a value that is not one)."""
    for segment in path:
        if model is None:
            return []
        if segment.isdigit():  # an item of a list of models
            continue
        field = next((f for f in model.model_fields.values() if f.alias == segment), None)
        model = None if field is None else _model_of(field.annotation)
    if model is None:
        return []
    return sorted(field.alias or name for name, field in model.model_fields.items())


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model ``annotation`` names: ``Model``, ``Model | None`` or ``list[Model]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [arg for arg in get_args(annotation)
              if isinstance(arg, type) and issubclass(arg, BaseModel)]
    return models[0] if len(models) == 1 else None


def _field_message(where: str, errors: list[Any]) -> str:
    error = errors[0]
    if len(errors) > 1:  # union members: the one for the kind of value sent
        kind = "str" if isinstance(error.get("input"), str) else "float"
        error = next((e for e in errors if kind in str(e.get("loc", ())[-1])), error)
    value = error.get("input")
    pattern = (error.get("ctx") or {}).get("pattern")
    if error.get("type") == "string_pattern_mismatch" and pattern == NAME_PATTERN:
        noun = _NAME_NOUNS.get(where, where)
        try:
            check_name(value, noun)
        except ValidationError as exc:
            return str(exc) if noun == where else f"{where}: {exc}"
    if error.get("type") == "string_pattern_mismatch" and pattern in (
            DURATION_PATTERN, POSITIVE_DURATION_PATTERN):
        try:
            if parse_duration(value, name=where) == 0:
                return f"{where}: {value!r} must be more than 0"
        except ValidationError as exc:
            return str(exc)
    if error.get("type") == "string_pattern_mismatch" and pattern == QUERY_DURATION_PATTERN:
        try:
            parse_typed_duration(value, name=where)
        except ValidationError as exc:
            return str(exc)
        # A number Python reads but not in digits alone ('1e3', '1_0', '+5').
        return f"{where}: seconds are written in digits (e.g. '60', '1.5'), got {value!r}"
    cause = (error.get("ctx") or {}).get("error")
    if error.get("type") == "value_error" and cause is not None:
        # A check of ours: its own words, without "Value error, " (nor the field's
        # name twice when they start with it).
        said = str(cause)
        return said if said.startswith(f"{where} ") else f"{where}: {said}"
    return f"{where}: {error.get('msg', 'invalid')}"


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return _json_error(400, "malformed_json", "the request body is not valid JSON")
    names = _api_names(request.app)
    field = getattr(request.scope.get("route"), "body_field", None)
    body = None if field is None else _model_of(field.field_info.annotation)
    return _json_error(422, "validation_error",
                       _describe(errors, lambda word: names.get(word, word), body))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 400:  # FastAPI could not parse the body; the cause says why
        if isinstance(exc.__cause__, DuplicateKeyError):  # valid JSON, but ambiguous
            return _json_error(422, "validation_error", f"{exc.__cause__} in the JSON body")
        if isinstance(exc.__cause__, RecursionError):  # valid JSON, but too deep to read
            return _json_error(422, "invalid_type", f"body: arrays and objects nested more "
                                                    f"than {MAX_DEPTH} levels deep")
        if isinstance(exc.__cause__, ValueError) and "digits" in str(exc.__cause__):
            # valid JSON, but a number Python will not read (nor the SDK write)
            return _json_error(422, "invalid_type", f"body: an integer of more than "
                                                    f"{sys.get_int_max_str_digits():,} digits")
        message = ("the request body is not UTF-8 text"
                   if isinstance(exc.__cause__, UnicodeDecodeError)
                   else "the request body is not valid JSON")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return _json_error(exc.status_code, code, message, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (one path may have several routes).

    The routes of included routers are read from the API document (FastAPI
    keeps them behind routers of its own); the others from the app's routes.
    """
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    # Of the documented paths that match, those with the fewest parameters: a
    # literal path (/v1/state/increment) is served before a template that also
    # matches it (/v1/state/{key}).
    path = request.scope["path"]
    matching = [(params, verbs) for pattern, params, verbs in _documented_paths(request.app)
                if pattern.fullmatch(path)]
    fewest = min((params for params, _ in matching), default=0)
    for params, verbs in matching:
        if params == fewest:
            methods |= verbs
    return ", ".join(sorted(methods))


_VERBS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _documented_paths(app: FastAPI) -> list[tuple[re.Pattern[str], int, set[str]]]:
    """(path pattern, its number of parameters, methods) of every path in the
    app's API document."""
    found: list[tuple[re.Pattern[str], int, set[str]]] | None = getattr(app.state, "paths",
                                                                        None)
    if found is None:
        found = app.state.paths = [
            (compile_path(path)[0], path.count("{"),
             {verb.upper() for verb in operations if verb in _VERBS})
            for path, operations in app.openapi().get("paths", {}).items()
        ]
    return found


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The names of the query parameters of a route's function and its dependencies."""
    names = {field.alias for field in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return frozenset(names)


async def _known_query(request: Request) -> None:
    """Refuse a query parameter the route does not take, or one given twice.

    Left to the router, a misspelt filter (``?queue=`` for ``?queueName=``) would
    be ignored and list everything, and a repeated one (``?status=failed&status=
    cancelled``) would quietly keep its last value: bodies refuse unknown fields
    the same way.
    """
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    taken: frozenset[str] | None = getattr(route, "query_names", None)
    if taken is None:  # found once per route
        taken = route.query_names = _query_names(route.dependant)
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in taken:
            takes = f"it takes {', '.join(sorted(taken))}" if taken else "it takes none"
            raise ApiError(422, "validation_error",
                           f"query parameter {name!r} is unknown here ({takes})")
        if name in seen:
            raise ApiError(422, "validation_error",
                           f"query parameter {name!r} is given more than once")
        seen.add(name)


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    status, code, message, extra = classify(exc)
    if status == 500:
        # A schema behind this release's (a backup restored under the server) fails
        # where a column or table is missing: said as /healthz says it.
        try:
            await anyio.to_thread.run_sync(_checked_schema, request.app.state.service)
        except ApiError as behind:
            status, code, message, extra = classify(behind)
        except Exception:
            pass
    if status == 422:
        message = _in_api_words(request, message)
    return _json_error(status, code, message, **extra)


def _in_api_words(request: Request, message: str) -> str:
    """``message`` naming fields as the API does: the service's checks name them
    as the SDK's keywords (``scheduled_at``), clients sent ``scheduledAt``."""
    names = _api_names(request.app)
    return rename_fields(message, lambda word: names.get(word, word))


def _api_names(app: FastAPI) -> dict[str, str]:
    """The API's camelCase names (fields of its JSON, query parameters) by the
    snake_case name of the same thing in the SDK and the service, and ``null``
    by Python's ``None`` (``a key or None per payload``)."""
    found: dict[str, str] | None = getattr(app.state, "api_names", None)
    if found is None:
        document = app.openapi()
        names = {prop for schema in document.get("components", {}).get("schemas", {}).values()
                 for prop in schema.get("properties", {})}
        names |= {param["name"] for operations in document.get("paths", {}).values()
                  for operation in operations.values() if isinstance(operation, dict)
                  for param in operation.get("parameters", ()) if param.get("in") == "query"}
        found = app.state.api_names = {to_snake(name): name for name in names
                                       if to_snake(name) != name}
        found["None"] = "null"
    return found


class CountResponses:
    """Counts responses by method, route template and status for ``/metrics``.

    The template is the route that served the request (``scope["route"]``, set by
    the router), else the first of ``routes`` that the request matches: a request
    refused before routing (no API key, a body over the limit) was still sent to
    that route. A request that matches no route is counted as ``unmatched``, so
    the labels stay as few as the routes whatever paths clients send.

    A request left unanswered because its client went away (it closed the
    connection before sending its whole body) is not counted: no response was
    served, and counting it as a ``500`` would report a server fault that never
    happened. A request whose handling raised is counted as the ``500`` the
    server then answers.
    """

    def __init__(self, app: ASGIApp, counter: metrics.RequestCounter,
                 routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.counter = counter
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def record(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        except Exception:
            # Answered with a 500 by the server's outermost error handler.
            self.counter.add(scope["method"], self._template(scope),
                             500 if status is None else status)
            raise
        if status is not None:  # else the client left before any answer
            self.counter.add(scope["method"], self._template(scope), status)

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            partial = None
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match == Match.FULL:
                    route = candidate
                    break
                if match == Match.PARTIAL and partial is None:
                    partial = candidate
            route = route or partial
        if isinstance(route, Mount):  # e.g. the dashboard's /static/{path}
            return route.path_format
        return getattr(route, "path", None) or "unmatched"


def _checked_schema(service: Service) -> int:
    """The database's schema version, when the server can serve from it: else 503
    (a SQLite file deleted or replaced under the server, tables gone, a schema
    behind this release's)."""
    reason = service.store.detached()
    if reason is not None:
        raise ApiError(503, "database_unavailable",
                       f"the server's {reason.removeprefix('its ')}; start it again on the"
                       " database in use")
    found = service.schema_version()
    needed = latest_version(service.store.db.dialect)
    if found == 0:
        raise ApiError(503, "database_unavailable", SCHEMA_MISSING)
    if found < needed:
        raise ApiError(503, "database_unavailable",
                       f"the database's schema is at version {found}, this server needs"
                       f" {needed}; run `stackshift migrate` on it")
    return found


def body_limit(settings: Settings) -> int:
    """The request body limit that lets every value within ``settings``' limits
    through: three times the largest value limit plus 1 MiB (4 MiB with the
    defaults).

    Values are measured as UTF-8 JSON, but a client may send its body with
    every character outside ASCII escaped (Python's ``json.dumps`` does by
    default): ``é`` (2 bytes) becomes ``\\u00e9`` (6), an emoji (4 bytes) a
    pair of ``\\u`` escapes (12), so a value at the limit may take three times
    its size in the body. A worker sends a step's or a run's result as JSON
    text inside the body's JSON, where each ``"`` and ``\\`` it holds takes two
    bytes. The 1 MiB is room for the log records a checkpoint carries (512 KiB
    at most, see ``remote_worker.LOG_BUDGET``), an error's traceback and the
    rest of the body.
    """
    largest = max(settings.max_payload_bytes, settings.max_step_result_bytes,
                  settings.max_event_payload_bytes, settings.max_state_value_bytes)
    return 3 * largest + MiB


def create_app(service: Service, *, max_body_bytes: int | None = None) -> FastAPI:
    """The API over ``service``. Bodies over ``max_body_bytes`` get 413 (by
    default :func:`body_limit` of the service's settings)."""
    app = FastAPI(
        title="StackShift",
        version=VERSION,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, as the other routes are
        redirect_slashes=False,
        responses={},
    )
    # The routes of the server itself (/healthz, /metrics, /openapi.json) take a body
    # and a query string as those of /v1 do: no fields, no parameter they do not take.
    app.router.route_class = JsonBodyRoute
    known = [Depends(_known_query)]
    app.state.service = service
    # Set when the server begins to stop: long-polls then answer at once (with the
    # run as it is, or no claimed runs) instead of holding the shutdown up.
    app.state.stopping = threading.Event()
    counter = metrics.RequestCounter()

    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    for kind in (ApiError, StackShiftError, ValueError, TypeError, LookupError, OverflowError):
        app.add_exception_handler(kind, _on_error)
    # A database out of reach is a 503 (handled here, so not re-raised as a fault).
    app.add_exception_handler(sqlite3.OperationalError, _on_error)
    try:  # a PostgreSQL refusal of a value sent by the client is the client's error
        import psycopg

        app.add_exception_handler(psycopg.DataError, _on_error)
        app.add_exception_handler(psycopg.OperationalError, _on_error)
    except ImportError:  # pragma: no cover - PostgreSQL support not installed
        pass
    app.add_exception_handler(Exception, _on_error)

    @app.get("/healthz", tags=["server"], summary="Liveness and database check (no key)",
             responses={status: error for status, error in routes.ERRORS.items()
                        if status != 401}, dependencies=known)
    def healthz() -> Health:
        return Health(status="ok", schema_version=_checked_schema(service))

    # Load balancers and uptime checks often ask with HEAD: the same database read,
    # answered with the status alone (503 when the database does not answer).
    @app.head("/healthz", tags=["server"], response_class=Response,
              summary="Liveness and database check, the status alone (no key)",
              responses={422: {"description": "A query parameter: the route takes none."},
                         503: {"description": "As GET /healthz answers 503; no body."}},
              dependencies=known)
    def healthz_head() -> Response:
        _checked_schema(service)
        return Response(status_code=200)

    @app.get(
        "/metrics",
        tags=["server"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {metrics.CONTENT_TYPE: {}}}, **routes.ERRORS},
        dependencies=known,
    )
    def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(service, counter),
                                 media_type=metrics.CONTENT_TYPE)

    @app.api_route("/openapi.json", methods=["GET", "HEAD"], include_in_schema=False,
                   dependencies=known)
    def openapi_document(request: Request) -> JSONResponse:
        document = app.openapi()
        root = str(request.scope.get("root_path", "")).rstrip("/")
        if root:  # served below a path (mounted): the document says where
            document = {**document, "servers": [{"url": root}, *document.get("servers", [])]}
        return JSONResponse(document)

    routers = [routes.router, flow_routes.router, worker_routes.router, push_routes.router]
    for router in routers:
        app.include_router(router, dependencies=known)
    _document_auth(app)
    # Every route in the order the router tries them, those of included routers too.
    served: list[BaseRoute] = [r for r in app.router.routes if isinstance(r, Route)]
    served += [r for router in routers for r in router.routes]

    # Starlette applies the last added middleware outermost.
    limit = body_limit(service.settings) if max_body_bytes is None else max_body_bytes
    app.add_middleware(LimitBody, limit=limit)
    app.add_middleware(RequireUtf8Path)
    app.add_middleware(RequireApiKey, verify=service.verify_api_key)
    app.add_middleware(CountResponses, counter=counter, routes=served)
    # Counts the responses of an app served beside this one (the dashboard, see
    # :func:`stackshift.dashboard.beside_api`) in the same metrics.
    app.state.count_responses = lambda inner: CountResponses(inner, counter)
    return app


def _document_auth(app: FastAPI) -> None:
    """Declare the bearer key in the OpenAPI document: on everything but ``/healthz``."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "An API key from `stackshift keys create`."}
            }
            schema["security"] = [{"apiKey": []}]
            error = {"application/json": {"schema": {
                "$ref": "#/components/schemas/ErrorResponse"}}}
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    responses = operation["responses"]
                    if path == "/healthz":
                        operation["security"] = []
                    else:
                        responses.setdefault("401", {
                            "description": "Missing, unknown or revoked API key."})
                    for status, response in responses.items():
                        if status.startswith(("4", "5")):  # errors are JSON on every route
                            response["content"] = error
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_url(database_url: str, *, max_body_bytes: int | None = None,
                 settings: Settings | None = None, migrate: bool = True) -> FastAPI:
    """The API over the database at ``database_url`` (migrated first by default)."""
    store = open_store(database_url)
    if migrate:
        store.migrate()
    service = Service(store, SystemClock(), settings or Settings(), JobRegistry(),
                      limits_set_by=server_setting)
    return create_app(service, max_body_bytes=max_body_bytes)
