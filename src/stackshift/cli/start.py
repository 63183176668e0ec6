"""``stackshift start``: start a run (optionally waiting for it to finish)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.text import Text

from ..durations import parse_duration, span
from ..models import Run, Step
from .failures import ExitCode, bad_input
from .options import (
    database_url_option,
    duration,
    json_option,
    open_client,
    parse_json_argument,
)
from .render import (
    attempt_text,
    console,
    did_you_mean,
    echo_json,
    run_detail_line,
    shown_as_is,
    status_text,
    to_data,
    when,
)

if TYPE_CHECKING:
    from ..client import StackShift

#: How often the progress line of a wait on a terminal is brought up to date.
PROGRESS_EVERY = 0.25


@click.command()
@click.argument("job")
@click.argument("payload_json", required=False, metavar="[PAYLOAD_JSON]")
@click.option("--queue", "queue_name", help="Queue to run on (default: the job's, else 'default').")
@click.option("--idempotency-key", help="Starts with the same key map to one run.")
@click.option("--idempotency-ttl", help="How long the key holds, e.g. 30d (default 24h).")
@click.option("--max-attempts", type=int,
              help="Total attempts including the first (default: the job's, else the"
                   " queue's, else 3).")
@click.option("--delay", help="Start after this long, e.g. 15m.")
@click.option("--scheduled-at", help="Start at this ISO-8601 time, e.g. 2026-05-06T09:00:00Z.")
@click.option("--priority", type=int, help="Higher runs first within the queue.")
@click.option("--concurrency-key", help="Groups runs for per-key concurrency limits.")
@click.option("--wait", is_flag=True, help="Wait until the run is completed, failed or cancelled.")
@click.option("--timeout", help="With --wait: give up after this long (exit 1).")
@json_option
@database_url_option
def start(
    job: str,
    payload_json: str | None,
    queue_name: str | None,
    idempotency_key: str | None,
    idempotency_ttl: str | None,
    max_attempts: int | None,
    delay: str | None,
    scheduled_at: str | None,
    priority: int | None,
    concurrency_key: str | None,
    wait: bool,
    timeout: str | None,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Start a run of JOB with PAYLOAD_JSON ('-' reads it from stdin).

    With an idempotency key that already names a run, that run is reported
    and nothing new starts. Exit codes: 0 ok, 1 the awaited run did not
    complete, 2 bad input, 4 the key belongs to another job or payload.
    """
    payload = parse_json_argument(payload_json, "PAYLOAD_JSON")
    if timeout is not None and not wait:
        raise bad_input("--timeout only applies with --wait")
    wait_limit = duration(timeout, "--timeout")
    ttl = duration(idempotency_ttl, "--idempotency-ttl")
    after = duration(delay, "--delay")
    with open_client(database_url) as app:
        run = app.start(
            job,
            payload,
            queue_name=queue_name,
            idempotency_key=idempotency_key,
            idempotency_ttl=ttl,
            max_attempts=max_attempts,
            delay=after,
            scheduled_at=scheduled_at,
            priority=priority,
            concurrency_key=concurrency_key,
        )
        warn_if_no_worker_knows(app, run, chosen_queue=queue_name is not None)
        if not wait:
            report_started(run, as_json)
            return
        if not as_json:
            report_started(run, as_json)
        final = wait_for_run(app, run.id, wait_limit, as_json)
    report_finished(final, as_json, created=run.created)


def warn_if_no_worker_knows(app: StackShift, run: Run, *, chosen_queue: bool) -> None:
    """Say on stderr when no worker has ever registered the run's job (a mistyped
    name, or code not deployed yet), with the closest job names workers have
    registered, or when none of the workers that did is running now and takes
    the job's queue: the run is started all the same, and waits until a worker
    with the job's code starts. A server too old to list jobs, or one that
    cannot be asked just now, says nothing: the run is started, and the
    command's answer is about it.

    Live workers are counted for the job's own queue (``JobInfo.live_workers``);
    for a run put on another queue (``chosen_queue``, when the job names none),
    those that take that queue (``QueueInfo.live_workers``), whatever jobs they
    know. A run that waits for no worker (an idempotency key's earlier run that
    has finished, or that one is running) gets no warning."""
    if run.status not in ("queued", "scheduled", "retrying"):
        return
    job = run.job
    try:
        known = {info.name: info for info in app.list_jobs()}
    except Exception:  # advice only: the run is started, whatever this says
        return
    waits = "waits queued" if run.status == "queued" else "waits"
    if job in known:
        info = known[job]
        # The job's own queue: the one it names, else where a run goes without --queue.
        on_jobs_queue = run.queue == info.queue if info.queue else not chosen_queue
        if on_jobs_queue:
            if not info.live_workers:
                click.echo(f"warning: no worker serving job {job!r} on queue {run.queue!r} "
                           f"is running now; the run {waits} until one starts", err=True)
            return
        try:
            takers = app.queues.get(run.queue).live_workers
        except Exception:  # advice only, as above
            return
        if takers == 0:
            click.echo(f"warning: no worker taking queue {run.queue!r} is running now; the "
                       f"run {waits} until one starts", err=True)
        return
    click.echo(f"warning: {unregistered(job, known)}; the run {waits} until one does",
               err=True)


