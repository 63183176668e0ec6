"""Push mode, the application's half: the handler route the server invokes.

Mount :func:`asgi_app` in an ASGI application (FastAPI, Starlette, ...) or
:func:`wsgi_app` in a WSGI one (Flask, Django, ...) and register the route's
public URL with the server. The server then executes runs of the route's jobs
by posting them to it, signed (see :mod:`stackshift.signing`)::

    app = FastAPI()
    stackshift = StackShift(api_key=..., base_url="https://stackshift.internal")
    @stackshift.job("userOnboarding")
    async def user_onboarding(ctx): ...
    app.mount("/stackshift", asgi_app(stackshift, url="https://app.example.com/stackshift"))

For each request the route checks the signature and its age (401 and nothing
runs otherwise), accepts the delivery with the server (once: a replay gets
401), then runs the handler. Every step's result is checkpointed through the
server before the next step runs, and the attempt's ending before the route
answers, exactly as a remote worker does; a sleep or an event wait ends the
request, and the server posts the run again when it resumes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError as PydanticValidationError

from . import forks, runlogs
from .errors import AttemptTimeoutError, AuthenticationError, RemoteError, ValidationError
from .server import push_schemas as p
from .server import worker_schemas as w
from .signing import SignatureError, verify
from .store.base import ClaimedRun, Lease
from .worker.executor import execute_async, execute_sync
from .worker.invocation import Invocation

if TYPE_CHECKING:
    from .client import AsyncStackShift, StackShift
    from .remote import RemoteService

log = logging.getLogger("stackshift.push")

#: Largest request body the route reads (a run with its completed steps).
MAX_BODY_BYTES = 64 * 1024 * 1024
SECRET_ENV = "STACKSHIFT_SIGNING_SECRET"
#: Seconds between looks at which leases of the runs executing are due for renewal.
RENEW_TICK = 0.5

Reply = tuple[int, dict[str, Any]]


def _error(status: int, code: str, message: str) -> Reply:
    return status, {"error": {"code": code, "message": message}}


def check_secret(secret: object, given: str) -> str:
    """An endpoint's signing secret as the route is ``given`` it (``secret=`` or the
    environment), without surrounding whitespace, as API keys are taken: one read
    from a file or a secret store keeps its newline, and the server issues none with
    whitespace. One that is still no secret is refused at start-up, without showing
    it, rather than every delivery failing as ``bad_signature``."""
    if not isinstance(secret, str):
        raise ValidationError(f"the signing secret ({given}) must be a string, "
                              f"got {type(secret).__name__}")
    stripped = secret.strip()
    if not stripped:
        raise ValidationError(f"the signing secret ({given}) is blank: give the one "
                              f"`stackshift endpoints add` printed")
    if any(char.isspace() or not char.isprintable() for char in stripped):
        raise ValidationError(
            f"the signing secret ({given}) holds a space or a control character inside "
            "it, which no secret has: check how it was copied (it is not shown here, so "
            "that it stays out of logs)")
    return stripped


class PushRoute:
    """What both adapters share: check a request, then execute the run it carries."""

    def __init__(self, client: StackShift | AsyncStackShift, *, url: str | None = None,
                 secret: str | None = None, concurrency: int = 10) -> None:
        from .client import AsyncStackShift
        from .remote import RemoteService
        from .remote_worker import RemoteWorkerService

        if isinstance(client, AsyncStackShift):
            client = client.sync  # the same jobs and server
        api = client._api
        if not isinstance(api, RemoteService):
            raise ValidationError(
                "push mode runs through stackshift server: use a client made with "
                "StackShift(api_key=..., base_url=...)")
        self.remote: RemoteService = api
        self.client = client
        self.service = RemoteWorkerService(api, client._registry)
        self.endpoint_id: str | None = None
        if url is not None:
            if secret is not None:
                raise ValidationError("give url= (register and use the server's secret) "
                                      "or secret=, not both")
            registered = self.register(url, concurrency=concurrency)
            secret = registered.secret
            self.endpoint_id = registered.id
        given = "secret="
        if not secret:
            secret, given = os.environ.get(SECRET_ENV), SECRET_ENV
        if not secret:
            raise ValidationError(
                f"the route needs its endpoint's signing secret: pass url= to register it, "
                f"or secret= (or {SECRET_ENV}) from `stackshift endpoints add`")
        self.secret = check_secret(secret, given)
        # What a worker does when it starts: the server creates the jobs' cron=
        # schedules, and runs started without the jobs' code (another service, the
        # CLI) take their queue and max_attempts. A server out of reach does not
        # stop the application: the first delivery (the server is back) does it.
        self._published = False
        self._publish()
        self._concurrency = concurrency
        self._logs_installed = False
        self._start_threads()
        forks.register(self)

    def _start_threads(self) -> None:
        # Sync handlers run here: enough threads for the runs the server posts at
        # once, plus those a timed-out handler still holds.
        self.threads = ThreadPoolExecutor(2 * self._concurrency + 4,
                                          thread_name_prefix="stackshift-push-job")
        self._logs_lock = threading.Lock()
        # The runs executing here, whose leases the route renews itself: the server
        # that delivered a run may restart meanwhile, and one that did not deliver
        # it does not know it is in flight.
        self._executing: set[Invocation] = set()
        self._executing_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stackshift.forks`): none of the parent's
        threads came along, so the handler threads its pool counts as idle and the
        lease renewer are not there; nor are the runs they were executing. The
        child starts its own on its first delivery."""
        forks.keep(self.threads)
        self._start_threads()

    def _publish(self) -> None:
        try:
            self.service.publish()
        except (httpx.HTTPError, RemoteError) as exc:
            log.warning("push: could not publish the jobs' schedules and defaults to the"
                        " server yet (%s); the first delivery will", exc)
        else:
            self._published = True

    def register(self, url: str, *, concurrency: int = 10) -> Any:
        """Register ``url`` for every job of the client (again at each start is fine)."""
        rules = self.service.claim_rules()
        return self.remote.register_endpoint(
            url, sorted(job.name for job in self.client._registry), concurrency=concurrency,
            key_limits=dict(rules.key_limits), on_failure=dict(rules.on_failure))

    # -- checking a request --------------------------------------------------------------

    def admit(self, method: str, headers: dict[str, str], body: bytes) -> Invocation | Reply:
        """The invocation a request carries, or the reply that refuses it."""
        try:
            verify(self.secret, headers, body, self.service.clock.now())
        except SignatureError as exc:
            return _error(401, exc.code, str(exc))
        if method != "POST":
            return _error(405, "method_not_allowed", "the route accepts POST only")
        try:
            delivery = p.Delivery.model_validate_json(body)
        except PydanticValidationError as exc:
            return _error(400, "malformed_delivery", f"the delivery is not valid: {exc}")
        run = delivery.claimed.run.to_model()
        job = self.client._registry.get(run.job)
        if job is None:
            return _error(404, "unknown_job", f"this route does not serve job {run.job!r}")
        lease = Lease(run.id, delivery.worker_id, delivery.claimed.attempt)
        # The server that delivered it says whether it takes log records' fields.
        self.service.store.logs_take_fields = delivery.logs_take_fields
        try:
            accepted = self.remote._call("POST", "/v1/worker/push/accept", json={
                "deliveryId": delivery.delivery_id, "lease": w.LeaseBody.of(lease)}).json()
        except AuthenticationError as exc:
            return _error(503, "key_refused",
                          f"could not accept the delivery with the server: {exc}")
        except (httpx.HTTPError, RemoteError) as exc:
            return _error(503, "server_unreachable",
                          f"could not accept the delivery with the server: {exc}")
        if not p.Accepted.model_validate(accepted).accepted:
            return _error(401, "replayed",
                          "the server did not issue this delivery, or it was accepted before "
                          "(a delivery runs once)")
        claimed = ClaimedRun(
            run=run, lease=lease, retry_base=delivery.claimed.retry_base,
            steps={step.key: step.to_model() for step in delivery.claimed.steps},
            new_attempt=delivery.claimed.new_attempt,
        )
        if not self._published:
            self._publish()
        self._install_logs()
        invocation = Invocation(self.service, job, claimed, delivery.lease_seconds)  # type: ignore[arg-type]
        self._track(invocation)
        return invocation

    def _install_logs(self) -> None:
        with self._logs_lock:
            if not self._logs_installed:
                runlogs.install()  # captures ctx.log and the logging of handlers
                self._logs_installed = True

    # -- renewing the leases of the runs executing ------------------------------------------

    def _track(self, invocation: Invocation) -> None:
        with self._executing_lock:
            self._executing.add(invocation)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_loop, daemon=True,
                                                 name="stackshift-push-renew")
                self._renewer.start()

    def _untrack(self, invocation: Invocation) -> None:
        with self._executing_lock:
            self._executing.discard(invocation)

    def _renew_loop(self) -> None:
        """Renew, a third of a lease apart, the leases of the runs executing here,
        taking in the cancels and lost leases the server reports (as a worker's
        heartbeat does)."""
        next_renewal: dict[Invocation, float] = {}
        while True:
            time.sleep(RENEW_TICK)
            now = time.monotonic()
            with self._executing_lock:
                executing = list(self._executing)
            next_renewal = {i: next_renewal.get(i, now + i.lease_seconds / 3)
                            for i in executing}
            due = [i for i in executing if next_renewal[i] <= now]
            if not due:
                continue
            for invocation in due:
                next_renewal[invocation] = now + invocation.lease_seconds / 3
            lease_seconds = min(i.lease_seconds for i in due)
            try:
                cancels, lost = self.service.store.renew_leases(
                    [i.lease for i in due], self.service.clock.now(), lease_seconds)
            except Exception:
                log.warning("push: could not renew the leases of %d runs", len(due),
                            exc_info=True)
                continue
            for invocation in due:
                invocation.renewed(cancels, lost, now)

    # -- executing -----------------------------------------------------------------------

    def execute_sync(self, invocation: Invocation) -> Reply:
        """Run a plain handler; a job ``timeout`` fails the attempt and abandons the thread."""
        try:
            future = self.threads.submit(execute_sync, invocation, self.client.state)
            try:
                future.result(invocation.job.timeout)
            except FutureTimeout:
                self.timed_out(invocation)
        finally:
            self._untrack(invocation)
        return self._done(invocation)

    async def execute_sync_async(self, invocation: Invocation) -> Reply:
        """:meth:`execute_sync` from an event loop, without blocking it."""
        try:
            future = asyncio.wrap_future(
                self.threads.submit(execute_sync, invocation, self.client.state))
            try:
                await asyncio.wait_for(asyncio.shield(future), invocation.job.timeout)
            except TimeoutError:
                await asyncio.to_thread(self.timed_out, invocation)
        finally:
            self._untrack(invocation)
        return self._done(invocation)

    @staticmethod
    def timed_out(invocation: Invocation) -> None:
        timeout = invocation.job.timeout or 0
        invocation.fail(AttemptTimeoutError(f"attempt ran longer than {timeout:g}s"))
        invocation.abandon("timed out")

    async def execute_async(self, invocation: Invocation) -> Reply:
        try:
            await execute_async(invocation, self.client.state_async)
        finally:
            self._untrack(invocation)
        return self._done(invocation)

    @staticmethod
    def _done(invocation: Invocation) -> Reply:
        failed = invocation.unrecorded
        if failed is not None:
            # Not 200: the server hands the run back rather than wait out its lease.
            refused = isinstance(failed, AuthenticationError)
            return _error(503, "key_refused" if refused else "not_recorded",
                          f"the attempt's outcome could not be recorded with the server:"
                          f" {failed}")
        return 200, {"runId": invocation.run.id, "attempt": invocation.lease.attempt}

    def handle(self, method: str, headers: dict[str, str], body: bytes) -> Reply:
        """Check and execute in this thread (async handlers on a loop of their own)."""
        admitted = self.admit(method, headers, body)
        if not isinstance(admitted, Invocation):
            return admitted
        if admitted.job.is_async:
            return asyncio.run(self.execute_async(admitted))
        return self.execute_sync(admitted)


