"""The operations every shell (SDK, CLI, server, dashboard) goes through.

It validates input, asks the engine's rules, and calls the store. Nothing
reaches storage by another path, so every shell behaves the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from . import forks
from .checks import (
    IDEMPOTENCY_TTL_MANY,
    check_endpoint_url,
    check_filter,
    check_holder,
    check_int,
    check_key,
    check_limit,
    check_log_window,
    check_many,
    check_reason,
    idempotency_seconds,
)
from .clock import Clock
from .durations import parse_duration, parse_instant, time_bound
from .engine.limits import check_concurrency
from .engine.transitions import parse_status
from .errors import (
    ApiKeyNotFoundError,
    EndpointNotFoundError,
    EventNotFoundError,
    InvalidTransitionError,
    ValidationError,
)
from .flowcontrol import RETRY_BATCH, FlowControl
from .ids import check_cursor, new_id, unknowable_id
from .jobs import JobRegistry, check_max_attempts, check_name
from .models import (
    ApiKey,
    Attempt,
    Endpoint,
    Event,
    EventConsumer,
    JobInfo,
    JobStats,
    LockLoss,
    LogEntry,
    Page,
    QueueStats,
    Run,
    SentEvent,
    Step,
    ThroughputBucket,
    TimelineEntry,
    WorkerInfo,
)
from .serialization import encode
from .settings import LONGEST_KEY, Settings, program_setting
from .signing import new_secret
from .state import lock_ttl
from .store import SqlStore
from .store.base import NewRun, RunFilter
from .wording import quoted

#: API keys look like ``ssk_`` + 43 URL-safe characters (256 random bits); the
#: first characters are kept in clear as the key's listed prefix.
API_KEY_PREFIX = "ssk_"
API_KEY_SHOWN = 12


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class RunWait:
    """The rules of waiting for a run to end: its timeout and the pauses between reads."""

    def __init__(self, run_id: str, timeout: Any) -> None:
        self.run_id = run_id
        self.limit = None if timeout is None else parse_duration(timeout, name="timeout")
        self.deadline = None if self.limit is None else time.monotonic() + self.limit
        self.run: Run | None = None
        self._pause = 0.005

    def pause(self, run: Run) -> float | None:
        """Seconds to wait before reading ``run`` again; ``None`` when it has ended.

        ``TimeoutError`` once the timeout has passed with the run still going."""
        self.run = run
        if run.is_terminal:
            return None
        if self.deadline is not None and time.monotonic() >= self.deadline:
            assert self.limit is not None
            raise TimeoutError(f"run {self.run_id} is still {run.status} after {self.limit:g}s")
        remaining = 3600.0 if self.deadline is None else self.deadline - time.monotonic()
        pause = max(0.0, min(self._pause, remaining))
        self._pause = min(self._pause * 1.5, 0.1)
        return pause


class Notifier:
    """In-process wake-ups: lets a worker start a run the moment it is queued, and
    know when a retry, timer or delayed start recorded in this process falls due."""

    def __init__(self) -> None:
        self._start_over()
        forks.register(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent's workers are not there to wake."""
        self._start_over()

    def _start_over(self) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._due_listeners: list[Callable[[float], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def subscribe_due(self, listener: Callable[[float], None]) -> None:
        with self._lock:
            self._due_listeners.append(listener)

    def unsubscribe_due(self, listener: Callable[[float], None]) -> None:
        with self._lock:
            if listener in self._due_listeners:
                self._due_listeners.remove(listener)

    def due(self, at: float) -> None:
        """Something was recorded to happen at ``at`` (epoch seconds)."""
        with self._lock:
            listeners = list(self._due_listeners)
        for listener in listeners:
            listener(at)


def run_filter(*, status: str | None = None, job: str | None = None,
               queue: str | None = None, idempotency_key: str | None = None,
               correlation_key: str | None = None,
               created_after: datetime | str | None = None,
               created_before: datetime | str | None = None,
               search: str | None = None) -> RunFilter:
    """The filters of a list of runs, checked (a name no run can have, a time that
    is not one: ``ValidationError``)."""
    return RunFilter(
        status=parse_status(status).value if status is not None else None,
        job=check_filter(job, "job"),
        queue=check_filter(queue, "queue"),
        idempotency_key=check_filter(idempotency_key, "idempotency_key"),
        correlation_key=check_filter(correlation_key, "correlation_key"),
        created_after=None
        if created_after is None
        else time_bound(created_after, name="created_after"),
        created_before=None
        if created_before is None
        else time_bound(created_before, name="created_before"),
        search=check_filter(search, "search"),
    )


class Service(FlowControl):
    def __init__(
        self, store: SqlStore, clock: Clock, settings: Settings, registry: JobRegistry,
        *, limits_set_by: Callable[[str], str] = program_setting,
    ) -> None:
        self.store = store
        self.limits_set_by = limits_set_by
        self.clock = clock
        self.settings = settings
        self.registry = registry
        self.notifier = Notifier()
        #: Told when an endpoint is removed here (a server's push dispatcher).
        self.endpoint_watchers: list[Callable[[], None]] = []

    def limits(self) -> Settings:
        """The limits on values and keys this service holds writes to (as
        :meth:`stackshift.remote.RemoteService.limits` gives a server's)."""
        return self.settings

    def migrate(self) -> int:
        return self.store.migrate()

    def schema_version(self) -> int:
        return self.store.db.schema_version()

    def close(self) -> None:
        self.store.close()

    # -- starting work -------------------------------------------------------------

    def start(
        self,
        job: str,
        payload: Any = None,
        *,
        queue_name: str | None = None,
        idempotency_key: str | None = None,
        idempotency_ttl: Any = None,
        max_attempts: int | None = None,
        scheduled_at: datetime | str | None = None,
        delay: Any = None,
        priority: int | None = None,
        concurrency_key: str | None = None,
    ) -> Run:
        """Durably create a run (on disk before this returns) or return the existing one.

        Every argument is validated before anything is written: ``TypeError`` for a
        payload that is not JSON, ``ValueError`` (:class:`ValidationError`) for the
        rest, :class:`IdempotencyConflictError` for a key bound to other work.
        """
        # Other threads' transactions wait a moment for this start (see
        # GroupCommit.preparing).
        with self.store.preparing_write():
            (new,), now = self._new_runs(
                job, [payload], queue_name=queue_name,
                idempotency_keys=None if idempotency_key is None else [idempotency_key],
                idempotency_ttl=idempotency_ttl, max_attempts=max_attempts,
                scheduled_at=scheduled_at, delay=delay, priority=priority,
                concurrency_keys=None if concurrency_key is None else [concurrency_key],
                many=False)
            run = self.store.start_run(new, now)
            self._started([run], new.scheduled_at)
            return run

    def start_many(
        self,
        job: str,
        payloads: Sequence[Any],
        *,
        queue_name: str | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        idempotency_ttl: Any = None,
        max_attempts: int | None = None,
        scheduled_at: datetime | str | None = None,
        delay: Any = None,
        priority: int | None = None,
        concurrency_keys: Sequence[str | None] | None = None,
    ) -> list[Run]:
        """Durably create a run of ``job`` for each of ``payloads`` in one
        transaction (all on disk before this returns), or return the runs their
        idempotency keys map to; in the order of ``payloads``.

        Everything is validated before anything is written (an empty list's
        options too), and an :class:`IdempotencyConflictError` of any one of them
        writes none."""
        check_many(payloads, idempotency_keys, concurrency_keys)
        with self.store.preparing_write():
            news, now = self._new_runs(
                job, payloads, queue_name=queue_name, idempotency_keys=idempotency_keys,
                idempotency_ttl=idempotency_ttl, max_attempts=max_attempts,
                scheduled_at=scheduled_at, delay=delay, priority=priority,
                concurrency_keys=concurrency_keys, many=True)
            if not news:  # an empty list: its options checked all the same
                return []
            runs = self.store.start_runs(news, now)
            self._started(runs, news[0].scheduled_at)
            return runs

    def _new_runs(
        self,
        job: str,
        payloads: Sequence[Any],
        *,
        queue_name: str | None,
        idempotency_keys: Sequence[str | None] | None,
        idempotency_ttl: Any,
        max_attempts: int | None,
        scheduled_at: datetime | str | None,
        delay: Any,
        priority: int | None,
        concurrency_keys: Sequence[str | None] | None,
        many: bool,
    ) -> tuple[list[NewRun], float]:
        """The runs to start, every argument checked (in the order the remote
        client checks them), and the time they start at."""
        s = self.settings

        def named(what: str, n: int) -> str:
            return f"{what}s[{n}]" if many else what

        check_name(job, "job name")
        # The registered job's, else (started without its code: the CLI, the
        # HTTP server) what its workers recorded; read only when needed.
        job_queue, job_attempts = (
            self.job_defaults(job) if queue_name is None or max_attempts is None
            else (None, None))
        if queue_name is not None:
            queue = check_name(queue_name, "queue name")
        else:
            queue = job_queue or s.default_queue
        texts = [encode(payload, what=named("payload", n), limit=s.max_payload_bytes,
                        setting="max_payload_bytes", raised_by=self.limits_set_by)
                 for n, payload in enumerate(payloads)]
        if max_attempts is None:
            max_attempts = job_attempts
        if max_attempts is not None:  # else the queue's default, else the installation's
            check_max_attempts(max_attempts)
        if priority is None:
            priority = 0
        check_int(priority, "priority", 32)
        ckeys = list(concurrency_keys) if concurrency_keys is not None else [None] * len(texts)
        for n, ckey in enumerate(ckeys):
            if ckey is not None:
                check_key(ckey, named("concurrency_key", n), LONGEST_KEY)
        now = self.clock.now()
        run_at: float | None = None
        if scheduled_at is not None and delay is not None:
            raise ValidationError("give scheduled_at or delay, not both")
        if scheduled_at is not None:
            run_at = parse_instant(scheduled_at, name="scheduled_at")
        elif delay is not None:
            run_at = now + parse_duration(delay, name="delay")
        if run_at is not None and run_at <= now:
            run_at = None  # due already: queue it now
        ikeys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(texts)
        expires_at = None
        if any(key is not None for key in ikeys):
            for n, key in enumerate(ikeys):
                if key is not None:
                    check_key(key, named("idempotency_key", n), s.max_idempotency_key_length,
                              "max_idempotency_key_length", self.limits_set_by)
            expires_at = now + idempotency_seconds(s, idempotency_ttl)
        elif idempotency_ttl is not None:
            if texts or idempotency_keys is None:
                raise ValidationError(IDEMPOTENCY_TTL_MANY if many
                                      else "idempotency_ttl needs an idempotency_key")
            idempotency_seconds(s, idempotency_ttl)  # no runs to start: checked all the same
        return [NewRun(id=new_id("run"), job=job, queue=queue, payload=text,
                       max_attempts=max_attempts, priority=priority, concurrency_key=ckey,
                       scheduled_at=run_at, idempotency_key=key,
                       idempotency_expires_at=None if key is None else expires_at,
                       default_max_attempts=s.default_max_attempts)
                for text, key, ckey in zip(texts, ikeys, ckeys, strict=True)], now

    def _started(self, runs: list[Run], run_at: float | None) -> None:
        if any(run.created for run in runs):
            self.notifier.notify()
            if run_at is not None:
                self.notifier.due(run_at)

    # -- runs ------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        return self.store.get_run(run_id)

    def list_runs(
        self,
        *,
        status: str | None = None,
        job: str | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
        correlation_key: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        search: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Run]:
        filters = run_filter(status=status, job=job, queue=queue,
                             idempotency_key=idempotency_key, correlation_key=correlation_key,
                             created_after=created_after, created_before=created_before,
                             search=search)
        return self.store.list_runs(filters, check_limit(limit), check_cursor(cursor, "run"))

    def wait_run(self, run_id: str, timeout: Any = None) -> Run:
        """Block until the run is terminal; ``TimeoutError`` after ``timeout``."""
        waiting = RunWait(run_id, timeout)
        while True:
            pause = waiting.pause(self.store.get_run(run_id))
            if pause is None:
                assert waiting.run is not None
                return waiting.run
            time.sleep(pause)

    async def wait_run_async(self, run_id: str, timeout: Any = None) -> Run:
        """:meth:`wait_run` for ``async`` code: reads in a thread, sleeps on the event
        loop, so that waiting holds no thread."""
        waiting = RunWait(run_id, timeout)
        while True:
            pause = waiting.pause(await asyncio.to_thread(self.store.get_run, run_id))
            if pause is None:
                assert waiting.run is not None
                return waiting.run
            await asyncio.sleep(pause)

    def cancel_run(self, run_id: str, reason: str | None = None) -> Run:
        return self.store.cancel_run(run_id, check_reason(reason), self.clock.now())

    def start_again(self, run_id: str) -> Run:
        run = self.store.start_again(run_id, new_id("run"), self.clock.now())
        self.notifier.notify()
        return run

    def retry_run(self, run_id: str) -> Run:
        run = self.store.retry_run(run_id, self.clock.now())
        self.notifier.notify()
        return run

    def timeline(self, run_id: str) -> list[TimelineEntry]:
        return self.store.timeline(run_id)

    def latest_timeline(self, run_id: str, limit: int) -> tuple[list[TimelineEntry], int]:
        """The run's last ``limit`` timeline entries, oldest first, and how many came
        before."""
        return self.store.latest_timeline(run_id, limit)

    def timeline_outline(self, run_id: str, steps: int) -> tuple[list[TimelineEntry], int]:
        """What the run page's waterfall reads of the run's timeline: everything from
        the first of its last ``steps`` steps on, and before it what began and
        ended the attempts; and how many rows (steps, sleeps, waits) it leaves out
        (:meth:`RunStore.timeline_outline`)."""
        return self.store.timeline_outline(run_id, steps)

    def logs(self, run_id: str, after: int | None = None, limit: int | None = None,
             last: int | None = None) -> list[LogEntry]:
        first, limit, last = check_log_window(after, limit, last)
        if last is not None:
            return self.store.latest_logs(run_id, last, count_earlier=False)[0]
        return self.store.logs(run_id, first, limit)

    def latest_logs(self, run_id: str, limit: int) -> tuple[list[LogEntry], int]:
        """The run's last ``limit`` log records, oldest first, and how many came before."""
        return self.store.latest_logs(run_id, limit)

    def attempts(self, run_id: str) -> list[Attempt]:
        return self.store.attempts(run_id)

    def steps(self, run_id: str) -> list[Step]:
        return self.store.steps(run_id)

    def latest_steps(self, run_id: str, limit: int) -> tuple[list[Step], int]:
        """The run's last ``limit`` steps, oldest first, and how many came before."""
        return self.store.latest_steps(run_id, limit)

    # -- events ------------------------------------------------------------------------

    def send_event(
        self,
        name: str,
        payload: Any = None,
        *,
        correlation_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> SentEvent:
        s = self.settings
        check_name(name, "event name")
        text = encode(payload, what="event payload", limit=s.max_event_payload_bytes,
                      setting="max_event_payload_bytes", raised_by=self.limits_set_by)
        if correlation_key is not None:
            check_key(correlation_key, "correlation_key", LONGEST_KEY)
        if idempotency_key is not None:
            check_key(idempotency_key, "idempotency_key", s.max_idempotency_key_length,
                      "max_idempotency_key_length", self.limits_set_by)
        sent = self.store.send_event(
            new_id("evt"),
            name,
            text,
            correlation_key or "",
            idempotency_key,
            self.clock.now(),
            s.event_retention,
            s.event_dedupe_window,
        )
        if sent.resumed_run_ids and not sent.duplicate:
            self.notifier.notify()
        return sent

    def get_event(self, event_id: str) -> Event:
        found = (None if unknowable_id(event_id)
                 else self.store.get_event(event_id, self.clock.now()))
        if found is None:
            raise EventNotFoundError(f"no event with id {quoted(event_id)}")
        return found[0]

    def list_events(
        self,
        *,
        name: str | None = None,
        correlation_key: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Event]:
        check_filter(name, "name")
        check_filter(correlation_key, "correlation_key")
        items, next_cursor = self.store.list_events(name, correlation_key, check_limit(limit),
                                                    check_cursor(cursor, "evt"),
                                                    self.clock.now())
        return Page(items, next_cursor)

    # -- state -------------------------------------------------------------------------

    def _state_key(self, key: object) -> str:
        return check_key(key, "state key", self.settings.max_state_key_length,
                         "max_state_key_length", self.limits_set_by)

    def check_state_key(self, key: object) -> None:
        """Refuse a key no state call takes: not text, empty, over the limit, or
        holding what no store can (a NUL character, a lone surrogate)."""
        self._state_key(key)

    def state_get(self, key: str) -> tuple[bool, Any]:
        """``(found, value)``; an expired key reads as missing."""
        return self.store.state_get(self._state_key(key), self.clock.now())

    def state_set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Any = None,
        expires_at: datetime | str | None = None,
    ) -> None:
        """Store a JSON value (256 KiB by default), optionally expiring."""
        # The checks of the key, the expiry, then the value (its size last), in the
        # order of the remote client's, which finds an oversize value as it sends it.
        key = self._state_key(key)
        now = self.clock.now()
        if ttl is not None and expires_at is not None:
            raise ValidationError("give ttl or expires_at, not both")
        deadline = None
        if ttl is not None:
            seconds = parse_duration(ttl, name="ttl")
            if seconds <= 0:
                raise ValidationError("ttl must be more than 0")
            deadline = now + seconds
        elif expires_at is not None:
            deadline = parse_instant(expires_at, name="expires_at")
            if deadline <= now:
                # As ttl=0 is refused: a value that is gone as it is written is a
                # mistake (a wrong clock or time zone), and delete() says "remove".
                when = datetime.fromtimestamp(deadline, UTC).isoformat()
                raise ValidationError(f"expires_at must be in the future, got {when}")
        text = encode(value, what=f"state value for {key!r}",
                      limit=self.settings.max_state_value_bytes,
                      setting="max_state_value_bytes", raised_by=self.limits_set_by)
        self.store.state_set(key, text, deadline, now)

    def state_delete(self, key: str) -> bool:
        """Remove ``key``; return whether it held a live value."""
        return self.store.state_delete(self._state_key(key), self.clock.now())

    def check_increment(self, key: object, by: object) -> str:
        """The checks of :meth:`state_increment`'s arguments; the key."""
        check_int(by, "by", 64)
        return self._state_key(key)

    def state_increment(self, key: str, by: int = 1) -> int:
        """Add ``by`` atomically (across processes and machines); a new key starts at 0.
        Refuses a stored value that is not an integer, or a sum out of range."""
        return self.store.state_increment(self.check_increment(key, by), by, self.clock.now())

    def state_keys(self, prefix: str | None = None, limit: int = 100,
                   after: str | None = None) -> list[dict[str, Any]]:
        """Live keys in key order, with their values and expiry (epoch seconds); only
        keys after ``after`` when it is given (the last key of the previous page)."""
        return self.state_page(prefix, limit, after).items

    def state_page(self, prefix: str | None = None, limit: int = 100,
                   after: str | None = None) -> Page[dict[str, Any]]:
        """:meth:`state_keys` as a page, with its ``next_cursor``: the last key of the
        page when a live key follows it (pass it as ``after``), else None."""
        return self._key_page(self.store.list_state, prefix, limit, after)

    def lock_list(self, prefix: str | None = None, limit: int = 100,
                  after: str | None = None) -> list[dict[str, Any]]:
        """Live locks in key order, with who holds each (``holder``: words such as a
        run and its attempt, or a host and a process; ``None`` when its owner did not
        say) and its expiry (epoch seconds); paged and filtered as :meth:`state_keys`
        is. Owners' tokens are not shown: only an owner can release its lock."""
        return self.lock_page(prefix, limit, after).items

    def lock_page(self, prefix: str | None = None, limit: int = 100,
                  after: str | None = None) -> Page[dict[str, Any]]:
        """:meth:`lock_list` as a page, with its ``next_cursor`` as :meth:`state_page`'s."""
        return self._key_page(self.store.list_locks, prefix, limit, after)

    def _key_page(self, listing: Callable[..., list[dict[str, Any]]], prefix: str | None,
                  limit: int, after: str | None) -> Page[dict[str, Any]]:
        """A page of ``listing`` (of state keys or locks), read with one more key than
        asked for in the same query: whether a live key follows the page."""
        check_filter(prefix, "prefix")
        check_filter(after, "after")
        items = listing(prefix, check_limit(limit) + 1, self.clock.now(), after)
        if len(items) <= limit:
            return Page(items, None)
        return Page(items[:limit], items[limit - 1]["key"])

    def lock_break(self, key: str) -> bool:
        """Free the live lock on ``key`` whatever its owner; return whether there was
        one. Its owner's extend then returns False, and its release says it was broken."""
        return self.store.lock_break(self._state_key(key), self.clock.now())

    def lock_acquire(self, key: str, owner: str, ttl: Any, holder: str | None = None) -> bool:
        """Take ``key`` for ``owner`` for ``ttl`` unless another live owner holds it.
        ``holder`` says who the owner is, for listings and refusals."""
        key = self._state_key(key)
        check_key(owner, "lock owner", 200)
        if holder is not None:
            check_holder(holder)
        seconds = lock_ttl(ttl)
        now = self.clock.now()
        return self.store.lock_acquire(key, owner, holder, now + seconds, now)

    def lock_extend(self, key: str, owner: str, ttl: Any) -> bool:
        """Make ``owner``'s lock on ``key`` expire ``ttl`` from now; return whether
        ``owner`` still held it (False when its TTL had run out or another owner holds
        it: the lock is not taken back)."""
        key = self._state_key(key)
        check_key(owner, "lock owner", 200)
        seconds = lock_ttl(ttl)
        now = self.clock.now()
        return self.store.lock_extend(key, owner, now + seconds, now)

    def lock_release(self, key: str, owner: str) -> LockLoss | None:
        """Release ``key`` if ``owner`` holds it; return ``None`` when ``owner`` still
        held it, else how it had lost it (see :data:`~stackshift.models.LockLoss`)."""
        return self.store.lock_release(self._state_key(key), check_key(owner, "lock owner", 200),
                                       self.clock.now())

    # -- API keys ------------------------------------------------------------------------

    def create_api_key(self, name: str) -> tuple[ApiKey, str]:
        """A new key named ``name``: ``(listing, key)``. The key is not stored, only its hash."""
        if not isinstance(name, str):
            raise ValidationError(f"key name must be text, got {type(name).__name__}")
        if not name.strip():
            raise ValidationError(f"key name must not be blank, got {name!r}")
        if len(name) > 200:
            raise ValidationError(f"key name must be 1-200 characters, got {len(name):,}")
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        listed = self.store.insert_api_key(new_id("key"), name.strip(), secret[:API_KEY_SHOWN],
                                           hash_api_key(secret), self.clock.now())
        return listed, secret

    def list_api_keys(self) -> list[ApiKey]:
        return self.store.list_api_keys()

    def revoke_api_key(self, key: str) -> ApiKey:
        """Revoke by id, listed prefix or the whole key; :class:`ApiKeyNotFoundError`
        when none matches (a whole key is not repeated in its message),
        :class:`InvalidTransitionError` when it was revoked already (it stays
        revoked as of then)."""
        check_key(key, "key id", 200)
        if key.startswith(API_KEY_PREFIX) and len(key) > API_KEY_SHOWN:
            # The whole key pasted: revoke the key it is, and never show it.
            whole = self.store.api_key_by_hash(hash_api_key(key))
            if whole is None:
                raise ApiKeyNotFoundError(
                    f"no API key is {key[:API_KEY_SHOWN]}... (the whole key given, not shown)")
            key = whole.id
        found = self.store.revoke_api_key(key, self.clock.now())
        if found is None:
            raise ApiKeyNotFoundError(f"no API key with id or prefix {quoted(key)}")
        revoked, now = found
        if not now:
            assert revoked.revoked_at is not None
            raise InvalidTransitionError(
                f"key {revoked.id} ({revoked.name!r}, prefix {revoked.prefix}) was already "
                f"revoked at {revoked.revoked_at.isoformat().replace('+00:00', 'Z')}")
        return revoked

    def api_key_active(self, key_id: str) -> bool:
        """Whether the key with id ``key_id`` exists and is not revoked."""
        found = self.store.api_key_by_id(key_id)
        return found is not None and found.active

    def end_dashboard_session(self, session_id: str, expires_at: float) -> None:
        """Record the dashboard session ``session_id`` as ended (logged out) until
        ``expires_at``, when its cookie expires anyway; durable once this returns."""
        check_key(session_id, "session id", 200)
        self.store.end_dashboard_session(session_id, float(expires_at))

    def dashboard_session_open(self, session_id: str, key_id: str | None) -> bool:
        """Whether the dashboard session ``session_id`` was not ended and, given
        ``key_id``, the API key it was opened with exists and is not revoked."""
        return self.store.dashboard_session_open(session_id, key_id)

    def verify_api_key(self, key: str) -> ApiKey | None:
        """The active key ``key`` is, or ``None`` for an unknown or revoked one."""
        if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
            return None
        found = self.store.api_key_by_hash(hash_api_key(key))
        if found is None or not found.active:
            return None
        now = self.clock.now()
        # Record use at most once a minute, so checking a key is normally a read.
        if found.last_used_at is None or now - found.last_used_at.timestamp() > 60:
            self.store.touch_api_key(found.id, now)
        return found

    # -- push endpoints ------------------------------------------------------------------

    def register_endpoint(self, url: str, jobs: list[str], *, concurrency: int = 10,
                          key_limits: dict[str, int] | None = None,
                          on_failure: dict[str, str] | None = None) -> Endpoint:
        """Register the handler route at ``url`` for ``jobs``; returned with its secret.

        Registering a URL again replaces its jobs, rules and concurrency and keeps
        its id and secret, so an application can register at every start
        (``created`` says which it was).
        """
        url = check_endpoint_url(url)
        if not isinstance(jobs, list) or not jobs:
            raise ValidationError("an endpoint serves at least one job")
        for job in jobs:
            check_name(job, "job name")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) \
                or not 1 <= concurrency <= 1000:
            raise ValidationError(
                f"concurrency must be an integer from 1 to 1000, got {concurrency!r}")
        limits = dict(key_limits or {})
        failures = dict(on_failure or {})
        for name in (*limits, *failures):
            check_name(name, "job name")
        for limit in limits.values():
            check_concurrency(limit, "key_concurrency")
        endpoint_id = new_id("ep")
        registered = self.store.upsert_endpoint(endpoint_id, url, new_secret(), jobs, limits,
                                                failures, concurrency, self.clock.now())
        return replace(registered, created=registered.id == endpoint_id)

    def list_endpoints(self) -> list[Endpoint]:
        return self.store.list_endpoints()

    def remove_endpoint(self, endpoint_id: str) -> Endpoint:
        # An id no row can have is unknown, as a run's or an event's is.
        removed = None if unknowable_id(endpoint_id) else self.store.delete_endpoint(endpoint_id)
        if removed is None:
            raise EndpointNotFoundError(f"no endpoint with id {quoted(endpoint_id)}")
        for watcher in self.endpoint_watchers:
            watcher()
        return removed

    def accept_push_delivery(self, delivery_id: str, run_id: str, attempt: int) -> bool:
        """Whether the handler route may execute this delivery: true once, then never."""
        return self.store.accept_push_delivery(delivery_id, run_id, attempt, self.clock.now())

    # -- monitoring ----------------------------------------------------------------------

    def run_counts(self) -> dict[tuple[str, str], int]:
        """Runs per ``(queue, status)``."""
        return self.store.run_counts()

    def event_count(self) -> int:
        """Events kept (within their retention)."""
        return self.store.event_count(self.clock.now())

    # -- operational views (the dashboard) -------------------------------------------------

    def count_runs_by_status(self, *, job: str | None = None, queue: str | None = None,
                             created_after: datetime | str | None = None,
                             created_before: datetime | str | None = None) -> dict[str, int]:
        """Runs per status, of a job, a queue and a time of creation if given, else
        across every queue and job."""
        return self.store.count_runs_by_status(run_filter(
            job=job, queue=queue, created_after=created_after, created_before=created_before))

    def job_names(self) -> list[str]:
        """Names of the jobs that have runs."""
        return self.store.job_names()

    def queue_names(self) -> list[str]:
        """Names of the queues that hold runs."""
        return self.store.queue_names()

    def queue_settings(self) -> dict[str, dict[str, Any]]:
        """Stored settings of each configured queue by name: ``concurrency``,
        ``rate_limit``, ``max_attempts`` and ``paused``."""
        return {c["name"]: c for c in self.store.queue_configs()}

    def queue_stats(self) -> list[QueueStats]:
        """Each queue that holds runs: counts per status and its oldest due run not
        yet started (queued, or a scheduled or retrying run whose time has come),
        as :meth:`queue_info` counts it."""
        return self.store.queue_stats(self.clock.now())

    def queue_throughput(
        self, window: Any = "1h", *, buckets: int = 30, queue: str | None = None
    ) -> dict[str, list[ThroughputBucket]]:
        """Completed and failed runs per time bucket over ``window``, per queue.

        Buckets are aligned to multiples of their size, so that a chart drawn
        from them does not shift between two reads a second apart.
        """
        seconds = parse_duration(window, name="window")
        if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= 500:
            raise ValidationError(f"buckets must be an integer from 1 to 500, got {buckets!r}")
        if queue is not None:
            check_name(queue, "queue name")
        size = max(1, -(-int(seconds) // buckets))
        end = (int(self.clock.now()) // size + 1) * size
        return self.store.throughput(end - size * buckets, size, buckets, queue)

    def job_stats(self) -> list[JobStats]:
        """Each job that has runs: counts per status, its latest start, and its runs
        due now (see :class:`JobStats`)."""
        return self.store.job_stats(self.clock.now())

    def list_workers(self) -> list[WorkerInfo]:
        """Registered workers, oldest first (stale ones are removed after 5 minutes)."""
        return self.store.workers()

    def list_jobs(self) -> list[JobInfo]:
        """Every job some worker has registered, by name, with the live workers that
        serve it now: those that know the job and take its queue (a worker started
        with ``queues`` that leave it out runs none of the job's runs there). A job
        no worker has ever registered is not listed: its runs wait until a worker
        with its code starts (a mistyped name, or code not deployed yet)."""
        now = self.clock.now()
        found = {name: JobInfo(name, queue, max_attempts, 0, at)
                 for name, queue, max_attempts, at in self.store.published_jobs()}
        for worker in self.list_workers():
            live = worker.is_live(now)
            for name in worker.jobs:
                # A worker publishes its jobs before it registers; one of an earlier
                # version, which does not, registered them when it started.
                job = found.get(name) or JobInfo(name, None, None, 0, worker.started_at)
                serves = live and worker.takes(job.queue or self.settings.default_queue)
                found[name] = replace(job, live_workers=job.live_workers + int(serves))
        return [found[name] for name in sorted(found)]

    def event_consumers(self, event_ids: list[str]) -> dict[str, list[EventConsumer]]:
        """For each event id, the runs that took (were resumed by) that event."""
        if len(event_ids) > 1000:
            raise ValidationError("at most 1000 event ids at once")
        return self.store.event_consumers(event_ids)

    def retry_runs(self, run_ids: list[str], *, queue: str | None = None) -> list[str]:
        """Retry each run of ``run_ids`` that is failed (a dead letter) and, with
        ``queue``, in that queue; return those retried.

        Runs that are unknown or not dead letters (any more: retried, or retried
        and cancelled, by another operator meanwhile) are skipped, so a bulk
        retry from a page read a while ago neither fails half-way nor brings back
        a run someone cancelled.
        """
        retried: list[str] = []
        for start in range(0, len(run_ids), RETRY_BATCH):
            retried += self.store.retry_runs(run_ids[start:start + RETRY_BATCH],
                                             self.clock.now(), only="failed", queue=queue)
        if retried:
            self.notifier.notify()
        return retried

    def retry_failed_runs(self, *, queue: str | None = None, job: str | None = None) -> int:
        """Retry every failed run (the dead letters) of ``queue`` and/or ``job``."""
        filters = RunFilter(status="failed", queue=queue, job=job)
        count = 0
        cursor = None
        while True:
            page = self.store.list_runs(filters, RETRY_BATCH, cursor)
            count += len(self.retry_runs([run.id for run in page.items], queue=queue))
            if page.next_cursor is None:
                return count
            cursor = page.next_cursor

    def change_marker(self) -> str:
        """An opaque value that changes whenever runs, events or workers change."""
        return self.store.change_marker()
