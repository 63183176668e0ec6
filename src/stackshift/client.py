"""``StackShift`` and ``AsyncStackShift``: the SDK's entry points.

Both are thin shells over :class:`stackshift.service.Service` (embedded: the
database directly) or :class:`stackshift.remote.RemoteService` (service mode: a
``stackshift server`` over HTTP), which have the same methods, results and
errors. The async client runs the same calls in a thread, so the two behave
identically.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, Unpack, cast, overload

from .clock import Clock, SystemClock
from .engine.retries import Backoff
from .errors import StackShiftError, ValidationError
from .flowcontrol import RETRY_PAGE
from .jobs import JobRegistry, check_name, make_job
from .keywords import public_calls, refuse_unknown_keywords
from .models import (
    Attempt,
    Event,
    JobInfo,
    LogEntry,
    Page,
    QueueInfo,
    Run,
    Schedule,
    SentEvent,
    Step,
    TimelineEntry,
)
from .service import Service
from .settings import DurationLike, Settings
from .state import AsyncState, State
from .store import SqlStore, open_store
from .store.queues import KEEP

if TYPE_CHECKING:
    # The remote client pulls in httpx and the wire schemas: import it only when used.
    from .asynctypes import AsyncEvents, AsyncQueue, AsyncQueues, AsyncRuns, AsyncSchedules
    from .push import AsgiRoute, WsgiRoute
    from .remote import RemoteService
    from .worker import Worker

URL_ENV = "STACKSHIFT_URL"
API_KEY_ENV = "STACKSHIFT_API_KEY"

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DATABASE_URL = "sqlite:///stackshift.db"


class BackoffOptions(TypedDict, total=False):
    """``backoff={...}`` of a job: the fields of :class:`~stackshift.Backoff`, any left out
    taking their default."""

    base: DurationLike
    factor: float
    cap: DurationLike
    jitter: bool


class JobOptions(TypedDict, total=False):
    """The options of ``job()`` (see :func:`stackshift.jobs.make_job`), for type
    checkers; each left out takes its default."""

    queue: str | None
    max_attempts: int | None
    backoff: Backoff | BackoffOptions | None
    timeout: DurationLike | None
    key_concurrency: int | None
    on_failure: str | None
    cron: str | None
    timezone: str | None
    overlap: Literal["allow", "skip"] | None


class RouteOptions(TypedDict, total=False):
    """The options of ``asgi_app()`` and ``wsgi_app()`` (see
    :func:`stackshift.push.asgi_app`), for type checkers."""

    url: str | None
    secret: str | None
    concurrency: int


class WorkerOptions(TypedDict, total=False):
    """The options of ``worker()`` (see :class:`stackshift.worker.Worker`), for
    type checkers; each left out takes its default."""

    concurrency: int
    #: the queues the worker is limited to: names in a list, tuple or set
    queues: list[str] | tuple[str, ...] | set[str] | frozenset[str] | None
    lease: DurationLike
    poll_interval: DurationLike
    shutdown_grace: DurationLike
    maintenance_interval: DurationLike


def database_url_from_env() -> str:
    return os.environ.get("STACKSHIFT_DATABASE_URL") or DEFAULT_DATABASE_URL


def server_from_env(
    database_url: str | None, api_key: str | None, base_url: str | None
) -> tuple[str, str] | None:
    """``(base_url, api_key)`` when the client should talk to a server, else ``None``.

    Explicit arguments win; with none, ``STACKSHIFT_DATABASE_URL`` wins over
    ``STACKSHIFT_URL`` (plus ``STACKSHIFT_API_KEY``).
    """
    if database_url is not None:
        if api_key is not None or base_url is not None:
            raise ValidationError("give database_url, or api_key and base_url, not both")
        return None
    if api_key is None and base_url is None and (
        os.environ.get("STACKSHIFT_DATABASE_URL") or not os.environ.get(URL_ENV)
    ):
        if not os.environ.get("STACKSHIFT_DATABASE_URL") and os.environ.get(API_KEY_ENV):
            # As api_key= without base_url=: a server was meant, not a new SQLite file.
            raise ValidationError(
                f"{API_KEY_ENV} is set but {URL_ENV} is not: set {URL_ENV} to the server's"
                f" address, or unset {API_KEY_ENV} to use the database (STACKSHIFT_DATABASE_URL,"
                f" else {DEFAULT_DATABASE_URL})")
        return None
    url = base_url or os.environ.get(URL_ENV)
    key = api_key or os.environ.get(API_KEY_ENV)
    if not url:
        raise ValidationError(f"an API key needs a base_url (or {URL_ENV})")
    if not key:
        raise ValidationError(f"talking to {url} needs an api_key (or {API_KEY_ENV})")
    return url, key


def _run_id(run_id: str) -> str:
    """``run_id``, refusing a :class:`Run` given in its place (``runs.get(run)``),
    which would otherwise be looked up as an id no run has."""
    if isinstance(run_id, Run):
        raise TypeError(f"a run's id was expected, got the run itself: pass run.id"
                        f" ({run_id.id!r})")
    return run_id


@public_calls("runs")
class Runs:
    """``stackshift.runs``: read and act on runs."""

    def __init__(self, service: Service | RemoteService) -> None:
        self._s = service

    def get(self, run_id: str) -> Run:
        """The run; :class:`RunNotFoundError` for an unknown id."""
        return self._s.get_run(_run_id(run_id))

    def list(
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
        """Newest first; pass ``page.next_cursor`` as ``cursor`` for the next page.

        ``created_after`` includes runs created at that instant, ``created_before``
        excludes them; ``search`` matches a run id or an idempotency key exactly.
        """
        return self._s.list_runs(
            status=status, job=job, queue=queue, idempotency_key=idempotency_key,
            correlation_key=correlation_key, created_after=created_after,
            created_before=created_before, search=search, limit=limit, cursor=cursor,
        )

    def wait(self, run_id: str, timeout: Any = None) -> Run:
        """Block until the run is completed, failed or cancelled."""
        return self._s.wait_run(_run_id(run_id), timeout)

    def cancel(self, run_id: str, reason: str | None = None) -> Run:
        return self._s.cancel_run(_run_id(run_id), reason)

    def retry(self, run_id: str) -> Run:
        return self._s.retry_run(_run_id(run_id))

    def start_again(self, run_id: str) -> Run:
        """Start a new run of the run's job with its payload, queue, priority,
        concurrency key and ``max_attempts``, whatever its status; not with its
        idempotency key, which names the run it started. Returns the new run;
        the two timelines name each other (``run.started_again``,
        ``again_of``)."""
        return self._s.start_again(_run_id(run_id))

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
    ) -> builtins.list[str]:
        """Retry every failed (or ``status="cancelled"``) run matching the filter.

        Returns the ids retried; each gets a fresh attempt budget and keeps its
        completed steps. Runs are taken newest first, ``page_size`` at a time
        (one request each through a server, however many match); each is
        retried once by the call, even one that fails again meanwhile.
        ``progress`` is called with the total retried after each page.
        """
        return self._s.retry_many(queue=queue, job=job, status=status,
                                  created_after=created_after, created_before=created_before,
                                  limit=limit, page_size=page_size, progress=progress)

    def timeline(self, run_id: str) -> builtins.list[TimelineEntry]:
        return self._s.timeline(_run_id(run_id))

    def logs(self, run_id: str, *, after: int | None = None, limit: int | None = None,
             last: int | None = None) -> builtins.list[LogEntry]:
        """The run's log records, oldest first; ``after``: only those logged after
        the record with that id (the last one read), to follow a running run;
        ``limit`` (1 to 10,000): at most that many, to read a long log in pages
        (the next page is ``after`` the last record's id); ``last`` (1 to 10,000,
        without ``after`` or ``limit``): the latest that many records only."""
        return self._s.logs(_run_id(run_id), after, limit, last)

    def attempts(self, run_id: str) -> builtins.list[Attempt]:
        return self._s.attempts(_run_id(run_id))

    def steps(self, run_id: str) -> builtins.list[Step]:
        return self._s.steps(_run_id(run_id))


@public_calls("events")
class Events:
    """``stackshift.events``: send events that resume waiting runs."""

    def __init__(self, service: Service | RemoteService) -> None:
        self._s = service

    def send(
        self,
        name: str,
        payload: Any = None,
        *,
        correlation_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> SentEvent:
        return self._s.send_event(
            name, payload, correlation_key=correlation_key, idempotency_key=idempotency_key
        )

    def get(self, event_id: str) -> Event:
        return self._s.get_event(event_id)

    def list(self, *, name: str | None = None, correlation_key: str | None = None,
             limit: int = 50, cursor: str | None = None) -> Page[Event]:
        return self._s.list_events(name=name, correlation_key=correlation_key, limit=limit,
                                   cursor=cursor)


@public_calls("queue(name)")
class Queue:
    """``stackshift.queue(name)``: a named lane of work, its limits and its numbers."""

    def __init__(self, service: Service | RemoteService, name: str) -> None:
        self._s = service
        self.name = check_name(name, "queue name")

    def enqueue(
        self,
        job: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        idempotency_ttl: Any = None,
        max_attempts: int | None = None,
        scheduled_at: datetime | str | None = None,
        delay: Any = None,
        priority: int | None = None,
        concurrency_key: str | None = None,
    ) -> Run:
        """Like ``start`` with this queue."""
        return self._s.start(
            job, payload, queue_name=self.name, idempotency_key=idempotency_key,
            idempotency_ttl=idempotency_ttl, max_attempts=max_attempts,
            scheduled_at=scheduled_at, delay=delay, priority=priority,
            concurrency_key=concurrency_key,
        )

    def configure(self, *, concurrency: Any = KEEP, rate_limit: Any = KEEP,
                  max_attempts: Any = KEEP) -> QueueInfo:
        """Store settings every worker and server sees; ``None`` removes one.

        ``concurrency``: most runs running at once across all workers;
        ``rate_limit``: most attempts started per period (``"100/m"``, ``"10/s"``);
        ``max_attempts``: the default for runs whose job and start set none.
        Settings not passed stay as they are.
        """
        return self._s.configure_queue(self.name, concurrency=concurrency,
                                       rate_limit=rate_limit, max_attempts=max_attempts)

    def pause(self) -> QueueInfo:
        """Start nothing more from this queue until :meth:`resume`; running runs carry on."""
        return self._s.pause_queue(self.name)

    def resume(self) -> QueueInfo:
        return self._s.resume_queue(self.name)

    def info(self, window: Any = "15m") -> QueueInfo:
        """Settings, runs per status, throughput and failure rate over ``window``,
        and the age of the oldest due run not yet started. A name that holds no
        runs and has no settings raises :class:`QueueNotFoundError`."""
        return self._s.queue_info(self.name, window)

    stats = info

    def dead_letters(self, *, job: str | None = None, limit: int = 50,
                     cursor: str | None = None) -> Page[Run]:
        """Runs of this queue that failed for good, the latest failure first (by
        ``finished_at``); raises :class:`QueueNotFoundError` for a name that holds no
        runs and has no settings."""
        return self._s.dead_letters(self.name, job=job, limit=limit, cursor=cursor)

    def retry_dead_letters(self, *, job: str | None = None) -> builtins.list[str]:
        """Retry every failed run of this queue (of ``job`` only, if given); raises
        :class:`QueueNotFoundError` for a name that holds no runs and has no settings
        (a mistyped name retries nothing and says so)."""
        self._s.queue_info(self.name)
        return self._s.retry_many(queue=self.name, job=job, status="failed")


@public_calls("queues")
class Queues:
    """``stackshift.queues``: every queue's settings and numbers."""

    def __init__(self, service: Service | RemoteService) -> None:
        self._s = service

    def list(self, window: Any = "15m") -> builtins.list[QueueInfo]:
        """Queues that hold runs or have settings, by name."""
        return self._s.list_queues(window)

    def get(self, name: str, window: Any = "15m") -> QueueInfo:
        return self._s.queue_info(name, window)


