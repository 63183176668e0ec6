"""``stackshift runs``: list, inspect and act on runs."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from ..checks import MAX_LOG_PAGE
from ..engine.transitions import TERMINAL
from ..models import again_links
from ..progress import in_progress
from ..runlogs import level_number
from ..wording import did_you_mean
from .failures import ExitCode, bad_input, reader_gone
from .options import (
    Whole,
    database_url_option,
    duration,
    json_option,
    list_filter,
    open_client,
    say_next_page,
)
from .queues import retry_options, retry_with_progress
from .render import (
    console,
    echo_json,
    echo_json_list,
    iso,
    print_logs,
    run_detail,
    runs_table,
    shown_json,
    status_text,
    timeline_rows,
    timeline_table,
    to_data,
)
from .start import report_finished, report_started, wait_for_run, warn_if_no_worker_knows

if TYPE_CHECKING:
    from ..client import StackShift
    from ..models import LogEntry


@click.group()
def runs() -> None:
    """List runs, show one, read its logs and timeline, cancel, retry or wait."""


@runs.command("list")
@click.option("--status", help="scheduled, queued, running, waiting, retrying, completed, "
                               "failed or cancelled.")
@click.option("--job", callback=list_filter, help="Only runs of this job.")
@click.option("--queue", callback=list_filter, help="Only runs on this queue.")
@click.option("--idempotency-key", callback=list_filter, help="The run started with this key.")
@click.option("--correlation-key", callback=list_filter,
              help="Runs that waited for or received events with this key.")
@click.option("--search", callback=list_filter, metavar="ID_OR_KEY",
              help="The run with this id or idempotency key.")
@click.option("--created-after", metavar="TIME",
              help="Only runs created at or after TIME (ISO 8601, e.g. 2026-12-01T09:00Z).")
@click.option("--created-before", metavar="TIME", help="Only runs created before TIME.")
@click.option("--limit", type=Whole(), default=20, show_default=True,
              help="Runs per page (1-1000).")
@click.option("--cursor", help="Next page: the cursor printed under the previous one.")
@json_option
@database_url_option
def list_runs(
    status: str | None,
    job: str | None,
    queue: str | None,
    idempotency_key: str | None,
    correlation_key: str | None,
    search: str | None,
    created_after: str | None,
    created_before: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Runs, newest first."""
    with open_client(database_url) as app:
        page = app.runs.list(
            status=status, job=job, queue=queue, idempotency_key=idempotency_key,
            correlation_key=correlation_key, search=search, created_after=created_after,
            created_before=created_before, limit=limit, cursor=cursor,
        )
        unknown = ""
        if not as_json and not page.items and cursor is None:
            unknown = " ".join(hint for hint in (
                _unknown_job(app, job) if job is not None else "",
                _unknown_queue(app, queue) if queue is not None else "") if hint)
    if as_json:
        echo_json({"items": page.items, "next_cursor": page.next_cursor})
        return
    out = console()
    if not page.items:
        if cursor is not None:
            out.print("No more runs.")
        elif (status, job, queue, idempotency_key, correlation_key, search, created_after,
              created_before) == (None,) * 8:
            out.print("No runs yet. Start one with: stackshift start JOB '{...}'", markup=False)
        else:
            out.print("No runs match." + (f" {unknown}" if unknown else ""), markup=False)
        return
    out.print(runs_table(page.items, width=out.width))
    if page.next_cursor:
        say_next_page(out, page.next_cursor)


def _unknown_job(app: StackShift, job: str) -> str:
    """Why no run matched, when no worker has registered ``job``: the job names
    close to it that workers have registered; empty when one has registered it,
    none is close, or the jobs cannot be listed (the list is the answer)."""
    try:
        known = [info.name for info in app.list_jobs()]
    except Exception:  # advice only
        return ""
    return _close_to(job, known, f"No worker has registered job {job!r}")


