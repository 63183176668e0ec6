"""Remote workers: execute runs through ``stackshift server`` with an API key only.

``StackShift(api_key=..., base_url=...).worker()`` (and ``stackshift worker APP
--url URL --api-key KEY``) gives the same :class:`stackshift.worker.Worker`
as an embedded client: the same claim loop, heartbeat, replay and
checkpoints. Only its store differs: :class:`RemoteWorkerStore` has the
worker-facing methods of the database store, each one request to the
``/v1/worker`` endpoints (see :mod:`stackshift.server.worker_routes`), where
the server applies it with the same conditional writes.

Maintenance (the lease rescuer, timers, schedules, retention) runs in the
server process, under the store's leader election; a remote worker never leads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import httpx

from .errors import AuthenticationError, LeaseLost, RemoteError, ValidationError
from .flowcontrol import FlowControl
from .jobs import JobRegistry
from .models import Event
from .processes import ProcessId
from .runlogs import fields_line
from .server import worker_schemas as w
from .service import Notifier
from .settings import server_setting
from .store.base import ClaimedRun, ExpiredLease, Lease, LogWrite, Outcome, StepWrite
from .store.flow import NO_RULES, ClaimRules
from .worker.invocation import LogsWrittenAhead, PendingLogs

if TYPE_CHECKING:
    from .client import StackShift
    from .remote import RemoteService
    from .state import AsyncState, State

log = logging.getLogger("stackshift.worker")

#: How long one claim may wait on the server while nothing is due. Short, so that
#: a stopping worker is never held up for long by its own idle claim.
CLAIM_WAIT_SECONDS = 2.0

#: First and longest pause between tries of a checkpoint or an ending that found
#: the server refusing connections (see RemoteWorkerStore._post).
UNREACHABLE_PAUSE = 0.05
UNREACHABLE_MAX_PAUSE = 1.0

#: First and longest pause between tries to reach the server when a worker starts
#: (see RemoteWorkerService.prepare_worker).
START_PAUSE = 0.5
START_MAX_PAUSE = 5.0

#: Bytes of log records (as JSON) one checkpoint or ending carries at most: half the
#: server's default request body limit (1 MiB), the rest left to the step result.
#: Records over it are dropped from the middle (see :func:`sent_logs`).
LOG_BUDGET = 512 * 1024


def sent_size(record: LogWrite) -> int:
    """Bytes ``record`` takes in a request's list of log records."""
    return _body_size(w.LogBody.of(record))


def _body_size(body: dict[str, Any]) -> int:
    return len(json.dumps(body, ensure_ascii=False).encode(errors="surrogatepass")) + 1


