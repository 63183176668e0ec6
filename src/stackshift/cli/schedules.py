"""``stackshift schedules``: recurring runs on a cron expression."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import click
from rich.table import Table

from ..errors import ScheduleNotFoundError
from ..models import Schedule
from .failures import not_found
from .options import (
    database_url_option,
    json_option,
    open_client,
    parse_json_argument,
)
from .render import (
    Fit,
    _table,
    age,
    compact_json,
    console,
    due,
    echo_json,
    paused_text,
    status_text,
    when,
)
from .start import warn_if_no_worker_registered

#: How the columns of ``schedules list`` give way on a narrow screen (the others fold).
_SCHEDULE_FITS: dict[str, Fit] = {"SCHEDULE": "whole", "JOB": "whole", "CRON": "whole",
                                  "TZ": "whole", "NEXT RUN": "whole", "LAST RUN": "whole",
                                  "LAST ERROR": "wraps"}


def next_run_text(next_run_at: datetime | None, now: datetime) -> str:
    """When a schedule's next tick is: ``in 4m05s``; ``due 12.0s ago`` for a tick
    that has passed and not fired (no worker is up to fire it); ``-`` when
    paused."""
    return "-" if next_run_at is None else due(next_run_at, now, grace=0)


def schedules_table(items: list[Schedule]) -> Table:
    """The schedules, their next and last runs as spans from now (``schedules show``
    gives the times)."""
    now = datetime.now(UTC)  # every row's spans from one instant
    table = _table()
    for header in ("SCHEDULE", "JOB", "CRON", "TZ", "STATE", "NEXT RUN", "LAST RUN", "LAST",
                   "LAST ERROR"):
        table.add_column(header, fit=_SCHEDULE_FITS.get(header, "folds"),
                         justify="right" if header in ("NEXT RUN", "LAST RUN") else "left")
    for s in items:
        error = f"{s.last_error.type}: {s.last_error.message}" if s.last_error else ""
        table.add_row(
            s.id, s.job, s.cron, s.timezone, paused_text() if s.paused else "active",
            next_run_text(s.next_run_at, now),
            f"{age(s.last_run_at, now)} ago" if s.last_run_at else "-",
            status_text(s.last_run_status) if s.last_run_status else "-", error,
        )
    return table


def schedule_detail(s: Schedule) -> Table:
    table = _table()
    table.show_header = False
    table.add_column("", style="bold")
    table.add_column("", fit="wraps")
    table.add_row("schedule", s.id)
    table.add_row("job", s.job)
    table.add_row("cron", f"{s.cron} ({s.timezone})")
    table.add_row("payload", compact_json(s.payload, 200))
    table.add_row("queue", s.queue or "(the job's)")
    table.add_row("defined in", "code (@job cron=...)" if s.source == "code" else "the API")
    table.add_row("state", paused_text() if s.paused else "active")
    table.add_row("next run", when(s.next_run_at) if s.next_run_at is None else
                  f"{when(s.next_run_at)} ({next_run_text(s.next_run_at, datetime.now(UTC))})")
    table.add_row("last run", f"{when(s.last_run_at)} {s.last_run_id or ''}".strip())
    if s.last_run_status:
        table.add_row("last status", status_text(s.last_run_status))
    if s.last_error:
        table.add_row("last error", f"{s.last_error.type}: {s.last_error.message}")
    if s.missed_ticks:
        table.add_row("missed ticks", str(s.missed_ticks))
    if s.overlap == "skip":
        table.add_row("overlap", "skip: no run while the last one is unfinished"
                      f" ({s.skipped_ticks} {'tick' if s.skipped_ticks == 1 else 'ticks'}"
                      " skipped)")
    return table


def _show(s: Schedule, as_json: bool) -> None:
    if as_json:
        echo_json(s)
    else:
        console().print(schedule_detail(s))


@click.group()
def schedules() -> None:
    """Recurring schedules: list, create, show, pause, resume, delete."""


@schedules.command("list")
@json_option
@database_url_option
def list_schedules(as_json: bool = False, database_url: str | None = None) -> None:
    """Every schedule with its next run, last run and last error."""
    with open_client(database_url) as app:
        items = app.schedules.list()
    if as_json:
        echo_json(items)
        return
    if not items:
        console().print("No schedules yet. Create one with: stackshift schedules create "
                        "JOB --cron '0 * * * *', or with @job(cron=...) in the code.",
                        markup=False)
        return
    console().print(schedules_table(items))


@schedules.command()
@click.argument("job")
@click.option("--cron", required=True,
              help="5 fields, @hourly/@daily/@weekly/@monthly/@yearly/@midnight, "
                   "or '@every 5m'.")
@click.option("--payload", "payload_json", help="The runs' payload as JSON ('-' reads stdin).")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone of the fields.")
@click.option("--queue", help="Queue of the runs (default: the job's).")
@click.option("--id", "schedule_id",
              help="Create the schedule under this id, or change the one that has it.")
@click.option("--overlap", type=click.Choice(["allow", "skip"]), default="allow",
              show_default=True,
              help="skip: a tick starts no run while the previous tick's run is unfinished.")
@json_option
@database_url_option
def create(job: str, cron: str, payload_json: str | None, timezone: str, queue: str | None,
           schedule_id: str | None, overlap: Literal["allow", "skip"], as_json: bool,
           database_url: str) -> None:
    """Start JOB once per tick of --cron. Exit 2 for a bad expression.

    With --id of an existing schedule, that schedule gets this definition (said
    on stderr; with --json, "created" is false).
    """
    payload = parse_json_argument(payload_json, "--payload")
    with open_client(database_url, creates=True) as app:
        created = app.schedules.create(job, cron=cron, payload=payload, timezone=timezone,
                                       queue_name=queue, schedule_id=schedule_id,
                                       overlap=overlap)
        warn_if_no_worker_registered(app, job, "its runs")
    if not created.created:
        click.echo(f"Schedule {created.id} existed: it now has this definition.", err=True)
    _show(created, as_json)


def _lookup(action: str, schedule_id: str, database_url: str) -> Schedule:
    with open_client(database_url) as app:
        try:
            result: Schedule = getattr(app.schedules, action)(schedule_id)
        except ScheduleNotFoundError as exc:
            raise not_found(str(exc)) from None
    return result


@schedules.command()
@click.argument("schedule_id")
@json_option
@database_url_option
def show(schedule_id: str, as_json: bool, database_url: str) -> None:
    """A schedule. Exit 3 when there is none with that id."""
    _show(_lookup("get", schedule_id, database_url), as_json)


@schedules.command()
@click.argument("schedule_id")
@json_option
@database_url_option
def pause(schedule_id: str, as_json: bool, database_url: str) -> None:
    """Stop starting runs until resumed."""
    _show(_lookup("pause", schedule_id, database_url), as_json)


@schedules.command()
@click.argument("schedule_id")
@json_option
@database_url_option
def resume(schedule_id: str, as_json: bool, database_url: str) -> None:
    """Start runs again from the next tick (ticks missed while paused do not run)."""
    _show(_lookup("resume", schedule_id, database_url), as_json)


@schedules.command()
@click.argument("schedule_id")
@json_option
@database_url_option
def delete(schedule_id: str, as_json: bool, database_url: str) -> None:
    """Delete a schedule (its runs stay). Exit 3 when there is none with that id.

    A schedule of @job(cron=...) (id job:NAME) comes back when a worker serving
    the job starts: pause it instead, or remove cron= from the job."""
    with open_client(database_url) as app:
        deleted = app.schedules.delete(schedule_id)
    if not deleted:
        raise not_found(f"no schedule with id {schedule_id!r}")
    if as_json:
        echo_json({"id": schedule_id, "deleted": True})
        return
    console().print(f"Deleted schedule {schedule_id}.", markup=False)
    if schedule_id.startswith("job:"):
        job = schedule_id.removeprefix("job:")
        console().print(
            f"It was defined in code: while job {job} has @job(cron=...), a worker serving "
            f"it creates the schedule again when it starts. To stop it for good, remove "
            f"cron= from the job; to stop it until resumed, pause it (stackshift schedules "
            f"pause {schedule_id}) rather than delete it.", markup=False)