def _unknown_queue(app: StackShift, queue: str) -> str:
    """Why no run matched, when ``queue`` is no queue (no run, no setting): the
    queues whose names are close to it; empty when it is one, or none is close."""
    return _close_to(queue, [q.name for q in app.queues.list()], f"No queue is named {queue!r}")


def _close_to(name: str, known: list[str], sentence: str) -> str:
    """``sentence`` and the names of ``known`` close to ``name``, when ``name`` is
    not one of them and some are close; else empty."""
    hint = "" if name in known else did_you_mean(name, known)
    return f"{sentence}{hint}." if hint else ""


@runs.command()
@click.argument("run_id")
@json_option
@database_url_option
def show(run_id: str, as_json: bool, database_url: str | None) -> None:
    """Status, payload, result, error with traceback, attempts and steps of a run
    (and, while it runs, what its attempt executes since its last recorded step),
    and the runs it was started again from and as."""
    with open_client(database_url) as app:
        run = app.runs.get(run_id)
        attempts = app.runs.attempts(run_id)
        steps = app.runs.steps(run_id)
        timeline = sorted(app.runs.timeline(run_id), key=lambda e: (e.at, e.id))
        again_of, started_again = again_links(timeline)
        current = None
        if run.status == "running":  # steps are recorded when they end
            current = in_progress(run, attempts, timeline,
                                  app.runs.logs(run_id, last=NAMING_RECORDS), time.time())
    if as_json:
        data = to_data(run)
        data["again_of"] = again_of
        data["started_again"] = started_again
        data["attempts"] = to_data(attempts)
        data["steps"] = to_data(steps)
        data["in_progress"] = None if current is None else {
            "attempt": current.attempt, "step": current.step,
            "since": iso(datetime.fromtimestamp(current.since, UTC)),
            "seconds": round(current.seconds, 3)}
        echo_json(data)
        return
    console().print(run_detail(run, attempts, steps, current, again_of=again_of,
                               started_again=started_again))


#: The latest log records ``runs show`` reads to name the step a running attempt
#: executes (the step of the latest one logged since its last recorded step).
NAMING_RECORDS = 50


#: Seconds between two looks for new records with ``runs logs --follow``.
FOLLOW_EVERY = 0.5

#: The levels ``runs logs --level`` takes.
LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


@runs.command()
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing records as they are saved (a worker on the database saves"
                   " a long step's records with each lease renewal) until the run is"
                   " completed, failed or cancelled; then exit 0 if it completed, 1 if not."
                   " With --json, one JSON object per line.")
@click.option("--tail", "-n", type=Whole(1, MAX_LOG_PAGE), metavar="N",
              help=f"Only the latest N records (1 to {MAX_LOG_PAGE:,}); with --follow, then"
                   " those saved after them.")
@click.option("--level", type=click.Choice(LEVELS, case_sensitive=False),
              help="Only records at this level or above (with --tail, the latest N of"
                   " those).")
@json_option
@database_url_option
def logs(run_id: str, follow: bool, tail: int | None, level: str | None, as_json: bool,
         database_url: str | None) -> None:
    """Log records saved while the run's handler ran, oldest first."""
    with open_client(database_url) as app:
        if follow:
            follow_logs(app, run_id, as_json, tail, level)
            return
        pages = first_pages(app, run_id, tail, level)[0]
        if as_json:
            echo_json_list(pages)
            return
        printed = False
        for page in pages:  # printed as they are read
            if page:
                print_logs(console(), page)
                printed = True
    if not printed:
        console().print(f"No logs at {level.upper()} or above for this run." if level
                        else "No logs for this run.", style="dim")


def log_pages(app: StackShift, run_id: str, after: int = 0) -> Iterator[list[LogEntry]]:
    """The run's records after ``after``, oldest first, in pages of
    :data:`~stackshift.checks.MAX_LOG_PAGE` (none empty): a long log is neither
    read nor held whole."""
    while True:
        page = app.runs.logs(run_id, after=after, limit=MAX_LOG_PAGE)
        if page:
            yield page
            after = page[-1].id
        if len(page) < MAX_LOG_PAGE:
            return


