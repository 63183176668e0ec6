"""The dashboard as an ASGI application, built on the service layer only.

``create_dashboard(service, auth="open")`` returns a Starlette app to mount at
``/`` (``stackshift dev``, bound to 127.0.0.1) or behind a login
(``auth="api_key"``, ``stackshift server``). Pages are rendered on the server
from Jinja templates with autoescaping on, so payloads, logs and errors always
reach the browser as text; the little script there is lives in ``static/`` and
the Content-Security-Policy forbids any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..checks import check_int
from ..durations import parse_typed_duration
from ..errors import StackShiftError
from ..models import Run
from ..serialization import DuplicateKeyError, unique_keys
from ..service import Service
from ..wording import plural, unregistered
from . import formatting, pages
from .sessions import FLASH_COOKIE, SESSION_COOKIE, Session, Sessions, same_token

AuthMode = Literal["open", "api_key"]
STATIC = Path(__file__).parent / "static"
MAX_FORM_BYTES = 2 * 1024 * 1024
#: The only ``Host`` names an open dashboard answers (any other: 400). A page on
#: another site whose name it points at 127.0.0.1 (DNS rebinding) would otherwise
#: be the dashboard's own origin to the browser, session and CSRF token included.
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "*.localhost", "[::1]"]
#: The fields of a run page's form that sends an event.
EVENT_FIELDS = ("name", "correlation_key", "payload", "idempotency_key")
#: The fields of the Jobs page's form that starts a run.
START_FIELDS = ("job", "payload", "idempotency_key", "queue", "delay", "priority")

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
     b"img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
     b"form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]

Builder = Callable[[Service, Mapping[str, str], float], dict[str, Any]]


class _SecurityHeaders:
    """Pure ASGI: adds the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Files(StaticFiles):
    """The dashboard's files. A missing one is answered here, plainly, instead of
    by the dashboard's page for a path it has no page at."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            return PlainTextResponse(exc.detail, status_code=exc.status_code,
                                     headers=exc.headers)


def _asset_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


class Dashboard:
    def __init__(
        self,
        service: Service,
        *,
        auth: AuthMode,
        verify_key: Callable[[str], bool] | None,
        secret: bytes | None,
        session_max_age: float,
        poll_interval: float,
    ) -> None:
        if auth not in ("open", "api_key"):
            raise ValueError(f"auth must be 'open' or 'api_key', got {auth!r}")
        self.service = service
        self.auth = auth
        self._verify_key = verify_key
        self.sessions = Sessions(secret or os.urandom(32), session_max_age)
        self.poll_ms = int(poll_interval * 1000)
        self.version = _asset_version()
        self.env = Environment(
            loader=PackageLoader("stackshift.dashboard", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=formatting.shown,
        )
        self.env.filters.update(formatting.FILTERS)
        self.env.globals.update(
            ago=formatting.ago,
            between=formatting.between,
            day_time=formatting.day_time,
            gone_by=formatting.gone_by,
            percent=formatting.percent,
            plural=plural,
            time_in_run=formatting.time_in_run,
            link_runs=formatting.link_runs,
            timeline_details=formatting.timeline_details,
            statuses=pages.STATUS_ORDER,
        )

    # -- the application ---------------------------------------------------------------

    def asgi(self) -> ASGIApp:
        page = self._page
        routes = [
            Route("/", page(pages.runs_page, "runs.html")),
            Route("/runs", page(pages.runs_page, "runs.html")),
            Route("/runs/{run_id}", self._run),
            Route("/runs/{run_id}/cancel", self._action(self._cancel), methods=["POST"]),
            Route("/runs/{run_id}/retry", self._action(self._retry), methods=["POST"]),
            Route("/runs/{run_id}/again", self._action(self._start_again), methods=["POST"]),
            Route("/runs/{run_id}/event", self._event, methods=["POST"]),
            Route("/events", page(pages.events_page, "events.html")),
            Route("/queues", page(pages.queues_page, "queues.html")),
            Route("/queues/{name}", self._queue),
            Route("/queues/{name}/retry", self._action(self._bulk_retry), methods=["POST"]),
            Route("/jobs", page(pages.jobs_page, "jobs.html")),
            Route("/jobs/start", self._start_run, methods=["POST"]),
            Route("/state", page(pages.state_page, "state.html")),
            Route("/state/locks/break", self._action(self._break_lock), methods=["POST"]),
            Route("/login", self._login, methods=["GET", "POST"]),
            Route("/logout", self._action(self._logout, login_required=False),
                  methods=["POST"]),
            Route("/api/live", self._live),
            Mount("/static", app=_Files(directory=STATIC), name="static"),
        ]
        hosts = ([Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)]
                 if self.auth == "open" else [])
        return _SecurityHeaders(Starlette(routes=routes, middleware=hosts,
                                          exception_handlers={404: self._no_such_page}))

    # -- sessions and rendering ------------------------------------------------------------

    def _now(self) -> float:
        return self.service.clock.now()

    async def _session(self, request: Request) -> tuple[Session, bool]:
        """The request's session, or a new anonymous one (then True: set the cookie)."""
        now = time.time()
        session = self.sessions.decode(request.cookies.get(SESSION_COOKIE), now)
        if (session is not None and session.authenticated and self.auth == "api_key"
                and not await self._still_open(session)):
            session = None
        if session is None:
            return self.sessions.new(now, authenticated=self.auth == "open"), True
        if self.auth == "open" and not session.authenticated:
            return self.sessions.new(now, authenticated=True), True
        return session, False

    async def _still_open(self, session: Session) -> bool:
        """Whether the signed-in session was not ended by logging out and the API key
        it was opened with is still active: checked on every request (one statement
        on the database), so logging out, or revoking the key, ends it at once in
        every process on the database, whatever copies of the cookie were kept.
        With ``verify_key`` (keys checked elsewhere) only the logout is checked."""
        key_id = None
        if self._verify_key is None and session.key_name is not None:
            key_id = session.key_name.split("\x00", 1)[0]
        return await run_in_threadpool(self.service.dashboard_session_open, session.id,
                                       key_id)

    def _cookie(self, request: Request) -> dict[str, Any]:
        """How the dashboard's cookies (the session, a flash) are kept: below its mount
        point, out of scripts' reach, never sent by other sites' requests, and over
        https only when the dashboard is served over https."""
        return {"path": self._root(request) or "/", "httponly": True, "samesite": "strict",
                "secure": request.url.scheme == "https"}

    def _set_session(self, response: Response, request: Request, session: Session) -> None:
        response.set_cookie(SESSION_COOKIE, self.sessions.encode(session),
                            max_age=int(self.sessions.max_age), **self._cookie(request))

    def _root(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def _render(self, request: Request, template: str, context: dict[str, Any],
                session: Session, *, status: int = 200, flash: tuple[str, str] | None = None,
                marker: str = "", page_url: str = "") -> HTMLResponse:
        root = self._root(request)
        params = dict(request.query_params)

        def url(path: str, **query: Any) -> str:
            clean = {k: v for k, v in query.items() if v not in (None, "")}
            return root + path + ("?" + urlencode(clean) if clean else "")

        def here(**changes: Any) -> str:
            merged = {k: v for k, v in params.items() if k != "cursor"}
            merged.update(changes)
            clean = {k: v for k, v in merged.items() if v not in (None, "")}
            return root + request.url.path[len(root):] + (
                "?" + urlencode(clean) if clean else "")

        html = self.env.get_template(template).render(
            **context,
            url=url,
            here=here,
            static=lambda name: f"{root}/static/{name}?v={self.version}",
            csrf=session.csrf,
            auth_mode=self.auth,
            signed_in_as=session.key_name.split("\x00", 1)[-1] if session.key_name else None,
            flash=flash,
            marker=marker,
            poll_ms=self.poll_ms,
            live_url="" if template == "login.html" else root + "/api/live",
            params=params,
            server_now=f"{self._now():.3f}",
            page_url=page_url,
        )
        return HTMLResponse(html, status_code=status)

    def _login_redirect(self, request: Request) -> RedirectResponse:
        """To the login page, which sends the browser back here afterwards: to the
        page asked for, or for an action (a form's POST, whose address has no page)
        to the page its form was on, else the runs list."""
        if request.method == "GET":
            path = request.url.path
            if request.url.query:
                path += "?" + request.url.query
        else:
            path = _page_of_form(request)
        root = self._root(request)
        return RedirectResponse(f"{root}/login?{urlencode({'next': path})}", status_code=303)

    async def _show(self, request: Request, template: str,
                    build: Callable[[], dict[str, Any]], *,
                    refused: tuple[str, str] | None = None, page_url: str = "") -> Response:
        """Render ``template`` from ``build()``; with ``refused`` (a form's error), in
        answer to that form's POST: status 400, the error as the flash, and
        ``page_url`` the page's own address for the browser to show."""
        session, fresh = await self._session(request)
        if not session.authenticated:
            response: Response = self._login_redirect(request)
        else:
            def work() -> tuple[dict[str, Any], str]:
                # The marker is read before the page: a change landing in
                # between moves the marker again and the next poll refreshes.
                marker = self.service.change_marker()
                return build(), marker

            flash = refused or self.sessions.decode_flash(request.cookies.get(FLASH_COOKIE))
            try:
                context, marker = await run_in_threadpool(work)
                response = self._render(request, template, context, session, flash=flash,
                                        marker=marker, status=400 if refused else 200,
                                        page_url=page_url)
            except pages.NotFound as exc:
                response = self._render(request, "missing.html",
                                        {"page_title": "Not found", "nav": "",
                                         "message": str(exc)}, session, status=404)
            except (StackShiftError, ValueError) as exc:
                response = self._render(request, "missing.html",
                                        {"page_title": "Cannot show this page", "nav": "",
                                         "message": str(exc)}, session, status=400)
            if flash is not None and refused is None:
                response.delete_cookie(FLASH_COOKIE, **self._cookie(request))
        if fresh:
            self._set_session(response, request, session)
        response.headers["cache-control"] = "no-store"
        return response

    def _page(self, builder: Builder, template: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            params = dict(request.query_params)
            return await self._show(
                request, template, lambda: builder(self.service, params, self._now()))

        return endpoint

    async def _run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        params = dict(request.query_params)
        return await self._show(
            request, "run.html", lambda: pages.run_page(self.service, run_id, params,
                                                         self._now()))

    async def _queue(self, request: Request) -> Response:
        name = request.path_params["name"]
        params = dict(request.query_params)
        return await self._show(
            request, "queue.html", lambda: pages.queue_page(self.service, name, params,
                                                             self._now()))

    async def _no_such_page(self, request: Request, exc: Exception) -> Response:
        """A path no route takes: a dashboard page that says so."""
        path = request.url.path  # as the address bar shows it, mounted or not

        def missing() -> dict[str, Any]:
            raise pages.NotFound(
                f"There is no dashboard page at {path}. The menu lists the pages; "
                "schedules and workers are on Jobs & workers.")

        return await self._show(request, "missing.html", missing)

    async def _live(self, request: Request) -> Response:
        """The small JSON the pages poll: a marker that changes when anything changes."""
        session, _ = await self._session(request)
        if not session.authenticated:
            return JSONResponse({"error": {"code": "unauthorized",
                                           "message": "log in to the dashboard"}},
                                status_code=401)
        marker = await run_in_threadpool(self.service.change_marker)
        return JSONResponse({"marker": marker}, headers={"cache-control": "no-store"})

    # -- actions -----------------------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, list[str]] | None:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return None
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return None
        form: dict[str, list[str]] = {}
        for key, value in parse_qsl(text, keep_blank_values=True):
            form.setdefault(key, []).append(value)
        return form

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        host = request.headers.get("host", "")
        return origin.split("://", 1)[-1] == host

    def _action(
        self,
        handler: Callable[[Request, dict[str, list[str]], Session],
                          tuple[str, tuple[str, str] | None, Session | None]],
        *,
        login_required: bool = True,
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a POST handler: session, CSRF token and origin checks, then redirect."""

        async def endpoint(request: Request) -> Response:
            checked = await self._checked_form(request, login_required=login_required)
            if isinstance(checked, Response):
                return checked
            session, form = checked
            target, flash, new_session = await run_in_threadpool(handler, request, form, session)
            return self._redirect(request, target, flash, new_session)

        return endpoint

    async def _checked_form(self, request: Request, *, login_required: bool = True
                            ) -> tuple[Session, dict[str, list[str]]] | Response:
        """A POST's session and form once its CSRF token and origin check out, else the
        response that refuses it (or sends the browser to the login page)."""
        session = self.sessions.decode(request.cookies.get(SESSION_COOKIE), time.time())
        form = await self._form(request)
        if form is None:
            return _forbidden("The form is too large or not UTF-8.", 413)
        token = (form.get("csrf") or [""])[0]
        if session is None or not same_token(token, session.csrf) or not \
                self._same_origin(request):
            return _forbidden("This form has expired or did not come from the dashboard. "
                              "Go back, reload the page and try again.")
        if login_required and not (session.authenticated and (
                self.auth == "open" or await self._still_open(session))):
            return self._login_redirect(request)
        return session, form

    def _redirect(self, request: Request, target: str, flash: tuple[str, str] | None,
                  new_session: Session | None) -> Response:
        """After an action: back to ``target``, which shows ``flash`` once."""
        response = RedirectResponse(self._root(request) + target, status_code=303)
        if flash is not None:
            response.set_cookie(FLASH_COOKIE, self.sessions.encode_flash(*flash), max_age=60,
                                **self._cookie(request))
        if new_session is not None:
            self._set_session(response, request, new_session)
        return response

    def _cancel(self, request: Request, form: dict[str, list[str]],
                session: Session) -> tuple[str, tuple[str, str] | None, Session | None]:
        """Cancel the run, or ask its worker to stop it. The page may be stale: a run
        cancelled meanwhile (the CLI, another operator) is left as it is, and the
        message says this click did not cancel it, as the service changes nothing
        then and answers with the run as it was."""
        run_id = request.path_params["run_id"]
        back = f"/runs/{run_id}"
        try:
            before = self.service.get_run(run_id)
            if before.status == "cancelled":
                return back, ("info", "This run was already cancelled"
                                      f"{_since(before.finished_at, self._now())}: nothing "
                                      "was changed."), None
            run = self.service.cancel_run(run_id, reason="cancelled from the dashboard")
        except StackShiftError as exc:
            return back, ("error", str(exc)), None
        if run.status == "cancelled":
            return back, ("ok", "Run cancelled."), None
        if before.cancel_requested:
            return back, ("info", "A cancel was already requested: the run stops at its "
                                  "next step."), None
        return back, ("ok", "Cancel requested: the run stops at its next step."), None

    def _retry(self, request: Request, form: dict[str, list[str]],
               session: Session) -> tuple[str, tuple[str, str] | None, Session | None]:
        run_id = request.path_params["run_id"]
        try:
            self.service.retry_run(run_id)
        except StackShiftError as exc:
            return f"/runs/{run_id}", ("error", str(exc)), None
        return f"/runs/{run_id}", ("ok", "Run queued for a new attempt."), None

    def _start_again(self, request: Request, form: dict[str, list[str]],
                     session: Session) -> tuple[str, tuple[str, str] | None, Session | None]:
        """Start a new run of the run's job with its payload, queue, priority,
        concurrency key and attempts (``runs.start_again``), then go to the new
        run's page."""
        run_id = request.path_params["run_id"]
        try:
            new = self.service.start_again(run_id)
        except StackShiftError as exc:
            return f"/runs/{run_id}", ("error", str(exc)), None
        return f"/runs/{new.id}", ("ok", f"Started with the payload of run {run_id}."), None

    def _break_lock(self, request: Request, form: dict[str, list[str]],
                    session: Session) -> tuple[str, tuple[str, str] | None, Session | None]:
        """Break the form's lock whatever its owner, then back to the State page as it
        was listed (its prefix and the pages of keys and locks it was on). The form
        gives the key as a JSON string: a browser sends a line break in a field as
        CR LF, which would name another key."""
        listed = {name: form[name][0] for name in ("prefix", "cursor", "locks_cursor")
                  if form.get(name) and form[name][0]}
        back = "/state" + ("?" + urlencode(listed) if listed else "")
        try:
            key = json.loads((form.get("key") or [""])[0])
        except (ValueError, RecursionError):
            return back, ("error", "The form's lock key is not a JSON string: reload the "
                                   "page and try again."), None
        try:
            broken = self.service.lock_break(key)
        except StackShiftError as exc:
            return back, ("error", str(exc)), None
        if not broken:
            return back, ("info", f"No live lock on {key!r}: it was released or ran out "
                                  "meanwhile."), None
        return back, ("ok", f"Broke the lock on {key!r}: its owner's extend() now returns "
                            "False, and its block ends with the lock lost."), None

    async def _event(self, request: Request) -> Response:
        """Send the event of a run's form. Input that is refused (a payload that is not
        JSON, a name the service rejects) shows the run page again with the error and
        the form as it was filled in; nothing is sent."""
        checked = await self._checked_form(request)
        if isinstance(checked, Response):
            return checked
        _, form = checked
        run_id = request.path_params["run_id"]
        flash, refused = await run_in_threadpool(self._send_event, run_id, form)
        if not refused:
            return self._redirect(request, f"/runs/{run_id}", flash, None)
        submitted = {name: (form.get(name) or [""])[0] for name in EVENT_FIELDS}
        params = dict(request.query_params)
        return await self._show(
            request, "run.html",
            lambda: pages.run_page(self.service, run_id, params, self._now(),
                                   submitted=submitted),
            refused=flash, page_url=f"{self._root(request)}/runs/{run_id}")

    async def _start_run(self, request: Request) -> Response:
        """Start a run of the Jobs page's form, then show its page. Input that is
        refused (a payload that is not JSON, a job name the service rejects, a key
        bound to another payload) shows the Jobs page again with the error and the
        form as it was filled in; nothing is started."""
        checked = await self._checked_form(request)
        if isinstance(checked, Response):
            return checked
        _, form = checked
        started, flash = await run_in_threadpool(self._start_from_form, form)
        if started is not None:
            return self._redirect(request, f"/runs/{started}", flash, None)
        submitted = {name: (form.get(name) or [""])[0] for name in START_FIELDS}
        params = dict(request.query_params)
        return await self._show(
            request, "jobs.html",
            lambda: {**pages.jobs_page(self.service, params, self._now()),
                     "submitted": submitted},
            refused=flash, page_url=f"{self._root(request)}/jobs")

    def _start_from_form(self, form: dict[str, list[str]]
                         ) -> tuple[str | None, tuple[str, str]]:
        """Start the form's run: its id (``None`` when the input was refused) and the
        message to show."""
        job, raw, queue, delay, priority = (
            (form.get(name) or [""])[0].strip()
            for name in ("job", "payload", "queue", "delay", "priority"))
        key = (form.get("idempotency_key") or [""])[0] or None  # as typed, as in the SDK
        try:
            payload = None if not raw else form_json(raw)
        except ValueError as exc:
            return None, ("error", str(exc))
        try:
            # A whole number as such; other text as it was typed, refused in the
            # words the SDK's start uses.
            rank = None if not priority else check_int(
                int(priority) if re.fullmatch(r"[+-]?[0-9]{1,12}", priority) else priority,
                "priority", 32)
            # A bare number is seconds, as for `stackshift start --delay`.
            after = parse_typed_duration(delay, name="delay") if delay else None
            run = self.service.start(job, payload, idempotency_key=key,
                                     queue_name=queue or None, delay=after, priority=rank)
        except (StackShiftError, TypeError, ValueError) as exc:
            return None, ("error", str(exc))
        unserved = self._no_worker_registered(run)
        if not run.created:
            text = f"A run already exists for idempotency key {key!r}: nothing new was started"
            if unserved is not None:
                return run.id, ("warning", f"{text}, and {unserved}.")
            return run.id, ("info", f"{text}.")
        if unserved is not None:
            return run.id, ("warning", f"Run started, but {unserved}.")
        return run.id, ("ok", "Run started.")

    def _no_worker_registered(self, run: Run) -> str | None:
        """The warning ``stackshift start`` gives when no worker has registered the
        run's job (a mistyped name, or code not deployed yet), in its words, with
        the closest names workers have registered: the run is started all the
        same and waits until a worker with the job's code starts. ``None`` when a
        worker has registered the job, or when the run waits for none."""
        if run.status not in ("queued", "scheduled", "retrying"):
            return None
        try:
            known = {info.name for info in self.service.list_jobs()}
        except StackShiftError:  # advice only: the run is started, whatever this says
            return None
        if run.job in known:
            return None
        waits = "the run waits" + (" queued" if run.status == "queued" else "")
        return f"{unregistered(run.job, known)}; {waits} until one does"

    def _send_event(self, run_id: str, form: dict[str, list[str]]
                    ) -> tuple[tuple[str, str], bool]:
        """Send the form's event: the message to show, and whether the input was refused."""

        def field(name: str, *, strip: bool = True) -> str | None:
            """The field's text, ``None`` when empty. Keys are kept as typed (the run's
            own key may end in a space): a key of spaces is a key, as in the SDK."""
            value = (form.get(name) or [""])[0]
            return (value.strip() if strip else value) or None

        # The form is this run's: one filled in while the run stopped waiting (the page
        # keeps a form being filled in through live updates) would send an event that
        # resumes nothing here, yet is kept and taken by later waits.
        stopped = self._not_waiting(run_id)
        if stopped is not None:
            return ("error", stopped), True
        raw = field("payload")
        try:
            payload = None if raw is None else form_json(raw)
        except ValueError as exc:
            return ("error", str(exc)), True
        try:
            sent = self.service.send_event(
                field("name") or "", payload,
                correlation_key=field("correlation_key", strip=False),
                idempotency_key=field("idempotency_key", strip=False))
        except (StackShiftError, TypeError, ValueError) as exc:
            return ("error", str(exc)), True
        if sent.duplicate:
            return ("info", _repeated_send(run_id, sent.resumed_run_ids)), False
        if run_id in sent.resumed_run_ids:
            others = len(sent.resumed_run_ids) - 1
            text = "Event sent: the run resumed." + (
                f" It also resumed {plural(others, 'other run')}." if others else "")
            return ("ok", text), False
        count = len(sent.resumed_run_ids)
        return ("info", f"Event sent; it resumed {plural(count, 'run')}, "
                        "not this one (check the name and correlation key)."), False

    def _not_waiting(self, run_id: str) -> str | None:
        """Why the run's send-event form may not send (``None`` when it may): the
        run is gone, no longer waits for an event, or its wait has timed out."""
        try:
            run = self.service.get_run(run_id)
        except StackShiftError:
            return f"No run with id {run_id!r}, so nothing was sent."
        wait = run.waiting_for
        if run.status != "waiting" or wait is None or wait.kind != "event":
            now = "sleeping" if wait is not None and wait.kind == "sleep" else run.status
            return (f"This run no longer waits for an event (it is {now}), so nothing "
                    "was sent.")
        if wait.until is not None and wait.until.timestamp() <= self._now():
            return (f"This run's wait timed out at {wait.until:%Y-%m-%d %H:%M:%S} UTC, so "
                    "nothing was sent.")
        return None

    def _bulk_retry(self, request: Request, form: dict[str, list[str]],
                    session: Session) -> tuple[str, tuple[str, str] | None, Session | None]:
        name = request.path_params["name"]
        back = f"/queues/{name}"
        if (form.get("all") or [""])[0] == "1":
            count = self.service.retry_failed_runs(queue=name)
        else:
            ids = list(dict.fromkeys(form.get("run", [])))[:1000]
            if not ids:
                return back, ("info", "Select the runs to retry first."), None
            count = len(self.service.retry_runs(ids, queue=name))
            if count < len(ids):
                # Retried meanwhile by someone else (or not failed any more).
                gone = len(ids) - count
                return back, ("ok" if count else "info",
                              f"{count} of {len(ids)} selected runs queued for a new attempt; "
                              f"{gone} {'was' if gone == 1 else 'were'} no longer failed."), None
        return back, ("ok", f"{count} run{'s' if count != 1 else ''} queued for a new attempt."), \
            None

    def _logout(self, request: Request, form: dict[str, list[str]],
                session: Session) -> tuple[str, tuple[str, str] | None, Session | None]:
        """End the session for good: its id is recorded in the database until its
        cookie expires, so a copy of the cookie is refused too. (Open mode has no
        login: any request gets a new session, so there is nothing to end.)"""
        if self.auth == "api_key" and session.authenticated:
            self.service.end_dashboard_session(session.id, session.expires_at)
        return "/login", ("info", "You are logged out."), self.sessions.new(
            time.time(), authenticated=False)

    # -- login -------------------------------------------------------------------------------

    def _check_key(self, key: str) -> str | None:
        """The session's key label when ``key`` is valid (``id NUL name``), else None."""
        if self._verify_key is not None:
            return "" if self._verify_key(key) else None
        found = self.service.verify_api_key(key)
        return None if found is None else f"{found.id}\x00{found.name}"

    async def _login(self, request: Request) -> Response:
        root = self._root(request)
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"
        if self.auth == "open":
            return RedirectResponse(root + "/", status_code=303)
        session, fresh = await self._session(request)
        error = None
        status = 200
        if request.method == "POST":
            form = await self._form(request) or {}
            token = (form.get("csrf") or [""])[0]
            key = (form.get("api_key") or [""])[0].strip()
            if fresh or not same_token(token, session.csrf) or not self._same_origin(request):
                error = "The login form expired. Try again."
                status = 403
            else:
                label = await run_in_threadpool(self._check_key, key) if key else None
                if label is not None:
                    new = self.sessions.new(time.time(), authenticated=True,
                                            key_name=label or None)
                    response: Response = RedirectResponse(_under(root, target),
                                                          status_code=303)
                    self._set_session(response, request, new)
                    return response
                error = "That API key is not valid (unknown or revoked)."
                status = 401
        elif session.authenticated:
            return RedirectResponse(_under(root, target), status_code=303)
        flash = self.sessions.decode_flash(request.cookies.get(FLASH_COOKIE))
        response = self._render(request, "login.html",
                                {"page_title": "Log in", "nav": "", "error": error,
                                 "next": target}, session, status=status, flash=flash)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, **self._cookie(request))
        if fresh:
            self._set_session(response, request, session)
        response.headers["cache-control"] = "no-store"
        return response


def _page_of_form(request: Request) -> str:
    """The path and query of the dashboard page a form was sent from (its
    ``Referer``, when on this host), else ``/``."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc != request.headers.get("host") or not referer.path.startswith("/"):
        return "/"
    return referer.path + (f"?{referer.query}" if referer.query else "")


def _since(moment: datetime | None, now: float) -> str:
    """`` at 09:12:00 UTC`` (with the date when not on ``now``'s UTC day), or nothing."""
    return "" if moment is None else f" at {formatting.day_time(moment, now)} UTC"


def _under(root: str, path: str) -> str:
    """``path`` below the dashboard's mount point (``next`` may already include it)."""
    return path if root and (path == root or path.startswith(root + "/")) else root + path


def form_json(text: str) -> Any:
    """A form's payload field as JSON; ``ValueError`` with the message to show for
    text that is not JSON, or an object naming a key twice (refused as the HTTP
    API refuses it: readers disagree on which value it means)."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKeyError as exc:
        raise ValueError(f"The payload is refused: {exc} in one object.") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"The payload is not JSON: {exc}") from None


def _forbidden(text: str, status: int = 403) -> Response:
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><title>Refused</title>"
        f"<p style='font-family:sans-serif;margin:3rem'>{text}</p>",
        status_code=status,
    )


#: Paths that belong to the HTTP API of ``stackshift server``; the rest is the dashboard.
API_PATHS = ("/v1/", "/v1", "/healthz", "/metrics", "/openapi.json")


def beside_api(api: ASGIApp, dashboard: ASGIApp, api_paths: tuple[str, ...] = API_PATHS
               ) -> ASGIApp:
    """One ASGI app: the API at its paths (``/v1/...``, ``/healthz``, ...), the dashboard
    everywhere else (``/``), each with its own authentication.

    The API keeps its ``Authorization: Bearer`` check; the dashboard its login page
    and session cookie. Lifespan events go to the API. When ``api`` counts its
    responses for ``/metrics`` (:func:`stackshift.server.app.create_app`), the
    dashboard's are counted there too, by the dashboard's route templates.
    """
    count = getattr(getattr(api, "state", None), "count_responses", None)
    if count is not None:
        dashboard = count(dashboard)

    def is_api(path: str) -> bool:
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in api_paths)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or is_api(str(scope.get("path", ""))):
            await api(scope, receive, send)
        else:
            await dashboard(scope, receive, send)

    return app


def create_dashboard(
    service: Service,
    *,
    auth: AuthMode = "open",
    verify_key: Callable[[str], bool] | None = None,
    secret: bytes | None = None,
    session_max_age: float = 12 * 3600,
    poll_interval: float = 2.0,
) -> ASGIApp:
    """The dashboard's ASGI app, reading and acting through ``service`` only.

    ``auth="open"``: no login (for ``stackshift dev`` on 127.0.0.1). ``"api_key"``:
    every page asks for an API key once (checked by ``verify_key``, by default
    the service's own API keys), then keeps a signed, HttpOnly, SameSite=Strict
    session cookie for ``session_max_age`` seconds; logging out or revoking the key
    ends it, for every copy of the cookie (logouts are recorded in the service's
    database, which every dashboard on it reads).
    ``secret`` signs the cookies; without one, a random secret is drawn and
    sessions end when the process restarts. Pages poll for changes every
    ``poll_interval`` seconds.
    """
    return Dashboard(service, auth=auth, verify_key=verify_key, secret=secret,
                     session_max_age=session_max_age, poll_interval=poll_interval).asgi()


def _repeated_send(run_id: str, first: list[str]) -> str:
    """The message for a send that repeated an idempotency key: it resumed nothing,
    so say what the first send resumed, and how to reach this run if not it."""
    text = ("An event with this idempotency key was already sent, so nothing was "
            "resumed now. Its first send ")
    if run_id in first:
        others = len(first) - 1
        return text + "resumed this run" + (
            f" and {plural(others, 'other run')}." if others else ".")
    done = f"resumed {plural(len(first), 'run')}, not this one" if first else (
        "resumed no run")
    return text + done + ". Send it with another idempotency key to resume this run."