@public_calls("schedules")
class Schedules:
    """``stackshift.schedules``: recurring runs of a job on a cron expression."""

    def __init__(self, service: Service | RemoteService) -> None:
        self._s = service

    def create(self, job: str, *, cron: str, payload: Any = None, timezone: str = "UTC",
               queue_name: str | None = None, schedule_id: str | None = None,
               overlap: Literal["allow", "skip"] = "allow") -> Schedule:
        """Start ``job`` with ``payload`` once per tick of ``cron``.

        ``cron``: five fields, ``@hourly @daily @midnight @weekly @monthly
        @yearly``, or ``@every <duration>``; evaluated in ``timezone``. Each tick
        starts one run however many workers are up. Bad expressions raise
        :class:`ValidationError` saying what is wrong.

        ``overlap``: ``"allow"`` (the default) starts a run at every tick, even
        while the previous tick's run is still going; ``"skip"`` starts none
        while that run is unfinished (queued, running, waiting, sleeping or
        retrying) and counts the tick in ``skipped_ticks``.

        Without ``schedule_id`` each call makes a new schedule. With it, the
        schedule of that id is created, or changed to this definition: calling
        it again with the same arguments changes nothing; a new ``cron`` or
        ``timezone`` restarts its ticks from now; a new payload, job, queue or
        overlap applies from its next tick; a pause is kept.
        """
        return self._s.create_schedule(job, cron=cron, payload=payload, timezone=timezone,
                                       queue_name=queue_name, schedule_id=schedule_id,
                                       overlap=overlap)

    def get(self, schedule_id: str) -> Schedule:
        return self._s.get_schedule(schedule_id)

    def list(self) -> builtins.list[Schedule]:
        return self._s.list_schedules()

    def pause(self, schedule_id: str) -> Schedule:
        return self._s.pause_schedule(schedule_id)

    def resume(self, schedule_id: str) -> Schedule:
        """Resume from now on: ticks that passed while paused do not run."""
        return self._s.resume_schedule(schedule_id)

    def delete(self, schedule_id: str) -> bool:
        return self._s.delete_schedule(schedule_id)