def first_pages(app: StackShift, run_id: str, tail: int | None,
                level: str | None) -> tuple[Iterator[list[LogEntry]], list[int]]:
    """The pages ``runs logs`` prints first: the run's records, or its latest
    ``tail``, those at ``level`` or above when it is given; and (filled in as the
    pages are read) the id of the last record read, whatever its level."""
    read: list[int] = [0]

    def pages() -> Iterator[list[LogEntry]]:
        if tail and not level:
            page = app.runs.logs(run_id, last=tail)
            read[0] = page[-1].id if page else 0
            yield page
            return
        kept: deque[LogEntry] = deque(maxlen=tail)
        for page in log_pages(app, run_id):
            read[0] = page[-1].id
            page = at_level(page, level)
            if tail:
                kept.extend(page)
            else:
                yield page
        if tail:
            yield list(kept)

    return pages(), read


def at_level(entries: list[LogEntry], level: str | None) -> list[LogEntry]:
    """The records of ``entries`` at ``level`` or above (all when it is None)."""
    if level is None:
        return entries
    floor = level_number(level.upper())
    return [entry for entry in entries if level_number(entry.level) >= floor]


def follow_logs(app: StackShift, run_id: str, as_json: bool, tail: int | None = None,
                level: str | None = None) -> None:
    """Print the run's records as they come (from its latest ``tail``, if given;
    those at ``level`` or above, if given), until it ends; exit 1 unless it
    completed."""
    out = console()

    def show(page: list[LogEntry]) -> None:
        if as_json:
            for entry in page:
                click.echo(shown_json(json.dumps(to_data(entry), ensure_ascii=False)))
        elif page:
            print_logs(out, page)

    last: int | None = None  # the id of the last record read, whatever its level
    while True:
        # The status first: a run seen ended has saved every record it will.
        run = app.runs.get(run_id)
        if last is None:
            pages, read = first_pages(app, run_id, tail, level)
            for page in pages:
                show(page)
            last = read[0]
        else:
            for page in log_pages(app, run_id, after=last):
                last = page[-1].id
                show(at_level(page, level))
        if run.status in TERMINAL:
            break
        if reader_gone():  # `| grep -m1 ...` found its line: done, whatever the run does
            return
        time.sleep(FOLLOW_EVERY)
    if not as_json:
        report_finished(run, False)
    elif run.status != "completed":
        raise click.exceptions.Exit(int(ExitCode.FAILED))


@runs.command()
@click.argument("run_id")
@json_option
@database_url_option
def timeline(run_id: str, as_json: bool, database_url: str | None) -> None:
    """Everything that happened to a run, with offsets from its creation."""
    with open_client(database_url) as app:
        run = app.runs.get(run_id)
        entries = app.runs.timeline(run_id)
    if as_json:
        echo_json(timeline_rows(run, entries))
        return
    console().print(timeline_table(run, entries))


@runs.command()
@click.argument("run_id")
@click.option("--reason", help="Recorded on the run's timeline, and as its error message "
                               "once it is cancelled.")
@json_option
@database_url_option
def cancel(run_id: str, reason: str | None, as_json: bool, database_url: str | None) -> None:
    """Cancel a run. A running handler stops at a step boundary once its worker learns of it.

    Exit 1 when the run already completed or failed.
    """
    with open_client(database_url) as app:
        run = app.runs.cancel(run_id, reason)
    if as_json:
        echo_json(run)
        return
    if run.status == "running":
        console().print(f"Cancel requested: run {run.id} stops at a step boundary"
                        " once its worker learns of it.")
    else:
        console().print(f"Run {run.id} is ", status_text(run.status), ".", sep="")


