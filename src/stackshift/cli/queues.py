"""``stackshift queues``: settings, numbers, pause and resume, dead letters, bulk retry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..durations import parse_typed_whole, span
from ..errors import QueueNotFoundError
from ..flowcontrol import MAX_RETRY_PAGE, RETRY_PAGE
from ..models import QueueInfo
from ..settings import Settings
from ..store.queues import KEEP
from ..wording import did_you_mean, per_minute
from .failures import bad_input
from .options import (
    Whole,
    database_url_option,
    duration,
    json_option,
    list_filter,
    open_client,
    say_next_page,
)
from .render import (
    _table,
    console,
    echo_json,
    paused_text,
    runs_table,
    status_text,
)

if TYPE_CHECKING:
    from ..client import StackShift

F = TypeVar("F", bound=Callable[..., Any])

_STATUSES = ("scheduled", "queued", "running", "waiting", "retrying", "completed", "failed",
             "cancelled")


def _window_option(fn: Any) -> Any:
    return click.option("--window", default="15m", show_default=True,
                        help="Throughput and failure rate over this long (1s to 90d).")(fn)


def _limit(queue: QueueInfo) -> str:
    parts = []
    if queue.concurrency is not None:
        parts.append(f"{queue.concurrency} at once")
    if queue.rate_limit is not None:
        parts.append(queue.rate_limit)
    return ", ".join(parts) or "-"


def _rate(queue: QueueInfo) -> str:
    """The failure rate; 0% and 100% only when none or all failed."""
    rate = queue.failure_rate
    if rate is None:
        return "-"
    if 0 < rate < 0.005:
        return "<1%"
    if 0.995 <= rate < 1:
        return ">99%"
    return f"{rate:.0%}"


def _per_minute(queue: QueueInfo) -> str:
    return per_minute(queue.throughput)


def _window(seconds: float) -> str:
    """The window as a duration is written: ``15m``, ``1h30m``, ``7d``."""
    parts, rest = [], round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _oldest(queue: QueueInfo) -> str:
    return "-" if queue.oldest_queued_age is None else span(queue.oldest_queued_age)


def _workers(queue: QueueInfo) -> Text:
    """The live workers that take the queue; none, while runs of it are due, in red
    (``-`` from a server too old to count them)."""
    if queue.live_workers is None:
        return Text("-")
    stranded = queue.live_workers == 0 and queue.oldest_queued_age is not None
    return Text(str(queue.live_workers), style="red" if stranded else "")


def queues_table(queues: list[QueueInfo]) -> Table:
    table = _table()
    for header in ("QUEUE", "STATE", "WORKERS", "LIMITS", "QUEUED", "RUNNING", "WAITING",
                   "FAILED", "PER MIN", "FAIL %", "OLDEST"):
        table.add_column(header, fit="whole" if header == "QUEUE" else "folds",
                         justify="left" if header in ("QUEUE", "STATE", "LIMITS") else "right")
    for q in queues:
        c = q.counts
        table.add_row(
            q.name, paused_text() if q.paused else "active", _workers(q), _limit(q),
            str(c.get("queued", 0)),  # due now: scheduled and retrying ones are in `show`
            str(c.get("running", 0)), str(c.get("waiting", 0)), str(c.get("failed", 0)),
            _per_minute(q), _rate(q), _oldest(q),
        )
    return table


def queue_detail(q: QueueInfo) -> Table:
    table = _table()
    table.show_header = False
    table.add_column("", style="bold")
    table.add_column("", fit="wraps")
    table.add_row("queue", q.name)
    table.add_row("state", paused_text() if q.paused else "active")
    workers = _workers(q)
    if q.live_workers == 0 and q.oldest_queued_age is not None:
        workers.append(" (its due runs wait until a worker that takes this queue starts)")
    table.add_row("live workers", workers)
    table.add_row("concurrency", "-" if q.concurrency is None else str(q.concurrency))
    table.add_row("rate limit", q.rate_limit or "-")
    table.add_row("max attempts", "-" if q.max_attempts is None else str(q.max_attempts))
    for status in _STATUSES:
        if q.counts.get(status):
            table.add_row(status_text(status), str(q.counts[status]))
    table.add_row(f"last {_window(q.window)}",
                  f"{q.completed_in_window} completed, {q.failed_in_window} failed "
                  f"({_per_minute(q)}/min, failure rate {_rate(q)})")
    table.add_row("oldest queued", _oldest(q))
    return table


def _show(queue: QueueInfo, as_json: bool) -> None:
    if as_json:
        echo_json(queue)
    else:
        console().print(queue_detail(queue))


@click.group()
def queues() -> None:
    """Queue settings and numbers; pause, resume, limits, dead letters."""


@queues.command("list")
@_window_option
@json_option
@database_url_option
def list_queues(window: str = "15m", as_json: bool = False,
                database_url: str | None = None) -> None:
    """Every queue that holds runs or has settings."""
    seconds = duration(window, "--window")
    with open_client(database_url) as app:
        found = app.queues.list(seconds)
    if as_json:
        echo_json(found)
        return
    if not found:
        console().print("No queues yet. One is listed once a run is started on it "
                        "(stackshift start JOB --queue NAME) or it has settings "
                        "(stackshift queues set NAME ...).", markup=False)
        return
    console().print(queues_table(found))


@queues.command()
@click.argument("name")
@_window_option
@json_option
@database_url_option
def show(name: str, window: str, as_json: bool, database_url: str) -> None:
    """Settings, runs per status, throughput, failure rate and oldest queued run."""
    seconds = duration(window, "--window")
    with open_client(database_url) as app:
        _show(app.queues.get(name, seconds), as_json)


@queues.command()
@click.argument("name")
@json_option
@database_url_option
def pause(name: str, as_json: bool, database_url: str) -> None:
    """Start nothing more from NAME until resumed (running runs carry on)."""
    with open_client(database_url, creates=True) as app:
        _show(_warning_if_new(app, name, app.queue(name).pause), as_json)


@queues.command()
@click.argument("name")
@json_option
@database_url_option
def resume(name: str, as_json: bool, database_url: str) -> None:
    """Let NAME's runs start again."""
    with open_client(database_url, creates=True) as app:
        _show(_warning_if_new(app, name, app.queue(name).resume), as_json)


