"""The worker: claims runs of the jobs it knows and executes them.

Threads, each with one job:

* the **claim loop** leases due runs while slots are free, then sleeps until a
  wake-up (a run started in this process), a change seen in the database
  (another process), or the next timer;
* the **heartbeat** renews the leases of running runs, notices cancels and
  attempt timeouts, and runs maintenance: the lease rescuer, timers and clean-up;
* sync handlers run on handler threads; async handlers on one event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import forks, processes, runlogs
from ..durations import parse_duration
from ..engine import outcomes
from ..engine.limits import check_concurrency
from ..errors import AttemptTimeoutError, AuthenticationError, ValidationError
from ..ids import new_id
from ..jobs import check_name
from ..store.base import ClaimedRun
from ..store.database import LEAD_SILENCE
from .executor import end_async_handlers, execute_async, execute_sync, run_apart
from .invocation import Invocation, Retrying, outage_of, say_failed, warn_of
from .threads import DuePlan, HandlerThreads

if TYPE_CHECKING:
    from ..client import StackShift

log = logging.getLogger("stackshift.worker")

#: The signals ``run()`` (and ``stackshift dev``) stop on: SIGHUP as well, which a
#: closed terminal or a dropped ssh session sends, so that the runs still running
#: are handed back rather than left leased by a process that died of it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT,
                *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


@dataclass
class _Claim:
    """The runs one claim took: their endings wait a moment for each other."""

    size: int
    #: monotonic; a sibling still running after this is not waited for
    hold_until: float
    returned: int = 0
    #: the siblings' endings were announced to the shared transactions
    announced: bool = False


@dataclass
class _Active:
    invocation: Invocation
    deadline: float | None  # monotonic
    claim: _Claim
    timed_out: bool = field(default=False)
    #: the handler is done and its ending is being recorded: its slot is free
    returned: bool = field(default=False)


def _check_queues(queues: object) -> list[str]:
    """The queue names a worker is limited to: a non-empty list (or tuple) of names.

    A string is refused rather than read as the queues named by its characters."""
    if isinstance(queues, str) or not isinstance(queues, list | tuple | set | frozenset):
        raise ValidationError(f"queues must be a list of queue names (None for every queue), "
                              f"got {queues!r}" + (f": use queues=[{queues!r}]"
                                                   if isinstance(queues, str) else ""))
    if not queues:
        raise ValidationError("queues must name at least one queue (None for every queue)")
    return [check_name(q, "queue name") for q in queues]


def _positive(value: Any, name: str) -> float:
    seconds = parse_duration(value, name=name)
    if seconds <= 0:
        raise ValidationError(f"{name} must be more than 0, got {value!r}")
    return seconds


class Worker:
    """Executes runs for one :class:`~stackshift.StackShift` client.

    Use ``start()``/``stop()``, ``run()`` (blocks; SIGTERM and SIGINT stop it
    gracefully), ``with worker:`` or ``async with worker:``.
    """

    #: Seconds a busy worker waits for more slots to free before it claims.
    CLAIM_GATHER = 0.001
    #: Seconds after a claim during which the ending of one of its runs waits for
    #: its siblings to return too (see _returned).
    ENDING_HOLD = 0.002

    def __init__(
        self,
        app: StackShift,
        *,
        concurrency: int = 10,
        queues: list[str] | tuple[str, ...] | set[str] | frozenset[str] | None = None,
        lease: Any = "30s",
        poll_interval: Any = "1s",
        shutdown_grace: Any = "30s",
        maintenance_interval: Any = "0.25s",
    ) -> None:
        self.concurrency = check_concurrency(concurrency)
        self.queues = None if queues is None else _check_queues(queues)
        self.lease_seconds = parse_duration(lease, name="lease")
        if self.lease_seconds < 1:
            # Leases are renewed every third of their length: shorter ones would
            # run out between renewals and hand live attempts to other workers.
            raise ValidationError(f"lease must be at least 1s, got {lease!r}")
        # A zero interval would turn the claim or maintenance loop into a busy loop.
        self.poll_interval = _positive(poll_interval, "poll_interval")
        self.shutdown_grace = parse_duration(shutdown_grace, name="shutdown_grace")
        self.maintenance_interval = _positive(maintenance_interval, "maintenance_interval")
        #: Seconds the maintenance leader may go without a round before another
        #: process may take the lead from it (PostgreSQL; see Database.try_lead).
        self.lead_silence = max(LEAD_SILENCE, 10 * self.maintenance_interval)
        self.app = app
        self.service = app._service
        self.id = new_id("wkr")
        self._active: dict[str, _Active] = {}
        #: sync handlers past their timeout, still running (a thread cannot be
        #: killed): their attempt is recorded as failed, but each keeps its slot
        #: until it returns (by id(); see _enforce_timeouts)
        self._stuck: dict[int, _Active] = {}
        #: when (monotonic) the heartbeat wakes from its sleep, to enforce timeouts
        #: and maintain (see _heartbeat_loop)
        self._heartbeat_wakes_at = 0.0
        #: a claim failed: it may have leased runs nobody executes (see _hand_back_strays)
        self._strays_possible = False
        #: the server refused the worker's API key (revoked while it ran): it stops
        self.refused: AuthenticationError | None = None
        #: what cut the worker off from the database (its SQLite file deleted or
        #: replaced under it): it stops
        self.detached: str | None = None
        self._lock = threading.Lock()
        self._sibling_returned = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        #: a second SIGTERM/SIGINT during the grace period: hand the runs back now
        self._hurry = threading.Event()
        #: run() handles SIGTERM and SIGINT (a second one hurries the stop)
        self._on_signals = False
        # Set once draining is over: leases are renewed until then (SIGTERM grace).
        self._halted = threading.Event()
        self.due_plan = DuePlan()
        self._threads: list[threading.Thread] = []
        self._threads_for_sync: HandlerThreads | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._next_purge = 0.0
        self._next_ageing = 0.0
        self._last_claimed = float("-inf")
        self._outages = Retrying(log, self.OUTAGE_SAID_EVERY)
        self._rules = self.service.claim_rules()
        self._process: processes.ProcessId | None = None  # known once started
        #: started in the parent of this forked process (see _after_fork)
        self._inherited = False
        forks.register(self)

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stackshift.forks`): a started worker's
        threads stayed in the parent, with its runs. Its copy here neither stops
        them, nor hands them back, nor unregisters the worker, and it refuses to
        start. A copy not started takes an id of its own: started here, it is
        another worker than the parent's. The locks and events are new: another
        thread may have held the parent's at the fork."""
        if self._started:
            self._inherited = True
            self._started = False
        else:
            self.id = new_id("wkr")
        self._lock = threading.Lock()
        self._sibling_returned = threading.Condition(self._lock)
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._hurry, self._halted = threading.Event(), threading.Event()
        self._active, self._stuck, self._threads = {}, {}, []

    def _refuse_inherited(self) -> None:
        if self._inherited:
            raise RuntimeError(
                f"worker {self.id} was started in the parent of this forked process, where"
                " its threads and runs stay: make a new worker in this process (app.worker())")

    # -- lifecycle ---------------------------------------------------------------

    @property
    def jobs(self) -> list[str]:
        """Every registered job: a run's queue is chosen at start, so a worker limited
        to ``queues`` filters runs by their queue when it claims, not jobs here."""
        return sorted(job.name for job in self.app._registry)

    def start(self) -> Worker:
        """Start the worker's threads and return at once.

        A remote worker first waits for its server while it cannot be reached
        (see ``prepare_worker`` of its service); ``stop()`` from another thread
        ends that wait, and the worker does not start.
        """
        if not self._started:
            self._stopping.clear()
            self._hurry.clear()
        return self._start()

    def _start(self, ready: Callable[[], None] | None = None) -> Worker:
        self._refuse_inherited()
        if self._started:
            return self
        if not self.service.prepare_worker(self._stopping):
            return self  # stopped before its server could be reached
        self._started = True
        self._halted.clear()
        runlogs.install()
        # Twice the slots: a thread recording an ending has already freed its slot
        # for the next run (see _returned).
        self._threads_for_sync = HandlerThreads(2 * self.concurrency, "stackshift-job")
        if any(job.is_async for job in self.app._registry):
            self._loop = asyncio.new_event_loop()
            self._spawn("stackshift-loop", self._loop.run_forever)
        self.service.notifier.subscribe(self._wake.set)
        self.service.notifier.subscribe_due(self.due_plan.note)
        # A first maintenance round at once: what fell due while no worker ran.
        self.due_plan.note(self.service.clock.now())
        self._rules = self.service.claim_rules()
        for job, handler in self.app._registry.unknown_failure_handlers():
            log.warning("job %r has on_failure=%r, a job this worker does not know: its failure"
                        " handler runs are started in queue %r and wait there until a worker"
                        " that knows %r takes them", job, handler,
                        self.service.settings.default_queue, handler)
        self._process = processes.current()
        self._register()
        if ready is not None:
            ready()
        try:
            self.take_over_ended()
        except Exception:
            log.exception("worker %s: could not take over the runs of ended workers", self.id)
        try:
            # Runs ready for longer than the starvation limit go first from this
            # worker's first claim, not from a maintenance round after it (on
            # PostgreSQL a worker that does not lead runs none).
            self.service.store.age_ready_runs(
                self.service.clock.now() - self.service.settings.starvation_limit)
        except Exception:
            log.exception("worker %s: could not age the runs ready for long", self.id)
        self._spawn("stackshift-claim", self._claim_loop)
        self._spawn("stackshift-leases", self._lease_loop)
        self._spawn("stackshift-heartbeat", self._heartbeat_loop)
        return self

    def _register(self) -> None:
        """Register this worker, or refresh its heartbeat."""
        self.service.store.register_worker(
            self.id, socket.gethostname(), os.getpid(), self.jobs, self.queues,
            self.concurrency, self.service.clock.now(), self._process,
        )

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, grace: Any = None) -> None:
        """Stop claiming, let running attempts finish within ``grace``, release the rest.

        Called in the main thread outside :meth:`run` (``with app.worker():``), a
        Ctrl-C during the grace period hands the runs still running back at once,
        as under ``run()``, rather than interrupting the stop with the runs still
        leased; ``KeyboardInterrupt`` is then raised once they are handed back,
        unless an exception (the first Ctrl-C's) is on its way out already.
        """
        if not self._started:
            self._stopping.set()  # a start() still waiting for its server gives up
            return
        with self._interrupts_hurry() as interrupted:
            self._stop(grace)
        if interrupted and sys.exc_info()[1] is None:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def _interrupts_hurry(self) -> Iterator[list[int]]:
        """While the block runs, SIGINT calls :meth:`hurry` instead of raising
        ``KeyboardInterrupt``, where it would raise it (the main thread, Python's
        own handler); the list yielded holds the signals that came."""
        came: list[int] = []
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield came
            return

        def hurry(signum: int, frame: object) -> None:
            came.append(signum)
            self.hurry()

        signal.signal(signal.SIGINT, hurry)
        on_signals, self._on_signals = self._on_signals, True
        try:
            yield came
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._on_signals = on_signals

    def _stop(self, grace: Any) -> None:
        patience = self.shutdown_grace if grace is None else parse_duration(grace, name="grace")
        deadline = time.monotonic() + patience
        self._stopping.set()
        self._wake.set()
        self.service.notifier.unsubscribe(self._wake.set)
        self.service.notifier.unsubscribe_due(self.due_plan.note)
        # No claim under way from here on: what one took as the stop came is
        # handed back or among the attempts waited for below.
        for thread in self._threads:
            if thread.name == "stackshift-claim":
                thread.join(timeout=max(patience, 5))
        with self._lock:
            running = len(self._active)
        if running and patience > 0:
            log.info("worker %s: stopping; waiting up to %gs for %d running attempt(s) to"
                     " finish%s", self.id, patience, running,
                     " (signal again to hand them back now)" if self._on_signals else "")
        while time.monotonic() < deadline and not self._hurry.is_set():
            with self._lock:
                if not self._active:
                    break
            time.sleep(0.01)
        self._halted.set()
        self.due_plan.changed.set()
        with self._lock:
            leftovers = list(self._active.values())
        for active in leftovers:
            active.invocation.abandon("handed back")
            lease = active.invocation.lease
            try:
                status = self.service.store.release_run(
                    lease, self.service.clock.now(), logs=active.invocation.take_logs())
                if status == "cancelled":
                    log.warning("run %s: still running when the worker stopped, with a cancel"
                                " requested; cancelled", lease.run_id)
                elif status is not None:
                    log.warning("run %s: still running when the worker stopped; handed back"
                                " to its queue (the attempt continues elsewhere from its"
                                " completed steps)", lease.run_id)
            except Exception as exc:  # the others are still handed back
                log.warning("run %s: could not hand it back (%s: %s); it is retried when"
                            " its lease runs out", lease.run_id, type(exc).__name__, exc)
        for thread in self._threads:
            if thread.name != "stackshift-loop":
                thread.join(timeout=5)
        if self._loop is not None:
            end_async_handlers(self._loop, self.id, self.CANCEL_WAIT)
            self._loop.call_soon_threadsafe(self._loop.stop)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self._threads_for_sync is not None:
            self._threads_for_sync.shutdown()
            self._threads_for_sync = None
        if self._loop is not None and not self._loop.is_running():
            self._loop.close()
        self._loop = None
        try:
            if self.detached is None:  # else there is no database to write to
                self.service.store.resign(self.id)
                self.service.store.unregister_worker(self.id)
        except Exception as exc:
            if self.refused is None:  # else said already: the server takes no call
                warn_of(log, exc, "worker %s: could not unregister", self.id)
        runlogs.uninstall()
        self._started = False

    #: Seconds ``stop()`` gives the async handlers it cancels to end.
    CANCEL_WAIT = 2.0

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Start and block until SIGTERM, SIGINT or SIGHUP (or ``stop()`` from another thread).

        The signals are handled from the start on: one that comes while a remote
        worker waits for its server ends the wait, and ``run()`` returns.
        ``ready`` is called once the worker is registered and its jobs' defaults
        and schedules are recorded, before it takes any run: from then on a
        process without the jobs' code starts runs with their queue and
        ``max_attempts``. It is not called when ``run()`` returns before that.
        """
        if not self._started:
            self._stopping.clear()  # here, not in start(): a signal from now on counts
            self._hurry.clear()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, self._on_signal)
            self._on_signals = True
        try:
            try:
                self._start(ready)  # should ``ready`` raise, the worker stops again
                while self._started and not self._stopping.wait(0.5):
                    pass
            finally:
                self.stop()
        finally:
            self._on_signals = False
            for sig, handler in previous.items():  # Ctrl-C raises KeyboardInterrupt again
                if handler is not None:
                    signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        """SIGTERM or SIGINT: the first stops the worker gracefully; another one
        during the grace period hands the runs still running back at once."""
        if self._stopping.is_set():
            self.hurry()
        self._stopping.set()

    def hurry(self) -> None:
        """Cut short the grace period of a ``stop()`` under way (or to come): the
        runs still running are handed back to their queue at once."""
        self._hurry.set()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Worker:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def active_runs(self) -> list[str]:
        with self._lock:
            return list(self._active)

    # -- claiming ------------------------------------------------------------------

    def _free_slots(self) -> int:
        with self._lock:
            return (self.concurrency - len(self._stuck)
                    - sum(1 for a in self._active.values() if not a.returned))

    def _claim_loop(self) -> None:
        store = self.service.store
        while not self._stopping.is_set():
            try:
                # Reset the wake-up signals *before* looking for work: a run started
                # after the claim query below must still wake the idle wait.
                self._wake.clear()
                store.changed()
                free = self._gather_slots()
                claimed: list[ClaimedRun] = []
                if self._strays_possible and self._hand_back_strays():
                    self._strays_possible = False
                if free > 0:
                    claimed = store.claim_runs(self.id, self.jobs, free, self.lease_seconds,
                                               self.service.clock.now(), self.queues,
                                               self._rules)
                    if claimed and self._stopping.is_set():
                        self._hand_back(claimed)  # stop() came during the claim
                        return
                    if claimed:
                        self._last_claimed = time.monotonic()
                        batch = _Claim(len(claimed), self._last_claimed + self.ENDING_HOLD)
                    for item in claimed:
                        self._dispatch(item, batch)
                if claimed and len(claimed) == free:
                    continue  # maybe more is due; claim again once a slot frees
                self._idle()
            except Exception as exc:
                if self._key_refused(exc):
                    return
                self._retrying("claim", exc)
                # Its answer may be what failed, after the runs were leased.
                self._strays_possible = True
                self._stopping.wait(1.0)

    #: Seconds between two warnings of one loop failing while the database (or, for
    #: a remote worker, the server) is unavailable.
    OUTAGE_SAID_EVERY = 30.0

    def _retrying(self, what: str, exc: Exception) -> None:
        """Say that ``what`` (a loop of the worker) failed and is tried again
        (see :class:`Retrying`); or, when its database file was deleted or
        replaced (its writes refused for that), that it stops."""
        if not self._cut_off():
            self._outages.say(f"worker {self.id}: {what}", exc)

    def _cut_off(self) -> bool:
        """Whether the worker's database is no longer the one other processes use
        (its SQLite file deleted or replaced): it says so and stops (``run()``
        returns; ``stackshift worker`` exits 1), rather than go on writing where
        nobody reads and never see the runs started in the new file."""
        if self.detached is not None:  # said already
            return True
        reason = self.service.store.detached()
        if reason is None:
            return False
        self.detached = reason
        log.error("worker %s: %s; stopping. Start the worker again on the database in"
                  " use", self.id, reason)
        self._stopping.set()
        self._wake.set()
        return True

    def _key_refused(self, exc: Exception) -> bool:
        """Whether ``exc`` is a remote worker's server refusing its API key (revoked
        while it ran). No retry can mend that: the worker says so once and stops
        (``run()`` returns; ``stackshift worker`` exits 1), rather than fail every
        claim, renewal and heartbeat from then on."""
        if not isinstance(exc, AuthenticationError):
            return False
        with self._lock:
            first, self.refused = self.refused is None, self.refused or exc
        if first:
            log.error("worker %s: the server refused its API key (%s); stopping. Its runs"
                      " in flight are retried once their leases run out", self.id, exc)
            self._stopping.set()
            self._wake.set()
        return True

    def _hand_back(self, claimed: list[ClaimedRun]) -> None:
        """Hand back runs claimed as the worker stops, before any of them ran (a
        later claim takes them as if this one had not happened)."""
        for item in claimed:
            try:
                self.service.store.release_run(item.lease, self.service.clock.now())
            except Exception as exc:  # the others are still handed back
                log.warning("run %s: could not hand it back (%s: %s); it is retried when"
                            " its lease runs out", item.lease.run_id, type(exc).__name__, exc)

    def _hand_back_strays(self) -> bool:
        """Hand back the runs leased to this worker that it is not executing; False
        if they could not be looked up (tried again before the next claim).

        A claim whose answer was lost (the connection cut as it committed, a
        server killed before it answered) may have leased runs all the same.
        Nothing runs them: left alone, they would wait for their leases to run
        out and then count as lost attempts.
        """
        store = self.service.store
        try:
            held = store.leases_held_by(self.id)
            with self._lock:
                executing = set(self._active)
            for stray in held:
                if (stray.lease.run_id not in executing
                        and store.release_run(stray.lease, self.service.clock.now())):
                    log.warning("run %s: leased by a claim whose answer was lost; handed back",
                                stray.lease.run_id)
        except Exception as exc:
            if outage_of(exc) is None:
                log.warning("worker %s: could not look for runs leased by a failed claim",
                            self.id, exc_info=True)
            return False
        return True

    def _gather_slots(self) -> int:
        """Free slots, after letting runs that end together free theirs.

        When a busy worker's runs end, their slots free a moment apart; one claim
        then takes a run for each of them instead of one claim per slot. It waits
        at most ``CLAIM_GATHER``, or while runs of a claim are still in their
        ``ENDING_HOLD`` (they are likely to return any moment). An idle worker
        claims at once.
        """
        with self._lock:
            deadline = time.monotonic() + self.CLAIM_GATHER
            while True:
                busy = [a for a in self._active.values() if not a.returned]
                free = self.concurrency - len(busy) - len(self._stuck)
                if free in (0, self.concurrency):
                    return free
                left = max([deadline] + [a.claim.hold_until for a in busy]) - time.monotonic()
                if left <= 0:
                    return free
                self._sibling_returned.wait(left)

    #: How often an idle worker looks at the database's change signal: often
    #: while work came in the last ``BUSY_WINDOW`` seconds, less when it is quiet.
    CHANGE_TICK_BUSY = 0.002
    CHANGE_TICK_QUIET = 0.01
    BUSY_WINDOW = 2.0

    def _idle(self) -> None:
        """Sleep until woken, a change in the database, or the poll interval.

        A change made in another process is seen at the next look at the change
        signal (a non-blocking read: PostgreSQL's LISTEN socket, SQLite's
        ``data_version``); a busy worker looks every 2 ms, a quiet one every 10 ms.
        """
        deadline = time.monotonic() + self.poll_interval
        store = self.service.store
        busy = time.monotonic() - self._last_claimed < self.BUSY_WINDOW
        tick = self.CHANGE_TICK_BUSY if busy else self.CHANGE_TICK_QUIET
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._wake.wait(min(tick, remaining)):
                return
            if self._free_slots() > 0 and store.changed():
                return

    def _dispatch(self, claimed: ClaimedRun, batch: _Claim) -> None:
        job = self.app._registry.get(claimed.run.job)
        assert job is not None
        invocation = Invocation(self.service, job, claimed, self.lease_seconds)
        deadline = None if job.timeout is None else time.monotonic() + job.timeout
        active = _Active(invocation, deadline, batch)
        if deadline is not None and deadline < self._heartbeat_wakes_at:
            self.due_plan.changed.set()  # the heartbeat sleeps past this timeout: wake it
        run_id = claimed.run.id
        invocation.on_return = lambda records: self._returned(active, records)
        with self._lock:
            self._active[run_id] = active
        if job.is_async:
            assert self._loop is not None
            future = asyncio.run_coroutine_threadsafe(
                execute_async(invocation, self.app.state_async), self._loop
            )
            future.add_done_callback(lambda _f: self._done(run_id, active))
        else:
            assert self._threads_for_sync is not None
            state = self.app.state

            def call() -> None:
                try:
                    execute_sync(invocation, state)
                finally:
                    self._done(run_id, active)

            self._threads_for_sync.submit(call)

    def _returned(self, active: _Active, records: bool) -> None:
        """A handler is done: free its slot now, so that the next claim can share a
        transaction (and its flush) with the endings being recorded.

        Runs claimed together and quick to return end together: the first of them
        to return announces its siblings' endings to the shared transactions
        (:meth:`GroupCommit.expect`), so that the transaction recording its ending
        waits for theirs, until ``ENDING_HOLD`` after the claim at most. The last
        to return announces the claim that its freed slot brings. Handlers that
        take longer than that are never held back. ``records``: the run has an
        ending to record (it did not suspend and was not abandoned).
        """
        batch = active.claim
        with self._lock:
            if active.returned:
                return
            self._stuck.pop(id(active), None)
            active.returned = True
            batch.returned += 1
            left = batch.hold_until - time.monotonic()
            coming = 0
            if left > 0 and batch.returned == 1:
                coming = batch.size - 1 + (1 if records else 0)
                batch.announced = coming > 0
            elif left > 0 and batch.announced and not records:
                coming = -1  # announced, but it has nothing to write
            if batch.returned == batch.size and not self._stopping.is_set():
                coming += 1  # the claim into the slots freed
                left = max(left, self.ENDING_HOLD)
            if coming:
                self.service.store.expect_writes(coming, left)
            self._sibling_returned.notify_all()
        self._wake.set()

    def _done(self, run_id: str, active: _Active) -> None:
        with self._lock:
            # The run may already be claimed again (a retry due at once): leave
            # that newer invocation's entry alone.
            if self._active.get(run_id) is active:
                del self._active[run_id]
            self._stuck.pop(id(active), None)
            freed = not active.returned  # else _returned freed the slot and woke the loop
        if freed:
            self._wake.set()

    # -- heartbeat and maintenance -----------------------------------------------------

    #: Seconds before a lease renewal that failed (the database unreachable) is
    #: tried again, when that is sooner than the next one.
    RENEWAL_RETRY = 1.0

    def _lease_loop(self) -> None:
        """Renew the leases of the attempts running here, and the worker's
        registration, every third of the lease time, writing their pending
        log records with the renewal.

        A thread of its own: no maintenance round, however slow (a catch-up, a
        large promotion of due runs, retention), delays a renewal, so a running
        attempt is never taken over or recorded lost because this worker was
        busy maintaining. A renewal that fails is tried again after
        ``RENEWAL_RETRY`` seconds.
        """
        store = self.service.store
        clock = self.service.clock
        interval = self.lease_seconds / 3
        while True:
            try:
                with self._lock:
                    renewing = [a.invocation for a in self._active.values()]
                leases = [i.lease for i in renewing]
                with contextlib.ExitStack() as taken:
                    # Log records pending, written ahead of the next checkpoints
                    # (put back should the renewal fail). A remote worker whose
                    # server takes none with renewals has none here: its records
                    # go with its checkpoints.
                    logs = {i.run.id: records for i in renewing
                            if (records := taken.enter_context(i.logs_ahead()))}
                    asked_at = time.monotonic()
                    if logs:
                        cancels, lost = store.renew_leases(leases, clock.now(),
                                                           self.lease_seconds, logs)
                    else:
                        cancels, lost = store.renew_leases(leases, clock.now(),
                                                           self.lease_seconds)
                self._register()
                for invocation in renewing:
                    invocation.renewed(cancels, lost, asked_at)
                wait = interval
            except Exception as exc:
                if not self._key_refused(exc):
                    self._retrying("lease renewal", exc)
                wait = min(interval, self.RENEWAL_RETRY)
            if self._halted.wait(wait):
                return

    def _heartbeat_loop(self) -> None:
        store = self.service.store
        clock = self.service.clock
        next_look = time.monotonic() + self.ENDED_LOOK_INTERVAL
        while True:
            interval = self.maintenance_interval
            timeout_due = self._next_timeout_due()
            if timeout_due is not None:
                interval = min(interval, max(0.0, timeout_due - time.monotonic()))
            self._heartbeat_wakes_at = time.monotonic() + interval
            self.due_plan.sleep(interval, clock.now(), self._halted)
            if self._halted.is_set():
                return
            try:
                passed = self.due_plan.take_passed(clock.now())
                now_mono = time.monotonic()
                if now_mono >= next_look:
                    next_look = now_mono + self.ENDED_LOOK_INTERVAL
                    if self._cut_off():
                        return
                    if self.take_over_ended() and self._free_slots() > 0:
                        self._wake.set()
                self._enforce_timeouts()
                # One elected worker maintains for everyone (on PostgreSQL: one
                # across all processes; another takes over when its process dies).
                if store.try_lead(self.id, self.lead_silence):
                    if self.maintain() and self._free_slots() > 0:
                        self._wake.set()
                elif passed and self._free_slots() > 0:
                    self._wake.set()  # a retry of a run that ended here is due: claim it
            except Exception as exc:
                if not self._key_refused(exc):
                    self._retrying("heartbeat", exc)

    #: Seconds past its timeout after which an async attempt that did not stop
    #: when cancelled is failed by the heartbeat, as a sync one is at its timeout.
    ASYNC_TIMEOUT_GRACE = 1.0

    def _timeout_due(self, active: _Active) -> float | None:
        """When (monotonic) ``_enforce_timeouts`` fails ``active``'s attempt, if ever."""
        if active.deadline is None or active.timed_out or active.returned:
            return None
        if active.invocation.job.is_async:
            return active.deadline + self.ASYNC_TIMEOUT_GRACE
        return active.deadline

    def _next_timeout_due(self) -> float | None:
        with self._lock:
            dues = [due for due in map(self._timeout_due, self._active.values())
                    if due is not None]
        return min(dues, default=None)

    def _enforce_timeouts(self) -> None:
        """Fail sync attempts past their timeout; their thread is abandoned.

        An async attempt is cancelled at its timeout by its own task (see
        :func:`execute_async`); one still running ``ASYNC_TIMEOUT_GRACE`` later
        did not stop when cancelled (a blocking call holds up the event loop,
        or the handler caught the cancellation): it is failed and abandoned
        the same way.

        A thread cannot be killed: its handler keeps its slot until it returns
        (in ``_stuck``, also while the run's next attempt runs here), and any
        write it tries later is refused because it no longer holds a lease. It
        is no longer one of the active runs: its lease is not renewed, and
        ``stop()`` does not wait for it.
        """
        now = time.monotonic()
        with self._lock:
            late = [a for a in self._active.values()
                    if (due := self._timeout_due(a)) is not None and now >= due]
            for active in late:
                del self._active[active.invocation.run.id]
                self._stuck[id(active)] = active
        for active in late:
            active.timed_out = True
            self._time_out(active.invocation)

    def _time_out(self, inv: Invocation) -> None:
        """Fail ``inv``'s attempt past its timeout; record nothing more of it."""
        message = f"attempt ran longer than {inv.job.timeout:g}s"
        if inv.job.is_async:
            message += (f" and did not stop when cancelled (for {self.ASYNC_TIMEOUT_GRACE:g}s"
                        " more): a blocking call in the async handler holds up the"
                        " worker's event loop, or the handler caught the cancellation")
        inv.fail(AttemptTimeoutError(message))
        inv.abandon("timed out")

    def _execute_here(self, invocation: Invocation) -> None:
        """A sync handler in this thread (``run_until_idle``), its job's timeout
        enforced as the heartbeat enforces it (from a timer's thread): the attempt
        fails at its timeout, and what the handler does after it is not recorded."""
        timeout = invocation.job.timeout
        if timeout is None:
            execute_sync(invocation, self.app.state)
            return
        lock = threading.Lock()
        ended = [False]

        def returned(_records: bool) -> None:
            with lock:
                ended[0] = True

        def time_out() -> None:
            with lock:
                if ended[0]:
                    return
                ended[0] = True
            self._time_out(invocation)

        invocation.on_return = returned
        timer = threading.Timer(timeout, time_out)
        timer.daemon = True
        timer.start()
        try:
            execute_sync(invocation, self.app.state)
        finally:
            timer.cancel()
            timer.join()

    #: Seconds before maintenance looks again at a run left due by a round.
    DUE_AGAIN = 0.02

    #: Seconds between looks for workers on this machine whose process has ended.
    ENDED_LOOK_INTERVAL = 1.0

    def take_over_ended(self) -> int:
        """End now the attempts of workers whose process, on this machine, has ended.

        A worker killed (kill -9, out of memory) or crashed holds its runs until
        their leases run out; when its process was on this machine (see
        :mod:`stackshift.processes`), it is known to be gone at once, and its
        attempts are recorded as lost (``WorkerLost``, retried at once) without
        waiting for the lease. Its registration is removed. Called when the
        worker starts and every ``ENDED_LOOK_INTERVAL`` seconds; returns how
        many attempts it ended.
        """
        me = self._process
        if me is None:
            return 0
        store = self.service.store
        taken = 0
        for worker_id, pid, started in store.workers_in_space(me.space, self.id):
            if not processes.ended(pid, started):
                continue
            message = (f"the process of the worker running this attempt ({worker_id},"
                       f" pid {pid}) ended; seen by worker {self.id} on the same machine")
            while held := store.leases_held_by(worker_id):
                ended = 0
                for lost in held:
                    now = self.service.clock.now()
                    outcome = outcomes.lost_worker(attempts_used=lost.attempts_used,
                                                   max_attempts=lost.max_attempts, now=now,
                                                   message=message)
                    if status := store.finish_attempt(lost.lease, outcome, [], now):
                        log.warning("run %s: worker %s's process (pid %d) ended; attempt %d"
                                    " recorded as WorkerLost", lost.lease.run_id, worker_id,
                                    pid, lost.lease.attempt)
                        say_failed(lost.job, lost.lease.run_id, lost.attempts_used,
                                   lost.max_attempts, outcome, status, now)
                        ended += 1
                taken += ended
                if not ended:
                    break  # taken meanwhile by another worker: leave the rest to it
            store.unregister_worker(worker_id)
        return taken

    def maintain(self) -> int:
        """One round of maintenance; returns how many runs became due or changed.

        Safe to run anywhere at any time (every write is conditional); the
        heartbeat runs it only on the elected worker to avoid duplicate work.
        """
        store = self.service.store
        now = self.service.clock.now()
        changed = 0
        for expired in store.expired_leases(now):
            # Retried at once, without the job's backoff (see outcomes.lost_worker);
            # promote_due below queues it in this same round.
            outcome = outcomes.lost_worker(
                attempts_used=expired.attempts_used,
                max_attempts=expired.max_attempts,
                now=now,
            )
            if ended := store.finish_attempt(expired.lease, outcome, [], now,
                                             expired_before=now):
                log.warning("run %s: worker %s lost; attempt %d recorded as WorkerLost",
                            expired.lease.run_id, expired.lease.worker_id,
                            expired.lease.attempt)
                say_failed(expired.job, expired.lease.run_id, expired.attempts_used,
                           expired.max_attempts, outcome, ended, now)
                changed += 1
        due = store.next_due_at()
        if due is not None and due <= now:
            moved = len(store.fire_timers(now)) + store.promote_due(now)
            changed += moved
            due = store.next_due_at()
            if due is not None and due <= now and not moved:
                # Left due: on PostgreSQL a run locked by another writer at that
                # moment is skipped. Look again soon, not at once.
                due = now + self.DUE_AGAIN
        if due is not None:
            self.due_plan.note(due)
        changed += len(self.service.fire_schedules(now))
        tick = store.next_schedule_tick()
        if tick is not None:  # one left due is past a batch, or locked: soon again
            self.due_plan.note(tick if tick > now else now + self.DUE_AGAIN)
        limit = self.service.settings.starvation_limit
        if now >= self._next_ageing:
            # Runs ready for longer than the starvation limit go before any priority.
            self._next_ageing = now + min(5.0, limit / 10)
            changed += store.age_ready_runs(now - limit)
        if now >= self._next_purge:
            # Retention, a batch per round; again next round while batches come back full.
            more = self.service.apply_retention(now)
            self._next_purge = now if more else now + 60
        return changed

    # -- tests and scripts -----------------------------------------------------------

    def run_until_idle(self, max_invocations: int = 100_000) -> int:
        """Execute due work in this thread until nothing is due; return invocations.

        For tests with a fake clock: advance the clock, then call this. Async
        handlers run on an event loop of their own: in a thread of their own when
        the calling thread runs one already (an async test, Playwright's sync API),
        which this call then holds up until it returns.
        """
        self._refuse_inherited()
        store = self.service.store
        runlogs.install()
        self._rules = self.service.claim_rules()
        self.service.sync_code_schedules()
        self.service.publish_jobs()
        count = 0
        try:
            while count < max_invocations:
                self.maintain()
                claimed = store.claim_runs(self.id, self.jobs, self.concurrency,
                                           self.lease_seconds, self.service.clock.now(),
                                           self.queues, self._rules)
                if not claimed:
                    return count
                for item in claimed:
                    job = self.app._registry.get(item.run.job)
                    assert job is not None
                    invocation = Invocation(self.service, job, item, self.lease_seconds)
                    if job.is_async:
                        run_apart(partial(execute_async, invocation, self.app.state_async))
                    else:
                        self._execute_here(invocation)
                    count += 1
            return count
        finally:
            runlogs.uninstall()