class BoundedLogs(PendingLogs):
    """A remote invocation's log records until its next checkpoint, within ``budget``
    bytes (as :func:`sent_size` counts them).

    A handler that logs in a loop between two checkpoints must not grow its
    worker's memory without bound, when the checkpoint would send no more than
    ``budget`` bytes of them anyway (:func:`sent_logs`). Over the budget, the
    first records are kept up to half of it and the latest ones up to the other
    half; those between them are counted, and :meth:`take` puts one warning in
    their place saying how many records (and bytes) were dropped, at the time
    and step of the first one dropped. What it gives fits one request whole.
    """

    def __init__(self, budget: int = LOG_BUDGET) -> None:
        self.budget = budget
        self.half = (budget - 1024) // 2  # 1 KiB: the warning's own room, as in sent_logs
        self._lock = threading.Lock()
        #: the warning the last take() put among its records, with what it stands
        #: for (first record dropped, count, bytes): put back, those are dropped again
        self._taken: tuple[LogWrite, LogWrite, int, int] | None = None
        self._clear()

    def _clear(self) -> None:
        self._head: list[LogWrite] = []
        self._head_bytes = 0
        self._head_full = False
        self._tail: deque[tuple[LogWrite, int]] = deque()
        self._tail_bytes = 0
        self._dropped = 0
        self._dropped_bytes = 0
        self._first_dropped: LogWrite | None = None

    @property
    def held_bytes(self) -> int:
        """Bytes of the records held now (the warning to come aside)."""
        return self._head_bytes + self._tail_bytes

    def add(self, record: LogWrite) -> None:
        size = sent_size(record)
        with self._lock:
            self._add(record, size)

    def _add(self, record: LogWrite, size: int) -> None:
        if not self._head_full:
            if self._head_bytes + size <= self.half:
                self._head.append(record)
                self._head_bytes += size
                return
            self._head_full = True  # the first records end here, the latest begin
        self._tail.append((record, size))
        self._tail_bytes += size
        while self._tail_bytes > self.half:
            dropped, dropped_size = self._tail.popleft()
            self._tail_bytes -= dropped_size
            self._drop(dropped, 1, dropped_size)

    def _drop(self, first: LogWrite, count: int, size: int) -> None:
        """Count ``count`` records of ``size`` bytes, ``first`` the earliest, as
        dropped after the first records held."""
        self._head_full = True
        if self._first_dropped is None:
            self._first_dropped = first
        self._dropped += count
        self._dropped_bytes += size

    def take(self) -> list[LogWrite]:
        with self._lock:
            records = list(self._head)
            self._taken = None
            first = self._first_dropped
            if first is not None:
                warning = LogWrite(
                    first.at, "WARNING", log.name,
                    f"[... {self._dropped} log records ({self._dropped_bytes} bytes) dropped"
                    f" here: a remote worker holds at most {self.budget} bytes of a run's log"
                    " records not yet sent, the first and the latest ...]",
                    first.step, first.attempt)
                self._taken = (warning, first, self._dropped, self._dropped_bytes)
                records.append(warning)
            records.extend(record for record, _ in self._tail)
            self._clear()
        return records

    def put_back(self, records: Sequence[LogWrite]) -> None:
        """Hold ``records`` (taken, then not sent) again, ahead of those held now,
        within the budget as ever. The warning :meth:`take` put among them is not
        held as a record: the records it stands for are counted as dropped again."""
        if not records:
            return
        with self._lock:
            head, tail = self._head, self._tail
            first, count, size = self._first_dropped, self._dropped, self._dropped_bytes
            self._clear()
            for record in records:
                if self._taken is not None and record is self._taken[0]:
                    self._drop(*self._taken[1:])
                else:
                    self._add(record, sent_size(record))
            for record in head:
                self._add(record, sent_size(record))
            if first is not None:
                self._drop(first, count, size)
            for record, record_size in tail:
                self._add(record, record_size)
            self._taken = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._head) + len(self._tail)


class LogsSentAhead(LogsWrittenAhead):
    """A remote worker's log records, held within ``budget`` as :class:`BoundedLogs`
    holds them, so that a handler logging in a loop never grows its worker's
    memory without bound.

    While ``sending()`` (the server takes records with lease renewals), they are
    sent ahead of checkpoints as a database worker writes them: with each renewal,
    and at once from the thread that logs once ``FLUSH_RECORDS`` records or a
    quarter of ``budget`` in bytes wait, well before any is dropped. Otherwise
    (a server from an earlier version) they wait for the next checkpoint."""

    def __init__(self, write: Callable[[list[LogWrite]], None],
                 budget: int = LOG_BUDGET, sending: Callable[[], bool] = lambda: True,
                 fields: Callable[[], bool] = lambda: True) -> None:
        super().__init__(write)
        self._held = BoundedLogs(budget)
        self._flush_bytes = budget // 4
        self._sending = sending
        self._fields = fields

    def _hold(self, record: LogWrite) -> bool:
        if record.fields is not None and not self._fields():
            record = with_fields_in_message(record)
        self._held.add(record)
        return (len(self._held) >= self.FLUSH_RECORDS
                or self._held.held_bytes >= self._flush_bytes) and self._sending()

    @contextlib.contextmanager
    def ahead(self) -> Iterator[list[LogWrite]]:
        if not self._sending():
            yield []
            return
        with super().ahead() as records:
            yield records

    def _swap(self) -> list[LogWrite]:
        return self._held.take()

    def _put_back(self, records: list[LogWrite]) -> None:
        self._held.put_back(records)

    def __len__(self) -> int:
        return len(self._held)


