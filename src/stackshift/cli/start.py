"""``stackshift start``: start a run (optionally waiting for it to finish)."""

from __future__ import annotations

import re
import string
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import click
from rich.markup import escape
from rich.text import Text

from ..checks import MAX_START_MANY
from ..durations import parse_duration, span
from ..errors import PayloadTooLargeError, ValidationError
from ..models import Run, Step
from ..serialization import encode
from ..wording import plural, unregistered
from .failures import ExitCode, bad_input, failed
from .options import (
    Whole,
    database_url_option,
    duration,
    json_option,
    open_client,
    parse_json_argument,
    parse_json_text,
)
from .render import (
    attempt_text,
    compact_json,
    console,
    echo_json,
    run_detail_line,
    shown_as_is,
    status_text,
    to_data,
    when,
)

if TYPE_CHECKING:
    from rich.status import Status

    from ..client import StackShift

#: How often the progress line of a wait on a terminal is brought up to date.
PROGRESS_EVERY = 0.25


@click.command()
@click.argument("job")
@click.argument("payload_json", required=False, metavar="[PAYLOAD_JSON]")
@click.option("--queue", "queue_name", help="Queue to run on (default: the job's, else 'default').")
@click.option("--idempotency-key", help="Starts with the same key map to one run.")
@click.option("--idempotency-ttl", help="How long the key holds, e.g. 30d (default 24h).")
@click.option("--max-attempts", type=Whole(),
              help="Total attempts including the first (default: the job's, else the"
                   " queue's, else 3).")
@click.option("--delay", help="Start after this long, e.g. 15m.")
@click.option("--scheduled-at", help="Start at this ISO-8601 time, e.g. 2026-05-06T09:00:00Z.")
@click.option("--priority", type=Whole(), help="Higher runs first within the queue.")
@click.option("--concurrency-key", help="Groups runs for per-key concurrency limits.")
@click.option("--payloads", "payloads_file", type=click.File("r", encoding="utf-8-sig"),
              metavar="FILE",
              help="Start a run per line of FILE, each line a payload (JSON Lines; '-' reads"
                   " stdin), in transactions of 1,000 lines.")
