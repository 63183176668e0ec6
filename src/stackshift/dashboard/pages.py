"""What each dashboard page shows, read through the service layer.

Each function takes the service, the query parameters and the current time and
returns the template's context. They run in a worker thread (the service is
synchronous); rendering and HTTP live in :mod:`stackshift.dashboard.app`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..checks import check_filter
from ..durations import parse_duration, to_datetime
from ..engine.transitions import CANCELLABLE_AT_ONCE, RETRYABLE, TERMINAL, Status
from ..errors import EventNotFoundError, QueueNotFoundError, RunNotFoundError, StackShiftError
from ..models import LIVE_HEARTBEAT, LogEntry, Page, QueueStats, Run, WorkerInfo, again_links
from ..runlogs import level_number
from ..service import Service
from . import waterfall
from .formatting import chart_times, day_time, gone_by, key_text

STATUSES = [s.value for s in Status]
#: The order statuses are shown in: what needs attention first.
STATUS_ORDER = ["failed", "running", "waiting", "retrying", "queued", "scheduled", "completed",
                "cancelled"]
CREATED_PRESETS = {"15m": "Last 15 minutes", "1h": "Last hour", "24h": "Last 24 hours",
                   "7d": "Last 7 days"}
WINDOWS = {"1h": ("Last hour", 60), "24h": ("Last 24 hours", 48), "7d": ("Last 7 days", 56)}
PAGE_SIZE = 50
#: Most log lines a run page shows (the newest); the CLI and API give all of them.
MAX_LOG_LINES = 2000
#: Most of the runs started again from a run that its page links to (the latest).
MAX_STARTED_AGAIN = 3
#: Most rows of the run page's steps table and of its list of timeline entries
#: (the latest ones; the CLI lists them all).
MAX_TABLE_ROWS = 500


class NotFound(Exception):
    """The page's subject does not exist (an unknown run id): a 404 page."""


@dataclass(frozen=True)
class Problem:
    """A filter the user typed that cannot be applied, shown above the results."""

    text: str


def _param(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name, "").strip()
    return value or None


def _key_param(params: Mapping[str, str], name: str) -> str | None:
    """A key filter, exactly as typed: a key may begin or end with spaces, as in
    the SDK. A blank box is no filter."""
    value = params.get(name, "")
    return value if value.strip() else None


def _local_time(value: str, name: str) -> float:
    """A ``datetime-local`` input (read as UTC) or an ISO-8601 time with an offset."""
    text = value.strip().replace(" ", "T")
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a time like 2026-01-05T09:30") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- runs -------------------------------------------------------------------------------


def runs_page(service: Service, params: Mapping[str, str], now: float) -> dict[str, Any]:
    filters = {k: _param(params, k) for k in ("status", "job", "queue", "created", "from",
                                              "to", "cursor")}
    filters["q"] = _key_param(params, "q")
    problems: list[Problem] = []
    query: dict[str, Any] = {"limit": PAGE_SIZE, "cursor": filters["cursor"]}
    for key in ("status", "job", "queue"):
        if filters[key]:
            query[key] = filters[key]
    if filters["status"] and filters["status"] not in STATUSES:
        problems.append(Problem(f"Unknown status {filters['status']!r}."))
        query.pop("status")
    if filters["created"] and filters["created"] != "custom":
        if filters["created"] in CREATED_PRESETS:
            query["created_after"] = datetime.fromtimestamp(
                now - parse_duration(filters["created"]), UTC)
        else:
            problems.append(Problem(f"Unknown time range {filters['created']!r}."))
    for key, arg in (("from", "created_after"), ("to", "created_before")):
        if filters[key]:
            try:
                query[arg] = datetime.fromtimestamp(_local_time(filters[key] or "", key), UTC)
            except ValueError as exc:
                problems.append(Problem(str(exc)))
    after, before = query.get("created_after"), query.get("created_before")
    if after is not None and before is not None and after >= before:
        problems.append(Problem("The custom range is empty: From is not before To, so no"
                                " run was created in it."))
    matched_by = None
    term = filters["q"]
    by = params.get("by")
    try:
        if term:
            page, matched_by, filters["q"] = _search_runs(service, term, by, query)
        else:
            page = service.list_runs(**query)
    except StackShiftError as exc:
        # Refused (a stale cursor, a NUL character): no rows, rather than runs
        # outside the filters the page still shows as applied.
        problems.append(Problem(str(exc)))
        page = Page([], None)
    # The tabs count the runs of the job, queue and time of creation chosen (a
    # search aside: it names one run, or a few).
    chosen = {k: query[k] for k in ("job", "queue", "created_after", "created_before")
              if k in query}
    try:
        counts = service.count_runs_by_status(**chosen)
    except StackShiftError:  # a filter refused above (the page says so) selects no run
        counts = {}
    return {
        "page_title": "Runs",
        "counted": chosen,
        "nav": "runs",
        "runs": [run_row(r, now) for r in page.items],
        "next_cursor": page.next_cursor,
        "filters": filters,
        "counts": counts,
        "total": sum(counts.values()),
        "status_order": STATUS_ORDER,
        "problems": problems,
        "matched_by": matched_by,
        "jobs": service.job_names(),
        "queues": service.queue_names(),
        "presets": CREATED_PRESETS,
        "now": now,
    }