def with_fields_in_message(record: LogWrite) -> LogWrite:
    """``record`` for a server that takes no fields (one from an earlier version):
    its fields at the end of its message, as ``name=value`` pairs."""
    body = w.LogBody.of(record)
    _fields_in_messages([body])
    return dataclasses.replace(record, message=body["message"], fields=None)


def _fields_refused(error: Exception) -> bool:
    """Whether ``error`` is a server's refusal of log records' ``fields`` as unknown."""
    return ".fields" in str(error) and "not permitted" in str(error)


def _fields_in_messages(bodies: list[dict[str, Any]]) -> bool:
    """Put the fields of the log record ``bodies`` (as :meth:`LogBody.of` makes
    them) at the end of their messages, as :func:`with_fields_in_message` does;
    whether any had fields."""
    found = False
    for body in bodies:
        fields = body.pop("fields", None)
        if fields is not None:
            found = True
            joint = "\n" if "\n" in body["message"] else " "
            body["message"] += joint + fields_line(json.loads(fields))
    return found


def takes_logs_ahead(registered: Any) -> bool:
    """Whether the server's answer to ``POST /v1/worker/register`` says its lease
    renewals take log records (a server from an earlier version says nothing and
    refuses them)."""
    return isinstance(registered, dict) and registered.get("renewTakesLogs") is True


def sent_logs(logs: Sequence[LogWrite], budget: int = LOG_BUDGET) -> list[dict[str, Any]]:
    """The bodies of ``logs`` as one request sends them, within ``budget`` bytes.

    A handler that logs more than that between two checkpoints must not fail its
    step with a request over the server's body limit (413, on every try). Over
    the budget, the first records are sent up to half of it and the latest ones
    up to the other half; the ones between them are replaced by one warning
    saying how many were dropped, at the time and step of the first one dropped.
    """
    return _sent_logs(logs, budget)[0]


def _sent_logs(logs: Sequence[LogWrite],
               budget: int) -> tuple[list[dict[str, Any]], int]:
    """:func:`sent_logs`, and the bytes those bodies take."""
    bodies = [w.LogBody.of(record) for record in logs]
    sizes = [_body_size(body) for body in bodies]
    total = sum(sizes)
    if total <= budget:
        return bodies, total
    half = (budget - 1024) // 2  # 1 KiB: the warning's own room
    first = used = 0
    while used + sizes[first] <= half:
        used += sizes[first]
        first += 1
    last, used = len(bodies), 0
    while last > first and used + sizes[last - 1] <= half:
        used += sizes[last - 1]
        last -= 1
    dropped = logs[first:last]
    warning = LogWrite(
        dropped[0].at, "WARNING", log.name,
        f"[... {len(dropped)} log records ({sum(sizes[first:last])} bytes) dropped here:"
        f" a remote worker sends at most {budget} bytes of log records with one checkpoint,"
        " the first and the latest ...]", dropped[0].step, dropped[0].attempt)
    kept = sum(sizes[:first]) + sum(sizes[last:]) + sent_size(warning)
    return [*bodies[:first], w.LogBody.of(warning), *bodies[last:]], kept


def _log_batches(logs: Mapping[str, Sequence[LogWrite]],
                 budget: int = LOG_BUDGET) -> list[dict[str, list[dict[str, Any]]]]:
    """``logs`` (run id -> records) as run id -> record bodies, in batches of
    runs whose records fit ``budget`` bytes together (a run's own within it:
    :func:`sent_logs`)."""
    batches: list[dict[str, list[dict[str, Any]]]] = []
    used = budget
    for run_id, records in logs.items():
        if not records:
            continue
        bodies, size = _sent_logs(records, budget)
        if used + size > budget:
            batches.append({})
            used = 0
        batches[-1][run_id] = bodies
        used += size
    return batches