@click.option("--wait", is_flag=True,
              help="Wait until the run (with --payloads, each) is completed, failed or"
                   " cancelled.")
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
    payloads_file: IO[str] | None,
    wait: bool,
    timeout: str | None,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Start a run of JOB with PAYLOAD_JSON ('-' reads it from stdin; left out,
    the payload is null).

    With an idempotency key that already names a run, that run is reported
    and nothing new starts. Exit codes: 0 ok, 1 a run waited for did not
    complete, 2 bad input, 4 the key belongs to another job or payload.

    With --payloads, --idempotency-key and --concurrency-key are templates
    that name fields of each payload in braces, e.g. 'import:{order_id}'.
    """
    if timeout is not None and not wait:
        raise bad_input("--timeout only applies with --wait")
    wait_limit = duration(timeout, "--timeout")
    ttl = duration(idempotency_ttl, "--idempotency-ttl")
    after = duration(delay, "--delay")
    if payloads_file is not None:
        if payload_json is not None:
            raise bad_input("give PAYLOAD_JSON or --payloads, not both")
        source = "stdin" if payloads_file.name == "<stdin>" else payloads_file.name
        lines = read_payloads(payloads_file, source)
        keys = keys_from(idempotency_key, "--idempotency-key", lines, each=True)
        groups = keys_from(concurrency_key, "--concurrency-key", lines, each=False)
        with open_client(database_url, creates=True) as app:
            runs = start_in_batches(
                app, job, lines, keys, groups, queue_name=queue_name, idempotency_ttl=ttl,
                max_attempts=max_attempts, delay=after, scheduled_at=scheduled_at,
                priority=priority)
            if runs:
                first = next((run for run in runs if run.created), runs[0])
                warn_if_no_worker_knows(app, first, chosen_queue=queue_name is not None,
                                        count=len(runs))
            if not wait or not as_json:
                report_started_many(runs, job, source, as_json)
            if not wait:
                return
            try:
                finals = wait_for_runs(app, runs, wait_limit, as_json)
            except (TimeoutError, KeyboardInterrupt) as stopped:
                if as_json:  # the runs as they stand, then the error and exit 1 (or 130)
                    echo_runs_json(runs_as_they_stand(stopped, app, runs), runs, one=False)
                raise
        report_finished_many(finals, runs, as_json)
        return
    payload = parse_json_argument(payload_json, "PAYLOAD_JSON")
    with open_client(database_url, creates=True) as app:
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
        try:
            final = wait_for_run(app, run.id, wait_limit, as_json)
        except (TimeoutError, KeyboardInterrupt) as stopped:
            if as_json:  # the run as it stands, then the error and exit 1 (or 130)
                echo_runs_json(runs_as_they_stand(stopped, app, [run]), [run], one=True)
            raise
    report_finished(final, as_json, created=run.created)


class Line(NamedTuple):
    """A payload of a --payloads file, with the number of the line it was on."""

    number: int
    payload: Any


def read_payloads(file: IO[str], source: str) -> list[Line]:
    """The payloads of a JSON Lines file (``source`` names it), one a line (blank
    lines skipped), each checked as PAYLOAD_JSON is: a line that is not JSON is
    refused by number."""
    lines = []
    try:
        for number, text in enumerate(file, 1):
            text = text.strip()
            if text:
                where = f"{source} line {number}"
                lines.append(Line(number, parse_json_text(text, where, typed=False)))
    except UnicodeDecodeError as exc:
        raise bad_input(f"{source} is not UTF-8 text ({exc})") from None
    return lines


def keys_from(template: str | None, option: str, lines: list[Line], *,
              each: bool) -> list[str | None] | None:
    """The key of each line that ``template`` makes: its text with each
    ``{field}`` replaced by the line's payload's field of that name (text, or an
    integer written in decimal). ``each`` when the key must differ from line to
    line (an idempotency key given to every line would name one run), so must
    name a field."""
    if template is None:
        return None
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise bad_input(f"{option} {template!r}: {exc} (write a brace as {{{{ or }}}})"
                        ) from None
    for _, field, spec, conversion in parts:
        if field is not None and (not field or spec or conversion or "." in field
                                  or "[" in field):
            raise bad_input(f"{option} {template!r}: name a payload field in braces, as in "
                            "{order_id}, with no format, conversion or nested name")
    fields = [field for _, field, _, _ in parts if field is not None]
    if each and not fields:
        raise bad_input(f"{option} {template!r} would give every line of --payloads the same "
                        f"key, so one run: name a field of the payloads in it, e.g. "
                        f"{option} '{template}:{{id}}'")
    return [_key(template, parts, option, line) for line in lines]


def _key(template: str, parts: list[tuple[str, str | None, str | None, str | None]],
         option: str, line: Line) -> str:
    pieces = []
    for literal, field, _, _ in parts:
        pieces.append(literal)
        if field is None:
            continue
        payload = line.payload
        needs = f"line {line.number}: {option} {template!r} needs field {field!r}"
        if not isinstance(payload, dict):
            raise bad_input(f"{needs} of the payload, which is not an object but "
                            f"{compact_json(payload, 60)}")
        if field not in payload:
            raise bad_input(f"{needs}, which the payload does not have")
        value = payload[field]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise bad_input(f"{needs} to be text or an integer, not {compact_json(value, 60)}")
        pieces.append(str(value))
    return "".join(pieces)


def start_in_batches(app: StackShift, job: str, lines: list[Line],
                     keys: list[str | None] | None, groups: list[str | None] | None,
                     **options: Any) -> list[Run]:
    """Start a run per line with ``start_many``, ``MAX_START_MANY`` lines a
    transaction. A refused batch writes none of its runs; the batches before it
    stay started, and the failure says how far they went."""
    if not lines:
        app.start_many(job, [], **options)  # the job's name and options are still checked
        return []
    # Sizes too are checked before anything starts: a line too large found in a
    # later batch would leave the batches before it started.
    api = app._api  # the database's limits, or the server's
    limit = api.limits().max_payload_bytes
    for line in lines:
        try:
            encode(line.payload, what=f"the payload of line {line.number}", limit=limit,
                   setting="max_payload_bytes", raised_by=api.limits_set_by)
        except PayloadTooLargeError as exc:
            raise bad_input(str(exc)) from None
    runs: list[Run] = []
    for first in range(0, len(lines), MAX_START_MANY):
        batch = slice(first, first + MAX_START_MANY)
        try:
            runs += app.start_many(
                job, [line.payload for line in lines[batch]],
                idempotency_keys=None if keys is None else keys[batch],
                concurrency_keys=None if groups is None else groups[batch], **options)
        except Exception as exc:
            if runs:
                again = (" (starting again with the same idempotency keys starts only the"
                         " rest)" if keys is not None else "")
                click.echo(f"note: the runs of lines {lines[0].number} to "
                           f"{lines[first - 1].number} were started; none from line "
                           f"{lines[first].number} on{again}", err=True)
            if isinstance(exc, ValidationError):
                # Exit 2 says nothing was written: with batches started, the
                # command failed part of the way (exit 1).
                message = by_line(str(exc), lines[batch])
                raise (failed(message) if runs else bad_input(message)) from exc
            raise
    return runs


_ITEM = re.compile(r"\b(payloads|idempotency_keys|concurrency_keys)\[(\d+)\]")


def by_line(message: str, lines: list[Line]) -> str:
    """A ``start_many`` refusal, its items (``payloads[3]``, ``idempotency_keys[3]``,
    numbered within the batch) named by the lines they came from."""
    def line_of(item: re.Match[str]) -> str:
        number = lines[int(item[2])].number
        if item[1] == "payloads":
            return f"the payload of line {number}"
        option = "--" + item[1][:-1].replace("_", "-")
        return f"the {option} of line {number}"
    return _ITEM.sub(line_of, message)


def report_started_many(runs: list[Run], job: str, source: str, as_json: bool) -> None:
    if as_json:
        echo_json(runs)
        return
    out = console()
    if not runs:
        out.print(f"No runs started: {source} has no payloads.", markup=False)
        return
    created = [run for run in runs if run.created]
    counts = status_counts(created)
    out.print(f"Started {plural(len(created), 'run')} of job {job} on queue {runs[0].queue}"
              + (f" ({counts})" if counts else "") + ".", markup=False)
    existing = len(runs) - len(created)
    if existing == 1:
        out.print("1 line named a run that already existed for its idempotency key; nothing "
                  "new was started for it.", markup=False)
    elif existing:
        out.print(f"{existing:,} lines named runs that already existed for their idempotency "
                  "keys; nothing new was started for them.", markup=False)


def status_counts(runs: list[Run]) -> str:
    """``2 completed, 1 failed``: how many of ``runs`` have each status, in the
    order the statuses first come."""
    return ", ".join(f"{count:,} {status}"
                     for status, count in Counter(run.status for run in runs).items())


def warn_if_no_worker_knows(app: StackShift, run: Run, *, chosen_queue: bool,
                            count: int = 1) -> None:
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
    has finished, or that one is running) gets no warning. ``count`` runs like
    ``run`` were started (``start --payloads``): the warning speaks of them."""
    if run.status not in ("queued", "scheduled", "retrying"):
        return
    job = run.job
    try:
        known = {info.name: info for info in app.list_jobs()}
    except Exception:  # advice only: the run is started, whatever this says
        return
    waits = ("the run waits" if count == 1 else "the runs wait") + (
        " queued" if run.status == "queued" else "")
    if job in known:
        info = known[job]
        # The job's own queue: the one it names, else where a run goes without --queue.
        on_jobs_queue = run.queue == info.queue if info.queue else not chosen_queue
        if on_jobs_queue:
            if not info.live_workers:
                click.echo(f"warning: no worker serving job {job!r} on queue {run.queue!r} "
                           f"is running now; {waits} until one starts", err=True)
            return
        try:
            takers = app.queues.get(run.queue).live_workers
        except Exception:  # advice only, as above
            return
        if takers == 0:
            click.echo(f"warning: no worker taking queue {run.queue!r} is running now; "
                       f"{waits} until one starts", err=True)
        return
    click.echo(f"warning: {unregistered(job, known)}; {waits} until one does", err=True)


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
    with progress_shown(as_json, f"Waiting for run {run_id}") as shown:
        if shown is None:
            return app.runs.wait(run_id, limit)
        seconds = None if limit is None else parse_duration(limit, name="timeout")
        began = time.monotonic()
        return wait_showing(app, run_id, shown, began,
                            None if seconds is None else began + seconds)


