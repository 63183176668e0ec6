"""Values returned by the API: runs, steps, attempts, timeline entries, logs, events.

All are frozen dataclasses; timestamps are aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

#: How a lock's owner had lost it by the time it released it: its TTL ran out
#: (and no other owner took it meanwhile), an operator broke it while it was
#: live (``state.break_lock``), or the lock is gone and which of the two it was
#: cannot be told (another owner has taken the key since, or clean-up removed it).
LockLoss = Literal["expired", "broken", "expired_or_broken"]


@dataclass(frozen=True)
class RunError:
    """What made an attempt or a run fail."""

    type: str
    message: str
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunError | None:
        if not data:
            return None
        return cls(data["type"], data["message"], data.get("traceback"))


@dataclass(frozen=True)
class WaitingFor:
    """What a waiting run waits for: an event (name and key) or a wake time."""

    kind: str  # "event" or "sleep"
    step: str
    until: datetime | None
    event_name: str | None = None
    correlation_key: str | None = None


#: What a run's handle does in other engines, and how a client does it here
#: (``stackshift`` standing for the client): a :class:`Run` is the run as it was
#: read, with no link back.
RUN_HANDLE_CALLS = {
    "wait": "the client waits for it: stackshift.runs.wait(run.id, timeout=...)",
    "get_result": "the client waits for it: stackshift.runs.wait(run.id, timeout=...).result",
    "refresh": "the client reads it again: stackshift.runs.get(run.id)",
    "reload": "the client reads it again: stackshift.runs.get(run.id)",
    "get": "the client reads it again: stackshift.runs.get(run.id)",
    "get_status": "the client reads it again: stackshift.runs.get(run.id).status",
    "cancel": "the client cancels it: stackshift.runs.cancel(run.id)",
    "retry": "the client retries it: stackshift.runs.retry(run.id)",
    "logs": "the client reads them: stackshift.runs.logs(run.id)",
    "timeline": "the client reads it: stackshift.runs.timeline(run.id)",
    "steps": "the client reads them: stackshift.runs.steps(run.id)",
    "attempts": "the client reads them: stackshift.runs.attempts(run.id)",
}


@dataclass(frozen=True)
class Run:
    """A run as it was when read: a value, with no link back to the client that
    read it (``app.runs.get(run.id)`` reads it again, ``app.runs.wait(run.id)``
    waits for it to finish)."""

    id: str
    job: str
    queue: str
    status: str
    payload: Any
    result: Any
    error: RunError | None
    attempt: int
    max_attempts: int
    idempotency_key: str | None
    priority: int
    concurrency_key: str | None
    created_at: datetime
    scheduled_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    waiting_for: WaitingFor | None
    #: False when an idempotency key mapped a start to this existing run.
    created: bool = True
    #: Attempts made before the last manual retry (0 for a run never retried by
    #: hand). A manual retry gives the run a fresh budget of ``max_attempts``
    #: that starts after them: see :attr:`budget_attempt`.
    retry_base: int = 0
    #: True while the run is ``running`` and a cancel was requested: its handler
    #: stops at its next step boundary and the run ends ``cancelled`` (or
    #: ``completed``, when the handler returns first).
    cancel_requested: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    @property
    def budget_attempt(self) -> int:
        """The current attempt's number within the run's budget of
        ``max_attempts``: ``attempt`` for a run never retried by hand, counted
        again from 1 after a manual retry (0 until that retry's first attempt
        starts). The run fails for good once it reaches ``max_attempts``."""
        return self.attempt - self.retry_base

    if not TYPE_CHECKING:  # type checkers still see only the fields
        def __getattr__(self, name: str) -> Any:
            """Only for a name the run does not have: the client call that does
            what a run handle's method does elsewhere (``run.wait()``)."""
            call = RUN_HANDLE_CALLS.get(name)
            if call is None:
                raise AttributeError(f"'Run' object has no attribute {name!r}", name=name,
                                     obj=self)
            raise AttributeError(
                f"'Run' object has no attribute {name!r}: a Run is the run as it was "
                f"read, not a handle on it; {call}", name=name, obj=self)


