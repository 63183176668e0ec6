"""``/v1/worker/...``: what a remote worker needs to execute runs through the server.

A remote worker holds an API key, not database credentials. Each route is one
store operation of the execution seam (claim, step checkpoint, suspend, wait,
finish, release, lease renewal, worker registry), applied with the same
conditional writes as an embedded worker's: every checkpoint is refused with
``409 lease_lost`` once the worker no longer holds the run's lease. Times that
bound leases come from the server's clock, not the worker's.

The claim is a long-poll: with nothing due it holds the request open (up to
``waitSeconds``) and answers as soon as a run becomes claimable, so an idle
remote worker starts a queued run about as fast as an embedded one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request

from ..engine.cron import parse_cron
from ..errors import LeaseLost
from ..processes import ProcessId
from ..service import Service
from ..store.flow import ClaimRules
from ..store.schedules import code_schedule_id
from . import schemas as s
from . import worker_schemas as w
from .bodies import JsonBodyRoute
from .errors import ApiError
from .routes import CONFLICT, ERRORS, service_of

router = APIRouter(prefix="/v1/worker", responses=ERRORS, tags=["remote workers"],
                   route_class=JsonBodyRoute)

T = TypeVar("T")

#: How often a waiting claim looks at the change signal, and re-claims without one
#: (runs due by time: retries, scheduled starts, sleeps ended by maintenance).
_TICK = 0.01
_FALLBACK = 1.0


class ClaimSignal:
    """A counter that moves when a run may have become claimable.

    Moved by the service's in-process wake-ups (runs started through this
    server) and by one thread watching the store's change signal (other
    processes). Waiting claims re-query when it moves.
    """

    def __init__(self, service: Service) -> None:
        self.generation = 0
        self._service = service
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        service.notifier.subscribe(self.bump)

    def bump(self) -> None:
        self.generation += 1

    def ensure_watching(self) -> None:
        with self._lock:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                 name="stackshift-claim-signal")
                self._watcher.start()

    def _watch(self) -> None:
        store = self._service.store
        while True:
            try:
                if store.changed():
                    self.bump()
            except Exception:  # the database is away; claims fall back to polling
                time.sleep(1.0)
            time.sleep(_TICK)


def _signal(request: Request) -> ClaimSignal:
    state = request.app.state
    signal: ClaimSignal | None = getattr(state, "claim_signal", None)
    if signal is None:
        signal = state.claim_signal = ClaimSignal(service_of(request))
    signal.ensure_watching()
    return signal


def _leased(call: Callable[[], T]) -> T:
    try:
        return call()
    except LeaseLost as exc:
        raise ApiError(409, "lease_lost",
                       f"this worker no longer holds the lease on run {exc}") from None


def _logs(logs: list[w.LogBody]) -> list[Any]:
    return [log.to_write() for log in logs]


@router.post("/register", summary="Register or refresh a remote worker (heartbeat)")
def register_worker(body: w.RegisterWorker, request: Request) -> w.Registered:
    service = service_of(request)
    process = None if body.process is None else ProcessId(body.process.space, body.pid,
                                                             body.process.started)
    service.store.register_worker(body.worker_id, body.hostname, body.pid, body.jobs,
                                  body.queues, body.concurrency, service.clock.now(), process)
    return w.Registered()


@router.post("/peers", summary="The other workers whose process is in the same space")
def workers_in_space(body: w.Peers, request: Request) -> w.PeersFound:
    """For a worker to check which of them have ended on its own machine."""
    found = service_of(request).store.workers_in_space(body.space, body.worker_id)
    return w.PeersFound(workers=[w.Peer(worker_id=worker_id, pid=pid, started=started)
                                 for worker_id, pid, started in found])


@router.post("/held", summary="The leases a worker holds")
def leases_held_by(body: w.WorkerRef, request: Request) -> w.HeldLeases:
    """For a worker that saw this worker's process end, to record its attempts as lost."""
    held = service_of(request).store.leases_held_by(body.worker_id)
    return w.HeldLeases(leases=[
        w.HeldLease(run_id=h.lease.run_id, worker_id=h.lease.worker_id,
                    attempt=h.lease.attempt, job=h.job, attempts_used=h.attempts_used,
                    max_attempts=h.max_attempts)
        for h in held
    ])


@router.post("/unregister", summary="Remove a stopping remote worker from the registry")
def unregister_worker(body: w.WorkerRef, request: Request) -> w.Done:
    service_of(request).store.unregister_worker(body.worker_id)
    return w.Done()