class RemoteWorkerStore:
    """The execution operations of the store, as requests to ``/v1/worker``."""

    def __init__(self, remote: RemoteService, *, claim_wait: float = CLAIM_WAIT_SECONDS) -> None:
        self._remote = remote
        self.claim_wait = claim_wait
        #: set when the worker stops: claims stop waiting and hand back what they got
        self.closing = threading.Event()
        #: the server's lease renewals take log records (its answer to the registration)
        self.renew_takes_logs = False
        #: log records may carry fields (the answer to the registration too)
        self.logs_take_fields = False

    def pending_logs(self, write: Callable[[list[LogWrite]], None]) -> PendingLogs:
        """Where an invocation keeps its log records not yet sent, within the budget
        one request carries: sent ahead of checkpoints with lease renewals
        (``write``) while the server takes them, held until the next checkpoint
        otherwise (:class:`LogsSentAhead`)."""
        return LogsSentAhead(write, sending=lambda: self.renew_takes_logs,
                             fields=lambda: self.logs_take_fields)

    def _post(self, path: str, body: dict[str, Any], timeout: float | None = None,
              *, until_reached: bool = False) -> Any:
        """POST to ``/v1/worker/{path}``.

        ``until_reached``: while the server refuses connections (it is
        restarting), try again for up to the request timeout. The request never
        left, so this is safe for any write; without it, a checkpoint or an
        attempt's ending made during a restart of a few seconds would fail the
        attempt of a live worker and leave its run leased until the lease ran out.
        """
        deadline = time.monotonic() + self._remote.timeout
        pause = UNREACHABLE_PAUSE
        while True:
            try:
                return self._remote._call("POST", f"/v1/worker/{path}", json=body,
                                          timeout=timeout).json()
            except httpx.ConnectError:
                if not until_reached or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, UNREACHABLE_MAX_PAUSE)

    def _leased(self, lease: Lease, path: str, body: dict[str, Any]) -> Any:
        try:
            return self._post(path, body, until_reached=True)
        except RemoteError as exc:
            if exc.code == "lease_lost":
                raise LeaseLost(lease.run_id) from None
            raise
        except ValidationError as exc:
            if not (_fields_refused(exc) and _fields_in_messages(body.get("logs") or [])):
                raise
        # A server from an earlier version now answers in place of the one this
        # worker registered with, and refused the records' fields (nothing was
        # written): they go in the messages from now on.
        self.logs_take_fields = False
        return self._leased(lease, path, body)

    # -- the worker registry ---------------------------------------------------------------

    def register_worker(self, worker_id: str, hostname: str, pid: int, jobs: Sequence[str],
                        queues: Sequence[str] | None, concurrency: int, now: float,
                        process: ProcessId | None = None) -> None:
        # With its process, when known: the server has no view of the worker's
        # machine, but other workers on that machine do (see take_over_ended).
        answer = self._post("register", {
            "workerId": worker_id, "hostname": hostname, "pid": pid, "jobs": list(jobs),
            "queues": list(queues) if queues else None, "concurrency": concurrency,
            "process": None if process is None else {"space": process.space,
                                                     "started": process.started},
        })
        self.renew_takes_logs = takes_logs_ahead(answer)
        self.logs_take_fields = isinstance(answer, dict) and answer.get("logsTakeFields") is True

    def unregister_worker(self, worker_id: str) -> None:
        self._post("unregister", {"workerId": worker_id})

    def detached(self) -> str | None:
        """Never: the server holds the database."""
        return None

    def changed(self) -> bool:
        """Always: the claim itself waits on the server until work may be due."""
        return not self.closing.is_set()

    def expect_writes(self, count: int, within: float) -> None:
        """Nothing to do here: each write is a request of its own, and the server
        lets concurrent requests share its transactions."""

    def try_lead(self, worker_id: str, silence: float = 0.0) -> bool:
        """Never: the server maintains for its remote workers."""
        return False

    def resign(self, worker_id: str) -> None:
        """Nothing is held."""

    # -- executing ---------------------------------------------------------------------------

    def claim_runs(self, worker_id: str, jobs: Sequence[str], limit: int, lease_seconds: float,
                   now: float, queues: Sequence[str] | None = None,
                   rules: ClaimRules = NO_RULES) -> list[ClaimedRun]:
        if limit <= 0 or not jobs or (queues is not None and not queues):
            return []
        wait = 0.0 if self.closing.is_set() else self.claim_wait
        answer = w.ClaimedRuns.model_validate(self._post("claim", {
            "workerId": worker_id, "jobs": list(jobs), "limit": limit,
            "leaseSeconds": lease_seconds, "queues": list(queues) if queues else None,
            "keyLimits": dict(rules.key_limits), "onFailure": dict(rules.on_failure),
            "waitSeconds": wait,
        }, timeout=self._remote.timeout + wait))
        claimed = [
            ClaimedRun(
                run=item.run.to_model(),
                lease=Lease(item.run.id, worker_id, item.attempt),
                retry_base=item.retry_base,
                steps={step.key: step.to_model() for step in item.steps},
                new_attempt=item.new_attempt,
            )
            for item in answer.items
        ]
        if claimed and self.closing.is_set():  # stopped while the claim was waiting
            for item in claimed:
                self.release_run(item.lease, now)
            return []
        return claimed

    def save_step(self, lease: Lease, step: StepWrite, logs: Sequence[LogWrite], now: float,
                  lease_seconds: float) -> bool:
        answer = self._leased(lease, "steps", {
            "lease": w.LeaseBody.of(lease), "step": w.StepBody.of(step),
            "logs": sent_logs(logs), "leaseSeconds": lease_seconds,
        })
        return bool(w.StepSaved.model_validate(answer).cancel_requested)

    def suspend_for_sleep(self, lease: Lease, step: StepWrite, until: float,
                          logs: Sequence[LogWrite], now: float) -> None:
        self._leased(lease, "sleep", {
            "lease": w.LeaseBody.of(lease), "step": w.StepBody.of(step), "until": until,
            "logs": sent_logs(logs),
        })

    def wait_for_event(self, lease: Lease, step: StepWrite, name: str, correlation_key: str,
                       timeout_at: float, on_timeout: str,
                       logs: Sequence[LogWrite], now: float,
                       lease_seconds: float) -> Event | None:
        answer = w.EventTaken.model_validate(self._leased(lease, "waits", {
            "lease": w.LeaseBody.of(lease), "step": w.StepBody.of(step), "name": name,
            "correlationKey": correlation_key, "timeoutAt": timeout_at,
            "onTimeout": on_timeout,
            "logs": sent_logs(logs), "leaseSeconds": lease_seconds,
        }))
        return None if answer.event is None else answer.event.to_model()

    def finish_attempt(self, lease: Lease, outcome: Outcome, logs: Sequence[LogWrite],
                       now: float, *, expired_before: float | None = None) -> str | None:
        answer = w.Finished.model_validate(self._post("finish", {
            "lease": w.LeaseBody.of(lease), "outcome": w.OutcomeBody.of(outcome),
            "logs": sent_logs(logs),
        }, until_reached=True))
        if not answer.recorded:
            return None
        return answer.status or outcome.status  # (a server of an earlier version says none)

    def release_run(self, lease: Lease, now: float,
                    logs: Sequence[LogWrite] = ()) -> str | None:
        body: dict[str, Any] = {"lease": w.LeaseBody.of(lease)}
        if logs:
            body["logs"] = sent_logs(logs)
        try:
            answer = self._post("release", body)
        except ValidationError as exc:
            if not logs:
                raise
            if _fields_refused(exc) and _fields_in_messages(body["logs"]):
                self.logs_take_fields = False  # as in _leased
            elif "logs" in str(exc) and "not permitted" in str(exc):
                # A server from an earlier version: its release takes no records,
                # which are lost with the hand-back, as they were then.
                del body["logs"]
            else:
                raise
            answer = self._post("release", body)
        released = w.Released.model_validate(answer)
        if not released.recorded:
            return None
        return released.status or "queued"  # a server older than the field: queued

    def renew_leases(self, leases: Sequence[Lease], now: float, lease_seconds: float,
                     logs: Mapping[str, Sequence[LogWrite]] | None = None,
                     ) -> tuple[set[str], set[str]]:
        """One request renewing ``leases`` with as many runs' ``logs`` as fit
        ``LOG_BUDGET``; one more for each further such batch, renewing those runs
        again with their records.

        Should a later request fail, the lists of records already sent are
        emptied before it raises, so that what the caller puts back (see
        ``LogsWrittenAhead.ahead``) is only what was not written."""
        if not leases:
            return set(), set()
        batches = _log_batches(logs or {})
        by_run = {lease.run_id: lease for lease in leases}
        cancels: set[str] = set()
        lost: set[str] = set()
        for n, batch in enumerate(batches or [{}]):
            renewed = leases if n == 0 else [by_run[run_id] for run_id in batch]
            body: dict[str, Any] = {"leases": [w.LeaseBody.of(lease) for lease in renewed],
                                    "leaseSeconds": lease_seconds}
            if batch:
                body["logs"] = batch
            try:
                try:
                    answer = w.Renewed.model_validate(self._post("renew", body))
                except ValidationError as exc:
                    if not (_fields_refused(exc) and any(
                            [_fields_in_messages(bodies) for bodies in batch.values()])):
                        raise
                    self.logs_take_fields = False  # as in _leased
                    answer = w.Renewed.model_validate(self._post("renew", body))
            except ValidationError as exc:
                if batch and "logs" in str(exc) and "not permitted" in str(exc):
                    # A server from an earlier version now answers in place of the
                    # one this worker registered with: the records go with
                    # checkpoints again (until a registration says otherwise).
                    self.renew_takes_logs = False
                raise
            for run_id in batch:
                records = (logs or {})[run_id]
                if isinstance(records, list):
                    del records[:]  # written: not to be put back, should a later batch fail
            cancels.update(answer.cancel_requested)
            lost.update(answer.lost)
        return cancels, lost

    # -- workers whose process ended on this worker's machine ------------------------------

    def workers_in_space(self, space: str, worker_id: str) -> list[tuple[str, int, int]]:
        answer = w.PeersFound.model_validate(self._post("peers", {"workerId": worker_id,
                                                                  "space": space}))
        return [(peer.worker_id, peer.pid, peer.started) for peer in answer.workers]

    def leases_held_by(self, worker_id: str, limit: int = 100) -> list[ExpiredLease]:
        answer = w.HeldLeases.model_validate(self._post("held", {"workerId": worker_id}))
        return [ExpiredLease(Lease(h.run_id, h.worker_id, h.attempt), h.job, h.attempts_used,
                             h.max_attempts)
                for h in answer.leases[:limit]]

    # -- maintenance: the server's (see the module docstring) --------------------------------

    def expired_leases(self, now: float, limit: int = 100) -> list[Any]:
        return []

    def next_due_at(self) -> float | None:
        return None

    def next_schedule_tick(self) -> float | None:
        return None

    def fire_timers(self, now: float, limit: int = 500) -> list[str]:
        return []

    def promote_due(self, now: float, limit: int = 500) -> int:
        return 0

    def age_ready_runs(self, before: float) -> int:
        return 0


