"""``stackshift server``, ``stackshift keys create|list|revoke`` and ``stackshift endpoints``.

``server`` serves the HTTP API (see ``docs/server.md``); ``keys`` manages the
API keys it accepts, directly in the database, so the first key can be made
before any server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click
from rich.table import Table

from ..client import DEFAULT_DATABASE_URL
from ..clock import SystemClock
from ..errors import (
    ApiKeyNotFoundError,
    EndpointNotFoundError,
    InvalidTransitionError,
    ValidationError,
)
from ..jobs import JobRegistry
from ..models import ApiKey, Endpoint
from ..service import Service
from ..settings import Settings, parse_setting
from ..store import open_store
from .failures import bad_input, failed, not_found
from .options import (
    Whole,
    database_only,
    database_only_option,
    removed_if_refused,
    require_database,
)
from .render import Fit, _table, console, echo_json, iso, shown_url, when
from .worker import configure_logging

_database_url = click.option(
    "--db",
    "--database-url",
    "database_url",
    envvar="STACKSHIFT_DATABASE_URL",
    show_envvar=True,
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="sqlite:///path/to/file.db or postgresql://...",
)
_as_json = click.option("--json", "as_json", is_flag=True,
                        help="Print JSON (for scripts) instead of text.")


@contextmanager
def _service(database_url: str | None, *, creates: bool = False) -> Iterator[Service]:
    # Not the default file when STACKSHIFT_URL is set: a key or endpoint stored
    # there would be unknown to the server the environment names.
    url = database_only(database_url)
    if not creates:  # a key or an endpoint to list, revoke or remove: none in no file
        require_database(url)
    with removed_if_refused(url):
        store = open_store(url)
        try:
            store.migrate()
            yield Service(store, SystemClock(), Settings(), JobRegistry())
        finally:
            store.close()


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id, "name": key.name, "prefix": key.prefix,
        "created_at": iso(key.created_at), "last_used_at": iso(key.last_used_at),
        "revoked_at": iso(key.revoked_at), "active": key.active,
    }


#: Characters of ``--session-secret`` at least: a guessable secret would let anyone
#: sign a session cookie.
MIN_SESSION_SECRET = 32


@click.command()
@_database_url
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 for all).")
@click.option("--port", default=8000, show_default=True, type=Whole(0, 65535))
@click.option("--max-body-bytes", default=None, type=Whole(1),
              show_default="three times the largest value limit (--setting) plus 1 MiB,"
                           " 4194304 with the default settings",
              help="Larger request bodies get 413.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--setting", "assignments", multiple=True, metavar="NAME=VALUE",
              help="A setting of the server (repeatable), e.g. max_state_value_bytes=1048576"
                   " or event_retention=30d; see docs/guide.md, Settings.")
@click.option("--session-secret", envvar="STACKSHIFT_SESSION_SECRET", show_envvar=True,
              default=None, metavar="TEXT",
              help="Signs the dashboard's session cookies (at least"
                   f" {MIN_SESSION_SECRET} characters). Give every server on the database"
                   " the same one and sessions outlive restarts and work on each of them;"
                   " left out, each process draws its own and a restart signs everyone out.")
def server(database_url: str, host: str, port: int, max_body_bytes: int | None, log_level: str,
           assignments: tuple[str, ...], session_secret: str | None) -> None:
    """Serve the HTTP API (/v1, /openapi.json, /healthz, /metrics) and the dashboard (/).

    Every endpoint but /healthz needs a key from `stackshift keys create`; the
    dashboard asks for one once, at its login page.
    Runs are executed by `stackshift worker` processes, on the same database or
    remote (`--url`, `--api-key`), and by the applications' handler routes
    registered with `stackshift endpoints add` (push mode), which the server
    invokes; it maintains for all of them.
    """
    try:  # the extra's packages, before anything is opened
        import uvicorn  # noqa: F401

        from .. import dashboard  # noqa: F401
        from ..server import app  # noqa: F401
    except ImportError as exc:
        raise bad_input(
            f"the server needs its extra: pip install 'stackshift[server]' ({exc})"
        ) from None
    try:  # before anything is opened: a bad setting changes nothing
        settings = Settings(**dict(parse_setting(a) for a in assignments))
    except ValidationError as exc:
        raise bad_input(f"--setting: {exc}") from None
    # Surrounding blanks (a newline from a file) are no part of the secret.
    stripped = None if session_secret is None else session_secret.strip()
    if stripped is not None and len(stripped) < MIN_SESSION_SECRET:
        raise bad_input(
            f"--session-secret (STACKSHIFT_SESSION_SECRET) must have at least"
            f" {MIN_SESSION_SECRET} characters, got {len(stripped)}; make one with"
            " python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    secret = None if stripped is None else stripped.encode()
    # The server's own warnings and errors (and its libraries'): one line each
    # with its time and level, as a worker's; uvicorn keeps its own lines.
    said = configure_logging("WARNING", attempts=False)
    try:
        _serve(database_url, host, port, max_body_bytes, log_level, settings, secret)
    finally:
        logging.getLogger().removeHandler(said)


def _serve(database_url: str, host: str, port: int, max_body_bytes: int | None,
           log_level: str, settings: Settings, secret: bytes | None) -> None:
    import uvicorn

    from ..dashboard import beside_api, create_dashboard
    from ..server.app import app_from_url
    from ..server.maintenance import Maintainer
    from ..server.push import Dispatcher
    from ..server.worker_routes import ClaimSignal

    api = app_from_url(database_url, max_body_bytes=max_body_bytes, settings=settings)
    service = api.state.service
    app = beside_api(api, create_dashboard(service, auth="api_key", secret=secret))
    # Rescues, timers, schedules and retention for the runs of remote workers.
    maintainer = Maintainer(service).start()
    # Push mode: the registered handler routes are invoked from this process.
    signal = api.state.claim_signal = ClaimSignal(service)
    dispatcher = Dispatcher(service, signal).start()
    stopping = api.state.stopping
    stopped = False

    def stop_background() -> None:
        """Leave the worker registry and the maintenance lead (once)."""
        nonlocal stopped
        if not stopped:
            stopped = True
            dispatcher.stop()
            maintainer.stop()

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()
                say_serving(service, database_url, f"http://{host_in_url(host)}:{bound[1]}/")

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            stopping.set()  # long-polls answer now, so that the stop takes no longer
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            # A second Ctrl-C (force_exit) skips the application's shutdown; left
            # waiting, it would be cancelled as the signal is raised again at the
            # end and log that as a traceback. It has nothing to wait for.
            if self.force_exit and not self.lifespan.shutdown_event.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.lifespan.shutdown(), 2)

        @contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            # Once shut down, uvicorn raises the signal that stopped it again,
            # which ends the process (SIGTERM) before any `finally` below runs:
            # stop the background work first, inside.
            with super().capture_signals():
                try:
                    yield
                finally:
                    stop_background()

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            server_header=False)
    serving = Server(config)
    try:
        serving.run()
    except KeyboardInterrupt:
        pass
    except SystemExit:  # uvicorn's own exit code when it cannot start
        if serving.started:
            raise
    finally:
        stop_background()
    if not serving.started:  # e.g. the port is taken; uvicorn has logged why
        raise failed(f"the server did not start on {host}:{port} (see the error above)")


def say_serving(service: Service, database_url: str, url: str) -> None:
    """The server's banner on stderr, once it listens: where, on which database,
    and with how many API keys; with none, that every request is refused."""
    err = console(stderr=True)
    active = sum(key.active for key in service.list_api_keys())
    version = service.store.db.schema_version()
    err.print(f"StackShift server at {url} (API {url}v1, dashboard {url}), database "
              f"{shown_url(database_url)} (schema version {version}), "
              f"{active} active API key(s). Stop with Ctrl-C or SIGTERM.", markup=False)
    if not active:
        err.print("warning: no active API key: every request but /healthz is refused (401)"
                  " and the dashboard lets no one in; make one with"
                  " `stackshift keys create --name NAME` on this database", style="yellow",
                  markup=False)


def host_in_url(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


@click.group()
def keys() -> None:
    """Create, list and revoke the API keys `stackshift server` accepts."""


@keys.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. 'billing-service'.")
@database_only_option
@_as_json
def create_key(name: str, database_url: str | None, as_json: bool) -> None:
    """Create a key and print it. It is shown this once: only its hash is stored."""
    with _service(database_url, creates=True) as service:
        try:
            listed, secret = service.create_api_key(name)
        except ValidationError as exc:
            raise bad_input(str(exc)) from None
    if as_json:
        echo_json({**_key_json(listed), "key": secret})
        return
    click.echo(secret)
    click.echo(f"Created key {listed.id} ({listed.name!r}, prefix {listed.prefix}). "
               "Store it now: it cannot be shown again.", err=True)


@keys.command("list")
@database_only_option
@_as_json
def list_keys(database_url: str | None, as_json: bool) -> None:
    """List keys (never the keys themselves: id, name, prefix, dates)."""
    with _service(database_url) as service:
        found = service.list_api_keys()
    if as_json:
        echo_json([_key_json(k) for k in found])
        return
    if not found:
        click.echo("No API keys. Create one with: stackshift keys create --name NAME")
        return
    table = _table()
    columns: tuple[tuple[str, Fit], ...] = (
        ("ID", "whole"), ("NAME", "wraps"), ("PREFIX", "whole"), ("CREATED", "folds"),
        ("LAST USED", "folds"), ("STATUS", "folds"))
    for header, fit in columns:
        table.add_column(header, fit=fit)
    for k in found:
        status = "active" if k.active else f"revoked {when(k.revoked_at)}"
        table.add_row(k.id, k.name, k.prefix, when(k.created_at), when(k.last_used_at), status)
    console().print(table)


@keys.command("revoke")
@click.argument("key")
@database_only_option
@_as_json
def revoke_key(key: str, database_url: str | None, as_json: bool) -> None:
    """Revoke KEY (its id, listed prefix, or the key itself, which is not shown
    back). Requests with it get 401 at once."""
    with _service(database_url) as service:
        try:
            revoked = service.revoke_api_key(key)
        except ApiKeyNotFoundError as exc:
            raise not_found(str(exc)) from None
        except InvalidTransitionError as exc:
            raise failed(str(exc)) from None
        except ValidationError as exc:
            raise bad_input(str(exc)) from None
    if as_json:
        echo_json(_key_json(revoked))
        return
    click.echo(f"Revoked key {revoked.id} ({revoked.name!r}, prefix {revoked.prefix}).")


@click.group()
def endpoints() -> None:
    """Register, list and remove the handler routes the server invokes (push mode)."""


def _endpoint_json(e: Endpoint) -> dict[str, Any]:
    shown = {"id": e.id, "url": e.url, "jobs": e.jobs, "concurrency": e.concurrency,
             "created_at": iso(e.created_at), "updated_at": iso(e.updated_at)}
    if e.secret is not None:
        shown["secret"] = e.secret
    return shown


#: The concurrency of a route ``endpoints add`` registers for the first time.
NEW_ENDPOINT_CONCURRENCY = 10


@endpoints.command("add")
@click.argument("url")
@click.option("--jobs", "jobs", required=True,
              help="Comma-separated names of the jobs the route executes.")
@click.option("--concurrency", type=Whole(1, 1000),
              help=f"Runs posted to the route at once [default: {NEW_ENDPOINT_CONCURRENCY}"
                   ", or as it was for a URL added before].")
@database_only_option
@_as_json
def add_endpoint(url: str, jobs: str, concurrency: int | None, database_url: str | None,
                 as_json: bool) -> None:
    """Register the handler route at URL and print its signing secret.

    Give the secret to the application (STACKSHIFT_SIGNING_SECRET). Adding the
    same URL again sets the jobs it executes and keeps its id, its secret, its
    concurrency (unless --concurrency is given) and the rules its application
    registered for the jobs it keeps (key concurrency limits, failure handlers).
    """
    names = [name.strip() for name in jobs.split(",") if name.strip()]
    with _service(database_url, creates=True) as service:
        before = next((e for e in service.list_endpoints() if e.url == url), None)
        try:
            if before is None:
                added = service.register_endpoint(
                    url, names, concurrency=concurrency or NEW_ENDPOINT_CONCURRENCY)
            else:
                added = service.register_endpoint(
                    url, names, concurrency=concurrency or before.concurrency,
                    key_limits={j: n for j, n in before.key_limits.items() if j in names},
                    on_failure={j: h for j, h in before.on_failure.items() if j in names})
        except ValidationError as exc:
            raise bad_input(str(exc)) from None
    if as_json:
        echo_json(_endpoint_json(added))
        return
    click.echo(added.secret)
    click.echo(f"Endpoint {added.id}: {added.url} executes {', '.join(added.jobs)}. "
               "The line above is its signing secret (STACKSHIFT_SIGNING_SECRET).", err=True)


@endpoints.command("list")
@database_only_option
@_as_json
def list_endpoints(database_url: str | None, as_json: bool) -> None:
    """List the registered handler routes (never their secrets)."""
    with _service(database_url) as service:
        found = service.list_endpoints()
    if as_json:
        echo_json([_endpoint_json(e) for e in found])
        return
    if not found:
        click.echo("No endpoints. Register one with: stackshift endpoints add URL --jobs NAMES")
        return
    console().print(_endpoints_table(found))


def _endpoints_table(found: list[Endpoint]) -> Table:
    """One route per row: its id, URL, concurrency, jobs and when it was registered."""
    table = _table()
    columns: tuple[tuple[str, Fit], ...] = (
        ("ID", "whole"), ("URL", "whole"), ("CONCURRENCY", "folds"), ("JOBS", "folds"),
        ("CREATED", "folds"))
    for header, fit in columns:
        table.add_column(header, fit=fit,
                         justify="right" if header == "CONCURRENCY" else "left")
    for e in found:
        table.add_row(e.id, e.url, str(e.concurrency), ", ".join(e.jobs), when(e.created_at))
    return table


@endpoints.command("remove")
@click.argument("endpoint_id")
@database_only_option
@_as_json
def remove_endpoint(endpoint_id: str, database_url: str | None, as_json: bool) -> None:
    """Stop invoking the route ENDPOINT_ID (runs in flight finish)."""
    with _service(database_url) as service:
        try:
            removed = service.remove_endpoint(endpoint_id)
        except EndpointNotFoundError as exc:
            raise not_found(str(exc)) from None
        except ValidationError as exc:
            raise bad_input(str(exc)) from None
    if as_json:
        echo_json(_endpoint_json(removed))
        return
    click.echo(f"Removed endpoint {removed.id} ({removed.url}).")


#: Register these on the ``stackshift`` group: ``cli.add_command(command)``.
COMMANDS = (server, keys, endpoints)
