"""``stackshift worker``: execute the runs of an app's jobs until SIGTERM or Ctrl-C."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler

from .. import runlogs
from ..client import API_KEY_ENV, URL_ENV, StackShift
from ..errors import AuthenticationError, StackShiftError, ValidationError
from ..worker.invocation import attempts_log
from .failures import bad_input, output_gone
from .loader import load_app
from .options import DATABASE_ENV, Whole, duration, refusals_in_option_terms, split_list
from .render import console, one_line, shown_as_is, shown_url


class _RunContext(logging.Filter):
    """Adds ``_stackshift_run`` to each record: the job and run whose handler
    emitted it, if any; and ``_stackshift_fields``: its fields as ``name=value``
    pairs (private names: not fields of the record themselves).

    Leaves out what libraries log below WARNING about the engine's own requests.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if runlogs.ENGINE_CALL.get() and record.levelno < logging.WARNING:
            return False  # e.g. a remote worker's every claim, as httpx logs it
        invocation = runlogs.CURRENT.get()
        record._stackshift_run = (
            f"{invocation.run.job} {invocation.run.id}: " if invocation is not None else ""
        )
        fields = runlogs.record_fields(record)[0]
        record._stackshift_fields = (
            "" if fields is None else "  " + runlogs.fields_line(json.loads(fields)))
        return True


class HeldLines(logging.StreamHandler):  # type: ignore[type-arg]
    """One plain line per record on a stream; between :meth:`hold` and
    :meth:`stop_holding`, the lines wait, with their records' times, for whoever
    prints them among lines of its own in time order (:meth:`take`)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._held: list[tuple[float, str]] | None = None

    def format(self, record: logging.LogRecord) -> str:
        """The record on one line, its control characters escaped (a message or
        traceback of several lines shows its newlines as ``\\n``): one record per
        line for a log collector, no escape sequence passed on."""
        return one_line(super().format(record))

    def emit(self, record: logging.LogRecord) -> None:  # under the handler's lock
        if self._held is None:
            super().emit(record)
            return
        try:
            self._held.append((record.created, self.format(record)))
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            output_gone()  # its reader went away: no "Logging error" for each line
            return
        super().handleError(record)

    def hold(self) -> None:
        self.acquire()
        try:
            if self._held is None:
                self._held = []
        finally:
            self.release()

    def take(self) -> list[tuple[float, str]]:
        """The lines held since the last call, oldest first."""
        self.acquire()
        try:
            taken = self._held or []
            if self._held is not None:
                self._held = []
        finally:
            self.release()
        return taken

    def stop_holding(self) -> None:
        """Write what is still held, and each record at once from now on."""
        self.acquire()
        try:
            for _, line in self._held or []:
                self.stream.write(line + self.terminator)
            self._held = None
            self.flush()
        finally:
            self.release()


class _Whole(logging.Formatter):
    """A record whose arguments do not fit its message (``log.info("%d", "x")``)
    shows as the run's logs keep it (its message, arguments and why), rather than
    as a "Logging error" of many lines in place of the record."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            record.getMessage()
        except Exception:
            record = logging.makeLogRecord(
                {**record.__dict__, "msg": runlogs.message_text(record), "args": None})
        return super().format(record)


class _Shown(_Whole):
    """A record for a terminal: its lines kept, its other control characters escaped
    (a message or an error holding an escape sequence shows it as ``\\x1b[2J``
    rather than clearing or resetting the terminal)."""

    def format(self, record: logging.LogRecord) -> str:
        return shown_as_is(super().format(record))