def _json(reply: Reply) -> tuple[int, bytes]:
    status, data = reply
    return status, json.dumps(data).encode()


class AsgiRoute:
    """The route as an ASGI application (mount it at any path)."""

    def __init__(self, route: PushRoute) -> None:
        self.route = route

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Any],
                       send: Callable[[dict[str, Any]], Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                await self._reply(send, _error(413, "body_too_large",
                                               "the request body is over the route's limit"))
                return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        route = self.route
        admitted = await asyncio.to_thread(route.admit, scope["method"], headers, bytes(body))
        if not isinstance(admitted, Invocation):
            reply = admitted
        elif admitted.job.is_async:
            reply = await route.execute_async(admitted)
        else:
            reply = await route.execute_sync_async(admitted)
        await self._reply(send, reply)

    @staticmethod
    async def _reply(send: Callable[[dict[str, Any]], Any], reply: Reply) -> None:
        status, payload = _json(reply)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class WsgiRoute:
    """The route as a WSGI application (Flask, Django and any WSGI server)."""

    def __init__(self, route: PushRoute) -> None:
        self.route = route

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            reply = _error(413 if length > 0 else 400, "bad_length",
                           "the request needs a Content-Length within the route's limit")
        else:
            body = environ["wsgi.input"].read(length) if length else b""
            headers = {key[5:].replace("_", "-").lower(): value
                       for key, value in environ.items() if key.startswith("HTTP_")}
            reply = self.route.handle(environ.get("REQUEST_METHOD", "GET"), headers, body)
        status, payload = _json(reply)
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", "application/json"),
                        ("Content-Length", str(len(payload)))])
        return [payload]


def asgi_app(client: StackShift | AsyncStackShift, *, url: str | None = None,
             secret: str | None = None, concurrency: int = 10) -> AsgiRoute:
    """The handler route for ``client``'s jobs, as an ASGI application
    (``client`` made with ``api_key`` and ``base_url``, sync or async).

    ``url`` is the route's public URL: given, the route registers itself with
    the server now (for every job of ``client``) and signs with the secret the
    server keeps for that URL. Without it, pass ``secret`` (or set
    ``STACKSHIFT_SIGNING_SECRET``) from ``stackshift endpoints add``, taken without
    surrounding whitespace. ``concurrency`` bounds the runs the server posts to the route at once.
    """
    return AsgiRoute(PushRoute(client, url=url, secret=secret, concurrency=concurrency))


def wsgi_app(client: StackShift | AsyncStackShift, *, url: str | None = None,
             secret: str | None = None, concurrency: int = 10) -> WsgiRoute:
    """The handler route as a WSGI application; the options are :func:`asgi_app`'s."""
    return WsgiRoute(PushRoute(client, url=url, secret=secret, concurrency=concurrency))