@public_calls(None)
class _HandlerRoutes:
    """Push mode's handler routes, made from a client of a server (sync or async)."""

    def asgi_app(self, *, url: str | None = None, secret: str | None = None,
                 concurrency: int = 10) -> AsgiRoute:
        """This client's jobs as a handler route that the server invokes (push
        mode), an ASGI application: ``stackshift.asgi_app(client, ...)``, whose
        options it takes (see :func:`stackshift.push.asgi_app`)."""
        from .push import asgi_app

        return asgi_app(cast("StackShift | AsyncStackShift", self), url=url, secret=secret,
                        concurrency=concurrency)

    def wsgi_app(self, *, url: str | None = None, secret: str | None = None,
                 concurrency: int = 10) -> WsgiRoute:
        """The handler route of :meth:`asgi_app` as a WSGI application."""
        from .push import wsgi_app

        return wsgi_app(cast("StackShift | AsyncStackShift", self), url=url, secret=secret,
                        concurrency=concurrency)


@public_calls(None)
class StackShift(_HandlerRoutes):
    """The client: define jobs, start runs, send events, read runs, use state.

    ``StackShift(database_url="sqlite:///app.db")`` or a ``postgresql://`` URL
    talks to the database; ``StackShift(api_key=..., base_url="https://...")``
    talks to a ``stackshift server``, with the same methods, results and errors.
    With no argument it reads ``STACKSHIFT_DATABASE_URL``, or ``STACKSHIFT_URL``
    plus ``STACKSHIFT_API_KEY``, and falls back to ``sqlite:///stackshift.db``.
    The schema is migrated on first use.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        clock: Clock | None = None,
        settings: Settings | None = None,
        migrate: bool = True,
    ) -> None:
        if settings is not None and not isinstance(settings, Settings):
            raise ValidationError(
                "settings must be a stackshift.Settings (Settings(max_payload_bytes=...)),"
                f" got {type(settings).__name__} {settings!r:.100}")
        if clock is not None and (isinstance(clock, type)
                                  or not callable(getattr(clock, "now", None))):
            # Found at the first call otherwise, as an AttributeError of the engine's.
            raise ValidationError(
                "clock must be an object whose now() gives epoch seconds (an instance:"
                f" stackshift.testing.FakeClock()), got {clock!r:.100}")
        self._registry = JobRegistry()
        self._api: Service | RemoteService
        #: the workers made by :meth:`worker`, for :meth:`close` to stop
        self._workers: weakref.WeakSet[Worker] = weakref.WeakSet()
        server = server_from_env(database_url, api_key, base_url)
        if server is not None:
            if clock is not None:
                raise ValidationError("clock= applies to a client on a database, not a server")
            self.database_url: str | None = None
            self.base_url: str | None = server[0]
            from .remote import RemoteService

            self._api = RemoteService(server[0], server[1], self._registry, settings=settings)
        else:
            self.database_url = database_url or database_url_from_env()
            self.base_url = None
            store: SqlStore = open_store(self.database_url)
            if migrate:
                store.migrate()
            self._api = Service(store, clock or SystemClock(), settings or Settings(),
                                self._registry)
        self.runs = Runs(self._api)
        self.events = Events(self._api)
        self.queues = Queues(self._api)
        self.schedules = Schedules(self._api)
        self.state = State(self._api)
        self.state_async = AsyncState(self.state)

    @property
    def _service(self) -> Service:
        """The embedded service (workers and operator tools need the database)."""
        if isinstance(self._api, Service):
            return self._api
        raise StackShiftError(
            f"this client talks to the server at {self.base_url}; workers and this "
            "operation need the database: StackShift(database_url=...)"
        )

    # -- jobs ------------------------------------------------------------------------

    # The options, for type checkers; the implementation checks them against
    # make_job's at runtime (a misspelt one is refused with the one it was meant to be).
    @overload
    def job(self, name: str, handler: F, **options: Unpack[JobOptions]) -> F: ...

    @overload
    def job(self, name: str, handler: None = None,
            **options: Unpack[JobOptions]) -> Callable[[F], F]: ...

    def job(self, name: str, handler: Any = None, **options: Any) -> Any:
        """Register a handler: ``@stackshift.job("name", queue=..., max_attempts=...)``.

        Options: ``queue``, ``max_attempts``, ``backoff`` (dict of ``base``,
        ``factor``, ``cap``, ``jitter``), ``timeout`` (per attempt),
        ``key_concurrency`` (most runs with the same ``concurrency_key`` at
        once), ``on_failure`` (a job started with the failed run's id, job,
        payload and error), ``cron`` and ``timezone`` (a recurring schedule,
        created when a worker or a push-mode route serving the job starts) and
        ``overlap`` (``"skip"``: a tick starts no run while the previous tick's
        run is unfinished; see :meth:`Schedules.create`).
        """
        refuse_unknown_keywords("job()", options, make_job, skip=2)

        def register(fn: F) -> F:
            self._registry.add(make_job(name, fn, **options))
            return fn

        if handler is not None:
            return register(handler)
        check_name(name, "job name")
        return register

    @property
    def jobs(self) -> list[str]:
        return self._registry.names()

    def list_jobs(self) -> list[JobInfo]:
        """The jobs some worker has registered (workers, remote workers and push routes
        with their code), with the live workers serving each now, as the dashboard's
        Jobs page shows them. A job not listed has never had a worker: its runs wait
        until one starts (:attr:`jobs` is this client's own registrations)."""
        return self._api.list_jobs()

    # -- starting work -----------------------------------------------------------------

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
        """Start a run of ``job``. See :meth:`stackshift.service.Service.start`."""
        return self._api.start(
            job, payload, queue_name=queue_name, idempotency_key=idempotency_key,
            idempotency_ttl=idempotency_ttl, max_attempts=max_attempts,
            scheduled_at=scheduled_at, delay=delay, priority=priority,
            concurrency_key=concurrency_key,
        )

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
    ) -> builtins.list[Run]:
        """Start a run of ``job`` for each of ``payloads`` (at most 1,000) in one
        transaction, with a key of ``idempotency_keys`` and ``concurrency_keys``
        each (lists as long as ``payloads``, ``None`` for no key); the runs in
        the order of ``payloads``. See :meth:`stackshift.service.Service.start_many`."""
        return self._api.start_many(
            job, payloads, queue_name=queue_name, idempotency_keys=idempotency_keys,
            idempotency_ttl=idempotency_ttl, max_attempts=max_attempts,
            scheduled_at=scheduled_at, delay=delay, priority=priority,
            concurrency_keys=concurrency_keys,
        )

    def queue(self, name: str, *, concurrency: int | None = None, rate_limit: str | None = None,
              max_attempts: int | None = None) -> Queue:
        """The queue ``name``; the options given are stored for every worker and server.

        Options left out (or ``None``) keep their stored value; use
        :meth:`Queue.configure` with ``None`` to remove a limit.
        """
        queue = Queue(self._api, name)
        options = {k: v for k, v in (("concurrency", concurrency), ("rate_limit", rate_limit),
                                     ("max_attempts", max_attempts)) if v is not None}
        if options:
            queue.configure(**options)
        return queue

    # -- workers -------------------------------------------------------------------------

    def worker(self, **options: Unpack[WorkerOptions]) -> Worker:
        """A worker for this client's jobs; see :class:`stackshift.worker.Worker`.

        Its options are those of ``Worker`` (:class:`WorkerOptions`). On a client
        of a server it is a remote worker: it claims and checkpoints through the
        server (see :mod:`stackshift.remote_worker`). :meth:`close` stops it if it
        is still running.
        """
        from .worker import Worker

        refuse_unknown_keywords("worker()", dict(options), Worker, skip=1)
        if not isinstance(self._api, Service):
            from .remote_worker import RemoteWorkerApp

            worker = Worker(cast("StackShift", RemoteWorkerApp(self, self._api)), **options)
        else:
            worker = Worker(self, **options)
        self._workers.add(worker)
        return worker

    def migrate(self) -> int:
        return self._api.migrate()

    @property
    def clock(self) -> Clock:
        return self._api.clock

    def close(self) -> None:
        """Stop this client's workers that still run (as their ``stop()`` does:
        running attempts may finish within the grace period, the rest are
        handed back), then close its connections."""
        for worker in list(self._workers):
            worker.stop()
        self._api.close()

    def __reduce__(self) -> Any:
        # Else pickle fails on a lock or a weak set, in words that do not say why.
        raise TypeError(
            "a StackShift client cannot be pickled or copied (multiprocessing pickles what it"
            " sends to a spawned process): make a client in that process, from the database"
            " URL or the server's address")

    def __enter__(self) -> StackShift:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _in_event_loop() -> bool:
    """Whether an event loop is running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _AsyncFacade:
    """Wraps a sync API object so that every public method is awaitable."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(attr, *args, **kwargs)

        call.__name__ = name
        call.__doc__ = attr.__doc__
        return call