def _search_runs(service: Service, term: str, by: str | None,
                 query: dict[str, Any]) -> tuple[Page[Run], str, str]:
    """What the runs search box finds, how, and for which term. One box finds runs
    by id or idempotency key, else by correlation key (``by`` = ``"key"``: by
    correlation key only, for the next pages of such a search), the term as
    typed: keys may begin or end with spaces. When that finds no run, the term
    without its surrounding spaces is tried (a run id pasted with a space)."""
    for candidate in dict.fromkeys((term, term.strip())):
        if by != "key":
            page = service.list_runs(search=candidate, **query)
            if page.items:
                return page, "id", candidate
        page = service.list_runs(correlation_key=candidate, **query)
        if page.items:
            return page, "key", candidate
    return page, "key", term


def _due_note(to_come: str, due: str, moment: datetime, now: float, shown: str) -> str:
    """``starts at 09:12:00 UTC``; once ``moment`` is :func:`gone_by` and it has not
    happened, ``start due since 09:12:00 UTC``."""
    lead = f"{due} due since" if gone_by(moment, now) else to_come
    return f"{lead} {shown} UTC"


def _start_due(run: Run) -> bool:
    """Whether ``run`` was scheduled and is now queued, never started: once its start
    time comes, maintenance (of a worker or a server) moves it to ``queued``, due
    since that time, whether or not any worker may take it."""
    return run.status == "queued" and run.scheduled_at is not None and run.attempt == 0


def run_row(run: Run, now: float) -> dict[str, Any]:
    """One line of a runs table: what a reader scans for. A retrying run gives its
    next attempt first, then the error. A time (of a next attempt, a wake-up, a
    start) reads with its date when it falls on another UTC day than ``now``."""
    note = ""
    if run.status == "retrying" and run.next_attempt_at is not None:
        note = _due_note("next attempt at", "next attempt", run.next_attempt_at, now,
                         day_time(run.next_attempt_at, now))
        if run.error is not None:
            note += f" · {run.error.type}: {run.error.message}"
    elif run.error is not None and run.status in ("failed", "retrying", "cancelled"):
        note = f"{run.error.type}: {run.error.message}"
    elif run.waiting_for is not None:
        w = run.waiting_for
        if w.kind == "event":
            note = f"waits for {w.event_name}" + (f" · {key_text(w.correlation_key)}"
                                                   if w.correlation_key else "")
        elif w.until is not None:
            note = _due_note("sleeps until", "wake-up", w.until, now, day_time(w.until, now))
    elif run.next_attempt_at is not None and (run.status == "scheduled" or _start_due(run)):
        note = _due_note("starts at", "start", run.next_attempt_at, now,
                         day_time(run.next_attempt_at, now))
    start = run.started_at
    end = run.finished_at
    elapsed = None
    if start is not None:
        elapsed = ((end.timestamp() if end else now) - start.timestamp())
    return {"run": run, "note": note, "elapsed": elapsed, "running": end is None}