def progress_shown(as_json: bool, first: str) -> AbstractContextManager[Status | None]:
    """The progress line of a wait, ``first`` until it has more to say: on stderr
    when it is a terminal and the output is not JSON, else ``None``."""
    err = console(stderr=True)
    if as_json or not err.is_terminal or err.is_dumb_terminal:
        return nullcontext()
    return err.status(first, spinner="dots")


def wait_showing(app: StackShift, run_id: str, shown: Status, began: float,
                 deadline: float | None, prefix: str = "") -> Run:
    """The run once it is completed, failed or cancelled, with ``shown`` brought up
    to date meanwhile (``prefix``, then the run's :func:`progress_line` with the
    time since ``began``); ``TimeoutError`` at ``deadline`` (monotonic)."""
    while True:
        left = PROGRESS_EVERY if deadline is None else deadline - time.monotonic()
        try:
            return app.runs.wait(run_id, max(0.0, min(PROGRESS_EVERY, left)))
        except TimeoutError:
            pass
        run = app.runs.get(run_id)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} is still {run.status} after "
                               f"{deadline - began:g}s")
        shown.update(Text.assemble(prefix, progress_line(run, app.runs.steps(run_id),
                                                         time.monotonic() - began)))


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


#: Characters of a result the line a wait ends with shows; past them it says
#: where the whole of it is.
SHOWN_RESULT = 10_000