@public_calls("runs")
class _AsyncRuns(_AsyncFacade):
    """``runs`` of :class:`AsyncStackShift`."""

    _target: Runs

    async def wait(self, run_id: str, timeout: Any = None) -> Run:
        """Wait until the run is completed, failed or cancelled; the wait holds no
        thread, so any number of runs can be awaited at once."""
        return await self._target._s.wait_run_async(_run_id(run_id), timeout)


@public_calls(None)
class AsyncStackShift(_HandlerRoutes):
    """The async twin of :class:`StackShift`: the same methods, awaitable."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        clock: Clock | None = None,
        settings: Settings | None = None,
        migrate: bool = True,
    ) -> None:
        self.sync = StackShift(database_url, api_key=api_key, base_url=base_url, clock=clock,
                               settings=settings, migrate=migrate)
        # Typed for the checker by the protocols of stackshift.asynctypes.
        self.runs = cast("AsyncRuns", _AsyncRuns(self.sync.runs))
        self.events = cast("AsyncEvents", _AsyncFacade(self.sync.events))
        self.queues = cast("AsyncQueues", _AsyncFacade(self.sync.queues))
        self.schedules = cast("AsyncSchedules", _AsyncFacade(self.sync.schedules))
        self.state = self.sync.state_async
        self.database_url = self.sync.database_url
        self.base_url = self.sync.base_url

    @classmethod
    async def connect(
        cls,
        database_url: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        clock: Clock | None = None,
        settings: Settings | None = None,
        migrate: bool = True,
    ) -> AsyncStackShift:
        """Make the client in a thread: ``app = await AsyncStackShift.connect(...)``.

        With a database URL the constructor opens the store and applies pending
        migrations before it returns, which would block a running event loop (a
        FastAPI lifespan, say); this does the same without blocking it. The
        arguments are those of the constructor, and so are its errors."""
        return await asyncio.to_thread(
            cls, database_url, api_key=api_key, base_url=base_url, clock=clock,
            settings=settings, migrate=migrate)

    @overload
    def job(self, name: str, handler: F, **options: Unpack[JobOptions]) -> F: ...

    @overload
    def job(self, name: str, handler: None = None,
            **options: Unpack[JobOptions]) -> Callable[[F], F]: ...

    def job(self, name: str, handler: Any = None, **options: Any) -> Any:
        """Register a handler, as :meth:`StackShift.job`."""
        return self.sync.job(name, handler, **options)

    @property
    def jobs(self) -> list[str]:
        return self.sync.jobs

    async def list_jobs(self) -> list[JobInfo]:
        """The jobs some worker has registered, as :meth:`StackShift.list_jobs`."""
        return await asyncio.to_thread(self.sync.list_jobs)

    async def start(
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
        """Start a run of ``job``, as :meth:`StackShift.start`."""
        return await asyncio.to_thread(
            self.sync.start, job, payload, queue_name=queue_name,
            idempotency_key=idempotency_key, idempotency_ttl=idempotency_ttl,
            max_attempts=max_attempts, scheduled_at=scheduled_at, delay=delay,
            priority=priority, concurrency_key=concurrency_key,
        )

    async def start_many(
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
        """Start runs of ``job`` in one transaction, as :meth:`StackShift.start_many`."""
        return await asyncio.to_thread(
            self.sync.start_many, job, payloads, queue_name=queue_name,
            idempotency_keys=idempotency_keys, idempotency_ttl=idempotency_ttl,
            max_attempts=max_attempts, scheduled_at=scheduled_at, delay=delay,
            priority=priority, concurrency_keys=concurrency_keys,
        )

    def queue(self, name: str, *, concurrency: int | None = None, rate_limit: str | None = None,
              max_attempts: int | None = None) -> AsyncQueue:
        """The queue ``name``: the same methods as :class:`Queue`, awaitable.

        Settings given here are stored before it returns, as :meth:`StackShift.queue`
        does, which is fine while no event loop runs in this thread (module-level
        set-up). In a running loop that write would block the loop, so it is
        refused: ``await app.queue(name).configure(concurrency=...)`` stores them
        without blocking.
        """
        settings: dict[str, Any] = {
            k: v for k, v in (("concurrency", concurrency), ("rate_limit", rate_limit),
                              ("max_attempts", max_attempts)) if v is not None}
        if settings and _in_event_loop():
            check_name(name, "queue name")
            given = ", ".join(f"{k}={v!r}" for k, v in settings.items())
            raise TypeError(
                f"AsyncStackShift.queue({name!r}, {given}) in a running event loop would block "
                f"it to store the settings: use `await app.queue({name!r}).configure({given})`"
            )
        return cast("AsyncQueue", _AsyncFacade(self.sync.queue(name, **settings)))

    def worker(self, **options: Unpack[WorkerOptions]) -> Worker:
        """A worker for this client's jobs, as :meth:`StackShift.worker`."""
        return self.sync.worker(**options)

    async def migrate(self) -> int:
        """Apply pending migrations (as :meth:`StackShift.migrate`); the schema version."""
        return await asyncio.to_thread(self.sync.migrate)

    @property
    def clock(self) -> Clock:
        return self.sync.clock

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncStackShift:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