@runs.command()
@click.argument("run_id")
@json_option
@database_url_option
def retry(run_id: str, as_json: bool, database_url: str | None) -> None:
    """Put a failed or cancelled run back in line with a fresh attempt budget.

    Completed steps are reused. Exit 1 for a run that is neither failed nor cancelled.
    """
    with open_client(database_url) as app:
        run = app.runs.retry(run_id)
    if as_json:
        echo_json(run)
        return
    console().print(f"Run {run.id} is ", status_text(run.status),
                    f" again with a fresh budget of {run.max_attempts} attempt"
                    f"{'s' if run.max_attempts != 1 else ''} (after {run.retry_base} in all);"
                    " its completed steps will be reused.", sep="")


@runs.command()
@click.argument("run_id")
@click.option("--wait", is_flag=True,
              help="Wait until the new run is completed, failed or cancelled.")
@click.option("--timeout", help="With --wait: give up after this long (exit 1).")
@json_option
@database_url_option
def again(run_id: str, wait: bool, timeout: str | None, as_json: bool,
          database_url: str | None) -> None:
    """Start a new run with RUN_ID's job, payload and options.

    Whatever RUN_ID's status, the new run is queued at once with its queue,
    priority, concurrency key and attempts, but not its idempotency key (which
    names RUN_ID). The two runs' timelines name each other. Exit codes: 0 ok,
    1 the new run waited for did not complete, 3 no run RUN_ID.
    """
    if timeout is not None and not wait:
        raise bad_input("--timeout only applies with --wait")
    limit = duration(timeout, "--timeout")
    with open_client(database_url) as app:
        run = app.runs.start_again(run_id)
        warn_if_no_worker_knows(app, run, chosen_queue=True)
        if not as_json:
            report_started(run, as_json)
            console().print(f"It has the payload and options of run {run_id}.")
        elif not wait:
            echo_json(run)
        if not wait:
            return
        final = wait_for_run(app, run.id, limit, as_json)
    report_finished(final, as_json)


@runs.command("retry-many")
@click.option("--queue", callback=list_filter, help="Only runs on this queue.")
@click.option("--job", callback=list_filter, help="Only runs of this job.")
@click.option("--created-after", metavar="TIME",
              help="Only runs created at or after TIME (ISO 8601, e.g. 2026-12-01T09:00Z).")
@click.option("--created-before", metavar="TIME", help="Only runs created before TIME.")
@retry_options
@json_option
@database_url_option
def retry_many(queue: str | None, job: str | None, status: str, created_after: str | None,
               created_before: str | None, limit: int | None, page_size: int,
               as_json: bool, database_url: str | None) -> None:
    """Retry every failed (or cancelled) run matching the filters, on every queue
    unless --queue is given, each with a fresh attempt budget.

    Runs are taken newest first, a page at a time, so any number can be retried
    (through a server too); a run this command retried that fails again before
    it ends is not retried twice. Completed steps are reused.
    """
    which = " ".join(part for part in (
        f"of job {job}" if job else "", f"on queue {queue}" if queue else "on every queue",
        f"created at or after {created_after}" if created_after else "",
        f"created before {created_before}" if created_before else "") if part)
    retry_with_progress(database_url, as_json, which, queue=queue, job=job, status=status,
                        created_after=created_after, created_before=created_before,
                        limit=limit, page_size=page_size)


@runs.command()
@click.argument("run_id")
@click.option("--timeout", help="Give up after this long, e.g. 30s (exit 1).")
@json_option
@database_url_option
def wait(run_id: str, timeout: str | None, as_json: bool, database_url: str | None) -> None:
    """Block until a run is completed, failed or cancelled.

    Exit 0 when it completed, 1 when it failed, was cancelled or the timeout passed,
    130 on Ctrl-C (with --json, the run as it stands is printed on the last two).
    """
    limit = duration(timeout, "--timeout")
    with open_client(database_url) as app:
        app.runs.get(run_id)  # an unknown id is "not found", not a timeout
        try:
            run = wait_for_run(app, run_id, limit, as_json)
        except (TimeoutError, KeyboardInterrupt):
            if as_json:  # the run as it stands, then the error and exit 1 (or 130)
                echo_json(to_data(app.runs.get(run_id)))
            raise
    report_finished(run, as_json)
