"""The service's flow-control operations: queues, schedules, dead letters, retention.

A mixin of :class:`stackshift.service.Service`: like every operation there, each
validates its input, asks the engine's rules and calls the store. Every shell
(SDK, CLI, HTTP API) goes through these.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .durations import parse_duration, time_bound
from .engine.cron import check_overlap, parse_cron
from .engine.limits import check_concurrency, parse_rate_limit
from .engine.transitions import parse_status
from .errors import ValidationError
from .ids import check_cursor, check_failure_cursor, new_id
from .jobs import JobRegistry, check_max_attempts, check_name
from .models import Page, QueueInfo, Run, Schedule, WorkerInfo
from .serialization import dumps, encode
from .settings import Settings
from .store.base import NewRun, RunFilter
from .store.database import Row
from .store.flow import ClaimRules
from .store.queues import KEEP
from .store.schedules import TICK_KEY_TTL, code_schedule_id, new_schedule_id, tick_key

if TYPE_CHECKING:
    import threading

    from .service import Notifier
    from .store import SqlStore

#: Statuses a bulk retry may select.
RETRYABLE = ("failed", "cancelled")
#: Runs a bulk retry reads and retries per transaction.
RETRY_BATCH = 200
#: Runs a bulk retry retries per page (per request through a server): about a
#: second of work on PostgreSQL, far inside the remote client's 30 s timeout.
RETRY_PAGE = 1000
#: The most ``page_size`` takes.
MAX_RETRY_PAGE = 100_000
#: Default window of a queue's throughput and failure rate.
DEFAULT_STATS_WINDOW = "15m"


def _optional(value: Any, check: Any) -> Any:
    """``KEEP`` stays, ``None`` removes, anything else is checked."""
    if value is KEEP or value is None:
        return value
    return check(value)


def check_stats_window(window: Any) -> float:
    seconds = parse_duration(window, name="window")
    if not 1 <= seconds <= 90 * 86400:
        raise ValidationError("window: must be from 1s to 90d")
    return seconds



def check_retry_many(status: str, queue: str | None, job: str | None,
                     limit: int | None, page_size: int = 1) -> str:
    """The checks of a bulk retry's arguments (shared with the remote client);
    returns the status to retry."""
    state = parse_status(status).value
    if state not in RETRYABLE:
        raise ValidationError(f"only failed or cancelled runs can be retried, not {state}")
    if queue is not None:
        check_name(queue, "queue name")
    if job is not None:
        check_name(job, "job name")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ValidationError(f"limit must be a positive integer, got {limit!r}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) \
            or not 1 <= page_size <= MAX_RETRY_PAGE:
        raise ValidationError(
            f"page_size must be an integer from 1 to {MAX_RETRY_PAGE}, got {page_size!r}")
    return state


def retry_in_pages(retry_page: Callable[[int | None, str | None], Page[str]], limit: int | None,
                   page_size: int, progress: Callable[[int], None] | None) -> list[str]:
    """A bulk retry as pages of at most ``page_size`` runs (each one call of
    ``retry_page(limit, cursor)``, embedded or one HTTP request), each page
    starting below the last run the one before looked at: no run is looked at
    twice. ``progress`` gets the total retried after each page."""
    if progress is not None and not callable(progress):  # found after a page was retried
        raise ValidationError(f"progress must be a function of the total retried, got"
                              f" {progress!r:.100}")
    retried: list[str] = []
    cursor = None
    while limit is None or len(retried) < limit:
        room = page_size if limit is None else min(page_size, limit - len(retried))
        page = retry_page(room, cursor)
        retried += page.items
        if progress is not None:
            progress(len(retried))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return retried


class FlowControl:
    store: SqlStore
    clock: Clock
    settings: Settings
    registry: JobRegistry
    notifier: Notifier
    #: How a limit is raised where this service runs (by its setting's name): a
    #: program's ``Settings``, a server's or a command's ``--setting``.
    limits_set_by: Callable[[str], str]

    def raised_by(self, setting: str) -> str:
        """How the limit ``setting`` this service holds to is raised."""
        return self.limits_set_by(setting)

    # -- queues ------------------------------------------------------------------------

    def configure_queue(
        self,
        name: str,
        *,
        concurrency: Any = KEEP,
        rate_limit: Any = KEEP,
        max_attempts: Any = KEEP,
    ) -> QueueInfo:
        """Store the given settings of queue ``name`` (``None`` removes one).

        ``concurrency``: most runs of the queue running at once across all
        workers; ``rate_limit``: most attempts started per period (``"100/m"``);
        ``max_attempts``: the default between a job's and the installation's.
        """
        check_name(name, "queue name")
        limits = {
            "concurrency": _optional(concurrency, check_concurrency),
            "rate_limit": _optional(rate_limit, parse_rate_limit),
            "max_attempts": _optional(max_attempts, check_max_attempts),
        }
        self.store.configure_queue(name, self.clock.now(), **limits)
        self.notifier.notify()  # a raised limit may let waiting runs start
        return self._configured(name)

    def pause_queue(self, name: str) -> QueueInfo:
        """Start nothing more from ``name`` until resumed; running runs carry on."""
        check_name(name, "queue name")
        self.store.configure_queue(name, self.clock.now(), paused=True)
        return self._configured(name)

    def resume_queue(self, name: str) -> QueueInfo:
        check_name(name, "queue name")
        self.store.configure_queue(name, self.clock.now(), paused=False)
        self.notifier.notify()
        return self._configured(name)

    def _configured(self, name: str) -> QueueInfo:
        """A queue just configured: a new name too (zero counts), or one whose
        settings were all removed and holds no runs, which the lists leave out."""
        window = check_stats_window(DEFAULT_STATS_WINDOW)
        now = self.clock.now()
        return self._counted([self.store.queue_info(name, now, window)], now)[0]

    def live_workers(self, now: float) -> list[WorkerInfo]:
        """The registered workers whose heartbeat at ``now`` is recent enough for
        them to count as running."""
        return [w for w in self.store.workers() if w.is_live(now)]

    def _counted(self, queues: list[QueueInfo], now: float) -> list[QueueInfo]:
        """``queues`` with the live workers that take each counted."""
        live = self.live_workers(now)
        return [replace(q, live_workers=sum(w.takes(q.name) for w in live)) for q in queues]

    def queue_info(self, name: str, window: Any = DEFAULT_STATS_WINDOW) -> QueueInfo:
        """The queue's settings, runs per status, throughput and failure rate over
        ``window``, and the age of its oldest due run not yet started.

        A queue that holds no runs and has no settings (which no list shows: a
        typo, say) raises :class:`QueueNotFoundError`.
        """
        check_name(name, "queue name")
        now = self.clock.now()
        info = self.store.queue_info(name, now, check_stats_window(window), known=True)
        return self._counted([info], now)[0]

    def list_queues(self, window: Any = DEFAULT_STATS_WINDOW) -> list[QueueInfo]:
        """Every queue that holds runs or has settings, by name."""
        seconds = check_stats_window(window)
        now = self.clock.now()
        return self._counted([self.store.queue_info(name, now, seconds)
                              for name in self.store.all_queue_names()], now)

    def dead_letters(self, queue: str, *, job: str | None = None, limit: int = 50,
                     cursor: str | None = None) -> Page[Run]:
        """Runs of ``queue`` that failed for good, the latest failure first (by
        ``finished_at``, then newest id). A queue that holds no runs and has no
        settings raises :class:`QueueNotFoundError`."""
        check_name(queue, "queue name")
        if job is not None:
            check_name(job, "job name")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValidationError(f"limit must be an integer from 1 to 1000, got {limit!r}")
        return self.store.dead_letters(queue, job, limit, check_failure_cursor(cursor))

    def retry_many(
        self,
        *,
        queue: str | None = None,
        job: str | None = None,
        status: str = "failed",
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        limit: int | None = None,
        page_size: int = RETRY_PAGE,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Retry every run that matches (``failed`` by default, or ``cancelled``).

        Each run gets a fresh attempt budget and keeps its completed steps, as
        with ``runs.retry``. Runs that change status meanwhile are skipped.
        Returns the ids of the runs retried, at most ``limit`` of them.

        The matches are taken from the newest id down, ``page_size`` runs at a
        time (``progress`` is called with the total retried after each page), so
        a run retried by the call that fails again before the call ends is not
        retried a second time, nor is a run started after the call began.
        """
        check_retry_many(status, queue, job, limit, page_size)
        return retry_in_pages(
            lambda room, cursor: self.retry_page(
                queue=queue, job=job, status=status, created_after=created_after,
                created_before=created_before, limit=room, cursor=cursor),
            limit, page_size, progress)

    def retry_page(
        self,
        *,
        queue: str | None = None,
        job: str | None = None,
        status: str = "failed",
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[str]:
        """One page of :meth:`retry_many`: the matching runs with an id below
        ``cursor`` (every match without one), newest first, until ``limit`` are
        retried. Returns the ids retried and the cursor of the next page: the
        last run looked at, or ``None`` when no match is left below it.
        """
        state = check_retry_many(status, queue, job, limit)
        filters = RunFilter(
            status=state, queue=queue, job=job,
            created_after=None if created_after is None
            else time_bound(created_after, name="created_after"),
            created_before=None if created_before is None
            else time_bound(created_before, name="created_before"),
        )
        cursor = check_cursor(cursor, "run")
        retried: list[str] = []
        while True:
            page = self.store.list_runs(filters, RETRY_BATCH, cursor)
            ids = [run.id for run in page.items]
            while ids and (limit is None or len(retried) < limit):
                # A batch per transaction; with a limit, only as many as it has
                # room for, and again while some turned out retried meanwhile.
                room = len(ids) if limit is None else limit - len(retried)
                batch, ids = ids[:room], ids[room:]
                retried += self.store.retry_runs(batch, self.clock.now(), only=state)
                cursor = batch[-1]
            if ids or page.next_cursor is None:
                # Stopped at the limit inside this read (the rest of it is the
                # next page's), or nothing is left.
                next_cursor = cursor if ids else None
                break
            if limit is not None and len(retried) >= limit:
                next_cursor = page.next_cursor  # more may match below it
                break
            cursor = page.next_cursor
        if retried:
            self.notifier.notify()
        return Page(retried, next_cursor)

    # -- schedules ----------------------------------------------------------------------

    def create_schedule(self, job: str, *, cron: str, payload: Any = None,
                        timezone: str = "UTC", queue_name: str | None = None,
                        schedule_id: str | None = None, overlap: str = "allow") -> Schedule:
        """A recurring schedule: one run of ``job`` with ``payload`` per tick of ``cron``.

        With ``schedule_id``: that schedule, created or else changed to this
        definition (see :meth:`ScheduleStore.put_schedule`).
        """
        saved, created = self.save_schedule(job, cron=cron, payload=payload,
                                            timezone=timezone, queue_name=queue_name,
                                            schedule_id=schedule_id, overlap=overlap)
        return replace(saved, created=created)

    def save_schedule(self, job: str, *, cron: str, payload: Any = None,
                      timezone: str = "UTC", queue_name: str | None = None,
                      schedule_id: str | None = None,
                      overlap: str = "allow") -> tuple[Schedule, bool]:
        """:meth:`create_schedule`, and whether the schedule was created (false
        when ``schedule_id`` named an existing one, now changed or as it was)."""
        check_name(job, "job name")
        parsed = parse_cron(cron, timezone)
        if queue_name is not None:
            check_name(queue_name, "queue name")
        if schedule_id is not None:
            check_own_schedule_id(schedule_id)
        check_overlap(overlap)
        text = encode(payload, what="payload", limit=self.settings.max_payload_bytes,
                      setting="max_payload_bytes", raised_by=self.limits_set_by)
        if schedule_id is not None:
            return self.store.put_schedule(schedule_id, job, parsed, text, queue_name,
                                           self.clock.now(), overlap)
        return self.store.create_schedule(new_schedule_id(), job, parsed, text, queue_name,
                                          "api", self.clock.now(), overlap), True

    def get_schedule(self, schedule_id: str) -> Schedule:
        return self.store.get_schedule(check_schedule_id(schedule_id))

    def list_schedules(self) -> list[Schedule]:
        return self.store.list_schedules()

    def pause_schedule(self, schedule_id: str) -> Schedule:
        return self.store.set_schedule_paused(check_schedule_id(schedule_id), True,
                                              self.clock.now())

    def resume_schedule(self, schedule_id: str) -> Schedule:
        """Resume from now on: ticks that passed while paused do not run."""
        return self.store.set_schedule_paused(check_schedule_id(schedule_id), False,
                                              self.clock.now())

    def delete_schedule(self, schedule_id: str) -> bool:
        """Delete the schedule (its runs stay); whether it existed.

        A schedule defined with ``@job(cron=...)`` comes back when a worker
        serving the job starts; pause it instead, or remove ``cron`` from the code.
        """
        return self.store.delete_schedule(check_schedule_id(schedule_id))

    # -- what workers do ----------------------------------------------------------------

    def claim_rules(self) -> ClaimRules:
        """Per-job claim rules from the registry: key limits and failure handlers."""
        key_limits: dict[str, int] = {}
        on_failure: dict[str, str] = {}
        for job in self.registry:
            if job.key_concurrency is not None:
                key_limits[job.name] = job.key_concurrency
            if job.on_failure is not None:
                handler = self.registry.get(job.on_failure)
                on_failure[job.name] = dumps({
                    "job": job.on_failure,
                    "queue": (handler.queue if handler else None) or self.settings.default_queue,
                    "max_attempts": handler.max_attempts if handler else None,
                    "default_max_attempts": self.settings.default_max_attempts,
                })
        return ClaimRules(key_limits, on_failure)

    def prepare_worker(self, stopping: threading.Event) -> bool:
        """What a worker does first: record the registry's schedules and job defaults.

        ``True``: the database is there once the store is open (a remote
        worker's service waits here for its server; ``False`` when stopped first).
        """
        self.sync_code_schedules()
        self.publish_jobs()
        return True

    def sync_code_schedules(self) -> None:
        """Create, update or remove the schedules of ``@job(cron=...)`` for this registry."""
        wanted = {}
        unwanted = []
        for job in self.registry:
            if job.cron is not None:
                wanted[code_schedule_id(job.name)] = (job.name, parse_cron(job.cron, job.timezone),
                                                      job.queue, job.overlap)
            else:
                unwanted.append(code_schedule_id(job.name))
        self.store.sync_code_schedules(wanted, unwanted, self.clock.now())

    def publish_jobs(self) -> None:
        """Record the queue and ``max_attempts`` of each job of this registry, for
        the processes that start runs without its code (see :meth:`job_defaults`).
        A job that names no queue is recorded on this process's default queue
        (its ``Settings``), so that a run started elsewhere goes where this
        process's workers take it; one that sets no ``max_attempts`` leaves it to
        its queue's setting."""
        default_queue = self.settings.default_queue
        self.store.publish_jobs([(job.name, job.queue or default_queue, job.max_attempts)
                                 for job in self.registry], self.clock.now())

    def job_defaults(self, name: str) -> tuple[str | None, int | None]:
        """``(queue, max_attempts)`` of job ``name``: from this process's registry,
        else as its workers published them, else ``(None, None)``."""
        registered = self.registry.get(name)
        if registered is not None:
            return registered.queue, registered.max_attempts
        return self.store.job_defaults(name) or (None, None)

    def fire_schedules(self, now: float) -> list[str]:
        """Start the runs of due schedule ticks; return the ids of runs started."""
        settings = self.settings

        def make_run(row: Row, tick: float) -> NewRun:
            queue, max_attempts = self.job_defaults(row["job"])
            return NewRun(
                id=new_id("run"),
                job=row["job"],
                queue=row["queue"] or queue or settings.default_queue,
                payload=row["payload"],
                max_attempts=max_attempts,
                priority=0,
                concurrency_key=None,
                scheduled_at=None,
                idempotency_key=tick_key(row["id"], tick),
                idempotency_expires_at=now + TICK_KEY_TTL,
                default_max_attempts=settings.default_max_attempts,
            )

        started = self.store.fire_schedules(now, make_run)
        if started:
            self.notifier.notify()
        return started

    def apply_retention(self, now: float) -> bool:
        """One batch of clean-up (see :mod:`stackshift.store.retention`).

        Returns whether a batch came back full, i.e. more is due now.
        """
        settings = self.settings
        batch = settings.retention_batch
        full = False
        if settings.run_retention is not None:
            deleted = self.store.delete_finished_runs(now - settings.run_retention, now, batch)
            full = deleted >= batch
        expired = self.store.delete_expired(now, batch)
        return full or any(expired[k] >= batch for k in ("events", "idempotency_keys", "state"))


def check_own_schedule_id(value: object) -> str:
    """An id chosen for ``schedules.create(..., schedule_id=...)``."""
    check_name(value, "schedule id")
    assert isinstance(value, str)
    if value.startswith("job:"):
        raise ValidationError(f"schedule id {value!r} is invalid: ids starting with 'job:' "
                              "are those of @job(cron=...) schedules")
    return value


def check_schedule_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"schedule id must be a non-empty string, got {value!r}")
    if len(value) > 300:
        raise ValidationError(f"schedule id is {len(value):,} characters, over the limit of 300")
    return value


_HANDLER_FIELDS = {"job", "queue", "max_attempts", "default_max_attempts"}


def check_failure_handler(text: str) -> str:
    """A failure handler as a worker sends it with its claim rules (the JSON text
    :meth:`claim_rules` makes); raises ``ValueError`` naming what is wrong.

    The text is stored on each run claimed and read when the run fails, so a
    malformed one would only show then, in the middle of recording a failure.
    """
    try:
        spec = json.loads(text)
    except ValueError:
        raise ValueError("a failure handler must be a JSON object") from None
    if not isinstance(spec, dict) or set(spec) != _HANDLER_FIELDS:
        raise ValueError("a failure handler must be a JSON object with exactly the fields "
                         + ", ".join(sorted(_HANDLER_FIELDS)))
    check_name(spec["job"], "failure handler job")
    check_name(spec["queue"], "failure handler queue")
    if spec["max_attempts"] is not None:
        check_max_attempts(spec["max_attempts"])
    check_max_attempts(spec["default_max_attempts"])
    return dumps(spec)