@router.post("/claim", summary="Lease due runs of the worker's jobs (long-poll)")
async def claim_runs(body: w.Claim, request: Request) -> w.ClaimedRuns:
    """Answers at once with the runs leased, or after `waitSeconds` with none."""
    service = service_of(request)
    signal = _signal(request)
    rules = ClaimRules(dict(body.key_limits), dict(body.on_failure))
    deadline = time.monotonic() + body.wait_seconds

    def claim() -> list[Any]:
        return service.store.claim_runs(body.worker_id, body.jobs, body.limit,
                                         body.lease_seconds, service.clock.now(),
                                         body.queues, rules)

    stopping = request.app.state.stopping
    while True:
        seen = signal.generation
        claimed = await anyio.to_thread.run_sync(claim)
        if claimed or time.monotonic() >= deadline or body.limit == 0 or stopping.is_set():
            break
        fallback = time.monotonic() + _FALLBACK
        while (signal.generation == seen and time.monotonic() < min(deadline, fallback)
               and not stopping.is_set() and not await request.is_disconnected()):
            await anyio.sleep(_TICK)
        if stopping.is_set() or await request.is_disconnected():
            break
    return w.ClaimedRuns(items=[
        w.ClaimedRun(run=s.Run.of(c.run), attempt=c.lease.attempt, retry_base=c.retry_base,
                     new_attempt=c.new_attempt,
                     steps=[s.Step.of(step) for step in c.steps.values()])
        for c in claimed
    ])


@router.post("/steps", responses=CONFLICT, summary="Checkpoint a finished step")
def save_step(body: w.SaveStep, request: Request) -> w.StepSaved:
    """Durable before the answer; renews the lease. 409 `lease_lost`: nothing written."""
    service = service_of(request)
    cancel = _leased(lambda: service.store.save_step(
        body.lease.to_lease(), body.step.to_write(), _logs(body.logs), service.clock.now(),
        body.lease_seconds))
    return w.StepSaved(cancel_requested=cancel)


@router.post("/sleep", responses=CONFLICT, summary="Park a run until a time")
def suspend_for_sleep(body: w.Suspend, request: Request) -> w.Done:
    service = service_of(request)
    _leased(lambda: service.store.suspend_for_sleep(
        body.lease.to_lease(), body.step.to_write(), body.until, _logs(body.logs),
        service.clock.now()))
    service.notifier.due(body.until)
    return w.Done()


@router.post("/waits", responses=CONFLICT, summary="Take a matching event, or park the run")
def wait_for_event(body: w.WaitForEvent, request: Request) -> w.EventTaken:
    service = service_of(request)
    event = _leased(lambda: service.store.wait_for_event(
        body.lease.to_lease(), body.step.to_write(), body.name, body.correlation_key,
        body.timeout_at, body.on_timeout, _logs(body.logs), service.clock.now(),
        body.lease_seconds))
    if event is None:
        service.notifier.due(body.timeout_at)
    return w.EventTaken(event=None if event is None else s.Event.of(event))


@router.post("/finish", summary="End the leased attempt")
def finish_attempt(body: w.FinishAttempt, request: Request) -> w.Finished:
    service = service_of(request)
    ended = service.store.finish_attempt(body.lease.to_lease(), body.outcome.to_outcome(),
                                         _logs(body.logs), service.clock.now())
    if ended:
        service.notifier.notify()  # a retry or failure handler may be due now
        if body.outcome.retry_at is not None:
            service.notifier.due(body.outcome.retry_at)
    return w.Finished(recorded=ended is not None, status=ended)


@router.post("/release", summary="Hand a leased run back to the queue")
def release_run(body: w.Release, request: Request) -> w.Released:
    service = service_of(request)
    status = service.store.release_run(body.lease.to_lease(), service.clock.now(),
                                       logs=_logs(body.logs))
    if status is not None:  # queued again, or room freed in a limited queue
        service.notifier.notify()
    return w.Released(recorded=status is not None, status=status)


@router.post("/renew", summary="Extend the leases of the runs a worker executes")
def renew_leases(body: w.RenewLeases, request: Request) -> w.Renewed:
    service = service_of(request)
    logs = {run_id: _logs(records) for run_id, records in body.logs.items() if records}
    cancels, lost = service.store.renew_leases([lease.to_lease() for lease in body.leases],
                                               service.clock.now(), body.lease_seconds,
                                               logs or None)
    return w.Renewed(cancel_requested=sorted(cancels), lost=sorted(lost))


@router.post("/jobs", summary="Record the queue and `max_attempts` of the worker's jobs")
def publish_jobs(body: w.PublishJobs, request: Request) -> w.Done:
    service = service_of(request)
    service.store.publish_jobs([(item.job, item.queue, item.max_attempts) for item in body.jobs],
                               service.clock.now())
    return w.Done()


@router.post("/schedules", summary="Create, update or remove the schedules of `@job(cron=...)`")
def sync_schedules(body: w.SyncSchedules, request: Request) -> w.Done:
    service = service_of(request)
    wanted = {
        code_schedule_id(item.job): (item.job, parse_cron(item.cron, item.timezone), item.queue,
                                     item.overlap)
        for item in body.schedules
    }
    unwanted = [code_schedule_id(job) for job in body.without]
    service.store.sync_code_schedules(wanted, unwanted, service.clock.now())
    return w.Done()