@dataclass(frozen=True)
class Step:
    run_id: str
    key: str  # name, or name#N for the N-th occurrence in one invocation
    name: str
    kind: str  # run, sleep, wait
    function: str | None
    status: str  # completed, failed, waiting
    result: Any
    error: RunError | None
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Attempt:
    run_id: str
    number: int
    status: str  # running, completed, failed, cancelled, waiting
    worker_id: str | None
    started_at: datetime
    finished_at: datetime | None
    error: RunError | None

    @property
    def duration(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class TimelineEntry:
    id: int
    run_id: str
    at: datetime
    kind: str
    attempt: int | None
    step: str | None
    data: dict[str, Any] = field(default_factory=dict)


def again_links(entries: Sequence[TimelineEntry]) -> tuple[str | None, list[str]]:
    """From a run's timeline in time order (at least its first entry and its
    ``run.started_again`` ones): the run it was started again from, if any, and
    the runs started again from it, oldest first."""
    again_of = entries[0].data.get("again_of") if entries else None
    return again_of, [entry.data["new_run_id"] for entry in entries
                      if entry.kind == "run.started_again"]


def is_time_detail(key: str) -> bool:
    """Whether the timeline detail ``key`` is a point in time (epoch seconds in
    ``TimelineEntry.data``): ``scheduled_at``, ``next_attempt_at``, ``until``."""
    return key.endswith("_at") or key == "until"


def details_with_datetimes(data: dict[str, Any]) -> dict[str, Any]:
    """Timeline details with their points in time as aware UTC datetimes: what
    JSON output shows (ISO-8601, like every other time), where ``data`` itself
    keeps epoch seconds."""
    return {key: datetime.fromtimestamp(value, UTC)
            if is_time_detail(key) and isinstance(value, int | float)
            and not isinstance(value, bool) else value
            for key, value in data.items()}


@dataclass(frozen=True)
class LogEntry:
    id: int
    run_id: str
    attempt: int | None
    step: str | None
    at: datetime
    level: str
    logger: str
    message: str
    #: what the record was logged with besides its message (``extra=``)
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    payload: Any
    correlation_key: str | None
    received_at: datetime
    idempotency_key: str | None = None


@dataclass(frozen=True)
class SentEvent:
    id: str
    duplicate: bool
    resumed_run_ids: list[str]


#: What a page holds: runs, events, state keys...
T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[T]
    next_cursor: str | None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class ApiKey:
    """An API key of ``stackshift server`` as listed: never the key itself."""

    id: str
    name: str
    prefix: str  # the key's first characters, to tell keys apart
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Endpoint:
    """An application's handler route that the server invokes (push mode).

    ``secret`` signs the requests; listings leave it out (``None``).
    """

    id: str
    url: str
    jobs: list[str]
    concurrency: int
    created_at: datetime
    updated_at: datetime
    key_limits: dict[str, int] = field(default_factory=dict)
    on_failure: dict[str, str] = field(default_factory=dict)
    secret: str | None = field(default=None, repr=False)
    #: True when the call that returned it registered the URL: False when the URL
    #: was registered before (it keeps its id and secret), and in listings.
    created: bool = False


# -- operational views: queues, jobs, workers --------------------------------------


@dataclass(frozen=True)
class QueueStats:
    """A queue as operators see it: runs per status, and since when its oldest due
    run not yet started (``QueueInfo.oldest_queued_age``) has been due."""

    name: str
    counts: dict[str, int]
    oldest_queued_at: datetime | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ThroughputBucket:
    """Runs of a queue that finished in ``[start, start + bucket)``."""

    start: datetime
    completed: int
    failed: int


@dataclass(frozen=True)
class JobStats:
    """A job's runs: counts per status and when the newest was created. ``due``
    counts the queued, scheduled and retrying runs a worker could claim now;
    ``next_due_at`` is the earliest due time among all of those (past or future),
    None when none waits."""

    name: str
    counts: dict[str, int]
    last_created_at: datetime | None
    due: int = 0
    next_due_at: datetime | None = None


@dataclass(frozen=True)
class JobInfo:
    """A job some worker has registered (a worker, remote worker or push route that
    has its code): its ``queue`` and ``max_attempts`` as its workers last published
    them (None when they set none), when that was, and how many live workers serve
    it now: that know it and take its queue (0: its runs there wait until one
    starts)."""

    name: str
    queue: str | None
    max_attempts: int | None
    live_workers: int
    registered_at: datetime


#: A worker whose heartbeat is older than this, in seconds, is not live (stale): it
#: no longer counts as serving its jobs or taking its queues.
LIVE_HEARTBEAT = 60.0


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker; its ``heartbeat_at`` tells whether it is alive."""

    id: str
    hostname: str
    pid: int
    jobs: list[str]
    queues: list[str] | None
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime

    def is_live(self, now: float) -> bool:
        """Whether the heartbeat is recent enough for the worker to count as running."""
        return now - self.heartbeat_at.timestamp() <= LIVE_HEARTBEAT

    def takes(self, queue: str) -> bool:
        """Whether the worker claims runs of ``queue``: one started without
        ``queues`` takes every queue."""
        return self.queues is None or queue in self.queues


@dataclass(frozen=True)
class EventConsumer:
    """A run that took an event, at the wait step ``step``."""

    event_id: str
    run_id: str
    step: str
    at: datetime


# -- flow control and schedules ----------------------------------------------------


@dataclass(frozen=True)
class QueueInfo:
    """A queue's stored configuration and its numbers at the time of reading.

    ``throughput`` is runs finished (completed or failed) per minute over the
    last ``window`` seconds; ``failure_rate`` is the failed share of those
    (``None`` when none finished); ``oldest_queued_age`` is how long, in
    seconds, the oldest due run not yet started has waited; ``live_workers``
    counts the live workers that take the queue (started without ``queues``, or
    with it among theirs), whatever jobs they know: with none, its due runs
    wait. ``None`` when a server too old to count them answered.
    """

    name: str
    concurrency: int | None
    rate_limit: str | None
    max_attempts: int | None
    paused: bool
    counts: dict[str, int]
    window: float
    completed_in_window: int
    failed_in_window: int
    throughput: float
    failure_rate: float | None
    oldest_queued_age: float | None
    live_workers: int | None = None

    @property
    def running(self) -> int:
        return self.counts.get("running", 0)

    @property
    def dead_letters(self) -> int:
        """Runs that failed for good (status ``failed``)."""
        return self.counts.get("failed", 0)


@dataclass(frozen=True)
class Schedule:
    """A recurring schedule: a job started once per tick of ``cron``.

    ``source`` is ``"code"`` for ``@job(cron=...)`` (kept in sync by the workers
    and push-mode routes serving the job) and ``"api"`` for ``schedules.create``. ``last_error`` is
    why the last tick could not start a run, else the error of the last run
    when it failed. ``overlap`` is ``"allow"`` (every tick starts a run) or
    ``"skip"`` (a tick starts none while the previous tick's run is unfinished;
    ``skipped_ticks`` counts those ticks).
    """

    id: str
    job: str
    cron: str
    timezone: str
    payload: Any
    queue: str | None
    source: str
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_run_id: str | None
    last_run_status: str | None
    last_error: RunError | None
    missed_ticks: int
    created_at: datetime
    overlap: str = "allow"
    skipped_ticks: int = 0
    #: True when the ``schedules.create`` that returned it made the schedule: False
    #: when its ``schedule_id`` named one (now with this definition), and in reads.
    created: bool = False