def run_page(service: Service, run_id: str, params: Mapping[str, str],
             now: float, *, submitted: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The run page; ``submitted`` refills the send-event form with what was sent
    when the dashboard refused it."""
    try:
        run = service.get_run(run_id)
    except RunNotFoundError:
        raise NotFound(f"No run with id {run_id!r}.") from None
    # Of a run that loops over thousands of steps or pauses, the waterfall draws
    # the latest: only the entries from the first of them on are read, with what
    # began and ended the attempts before.
    outline, earlier_steps = service.timeline_outline(run_id, waterfall.MAX_STEP_ROWS)
    attempts = service.attempts(run_id)
    # The last lines only: a run that logged a million records is read as fast
    # as one that logged a few (the page reloads each time it logs more).
    logs, hidden_logs = service.latest_logs(run_id, MAX_LOG_LINES)
    status = Status(run.status)
    chart = waterfall.build(run, outline, attempts, now, logs, earlier_steps=earlier_steps)
    log_groups: dict[int | None, list[LogEntry]] = {}
    for entry in logs:
        log_groups.setdefault(entry.attempt, []).append(entry)
    attempt_by_number = {a.number: a for a in attempts}
    wait = run.waiting_for
    # A run that loops over thousands of steps: its latest rows only, so that the
    # page (sent again at each change while it runs) stays light; only those
    # steps (with their results) and entries are read.
    steps, hidden_steps = service.latest_steps(run_id, MAX_TABLE_ROWS)
    entries, hidden_entries = service.latest_timeline(run_id, MAX_TABLE_ROWS)
    # The outline holds every entry but those of steps: the run's first, which names
    # the run it was started again from, and each start again of it.
    again_of, started_again = again_links(outline)
    return {
        "page_title": f"{run.job} · {run.id}",
        "nav": "runs",
        "run": run,
        "attempts": attempts,
        "attempt_by_number": attempt_by_number,
        "steps": steps,
        "step_count": len(steps) + hidden_steps,
        "hidden_steps": hidden_steps,
        "log_groups": sorted(log_groups.items(), key=lambda kv: kv[0] or 0),
        "log_count": len(logs) + hidden_logs,
        "hidden_logs": hidden_logs,
        "log_steps": sorted({e.step for e in logs if e.step}),
        # The level filter, when the lines shown mix warnings or errors with others.
        "log_levels": len({level_number(e.level) >= logging.WARNING for e in logs}) > 1,
        "timeline": entries,
        "timeline_count": len(entries) + hidden_entries,
        "hidden_entries": hidden_entries,
        "again_of": again_of,
        # The latest first, a few of them.
        "started_again": started_again[::-1][:MAX_STARTED_AGAIN],
        "started_again_count": len(started_again),
        "chart": chart,
        "can_cancel": status in CANCELLABLE_AT_ONCE or status == Status.RUNNING,
        "can_retry": status in RETRYABLE,
        "is_terminal": status in TERMINAL,
        "waits_for_event": wait is not None and wait.kind == "event",
        "wait": wait,
        "submitted": submitted,
        "duration": None if run.started_at is None else (
            (run.finished_at.timestamp() if run.finished_at else now) - run.started_at.timestamp()),
        "now": now,
    }


# -- events -----------------------------------------------------------------------------


def events_page(service: Service, params: Mapping[str, str], now: float) -> dict[str, Any]:
    name = _param(params, "name")
    key = _key_param(params, "key")
    cursor = _param(params, "cursor")
    problems: list[Problem] = []
    try:
        page = service.list_events(name=name, correlation_key=key, limit=PAGE_SIZE,
                                   cursor=cursor)
    except StackShiftError as exc:
        problems.append(Problem(str(exc)))
        page = Page([], None)  # no events outside the filters (see runs_page)
    consumers = service.event_consumers([e.id for e in page.items])
    return {
        "page_title": "Events",
        "nav": "events",
        "events": page.items,
        "consumers": consumers,
        "next_cursor": page.next_cursor,
        "filters": {"name": name, "key": key, "cursor": cursor},
        "problems": problems,
        "now": now,
    }


def event_exists(service: Service, event_id: str) -> bool:
    try:
        service.get_event(event_id)
    except EventNotFoundError:
        return False
    return True


# -- queues -----------------------------------------------------------------------------


def _window(params: Mapping[str, str]) -> str:
    window = params.get("window", "1h")
    return window if window in WINDOWS else "1h"


def queue_stats(service: Service, settings: Mapping[str, Any]) -> list[QueueStats]:
    """Each queue that holds runs or has settings, by name: a queue paused or
    given a limit before its first run shows with no runs, as ``stackshift
    queues`` and ``/metrics`` show it."""
    found = {stats.name: stats for stats in service.queue_stats()}
    for name in settings:
        found.setdefault(name, QueueStats(name, {}, None))
    return [found[name] for name in sorted(found)]


def unserved(queue: QueueStats, live: list[WorkerInfo]) -> bool:
    """Whether runs of ``queue`` are due and no live worker takes that queue (none
    runs, or each was started with ``queues`` that leave it out)."""
    return queue.oldest_queued_at is not None and not any(w.takes(queue.name) for w in live)


def queues_page(service: Service, params: Mapping[str, str], now: float) -> dict[str, Any]:
    window = _window(params)
    series = service.queue_throughput(window, buckets=WINDOWS[window][1])
    settings = service.queue_settings()
    live = service.live_workers(now)
    queues = []
    for stats in queue_stats(service, settings):
        buckets = series.get(stats.name)
        if buckets is None:  # nothing finished in the window: an empty chart, not none
            buckets = service.queue_throughput(window, buckets=WINDOWS[window][1],
                                               queue=stats.name)[stats.name]
        done = sum(b.completed for b in buckets)
        failed = sum(b.failed for b in buckets)
        queues.append({
            "stats": stats,
            "buckets": buckets,
            "completed": done,
            "failed": failed,
            "peak": max([b.completed + b.failed for b in buckets] or [0]),
            "paused": settings.get(stats.name, {}).get("paused", False),
            "unserved": unserved(stats, live),
        })
    return {
        "page_title": "Queues",
        "nav": "queues",
        "queues": queues,
        "window": window,
        "windows": WINDOWS,
        "status_order": STATUS_ORDER,
        "now": now,
    }


def queue_page(service: Service, name: str, params: Mapping[str, str],
               now: float) -> dict[str, Any]:
    window = _window(params)
    all_settings = service.queue_settings()
    queues = queue_stats(service, all_settings)
    stats = next((q for q in queues if q.name == name), None)
    if stats is None:
        raise NotFound(str(QueueNotFoundError.named(name, (q.name for q in queues))))
    buckets = service.queue_throughput(window, buckets=WINDOWS[window][1], queue=name)[name]
    cursor = _param(params, "cursor")
    problems: list[Problem] = []
    try:
        dead = service.dead_letters(name, limit=PAGE_SIZE, cursor=cursor)
    except StackShiftError as exc:  # a stale cursor: the rest of the page still shows
        problems.append(Problem(str(exc)))
        dead = Page([], None)
    done = sum(b.completed for b in buckets)
    failed = sum(b.failed for b in buckets)
    span = (buckets[-1].start - buckets[0].start).total_seconds() + (
        (buckets[1].start - buckets[0].start).total_seconds() if len(buckets) > 1 else 60)
    settings = all_settings.get(name, {})
    return {
        "page_title": f"Queue {name}",
        "nav": "queues",
        "queue": stats,
        "settings": settings,
        "paused": settings.get("paused", False),
        "unserved": unserved(stats, service.live_workers(now)),
        "buckets": buckets,
        # Under the chart: its first bucket's start and its middle one's (then "now").
        "axis": chart_times([buckets[0].start, buckets[len(buckets) // 2].start], now)
        if buckets else [],
        "peak": max([b.completed + b.failed for b in buckets] or [0]),
        "completed": done,
        "failed": failed,
        "per_minute": (done + failed) / (span / 60) if span > 0 else 0.0,
        "dead": [run_row(r, now) for r in dead.items],
        "dead_total": stats.counts.get("failed", 0),
        "problems": problems,
        "next_cursor": dead.next_cursor,
        "cursor": cursor,
        "window": window,
        "windows": WINDOWS,
        "status_order": STATUS_ORDER,
        "now": now,
    }


# -- jobs and workers --------------------------------------------------------------------


def _filled_from(service: Service, run_id: str | None) -> dict[str, Any]:
    """The start form filled in from run ``run_id`` (``?from_run=``, the run page's
    Edit and start): its job, payload, queue and priority, to edit before starting
    a new run. ``submitted`` is the form as shown; ``filled_from`` the run, or
    ``fill_error`` why the form is empty."""
    if not run_id:
        return {"submitted": None, "filled_from": None, "fill_error": None}
    try:
        run = service.get_run(run_id)
    except RunNotFoundError as exc:
        return {"submitted": None, "filled_from": None,
                "fill_error": f"Nothing to fill the form in with: {exc}."}
    payload = "" if run.payload is None else json.dumps(run.payload, indent=2,
                                                         ensure_ascii=False)
    return {"submitted": {"job": run.job, "payload": payload, "idempotency_key": "",
                          "queue": run.queue, "delay": "",
                          "priority": str(run.priority) if run.priority else ""},
            "filled_from": run.id, "fill_error": None}


def jobs_page(service: Service, params: Mapping[str, str], now: float) -> dict[str, Any]:
    workers = service.list_workers()
    live = [w for w in workers if w.is_live(now)]
    # The jobs workers have registered (as GET /v1/jobs lists them) and those with runs.
    registered = {j.name: j for j in service.list_jobs()}
    serving = {name: j.live_workers for name, j in registered.items()}
    stats = {j.name: j for j in service.job_stats()}
    names = sorted(set(stats) | set(serving))
    jobs = []
    for name in names:
        js = stats.get(name)
        counts = js.counts if js else {}
        due = js.due if js else 0
        jobs.append({
            "name": name,
            "counts": counts,
            "total": sum(counts.values()),
            "last": js.last_created_at if js else None,
            "workers": serving.get(name, 0),
            # Where its runs go unless started elsewhere: the queue its workers take.
            "queue": (registered[name].queue or service.settings.default_queue)
            if name in registered else None,
            # Runs due now that no live worker can take; runs due later need no
            # worker yet: the page gives their due time instead.
            "stranded": due if not serving.get(name) else 0,
            "next_due": js.next_due_at if js and not due else None,
        })
    return {
        "page_title": "Jobs and workers",
        "nav": "jobs",
        "jobs": jobs,
        "workers": [
            {"worker": w, "live": w.is_live(now)}
            for w in workers
        ],
        "live_count": len(live),
        "schedules": service.list_schedules(),
        "registered": set(registered),
        # The start form's suggestions: the queues the jobs' workers take.
        "queue_names": sorted({job["queue"] for job in jobs if job["queue"]}),
        **_filled_from(service, params.get("from_run")),
        "status_order": STATUS_ORDER,
        "live_heartbeat": LIVE_HEARTBEAT,
        "now": now,
    }


# -- state ------------------------------------------------------------------------------


Entries = list[dict[str, Any]]


def _key_page(listing: Callable[..., Page[dict[str, Any]]], prefix: str | None, cursor: str | None,
              name: str, problems: list[Problem]) -> tuple[Entries, str | None]:
    """A page of ``listing`` (``state_page`` or ``lock_page``) after ``cursor``, the
    query parameter ``name``, and the cursor of the next page. Refused input is shown
    once above the results (keys and locks share the prefix) and lists nothing."""
    try:
        check_filter(cursor, name)  # refused under the name the address gives it
        page = listing(prefix, PAGE_SIZE, cursor)
    except StackShiftError as exc:  # shown above the (empty) results, like a runs filter
        if Problem(str(exc)) not in problems:
            problems.append(Problem(str(exc)))
        return [], None
    return page.items, page.next_cursor


#: A lock taken in a handler says so: "run <id> (attempt <n>)" (state.lock_holder).
_RUN_HOLDER = re.compile(r"run (run_[0-9a-z]+) \(attempt \d+\)")


def _holder_run(holder: str | None) -> str | None:
    """The run whose handler holds a lock, to link to; ``None`` for another holder."""
    found = _RUN_HOLDER.fullmatch(holder or "")
    return found.group(1) if found else None


def state_page(service: Service, params: Mapping[str, str], now: float) -> dict[str, Any]:
    # A key may begin or end with spaces, so neither the prefix (exactly as typed:
    # "my key " must not list "my keyring") nor the cursors (the last key of the
    # previous page) are stripped as the runs filters are. The prefix filters the
    # locks too; each list pages on its own.
    prefix = params.get("prefix") or None
    cursor = params.get("cursor") or None
    locks_cursor = params.get("locks_cursor") or None
    problems: list[Problem] = []
    shown, next_cursor = _key_page(service.state_page, prefix, cursor, "cursor", problems)
    locks, locks_next = _key_page(service.lock_page, prefix, locks_cursor, "locks_cursor",
                                  problems)
    return {
        "page_title": "State",
        "nav": "state",
        "entries": [
            {
                "key": e["key"],
                "value": e["value"],
                "expires_at": to_datetime(e["expires_at"]),
                "ttl": None if e["expires_at"] is None else e["expires_at"] - now,
                "updated_at": to_datetime(e["updated_at"]),
            }
            for e in shown
        ],
        "next_cursor": next_cursor,
        "cursor": cursor,
        "locks": [
            {"key": lock["key"], "form_key": json.dumps(lock["key"]), "holder": lock["holder"],
             "holder_run": _holder_run(lock["holder"]),
             "holder_attempt": (lock["holder"] or "").rpartition(" (")[2].rstrip(")"),
             "expires_at": to_datetime(lock["expires_at"]), "ttl": lock["expires_at"] - now}
            for lock in locks
        ],
        "locks_next": locks_next,
        "locks_cursor": locks_cursor,
        "prefix": prefix,
        "problems": problems,
        "now": now,
    }