def configure_logging(level: str, out: Console | None = None, *,
                      attempts: bool = True) -> logging.Handler:
    """Show worker warnings, failed attempts (``stackshift.attempts``, unless
    ``attempts`` is false) and the handlers' own log records on ``out`` (default
    stderr); return the handler that does.

    A terminal gets Rich's layout; a file or pipe gets one plain line per record
    (a :class:`HeldLines`).
    """
    out = out or console(stderr=True)
    handler: logging.Handler
    if out.is_terminal:
        handler = RichHandler(console=out, show_path=False, markup=False, rich_tracebacks=False)
        handler.setFormatter(_Shown("%(_stackshift_run)s%(message)s%(_stackshift_fields)s"))
    else:
        handler = HeldLines(out.file)
        formatter = _Whole(
            "%(asctime)s  %(levelname)-7s %(_stackshift_run)s%(message)s%(_stackshift_fields)s"
            "  [%(name)s]", "%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    handler.addFilter(_RunContext())
    if not attempts:
        handler.addFilter(lambda record: record.name != attempts_log.name)
    handler.setLevel(level.upper())
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > handler.level:
        root.setLevel(handler.level)
    return handler


def load_app_through(spec: str, url: str, api_key: str | None) -> StackShift:
    """Import the app as a client of the server at ``url``: a remote worker.

    An app built with ``StackShift()`` then talks to the server; the database
    URL, if any is set in the environment, is dropped so that it is never used.
    """
    # Imported here: the HTTP client's schemas take a tenth of a second, which
    # every other command would pay at start-up.
    from ..remote import check_base_url

    try:
        check_base_url(url)
    except ValidationError as exc:
        raise bad_input(f"--url ({URL_ENV}) {str(exc).removeprefix('base_url ')}") from None
    if not api_key:
        raise bad_input(f"a worker on {url} needs an API key (--api-key or {API_KEY_ENV})")
    os.environ.pop(DATABASE_ENV, None)
    os.environ[URL_ENV] = url
    os.environ[API_KEY_ENV] = api_key
    app, _module = load_app(spec)
    if app.base_url is None:
        raise bad_input(
            f"{spec} uses its own database {shown_url(app.database_url)}: build it with "
            "StackShift() (no database_url) to run it as a remote worker"
        )
    return app


def load_app_on(spec: str, database_url: str | None) -> StackShift:
    """Import the app with ``database_url`` as its default database.

    An app built with ``StackShift()`` reads ``STACKSHIFT_DATABASE_URL``; an app
    that names its own database keeps it, with a warning.
    """
    if database_url:
        os.environ[DATABASE_ENV] = database_url
    app, _module = load_app(spec)
    if database_url and app.database_url != database_url:
        click.echo(
            f"warning: {spec} uses its own database {shown_url(app.database_url)}, "
            f"not {shown_url(database_url)}",
            err=True,
        )
    return app


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--queues", help="Comma-separated queues to serve (default: every queue).")
@click.option("--concurrency", type=Whole(min=1), default=10, show_default=True,
              help="Runs executed at once.")
@click.option("--lease", default="30s", show_default=True,
              help="Lease on each running run, renewed while it works.")
@click.option("--shutdown-grace", default="30s", show_default=True,
              help="On SIGTERM, how long running attempts may take to finish.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--db", "--database-url", "database_url", envvar=DATABASE_ENV, show_envvar=True,
              default=None,
              help="Database for an app built with StackShift() (default: the app's own).")
@click.option("--url", envvar=URL_ENV, show_envvar=True, default=None,
              help="Work through the `stackshift server` at URL instead of the database.")
@click.option("--api-key", envvar=API_KEY_ENV, show_envvar=True, default=None,
              help="API key for --url.")
def worker(
    app_spec: str,
    queues: str | None,
    concurrency: int,
    lease: str,
    shutdown_grace: str,
    log_level: str,
    database_url: str | None,
    url: str | None,
    api_key: str | None,
) -> None:
    """Execute runs of the jobs defined in APP until SIGTERM or Ctrl-C.

    APP is module:attribute, path/to/file.py or path/to/file.py:attribute.
    With --url (and --api-key) the worker holds no database credentials: it
    claims runs and records their steps through the server. A server that
    cannot be reached yet is waited for (tried again every few seconds); a
    refused API key ends the worker at once. Its banner comes once it is
    registered and its jobs' defaults are recorded: runs started from then on,
    from anywhere, get their jobs' queue and max_attempts. On
    SIGTERM the worker stops claiming, lets running attempts finish within the
    grace period and hands back the rest; nothing is lost.
    """
    lease_seconds = duration(lease, "--lease")
    grace = duration(shutdown_grace, "--shutdown-grace")
    served = split_list(queues)
    if queues is not None and served is None:  # e.g. --queues "$QUEUES" with it unset
        raise bad_input(f"--queues names no queue, got {queues!r}: "
                        "leave it out to serve every queue")
    if url and database_url:
        source = click.get_current_context().get_parameter_source
        given = click.core.ParameterSource.COMMANDLINE
        if source("url") == given and source("database_url") == given:
            raise bad_input("give --database-url or --url, not both")
        if source("url") != given:
            url = None  # as for clients, STACKSHIFT_DATABASE_URL wins over STACKSHIFT_URL
    app = load_app_through(app_spec, url, api_key) if url else load_app_on(app_spec, database_url)
    with refusals_in_option_terms():
        w = app.worker(concurrency=concurrency, queues=served, lease=lease_seconds,
                       shutdown_grace=grace)
    if not w.jobs:
        raise bad_input(f"{app_spec} defines no jobs; nothing to execute")
    configure_logging(log_level)
    err = console(stderr=True)
    serving = (f"server {app.base_url}" if app.base_url
               else f"database {shown_url(app.database_url)}")
    started = False

    def say_ready() -> None:
        nonlocal started
        started = True
        err.print(
            f"worker {w.id}: {len(w.jobs)} job(s) ({', '.join(w.jobs)}), "
            f"queues {', '.join(served) if served else 'all'}, concurrency {concurrency}, "
            f"{serving}. "
            "Stop with Ctrl-C or SIGTERM.",
            markup=False,
        )

    try:
        w.run(ready=say_ready)  # the banner once runs started elsewhere get the jobs' defaults
    finally:
        app.close()
    if w.refused is not None:  # its API key, revoked while it ran: exit 1
        raise AuthenticationError(
            f"worker {w.id}: stopped: the server at {app.base_url} refused the API key:"
            f" {w.refused}")
    if w.detached is not None:  # its SQLite file deleted or replaced: exit 1
        raise StackShiftError(f"worker {w.id}: stopped: {w.detached}")
    try:  # (Rich would exit 1 on a closed output)
        if started:
            click.echo(f"worker {w.id}: stopped.", err=True)
        else:  # stopped while it waited for its server
            click.echo(f"worker {w.id}: stopped before the {serving} answered.", err=True)
    except BrokenPipeError:  # the worker stopped as asked: a closed output fails nothing
        output_gone()
