"""``stackshift dev APP``: everything a developer needs on one machine, in one command.

It migrates the database, starts the dashboard with the HTTP API on 127.0.0.1
(open without login), lets the app enqueue demo runs through an optional
``dev_seed(app)`` hook, prints its banner, starts a worker, and shows the run
board until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.text import Text

from ..client import DEFAULT_DATABASE_URL, StackShift
from ..wording import shell_word
from ..worker import Worker
from ..worker.worker import STOP_SIGNALS
from .failures import bad_input
from .liveview import RunBoard, show_board
from .loader import load_app
from .options import DATABASE_ENV, Whole, not_empty
from .render import console, shown_url
from .worker import configure_logging

SEED_HOOK = "dev_seed"
SHUTDOWN_GRACE = "5s"
#: Beside the banner's command for an API key: without one, /v1 answers 401.
API_KEY_HINT = "# a key for the /v1 API (Authorization: Bearer KEY)"


@dataclass
class DevServices:
    """What ``dev`` runs beside its view; each entry has a one-line description."""

    worker: Worker
    dashboard: DashboardServer | None = None
    dashboard_error: str | None = None

    def describe(self) -> list[tuple[str, str]]:
        w = self.worker
        rows = [("worker", f"{w.id}, concurrency {w.concurrency}, jobs: {', '.join(w.jobs)}")]
        if self.dashboard is not None:
            rows.append(("dashboard", f"{self.dashboard.url}  (API under {self.dashboard.url}v1)"))
            if self.dashboard.busy_port is not None:
                rows.append(("", f"port {self.dashboard.busy_port} is in use: "
                                 f"serving on {self.dashboard.port}"))
        elif self.dashboard_error:
            rows.append(("dashboard", f"not started: {self.dashboard_error}"))
        return rows

    def stop(self) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()
        self.worker.stop()


@dataclass
class DashboardServer:
    """The dashboard (open, on 127.0.0.1) and the HTTP API, served from a thread."""

    server: Any
    thread: threading.Thread
    url: str
    port: int
    #: The port asked for when it was busy and another was taken instead.
    busy_port: int | None = None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


HOST = "127.0.0.1"


def bindable(host: str, port: int) -> int | None:
    """The port a socket gets when bound to ``port`` (any free one for 0), or
    None when that port is in use. As for the server's own socket, a port left
    in TIME_WAIT by the connections of a dev just stopped counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return None
        return int(probe.getsockname()[1])


def free_port(host: str, wanted: int) -> int:
    """``wanted`` if it can be bound, else any free port."""
    for port in (wanted, 0):
        found = bindable(host, port)
        if found is not None:
            return found
    raise OSError(f"no free port on {host}")