def _setting(value: str | None, option: str, convert: Any) -> Any:
    """KEEP when not given, None for 'none', else the converted value."""
    if value is None:
        return KEEP
    if value.strip().lower() == "none":
        return None
    try:
        return convert(value)
    except ValueError:
        raise bad_input(f"{option} must be a number or 'none', got {value!r}") from None


@queues.command("set")
@click.argument("name")
@click.option("--concurrency", metavar="N|none", help="Most runs running at once, all workers.")
@click.option("--rate-limit", metavar="N/PERIOD|none", help="e.g. 100/m, 10/s, 1000/h.")
@click.option("--max-attempts", metavar="N|none",
              help="Default for runs whose job and start set none.")
@json_option
@database_url_option
def set_(name: str, concurrency: str | None, rate_limit: str | None, max_attempts: str | None,
         as_json: bool, database_url: str) -> None:
    """Change NAME's settings; 'none' removes one, options left out stay as they are."""
    changes = {
        "concurrency": _setting(concurrency, "--concurrency", parse_typed_whole),
        "rate_limit": _setting(rate_limit, "--rate-limit", str),
        "max_attempts": _setting(max_attempts, "--max-attempts", parse_typed_whole),
    }
    if all(value is KEEP for value in changes.values()):
        raise bad_input("give at least one of --concurrency, --rate-limit, --max-attempts")
    with open_client(database_url, creates=True) as app:
        _show(_warning_if_new(app, name, lambda: app.queue(name).configure(**changes)),
              as_json)


def _warning_if_new(app: StackShift, name: str, change: Callable[[], QueueInfo]
                    ) -> QueueInfo:
    """``change()``'s queue, said on stderr once it is made when no run, setting or
    registered job had used queue ``name`` before (a mistyped name?): its settings
    are saved all the same, for runs to come. A refused change says nothing more."""
    used = _names_in_use_if_new(app, name)
    changed = change()
    if used is not None and name not in used:
        click.echo(f"warning: no run, setting or registered job has used queue {name!r} "
                   f"yet{did_you_mean(name, used)}; its settings are saved for runs to come",
                   err=True)
    return changed