def finished_line(run: Run) -> Text:
    """``Run ID STATUS``, with the attempt a failed run ended on and its detail:
    for a completed run its result, whole (a list's cell gives a preview only),
    up to :data:`SHOWN_RESULT` characters."""
    # The detail is users' text (an error message, a result): never markup.
    line = Text.assemble("Run ", (run.id, "bold"), " ", status_text(run.status))
    if run.status == "failed" and run.attempt:  # as the worker's log says it
        line.append(f" on attempt {attempt_text(run)}")
    detail = run_detail_line(run)
    if run.status == "completed":
        detail = compact_json(run.result)
        if len(detail) > SHOWN_RESULT:
            detail = (f"{detail[:SHOWN_RESULT]}… ({len(detail) - SHOWN_RESULT:,} characters"
                      f" more: stackshift runs show {run.id} --json gives it whole)")
    if detail:
        line.append(shown_as_is(f": {detail}"))
    return line


#: How many of the runs a ``start --payloads --wait`` waited for that did not
#: complete are shown one a line.
SHOWN_UNFINISHED = 10


def wait_for_runs(app: StackShift, runs: list[Run], limit: float | str | None,
                  as_json: bool) -> list[Run]:
    """Each of ``runs`` once it is completed, failed or cancelled, in their order
    (``TimeoutError`` when ``limit``, a duration, passes before they all have).
    Meanwhile, as for one run (:func:`wait_for_run`), a line shows the run waited
    for, with its place among them."""
    seconds = None if limit is None else parse_duration(limit, name="timeout")
    began = time.monotonic()
    deadline = None if seconds is None else began + seconds
    finals: list[Run] = []
    with progress_shown(as_json, f"Waiting for {plural(len(runs), 'run')}") as shown:
        try:
            for number, run in enumerate(runs, 1):
                if shown is None:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    finals.append(app.runs.wait(run.id, left))
                else:
                    finals.append(wait_showing(app, run.id, shown, began, deadline,
                                               f"{number:,} of {len(runs):,} · "))
        except TimeoutError:
            rest = [app.runs.get(other.id) for other in runs[len(finals):]]
            waiting = [other for other in rest if not other.is_terminal]
            if not waiting:  # the last of them ended as the time ran out
                return finals + rest
            raise WaitTimedOut(f"{len(waiting):,} of the {len(runs):,} runs had not ended "
                               f"after {seconds:g}s (run {waiting[0].id} is still "
                               f"{waiting[0].status})", finals + rest) from None
    return finals


class WaitTimedOut(TimeoutError):
    """A wait's time ran out before every run waited for ended; ``runs``: each of
    them as it stands (a script given ``--json`` still gets their ids and
    statuses)."""

    def __init__(self, message: str, runs: list[Run]) -> None:
        super().__init__(message)
        self.runs = runs


def runs_as_they_stand(error: BaseException, app: StackShift, started: list[Run]) -> list[Run]:
    """The runs of a wait that ran out of time or was interrupted (Ctrl-C), as
    they stand now."""
    if isinstance(error, WaitTimedOut):
        return error.runs
    return [app.runs.get(run.id) for run in started]


def echo_runs_json(finals: list[Run], started: list[Run], *, one: bool) -> None:
    """Print runs as ``--json`` gives them, each with ``created`` from its start."""
    data = [{**to_data(final), "created": run.created}
            for final, run in zip(finals, started, strict=True)]
    echo_json(data[0] if one else data)


def report_finished_many(finals: list[Run], started: list[Run], as_json: bool) -> None:
    """Print how the runs of ``start --payloads --wait`` ended, those that did not
    complete one a line; exit 1 unless they all completed."""
    unfinished = [run for run in finals if run.status != "completed"]
    if as_json:
        echo_runs_json(finals, started, one=False)
    else:
        counts = status_counts(finals)
        out = console()
        out.print(f"Waited for {plural(len(finals), 'run')}"
                  + (f": {counts}." if counts else "."), markup=False)
        for run in unfinished[:SHOWN_UNFINISHED]:
            out.print(finished_line(run))
        if len(unfinished) > SHOWN_UNFINISHED:
            out.print(f"... and {len(unfinished) - SHOWN_UNFINISHED:,} more that did not "
                      "complete", markup=False)
    if unfinished:
        raise click.exceptions.Exit(int(ExitCode.FAILED))


def report_finished(run: Run, as_json: bool, *, created: bool | None = None) -> None:
    """Print the final state of a run; exit 1 unless it completed."""
    if as_json:
        data: dict[str, Any] = to_data(run)
        if created is not None:
            data["created"] = created
        echo_json(data)
    else:
        console().print(finished_line(run))
        if run.error is not None and run.error.traceback and run.status == "failed":
            console(stderr=True).print(shown_as_is(run.error.traceback.rstrip()), style="dim",
                                       markup=False)
    if run.status != "completed":
        raise click.exceptions.Exit(int(ExitCode.FAILED))