def start_dashboard(app: StackShift, port: int) -> DashboardServer:
    """Serve the dashboard without login, bound to 127.0.0.1 only, plus the API."""
    import uvicorn

    from ..dashboard import beside_api, create_dashboard
    from ..server.app import create_app

    host = HOST
    wanted, port = port, free_port(host, port)
    service = app._service
    asgi = beside_api(create_app(service), create_dashboard(service, auth="open"))
    config = uvicorn.Config(asgi, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="stackshift-dashboard", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    if not server.started:
        raise OSError(f"could not serve on {host}:{port}")
    return DashboardServer(server, thread, f"http://{host}:{port}/", port,
                           busy_port=wanted if wanted not in (0, port) else None)


def start_services(app: StackShift, *, concurrency: int, port: int | None = 8000) -> DevServices:
    """Make the worker and start (unless ``port`` is None) the dashboard in a
    background thread. The worker starts later, with ``services.worker.start()``:
    dev starts it after its banner, so nothing the worker logs comes before it.

    Without the server extra installed, dev still runs the worker and says why
    there is no dashboard.
    """
    worker = app.worker(concurrency=concurrency, shutdown_grace=SHUTDOWN_GRACE)
    services = DevServices(worker)
    if port is None:
        return services
    try:
        services.dashboard = start_dashboard(app, port)
    except ImportError as exc:
        services.dashboard_error = (
            f"install the server extra: pip install 'stackshift[server]' ({exc})"
        )
    except OSError as exc:
        services.dashboard_error = str(exc)
    return services


def run_seed(module: ModuleType, app: StackShift, err: Console) -> list[str]:
    """Call the app's ``dev_seed(app)`` hook; return the commands it suggests.

    A failing hook is reported and dev carries on: the worker is still useful.
    """
    hook = getattr(module, SEED_HOOK, None)
    if not callable(hook):
        return []
    try:
        hints: Iterable[str] | None = hook(app)
    except Exception as exc:
        err.print(f"{SEED_HOOK}() failed: {type(exc).__name__}: {exc}", style="red", markup=False)
        err.print(traceback.format_exc(), style="dim", markup=False)
        return []
    return [str(hint) for hint in hints or []]


def program_name() -> str:
    """How to call this command again: ``stackshift`` when that is on the PATH,
    else the path it was started by (``.venv/bin/stackshift``)."""
    started = sys.argv[0]
    if os.path.basename(started) != "stackshift":
        return "stackshift"
    found = shutil.which("stackshift")
    if found and os.path.realpath(found) == os.path.realpath(started):
        return "stackshift"
    return started


def banner(
    spec: str,
    app: StackShift,
    version: int,
    services: DevServices,
    hints: list[str],
) -> Text:
    text = Text()
    text.append("StackShift dev", style="bold")
    text.append(f"  {spec}\n")
    rows = [("database", f"{shown_url(app.database_url)} (schema version {version})")]
    rows += services.describe()
    for name, value in rows:
        text.append(f"  {name:<10}", style="bold")
        text.append(f"{value}\n")
    text.append("\nFrom another terminal (in this folder):\n", style="bold")
    commands: list[str] = []
    if app.database_url and app.database_url != DEFAULT_DATABASE_URL:
        commands.append(f"export {DATABASE_ENV}={shell_word(app.database_url)}")
    if hints:
        commands += hints
    elif app.jobs:
        commands.append(f"stackshift start {app.jobs[0]} '{{}}'")
    commands += [
        "stackshift runs list",
        "stackshift runs show RUN_ID        # also: runs logs, runs timeline, runs retry",
        "stackshift events send NAME '{...}' --correlation-key KEY",
    ]
    if services.dashboard is not None:
        commands.append(f"stackshift keys create --name dev   {API_KEY_HINT}")
    program = program_name()
    for command in commands:
        if command.startswith("stackshift "):
            command = program + command.removeprefix("stackshift")
        text.append(f"  {command}\n", style="cyan")
    text.append("Stop with Ctrl-C.\n", style="dim")
    return text


class _Stopper:
    """First Ctrl-C / SIGTERM asks for a clean stop; a second one forces it: once
    the services are stopping (``stopping`` set), the worker hands its running
    runs back at once (``forced``); before, it interrupts what is going on."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}
        self.stopping: Worker | None = None
        self.forced = False

    def __enter__(self) -> _Stopper:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.event.is_set():
            self.event.set()
        elif self.stopping is not None:
            self.forced = True
            self.stopping.hurry()
        else:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--db", "--database-url", "database_url", envvar=DATABASE_ENV, show_envvar=True,
              default=DEFAULT_DATABASE_URL, show_default=True, callback=not_empty,
              help="Database for an app built with StackShift().")
@click.option("--concurrency", type=Whole(min=1), default=10, show_default=True)
@click.option("--port", type=Whole(0, 65535), default=8000, show_default=True,
              help="Dashboard port on 127.0.0.1. When the default is busy a free one is "
                   "taken; a port given here that is busy is refused (exit 2).")
@click.option("--no-dashboard", is_flag=True, help="Run only the worker and the run board.")
@click.option("--seed/--no-seed", default=True, show_default=True,
              help=f"Call the app's {SEED_HOOK}(app) hook to enqueue demo runs.")
def dev(app_spec: str, database_url: str, concurrency: int, port: int, no_dashboard: bool,
        seed: bool) -> None:
    """Run APP on one machine: migrate, work its runs, serve the dashboard, show runs live.

    APP is module:attribute, path/to/file.py or path/to/file.py:attribute. If
    the module defines dev_seed(app), it is called once at start to enqueue
    demo runs (use idempotency keys so a restart adds nothing). It is called
    before the worker starts: it can start runs, not wait for them.
    """
    # Its output closed (| head, a log collector that died), dev goes on, quiet,
    # until it is asked to stop, as `stackshift worker` does.
    out = console(goes_on_when_closed=True)
    err = console(stderr=True, goes_on_when_closed=True)
    port_given = click.get_current_context().get_parameter_source("port")
    if port_given != ParameterSource.DEFAULT and not no_dashboard and bindable(HOST, port) is None:
        # A port asked for by name is kept (a bookmark, a proxy), never swapped
        # for another; only the default gives way to a free one.
        raise bad_input(f"port {port} on {HOST} is in use: give another --port, or leave "
                        "it out to take a free one")
    os.environ[DATABASE_ENV] = database_url
    app, module = load_app(app_spec)
    chosen = click.get_current_context().get_parameter_source("database_url")
    if app.database_url != database_url and chosen != ParameterSource.DEFAULT:
        err.print(f"warning: {app_spec} uses its own database {shown_url(app.database_url)}",
                  style="yellow", markup=False)
    if not app.jobs:
        err.print(f"warning: {app_spec} defines no jobs; the worker has nothing to run",
                  style="yellow", markup=False)
    version = app.migrate()
    log = configure_logging("INFO", out, attempts=False)  # the board says how attempts end
    with _Stopper() as stopper:
        try:
            services = start_services(app, concurrency=concurrency,
                                      port=None if no_dashboard else port)
            try:
                hints = run_seed(module, app, err) if seed else []
                out.print(banner(app_spec, app, version, services, hints))
                show_board(RunBoard(app), out, stopper.event, services.worker.start, log)
                out.print("Stopping… (Ctrl-C again to hand running attempts back now)",
                          style="dim")
            finally:
                stopper.stopping = services.worker
                services.stop()
        except KeyboardInterrupt:
            err.print("Stopped without waiting for running attempts; "
                      "their leases expire and another worker takes them back.", style="yellow")
            raise click.exceptions.Exit(130) from None
        finally:
            app.close()
    if stopper.forced:
        err.print("Stopped without waiting for running attempts; they were handed back "
                  "to their queue.", style="yellow")
        raise click.exceptions.Exit(130)
    out.print("Stopped.", style="dim")
