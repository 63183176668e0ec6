"""The service over HTTP: what ``StackShift(api_key=..., base_url=...)`` talks to.

:class:`RemoteService` has the methods of :class:`stackshift.service.Service`
that the client calls, with the same arguments, results and errors: each call
is one request to ``stackshift server``, whose error codes map back to the
exception classes the embedded service raises. Network failures surface as
``httpx.TransportError`` (e.g. ``httpx.ConnectError``).
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
from pydantic.alias_generators import to_snake

from . import forks, runlogs
from .checks import (
    IDEMPOTENCY_TTL_MANY,
    MAX_LOG_PAGE,
    check_endpoint_url,
    check_filter,
    check_holder,
    check_idempotency,
    check_int,
    check_key,
    check_limit,
    check_log_window,
    check_many,
    check_reason,
    idempotency_seconds,
)
from .clock import Clock, SystemClock
from .durations import parse_duration, parse_instant
from .engine.transitions import parse_status
from .errors import (
    AuthenticationError,
    EndpointNotFoundError,
    EventNotFoundError,
    IdempotencyConflictError,
    InvalidTransitionError,
    LockNotAcquiredError,
    PayloadTooLargeError,
    QueueNotFoundError,
    RemoteError,
    RunNotFoundError,
    ValidationError,
)
from .ids import check_cursor
from .jobs import JobRegistry, check_max_attempts, check_name
from .models import (
    Attempt,
    Endpoint,
    Event,
    LockLoss,
    LogEntry,
    Page,
    Run,
    SentEvent,
    Step,
    TimelineEntry,
)
from .remote_flow import JSON_HEADERS, RemoteFlowControl, SizedBody
from .serialization import encode, to_jsonable
from .server import push_schemas as push_wire
from .server import schemas as wire
from .server.errors import rename_fields
from .service import RunWait
from .settings import LONGEST_KEY, Settings, server_setting

log = logging.getLogger("stackshift.remote")

#: Longest single long-poll; the server caps it at the same value.
WAIT_POLL_SECONDS = 60.0

try:
    _VERSION = version("stackshift")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = "0.0.0"


_ERRORS: dict[str, type[Exception]] = {
    "run_not_found": RunNotFoundError,
    "event_not_found": EventNotFoundError,
    "endpoint_not_found": EndpointNotFoundError,
    "queue_not_found": QueueNotFoundError,
    "invalid_transition": InvalidTransitionError,
    "lock_not_acquired": LockNotAcquiredError,
    "payload_too_large": PayloadTooLargeError,
    "body_too_large": PayloadTooLargeError,
    "validation_error": ValidationError,
    "malformed_json": ValidationError,
    "invalid_type": TypeError,
    "unauthorized": AuthenticationError,
}


#: Statuses of a server that is there but cannot answer now: the database behind it
#: unavailable (503), or a proxy in front of it finding it down (502, 504).
_UNAVAILABLE_STATUSES = frozenset({502, 503, 504})


def is_server_unavailable(exc: BaseException) -> bool:
    """The server could not be reached, or its answer was lost on the way (a
    connection refused, reset or closed mid-answer, a timeout), or it said it
    cannot answer now: worth trying again, as :func:`~stackshift.store.database.
    is_database_unavailable` is for the database. A request whose answer was lost
    may have been carried out: only writes that can be made twice are tried again."""
    if isinstance(exc, RemoteError):
        return exc.status in _UNAVAILABLE_STATUSES
    return isinstance(exc, httpx.NetworkError | httpx.TimeoutException
                      | httpx.RemoteProtocolError)


def not_stackshift(response: httpx.Response) -> RemoteError:
    """The error for an answer no StackShift server gives: a page of another web
    server or of a proxy at the client's address (its title, not its markup), or
    an empty error. Says to check the address."""
    kind = response.headers.get("content-type", "").partition(";")[0].strip()
    text = response.text
    if kind == "text/html":
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        text = title.group(1) if title else ""
    said = " ".join(text.split())
    said = said if len(said) <= 120 else said[:120] + "..."
    what = (f"{kind or 'no content type'}, {len(response.content):,} bytes"
            + (f": {said!r}" if said else ""))
    return RemoteError(
        f"HTTP {response.status_code} from {response.request.url} is not a StackShift "
        f"server's answer ({what}); check the base_url", response.status_code, "http_error")


def _is_json(response: httpx.Response) -> bool:
    kind: str = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def checked(response: httpx.Response, ok: tuple[int, ...] = (200, 201, 204)) -> httpx.Response:
    """``response`` if its status is one of ``ok`` and it is JSON (or empty);
    else the error it stands for. An answer that is not JSON comes from another
    web server at this address, whose pages would otherwise fail to read as one
    of ours, or pass for a route missing from an older server."""
    if response.status_code not in ok:
        raise_for_error(response)
    if response.content and not _is_json(response):
        raise not_stackshift(response)
    return response


def _error_code(response: httpx.Response) -> str | None:
    """The ``code`` of an error answer, or ``None`` when it has none."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def raise_for_error(response: httpx.Response) -> NoReturn:
    """Raise the exception an error response stands for."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        raise not_stackshift(response) from None
    if code == "idempotency_conflict":
        event_id = error.get("existingEventId")
        if event_id is not None:
            raise IdempotencyConflictError(message, existing_event_id=str(event_id))
        raise IdempotencyConflictError(message, str(error.get("existingRunId")))
    if code == "not_found":  # no such route: the base_url names a path below the server
        url = response.request.url
        raise RemoteError(
            f"the StackShift server at {url.scheme}://{url.netloc.decode()} has no route"
            f" {response.request.method} {url.path} ({message}); check the base_url: the"
            " server's address, with no path of the API", response.status_code, code)
    kind = _ERRORS.get(code)
    if kind is None:
        raise RemoteError(message, response.status_code, code)
    if kind in (ValidationError, TypeError):  # fields named as this SDK's keywords
        message = rename_fields(message, _keyword)
    raise kind(message)


#: A field named as the API's JSON spells it (``scheduledAt``).
_CAMEL_CASE = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+")


def _keyword(word: str) -> str:
    """The SDK's keyword for a field of the API: ``scheduledAt`` is ``scheduled_at``
    (and the API's ``null`` is ``None``)."""
    if word == "null":
        return "None"
    return to_snake(word) if _CAMEL_CASE.fullmatch(word) else word


def _when(value: datetime | str | None, name: str) -> str | None:
    """A time for the wire, checked here first (the embedded service's errors)."""
    if value is None:
        return None
    parse_instant(value, name=name)
    return value.isoformat() if isinstance(value, datetime) else value


def _duration(value: Any, name: str) -> Any:
    """A duration for the wire, checked here first (the embedded service's errors):
    strings go as they are (the server parses them), anything else as seconds."""
    if value is None:
        return None
    seconds = parse_duration(value, name=name)
    return value if isinstance(value, str) else seconds


def _segment(value: object, missing: type[Exception], what: str) -> str:
    """``value`` as one path segment; an id no run or event can have is ``missing``."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value:
        raise missing(f"no {what} with id {value!r}")
    return quote(value, safe="")


def _state_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValidationError(f"state key must be a non-empty string, got {key!r}")
    # "." is encoded too, so that no key is read as a "." or ".." path segment.
    return quote(key, safe="").replace(".", "%2E")


#: What an API key may hold once its surrounding whitespace is dropped: visible ASCII.
_KEY_TEXT = re.compile(r"[!-~]+")


def check_api_key(api_key: str, base_url: str) -> str:
    """``api_key`` without surrounding whitespace (a key read from a file keeps its
    newline), as the server and the dashboard's login take it.

    A key that is still no header value is refused without showing it: the HTTP
    library's error would print the whole ``Authorization`` header.
    """
    if not isinstance(api_key, str):
        raise ValidationError(f"api_key must be a string, got {type(api_key).__name__}")
    key = api_key.strip()
    if not key:
        raise ValidationError(f"an API key is needed to talk to {base_url} (STACKSHIFT_API_KEY)")
    if not _KEY_TEXT.fullmatch(key):
        raise ValidationError(
            "the API key holds a space, a control character or a non-ASCII character "
            "inside it, which no key has: check how it was copied (the key is not shown "
            "here, so that it stays out of logs)")
    return key


def check_base_url(base_url: str) -> None:
    """Refuse a server URL that is not http:// or https://, or that ends in the API's
    /v1 (the server prints its API's address so): retrying would not help."""
    if not base_url.startswith(("http://", "https://")):
        raise ValidationError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
    if base_url.rstrip("/").endswith("/v1"):
        raise ValidationError(
            f"base_url must be the server's address, without the API's /v1: use"
            f" {base_url.rstrip('/')[:-3]!r}, not {base_url!r}")


def _long_poll(waiting: RunWait) -> float:
    """Seconds the server may hold the next long poll of ``waiting``."""
    if waiting.deadline is None:
        return WAIT_POLL_SECONDS
    return max(0.0, min(WAIT_POLL_SECONDS, waiting.deadline - time.monotonic()))


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _unknown_query(refused: ValidationError, name: str) -> bool:
    """Whether the server refused query parameter ``name`` as one it does not take
    (a server from an earlier version)."""
    return str(refused).startswith(f"query parameter {name!r} is unknown here")


class RemoteService(RemoteFlowControl):
    """The client's operations as requests to ``stackshift server`` at ``base_url``.

    Jobs registered on the client still give their defaults (queue,
    ``max_attempts``) to ``start``, as they do embedded.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        registry: JobRegistry,
        *,
        settings: Settings | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        check_base_url(base_url)
        api_key = check_api_key(api_key, base_url)
        self.base_url = base_url.rstrip("/")
        self.registry = registry
        self.settings = settings or Settings()
        self._limits: Settings | None = None
        #: How a limit is raised: by the server's own setting, which it holds to
        #: (this client's ``Settings`` change nothing there).
        self.limits_set_by: Callable[[str], str] = server_setting
        #: whether the server takes a lock's holder (servers from before it refuse it)
        self._says_holders = True
        #: whether the server reads a run's log records in pages (``limit``) and
        #: its latest ones (``last``)
        self._pages_logs = self._tails_logs = True
        self.clock: Clock = SystemClock()
        self.timeout = timeout
        self._api_key = api_key
        self._transport = transport
        self._http = self._new_http()
        #: the TLS settings of the async waits' clients, made once: making them
        #: (reading the trusted certificates) takes tens of milliseconds, which each
        #: ``await runs.wait()`` would otherwise spend on the event loop
        self._tls: ssl.SSLContext | None = None
        self._closed = False
        forks.register(self)

    def _new_http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self._api_key}",
                     "User-Agent": f"stackshift-python/{_VERSION}"},
            timeout=self.timeout,
            transport=self._transport,
        )

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stackshift.forks`): leave the parent's
        connections to it and open this process's own (a transport given to
        the constructor is the caller's to make fork-safe)."""
        forks.keep(self._http)
        self._http = self._new_http()

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Any = None,
              params: dict[str, Any] | None = None, timeout: float | None = None,
              ok: tuple[int, ...] = (200, 201, 204)) -> httpx.Response:
        if params is not None:
            params = {k: v for k, v in params.items() if v is not None}
        content = headers = None
        if isinstance(json, SizedBody):
            content, headers, json = json.content, JSON_HEADERS, None
        with runlogs.engine_call():
            response = self._http.request(
                method, path, json=json, content=content, headers=headers, params=params,
                timeout=self.timeout if timeout is None else timeout,
            )
        return checked(response, ok)

    def limits(self) -> Settings:
        """The settings with the server's limits on values and keys (asked once, on
        first use): the server is the judge of sizes, not this client's defaults.

        A server from before ``GET /v1/limits`` answers it with 404: it is taken to
        have the default limits (those of ``Settings()``), remembered the same way.
        """
        if self._limits is None:
            response = self._call("GET", "/v1/limits", ok=(200, 404))
            if response.status_code == 404:
                log.debug("%s has no GET /v1/limits (a server from an earlier version): "
                          "checking values against the default limits", self.base_url)
                found = wire.Limits.of(Settings())
            else:
                found = wire.Limits.model_validate(response.json())
            self._limits = replace(self.settings, **found.model_dump(by_alias=False))
        return self._limits

    # -- lifecycle -----------------------------------------------------------------------

    def schema_version(self) -> int:
        response = self._call("GET", "/healthz")
        return int(wire.Health.model_validate(response.json()).schema_version)

    def migrate(self) -> int:
        """The server migrates its database when it starts; this reports the version."""
        return self.schema_version()

    def close(self) -> None:
        self._closed = True  # the async waits under way end at their next poll
        self._http.close()

    def _refuse_if_closed(self) -> None:
        if self._closed:  # as the closed HTTP client refuses every other call
            raise RuntimeError("Cannot send a request, as the client has been closed.")

    # -- starting work ---------------------------------------------------------------------

    def _job_options(self, job: str, queue_name: str | None,
                     max_attempts: int | None) -> tuple[str | None, int | None]:
        """The job's name checked, and the queue and ``max_attempts`` of a start:
        those given, else the registered job's (the queue checked)."""
        check_name(job, "job name")
        registered = self.registry.get(job)
        if registered is not None:
            if queue_name is None:
                queue_name = registered.queue
            if max_attempts is None:
                max_attempts = registered.max_attempts
        if queue_name is not None:
            check_name(queue_name, "queue name")
        return queue_name, max_attempts

    def start(
        self,
        job: str,
        payload: Any = None,
        *,
        queue_name: str | None = None,
        idempotency_key: str | None = None,
        idempotency_ttl: Any = None,
        max_attempts: int | None = None,
        scheduled_at: datetime | str | None = None,
        delay: Any = None,
        priority: int | None = None,
        concurrency_key: str | None = None,
    ) -> Run:
        # The embedded service's checks, in its order, so that bad input raises the
        # same errors (an oversize payload is found last, as the body is encoded).
        queue_name, max_attempts = self._job_options(job, queue_name, max_attempts)
        payload = to_jsonable(payload, what="payload")
        if max_attempts is not None:
            check_max_attempts(max_attempts)
        if priority is not None:
            check_int(priority, "priority", 32)
        if concurrency_key is not None:
            check_key(concurrency_key, "concurrency_key", LONGEST_KEY)
        if scheduled_at is not None and delay is not None:
            raise ValidationError("give scheduled_at or delay, not both")
        scheduled_at = _when(scheduled_at, "scheduled_at")
        delay = _duration(delay, "delay")
        if idempotency_key is not None:
            check_idempotency(self.limits(), idempotency_key, idempotency_ttl)
        elif idempotency_ttl is not None:
            raise ValidationError("idempotency_ttl needs an idempotency_key")
        body = {
            "job": job,
            "payload": payload,
            "queueName": queue_name,
            "idempotencyKey": idempotency_key,
            "idempotencyTtl": _duration(idempotency_ttl, "idempotency_ttl"),
            "maxAttempts": max_attempts,
            "scheduledAt": scheduled_at,
            "delay": delay,
            "priority": priority,
            "concurrencyKey": concurrency_key,
        }
        body = {k: v for k, v in body.items() if v is not None or k == "payload"}
        response = self._call("POST", "/v1/runs", json=SizedBody(
            body, "payload", "payload", self.limits().max_payload_bytes, "max_payload_bytes"))
        return wire.Run.model_validate(response.json()).to_model()

    def start_many(
        self,
        job: str,
        payloads: Sequence[Any],
        *,
        queue_name: str | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        idempotency_ttl: Any = None,
        max_attempts: int | None = None,
        scheduled_at: datetime | str | None = None,
        delay: Any = None,
        priority: int | None = None,
        concurrency_keys: Sequence[str | None] | None = None,
    ) -> list[Run]:
        # The embedded service's checks, in its order.
        check_many(payloads, idempotency_keys, concurrency_keys)
        queue_name, max_attempts = self._job_options(job, queue_name, max_attempts)
        limits = self.limits()
        values = []
        for n, payload in enumerate(payloads):
            values.append(to_jsonable(payload, what=f"payloads[{n}]"))
            encode(values[-1], what=f"payloads[{n}]", limit=limits.max_payload_bytes,
                   setting="max_payload_bytes", raised_by=self.limits_set_by)
        if max_attempts is not None:
            check_max_attempts(max_attempts)
        if priority is not None:
            check_int(priority, "priority", 32)
        for n, ckey in enumerate(concurrency_keys or []):
            if ckey is not None:
                check_key(ckey, f"concurrency_keys[{n}]", LONGEST_KEY)
        if scheduled_at is not None and delay is not None:
            raise ValidationError("give scheduled_at or delay, not both")
        scheduled_at = _when(scheduled_at, "scheduled_at")
        delay = _duration(delay, "delay")
        if any(key is not None for key in idempotency_keys or []):
            for n, key in enumerate(idempotency_keys or []):
                if key is not None:
                    check_key(key, f"idempotency_keys[{n}]", limits.max_idempotency_key_length,
                              "max_idempotency_key_length", self.limits_set_by)
            idempotency_seconds(limits, idempotency_ttl)
        elif idempotency_ttl is not None:
            if payloads or idempotency_keys is None:
                raise ValidationError(IDEMPOTENCY_TTL_MANY)
            idempotency_seconds(limits, idempotency_ttl)  # none to start: checked all the same
        if not payloads:  # every option checked, as the embedded client does; nothing to send
            return []
        body = {
            "job": job,
            "payloads": values,
            "queueName": queue_name,
            "idempotencyKeys": None if idempotency_keys is None else list(idempotency_keys),
            "idempotencyTtl": _duration(idempotency_ttl, "idempotency_ttl"),
            "maxAttempts": max_attempts,
            "scheduledAt": scheduled_at,
            "delay": delay,
            "priority": priority,
            "concurrencyKeys": None if concurrency_keys is None else list(concurrency_keys),
        }
        body = {k: v for k, v in body.items() if v is not None}
        response = self._call("POST", "/v1/runs/many", json=body, ok=(200, 201, 404, 405))
        if response.status_code in (404, 405):
            raise self._not_supported("POST /v1/runs/many", response,
                                      "start the runs one at a time with start()")
        return [item.to_model() for item in wire.RunList.model_validate(response.json()).items]

    # -- runs ------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        response = self._call("GET", f"/v1/runs/{_segment(run_id, RunNotFoundError, 'run')}")
        return wire.Run.model_validate(response.json()).to_model()

    def list_runs(
        self,
        *,
        status: str | None = None,
        job: str | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
        correlation_key: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        search: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Run]:
        # The embedded service's checks, in its order.
        if status is not None:
            parse_status(status)  # the embedded service's error for an unknown one
        for value, what in ((job, "job"), (queue, "queue"), (idempotency_key, "idempotency_key"),
                            (correlation_key, "correlation_key")):
            check_filter(value, what)
        after = _when(created_after, "created_after")
        before = _when(created_before, "created_before")
        check_filter(search, "search")
        check_limit(limit)
        check_cursor(cursor, "run")
        response = self._call("GET", "/v1/runs", params={
            "status": status, "job": job, "queueName": queue,
            "idempotencyKey": idempotency_key, "correlationKey": correlation_key,
            "createdAfter": after, "createdBefore": before,
            "search": search, "limit": limit, "cursor": cursor,
        })
        page = wire.RunPage.model_validate(response.json())
        return Page([r.to_model() for r in page.items], page.next_cursor)

    def wait_run(self, run_id: str, timeout: Any = None) -> Run:
        """Long-polls the server until the run is terminal; ``TimeoutError`` after ``timeout``."""
        waiting = RunWait(run_id, timeout)
        path = f"/v1/runs/{_segment(run_id, RunNotFoundError, 'run')}/wait"
        while True:
            poll = _long_poll(waiting)
            response = self._call("GET", path, params={"timeout": round(poll, 3)},
                                  timeout=poll + self.timeout)
            if waiting.pause(wire.Run.model_validate(response.json()).to_model()) is None:
                assert waiting.run is not None
                return waiting.run

    async def wait_run_async(self, run_id: str, timeout: Any = None) -> Run:
        """:meth:`wait_run` for ``async`` code: the long polls are awaited on the
        event loop, so that waiting holds no thread."""
        waiting = RunWait(run_id, timeout)
        path = f"/v1/runs/{_segment(run_id, RunNotFoundError, 'run')}/wait"
        self._refuse_if_closed()
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        async with httpx.AsyncClient(base_url=self.base_url, headers=self._http.headers,
                                     timeout=self.timeout, verify=self._tls) as http:
            while True:
                self._refuse_if_closed()
                poll = _long_poll(waiting)
                with runlogs.engine_call():
                    response = await http.get(path, params={"timeout": round(poll, 3)},
                                              timeout=poll + self.timeout)
                checked(response, (200,))
                if waiting.pause(wire.Run.model_validate(response.json()).to_model()) is None:
                    assert waiting.run is not None
                    return waiting.run

    def _run_action(self, run_id: str, action: str, body: dict[str, Any] | None = None) -> Run:
        path = f"/v1/runs/{_segment(run_id, RunNotFoundError, 'run')}/{action}"
        response = self._call("POST", path, json=body)
        return wire.Run.model_validate(response.json()).to_model()

    def cancel_run(self, run_id: str, reason: str | None = None) -> Run:
        check_reason(reason)
        return self._run_action(run_id, "cancel", {} if reason is None else {"reason": reason})

    def retry_run(self, run_id: str) -> Run:
        return self._run_action(run_id, "retry")

    def _not_supported(self, route: str, response: httpx.Response,
                       instead: str) -> RemoteError:
        """The error for ``route``, which this server, from an earlier version, does
        not have (it answered 404 or 405): what to do ``instead``."""
        return RemoteError(f"the server at {self.base_url} has no {route} (a server from an"
                           f" earlier version): upgrade it, or {instead}",
                           response.status_code, "not_supported")

    def start_again(self, run_id: str) -> Run:
        path = f"/v1/runs/{_segment(run_id, RunNotFoundError, 'run')}/again"
        response = self._call("POST", path, ok=(201, 404, 405))
        if response.status_code == 201:
            return wire.Run.model_validate(response.json()).to_model()
        # An unknown run is run_not_found; a route the server does not have, not_found.
        if response.status_code == 404 and _error_code(response) != "not_found":
            raise_for_error(response)
        raise self._not_supported("POST /v1/runs/{id}/again", response,
                                  "start the run's job with its payload with start()")

    def _run_items(self, run_id: str, what: str,
                   params: dict[str, Any] | None = None) -> list[Any]:
        path = f"/v1/runs/{_segment(run_id, RunNotFoundError, 'run')}/{what}"
        items: list[Any] = self._call("GET", path, params=params).json()["items"]
        return items

    def timeline(self, run_id: str) -> list[TimelineEntry]:
        return [wire.TimelineEntry.model_validate(x).to_model()
                for x in self._run_items(run_id, "timeline")]

    def logs(self, run_id: str, after: int | None = None, limit: int | None = None,
             last: int | None = None) -> list[LogEntry]:
        """Without ``limit`` or ``last``, every record, read :data:`MAX_LOG_PAGE`
        records at a time (no one answer of the server holds a long log whole)."""
        first, wanted, last = check_log_window(after, limit, last)
        if last is not None:
            if self._tails_logs:
                try:
                    return self._log_entries(self._run_items(run_id, "logs", {"last": last}))
                except ValidationError as exc:
                    if not _unknown_query(exc, "last"):
                        raise
                    self._tails_logs = False  # a server from before last: not asked again
            return self.logs(run_id)[-last:]
        page = wanted or MAX_LOG_PAGE
        entries: list[LogEntry] = []
        while True:
            items = self._log_items(run_id, first, page)
            entries += self._log_entries(items)
            if wanted is not None:
                return entries[:wanted]
            if len(items) < page:
                return entries
            first = entries[-1].id

    @staticmethod
    def _log_entries(items: list[Any]) -> list[LogEntry]:
        return [wire.LogEntry.model_validate(x).to_model() for x in items]

    def _log_items(self, run_id: str, after: int, limit: int) -> list[Any]:
        """The first ``limit`` records after ``after``; every one after it from a
        server from before ``limit``, which refuses it (and is not asked again)."""
        if self._pages_logs:
            try:
                return self._run_items(run_id, "logs", {"after": after, "limit": limit})
            except ValidationError as exc:
                if not _unknown_query(exc, "limit"):
                    raise
                self._pages_logs = False
        return self._run_items(run_id, "logs", {"after": after})

    def attempts(self, run_id: str) -> list[Attempt]:
        return [wire.Attempt.model_validate(x).to_model()
                for x in self._run_items(run_id, "attempts")]

    def steps(self, run_id: str) -> list[Step]:
        return [wire.Step.model_validate(x).to_model()
                for x in self._run_items(run_id, "steps")]

    # -- events ----------------------------------------------------------------------------

    def send_event(
        self,
        name: str,
        payload: Any = None,
        *,
        correlation_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> SentEvent:
        check_name(name, "event name")
        body: dict[str, Any] = {"name": name,
                                "payload": to_jsonable(payload, what="event payload")}
        if correlation_key is not None:
            body["correlationKey"] = check_key(correlation_key, "correlation_key", LONGEST_KEY)
        if idempotency_key is not None:
            body["idempotencyKey"] = check_key(
                idempotency_key, "idempotency_key", self.limits().max_idempotency_key_length,
                "max_idempotency_key_length", self.limits_set_by)
        response = self._call("POST", "/v1/events", json=SizedBody(
            body, "payload", "event payload", self.limits().max_event_payload_bytes,
            "max_event_payload_bytes"))
        return wire.SentEvent.model_validate(response.json()).to_model()

    def get_event(self, event_id: str) -> Event:
        path = f"/v1/events/{_segment(event_id, EventNotFoundError, 'event')}"
        return wire.Event.model_validate(self._call("GET", path).json()).to_model()

    def list_events(
        self,
        *,
        name: str | None = None,
        correlation_key: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Event]:
        check_filter(name, "name")
        check_filter(correlation_key, "correlation_key")
        check_limit(limit)
        check_cursor(cursor, "evt")
        response = self._call("GET", "/v1/events", params={
            "name": name, "correlationKey": correlation_key, "limit": limit, "cursor": cursor,
        })
        page = wire.EventPage.model_validate(response.json())
        return Page([e.to_model() for e in page.items], page.next_cursor)

    # -- state -----------------------------------------------------------------------------

    def state_get(self, key: str) -> tuple[bool, Any]:
        response = self._call("GET", f"/v1/state/{self._state_key(key)}", ok=(200, 404))
        if response.status_code == 404:
            if response.json().get("error", {}).get("code") != "state_key_not_found":
                raise_for_error(response)
            return False, None
        return True, response.json()["value"]

    def state_set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Any = None,
        expires_at: datetime | str | None = None,
    ) -> None:
        # The embedded service's checks, in its order: the key, the expiry, then the
        # value (an oversize one is found last, as the body is encoded).
        path = f"/v1/state/{self._state_key(key)}"
        expiry: dict[str, Any] = {}
        if ttl is not None and expires_at is not None:
            raise ValidationError("give ttl or expires_at, not both")
        if ttl is not None:
            expiry["ttl"] = _duration(ttl, "ttl")
            if parse_duration(ttl, name="ttl") <= 0:
                raise ValidationError("ttl must be more than 0")
        if expires_at is not None:
            expiry["expiresAt"] = _when(expires_at, "expires_at")
        body = {"value": to_jsonable(value, what=f"state value for {key!r}"), **expiry}
        self._call("PUT", path, json=SizedBody(body, "value", f"state value for {key!r}",
                                               self.limits().max_state_value_bytes,
                                               "max_state_value_bytes"))

    def state_delete(self, key: str) -> bool:
        response = self._call("DELETE", f"/v1/state/{self._state_key(key)}")
        return bool(wire.StateDeleted.model_validate(response.json()).deleted)

    def check_increment(self, key: object, by: object) -> str:
        """The checks of :meth:`state_increment`'s arguments, as the embedded
        service makes them; the key as a path segment."""
        check_int(by, "by", 64)
        return self._state_key(key)

    def state_increment(self, key: str, by: int = 1) -> int:
        self.check_increment(key, by)
        response = self._call("POST", "/v1/state/increment", json={"key": key, "by": by})
        return int(response.json()["value"])

    def _state_key(self, key: object) -> str:
        """``key`` as a path segment, checked as the embedded service does."""
        check_key(key, "state key", self.limits().max_state_key_length,
                  "max_state_key_length", self.limits_set_by)
        return _state_key(key)

    def check_state_key(self, key: object) -> None:
        """Refuse a key the embedded service refuses (against the server's limit)."""
        self._state_key(key)

    def _key_page(self, path: str, prefix: str | None, limit: int,
                  after: str | None) -> Any:
        """The JSON of a page of keys (state keys or locks), its arguments checked
        as the embedded service checks them."""
        check_filter(prefix, "prefix")
        check_filter(after, "after")
        check_limit(limit)
        return self._call("GET", path,
                          params={"prefix": prefix, "limit": limit, "after": after}).json()

    def state_keys(self, prefix: str | None = None, limit: int = 100,
                   after: str | None = None) -> list[dict[str, Any]]:
        entries = wire.StateList.model_validate(
            self._key_page("/v1/state", prefix, limit, after)).items
        return [{"key": e.key, "value": e.value, "expires_at": _epoch(e.expires_at),
                 "updated_at": _epoch(e.updated_at)} for e in entries]

    # -- push endpoints ------------------------------------------------------------------

    def register_endpoint(self, url: str, jobs: list[str], *, concurrency: int = 10,
                          key_limits: dict[str, int] | None = None,
                          on_failure: dict[str, str] | None = None) -> Endpoint:
        check_endpoint_url(url)
        response = self._call("POST", "/v1/endpoints", json={
            "url": url, "jobs": jobs, "concurrency": concurrency,
            "keyLimits": key_limits or {}, "onFailure": on_failure or {},
        })
        registered = push_wire.Endpoint.model_validate(response.json()).to_model()
        return replace(registered, created=response.status_code == 201)

    def list_endpoints(self) -> list[Endpoint]:
        response = self._call("GET", "/v1/endpoints")
        return [e.to_model() for e in push_wire.EndpointList.model_validate(response.json()).items]

    def remove_endpoint(self, endpoint_id: str) -> Endpoint:
        segment = _segment(endpoint_id, EndpointNotFoundError, "endpoint")
        response = self._call("DELETE", f"/v1/endpoints/{segment}")
        return push_wire.Endpoint.model_validate(response.json()).to_model()

    def lock_acquire(self, key: str, owner: str, ttl: Any, holder: str | None = None) -> bool:
        self._state_key(key)
        if holder is not None:
            check_holder(holder)
        body = {"key": key, "owner": owner, "ttl": _duration(ttl, "ttl")}
        if holder is None or not self._says_holders:
            response = self._call("POST", "/v1/locks/acquire", json=body)
        else:
            try:
                response = self._call("POST", "/v1/locks/acquire",
                                      json={**body, "holder": holder})
            except ValidationError as exc:
                # Servers say this much, and some then name the fields they take.
                if not str(exc).startswith("holder: Extra inputs are not permitted"):
                    raise
                # A server from before lock holders: its locks go without one
                # (listed as not said), and it is not asked again.
                self._says_holders = False
                response = self._call("POST", "/v1/locks/acquire", json=body)
        return bool(wire.LockResult.model_validate(response.json()).held)

    def lock_extend(self, key: str, owner: str, ttl: Any) -> bool:
        self._state_key(key)
        response = self._call("POST", "/v1/locks/extend",
                              json={"key": key, "owner": owner, "ttl": _duration(ttl, "ttl")})
        return bool(wire.LockResult.model_validate(response.json()).held)

    def lock_release(self, key: str, owner: str) -> LockLoss | None:
        self._state_key(key)
        response = self._call("POST", "/v1/locks/release", json={"key": key, "owner": owner})
        released = wire.LockReleased.model_validate(response.json())
        if released.held:
            return None
        return released.lost or "expired_or_broken"  # an older server does not say

    def lock_list(self, prefix: str | None = None, limit: int = 100,
                  after: str | None = None) -> list[dict[str, Any]]:
        entries = wire.LockList.model_validate(
            self._key_page("/v1/locks", prefix, limit, after)).items
        return [{"key": e.key, "holder": e.holder, "expires_at": e.expires_at.timestamp()}
                for e in entries]

    def lock_break(self, key: str) -> bool:
        response = self._call("DELETE", f"/v1/locks/{self._state_key(key)}")
        return bool(wire.LockBroken.model_validate(response.json()).broken)