def unregistered(job: str, known: Iterable[str]) -> str:
    """That no worker has registered ``job``, with the closest names that some has."""
    return f"no worker has registered job {job!r}{did_you_mean(job, known)}"


def warn_if_no_worker_registered(app: StackShift, job: str, what: str) -> None:
    """Say on stderr when no worker has registered ``job``: ``what`` (a schedule's
    runs) wait until one does. Silent when the jobs cannot be listed."""
    try:
        known = {info.name for info in app.list_jobs()}
    except Exception:  # advice only
        return
    if job not in known:
        click.echo(f"warning: {unregistered(job, known)}; {what} wait until one does",
                   err=True)


def report_started(run: Run, as_json: bool) -> None:
    if as_json:
        echo_json(run)
        return
    out = console()
    if run.created:
        line = f"Started run [bold]{run.id}[/] · job {run.job} · queue {run.queue} · "
        out.print(line, status_text(run.status), sep="", end="")
        out.print(f" (at {when(run.scheduled_at)})" if run.status == "scheduled" else "")
    else:
        out.print(
            f"Run [bold]{run.id}[/] already exists for idempotency key "
            f"{escape(repr(run.idempotency_key))} (",
            status_text(run.status),
            "); nothing new was started.",
            sep="",
        )


def wait_for_run(app: StackShift, run_id: str, limit: float | str | None,
                 as_json: bool) -> Run:
    """Wait until the run is completed, failed or cancelled (``TimeoutError`` after
    ``limit``, a duration). Meanwhile, when stderr is a terminal and the output is not
    JSON, a line there shows how the run is getting on, and goes once it ends."""
    err = console(stderr=True)
    if as_json or not err.is_terminal or err.is_dumb_terminal:
        return app.runs.wait(run_id, limit)
    seconds = None if limit is None else parse_duration(limit, name="timeout")
    began = time.monotonic()
    deadline = None if seconds is None else began + seconds
    with err.status(f"Waiting for run {run_id}", spinner="dots") as shown:
        while True:
            left = PROGRESS_EVERY if deadline is None else deadline - time.monotonic()
            try:
                return app.runs.wait(run_id, max(0.0, min(PROGRESS_EVERY, left)))
            except TimeoutError:
                pass
            run = app.runs.get(run_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {seconds:g}s")
            shown.update(progress_line(run, app.runs.steps(run_id), time.monotonic() - began))


def progress_line(run: Run, steps: list[Step], waited: float) -> Text:
    """One line on a run that has not ended: status, attempt, steps done, waited."""
    line = Text.assemble(f"Run {run.id} ", status_text(run.status),
                         f" · attempt {attempt_text(run)}")
    done = [step for step in steps if step.status == "completed"]
    if done:
        line.append(f" · {len(done)} step{'s' if len(done) > 1 else ''} done "
                    f"(last: {done[-1].key})")
    detail = run_detail_line(run)
    if detail:
        line.append(f" · {detail}")
    line.append(f" · {span(waited)}")
    return line


def report_finished(run: Run, as_json: bool, *, created: bool | None = None) -> None:
    """Print the final state of a run; exit 1 unless it completed."""
    if as_json:
        data: dict[str, Any] = to_data(run)
        if created is not None:
            data["created"] = created
        echo_json(data)
    else:
        # The detail is users' text (an error message, a result): never markup.
        line = Text.assemble("Run ", (run.id, "bold"), " ", status_text(run.status))
        if run.status == "failed" and run.attempt:  # as the worker's log says it
            line.append(f" on attempt {attempt_text(run)}")
        detail = run_detail_line(run)
        if detail:
            line.append(shown_as_is(f": {detail}"))
        console().print(line)
        if run.error is not None and run.error.traceback and run.status == "failed":
            console(stderr=True).print(shown_as_is(run.error.traceback.rstrip()), style="dim",
                                       markup=False)
    if run.status != "completed":
        raise click.exceptions.Exit(int(ExitCode.FAILED))