class _StoppingNotifier(Notifier):
    """In-process wake-ups; a worker unsubscribing (it is stopping) ends waiting claims."""

    def __init__(self, store: RemoteWorkerStore) -> None:
        super().__init__()
        self._store = store

    def subscribe(self, listener: Any) -> None:
        self._store.closing.clear()
        super().subscribe(listener)

    def unsubscribe(self, listener: Any) -> None:
        self._store.closing.set()
        super().unsubscribe(listener)


class RemoteWorkerService:
    """What a :class:`~stackshift.worker.Worker` and its invocations use of a service."""

    def __init__(self, remote: RemoteService, registry: JobRegistry) -> None:
        self.remote = remote
        self.registry = registry
        self.settings = remote.settings
        self.clock = remote.clock
        self.store = RemoteWorkerStore(remote)
        self.notifier = _StoppingNotifier(self.store)

    def claim_rules(self) -> ClaimRules:
        return FlowControl.claim_rules(cast(Any, self))

    def raised_by(self, setting: str) -> str:
        """How the limit ``setting`` is raised: it is the server's, not the worker's."""
        return server_setting(setting)

    def prepare_worker(self, stopping: threading.Event) -> bool:
        """:meth:`publish`: a worker's first requests.

        While the server cannot be reached (not started yet, restarting), try
        again, ``START_PAUSE`` doubling up to ``START_MAX_PAUSE`` apart, with one
        warning per failed try; ``False`` if ``stopping`` is set first. What
        waiting cannot fix (a refused API key, any other error answer) raises
        at once.
        """
        pause = START_PAUSE
        while not stopping.is_set():
            try:
                self.publish()
                return True
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                log.warning("server %s not reachable (%s: %s); trying again in %gs",
                            self.remote.base_url, type(exc).__name__, exc, pause)
            except AuthenticationError as exc:
                raise AuthenticationError(
                    f"the server at {self.remote.base_url} refused the API key: {exc}"
                ) from None
            if stopping.wait(pause):
                break
            pause = min(pause * 2, START_MAX_PAUSE)
        return False

    def publish(self) -> None:
        """Send the registry's schedules and job defaults, and take the server's
        limits: step and job results are sized against the server's, not this
        process's defaults."""
        self.sync_code_schedules()
        self.publish_jobs()
        self.settings = self.remote.limits()

    def sync_code_schedules(self) -> None:
        """Send the ``@job(cron=...)`` schedules of the registry to the server."""
        schedules: list[dict[str, Any]] = []
        for job in self.registry:
            if job.cron is not None:
                schedules.append({"job": job.name, "cron": job.cron, "timezone": job.timezone,
                                  "queue": job.queue})
                if job.overlap != "allow":  # a server without overlaps takes the rest
                    schedules[-1]["overlap"] = job.overlap
        without = [job.name for job in self.registry if job.cron is None]
        self.store._post("schedules", {"schedules": schedules, "without": without})

    def publish_jobs(self) -> None:
        """Send the queue and ``max_attempts`` of each job of the registry to the
        server, a job that names no queue on the default queue (the server's, as
        this worker's settings are), as an embedded worker records them."""
        default_queue = self.settings.default_queue
        self.store._post("jobs", {"jobs": [
            {"job": job.name, "queue": job.queue or default_queue,
             "maxAttempts": job.max_attempts} for job in self.registry]})

    def fire_schedules(self, now: float) -> list[str]:
        return []  # the server fires schedules

    def apply_retention(self, now: float) -> bool:
        return False  # the server applies retention


class RemoteWorkerApp:
    """The parts of a client a :class:`~stackshift.worker.Worker` uses, for a remote client."""

    def __init__(self, app: StackShift, remote: RemoteService) -> None:
        self._registry = app._registry
        self._service = RemoteWorkerService(remote, app._registry)
        self.state: State = app.state
        self.state_async: AsyncState = app.state_async