def _names_in_use_if_new(app: StackShift, name: str) -> set[str] | None:
    """The queue names runs, settings and registered jobs use, when ``name`` holds
    no runs and has no settings; ``None`` when it has, or cannot be asked."""
    try:
        app.queues.get(name)
        return None
    except QueueNotFoundError:
        pass
    except Exception:  # advice only
        return None
    try:
        # A job that names no queue runs on the default one.
        return ({q.name for q in app.queues.list()}
                | {j.queue or Settings.default_queue for j in app.list_jobs()})
    except Exception:  # advice only
        return None


@queues.command("dead-letters")
@click.argument("name")
@click.option("--job", callback=list_filter, help="Only runs of this job.")
@click.option("--limit", type=Whole(1, 1000), default=20, show_default=True)
@click.option("--cursor", help="Next page: the cursor printed under the previous one.")
@json_option
@database_url_option
def dead_letters(name: str, job: str | None, limit: int, cursor: str | None, as_json: bool,
                 database_url: str) -> None:
    """Runs of NAME that failed their last attempt, the latest failure first."""
    with open_client(database_url) as app:
        page = app.queue(name).dead_letters(job=job, limit=limit, cursor=cursor)
    if as_json:
        echo_json({"items": page.items, "next_cursor": page.next_cursor})
        return
    out = console()
    if not page.items:
        out.print("No dead letters." if cursor is None else "No more dead letters.")
        return
    out.print(runs_table(page.items, width=out.width))
    if page.next_cursor:
        say_next_page(out, page.next_cursor)


def retry_options(command: F) -> F:
    """The options of a bulk retry: --status, --limit and --page-size."""
    for option in reversed([
        click.option("--status", type=click.Choice(["failed", "cancelled"]),
                     default="failed", show_default=True),
        click.option("--limit", type=Whole(1), help="Retry at most this many."),
        click.option("--page-size", type=Whole(1, MAX_RETRY_PAGE), default=RETRY_PAGE,
                     show_default=True, help="Runs retried per request through a server"
                                             " (per read on the database)."),
    ]):
        command = option(command)
    return command


@queues.command()
@click.argument("name")
@click.option("--job", callback=list_filter, help="Only runs of this job.")
@retry_options
@json_option
@database_url_option
def retry(name: str, job: str | None, status: str, limit: int | None, page_size: int,
          as_json: bool, database_url: str) -> None:
    """Retry NAME's failed (or cancelled) runs with a fresh attempt budget.

    Runs are taken newest first, a page at a time, so any number can be retried
    (through a server too); a run this command retried that fails again before
    it ends is not retried twice.
    """
    which = f"of job {job} on queue {name}" if job else f"of queue {name}"
    retry_with_progress(database_url, as_json, which, queue=name, job=job,
                        status=status, limit=limit, page_size=page_size,
                        check=lambda app: app.queue(name).info())


def retry_with_progress(database_url: str | None, as_json: bool, which: str,
                        check: Callable[[StackShift], object] | None = None,
                        **filters: Any) -> None:
    """``runs.retry_many(**filters)`` with a running count on a terminal's stderr,
    then the ids (``--json``) or one line: "Retried N failed runs {which}.".
    ``check(app)`` runs first: a queue's lookup, refusing a name no queue has."""
    err = console(stderr=True)
    shown = not as_json and err.is_terminal and not err.is_dumb_terminal
    with open_client(database_url) as app, Progress(
            SpinnerColumn(), TextColumn("Retried {task.completed:,} runs"), TimeElapsedColumn(),
            console=err, transient=True, disable=not shown) as bar:
        if check is not None:
            check(app)
        task = bar.add_task("retry", total=None)
        retried = app.runs.retry_many(
            **filters, progress=lambda total: bar.update(task, completed=total))
    if as_json:
        echo_json({"retried": retried, "count": len(retried)})
        return
    count = len(retried)
    console().print(f"Retried {count} {filters['status']} run{'s' if count != 1 else ''} "
                    f"{which}.", markup=False)
