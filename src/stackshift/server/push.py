"""Push mode, the server's half: invoke the registered handler routes.

For every registered endpoint, :class:`Dispatcher` claims due runs of the
endpoint's jobs (at most its ``concurrency`` at a time), records a delivery,
and posts the claimed run to the route, signed (see :mod:`stackshift.signing`).
The route executes the handler and makes each step, and the attempt's ending,
durable through ``/v1/worker/...`` as a remote worker does, before it answers.

While a request is open the dispatcher renews the run's lease. Each claim
leases under an owner id of its own (``<dispatcher>.<n>``), so a run handed
back and delivered again can never be checkpointed by the earlier request.
When a route cannot be reached, answers with an error, or answers with anything
but its acknowledgement of the run (a URL that is not the route), its run is
handed back (the next delivery replays the completed steps) and the endpoint is
left alone for a while, longer after each failure in a row, up to ``MAX_BACKOFF``.
A URL the server cannot call at all (one registered with an earlier version,
such as ``http://host:abc/``) fails the attempt instead, as a handler's error
does: the run is retried while its ``max_attempts`` allow, then fails.
A ``504`` (a proxy's timeout) or no answer in ``request_timeout`` hands nothing
back: the route may still be executing the run, and it renews the lease itself.
So does a server that stops (SIGTERM): it hands back only the runs it claimed
but had not sent yet, and leaves those sent with their routes, which finish
them through the next server. If the server itself dies, leases run out and
the rescuer retries the runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import partial

import httpx

from ..checks import check_endpoint_url
from ..engine.outcomes import unsent
from ..errors import ValidationError
from ..ids import new_id
from ..models import Endpoint
from ..service import Service
from ..signing import sign
from ..store.base import ClaimedRun, Lease
from ..store.flow import ClaimRules
from ..worker.invocation import Retrying, warn_of
from ..worker.threads import HandlerThreads
from ..worker.worker import Worker
from . import push_schemas as p
from . import schemas as s
from . import worker_schemas as w
from .worker_routes import ClaimSignal

log = logging.getLogger("stackshift.server")

#: Seconds between reloads of the endpoint list (registrations made elsewhere).
REFRESH_SECONDS = 1.0
#: First and longest pause of an endpoint after failed deliveries.
MIN_BACKOFF = 0.25
MAX_BACKOFF = 5.0
#: Seconds a probe of a route that could not be reached waits for its answer.
PROBE_SECONDS = 2.0
#: Deliveries older than this are deleted; their signatures expired long before.
DELIVERY_RETENTION = 3600.0
#: How a delivery ended: the route answered for the run; it failed (hand the run
#: back); or it is not known whether the route still executes it (a timeout).
DONE, FAILED, UNKNOWN = "done", "failed", "unknown"
#: The error type of an attempt failed because its endpoint's URL cannot be called.
UNDELIVERABLE = "UndeliverableEndpointURL"


@dataclass
class _Route:
    endpoint: Endpoint
    in_flight: dict[str, Lease] = field(default_factory=dict)
    #: the runs of in_flight whose request has gone (or is going) to the route
    sent: set[str] = field(default_factory=set)
    failures: int = 0
    paused_until: float = 0.0
    #: the endpoint was removed: no new claims; kept until its in-flight runs end
    removed: bool = False
    #: the last delivery could not reach the route: it is probed before a claim
    unreachable: bool = False


class Dispatcher:
    """Delivers runs to the handler routes registered with ``/v1/endpoints``."""

    def __init__(self, service: Service, signal: ClaimSignal, *, lease: float = 30.0,
                 request_timeout: float = 900.0, transport: httpx.BaseTransport | None = None,
                 ) -> None:
        self.service = service
        self.signal = signal
        self.id = new_id("wkr")
        self.lease_seconds = lease
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._claims = 0
        self._served: tuple[list[str], int] = ([], 0)
        self._registered = False  # in the worker registry
        self._reload = False  # an endpoint was removed here: reload the endpoints
        self._outages = Retrying(log, Worker.OUTAGE_SAID_EVERY)
        service.endpoint_watchers.append(self._endpoints_removed)
        # Daemon threads: a request still open when the server stops does not keep
        # the process from exiting (the route finishes the run; see stop()).
        self._threads = HandlerThreads(64, "stackshift-push")
        self._http = httpx.Client(
            timeout=httpx.Timeout(request_timeout, connect=5.0),
            headers={"content-type": "application/json", "user-agent": "stackshift-server"},
            # A route mounted at /path may redirect to /path/ (307 keeps the body).
            follow_redirects=True,
            transport=transport,
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Dispatcher:
        if self._thread is None:
            self._stop.clear()
            self.signal.ensure_watching()
            self._thread = threading.Thread(target=self._loop, name="stackshift-dispatch",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop delivering and leave the worker registry.

        Runs claimed but not sent yet are handed back to their queue. Runs whose
        request went to their route stay with it: the route executes them,
        renews their leases and records their endings itself (through the next
        server, if this one is gone by then); handing them back would have them
        delivered, and their current step run, a second time.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        unsent: list[Lease] = []
        with self._lock:
            for route in self._routes.values():
                for run_id in [r for r in route.in_flight if r not in route.sent]:
                    unsent.append(route.in_flight.pop(run_id))
        for lease in unsent:
            try:
                self.service.store.release_run(lease, self.service.clock.now())
            except Exception as exc:
                warn_of(log, exc, "push: could not hand back run %s", lease.run_id)
        self._threads.shutdown()
        self._http.close()
        try:
            self.service.store.unregister_worker(self.id)
        except Exception as exc:
            warn_of(log, exc, "push: could not unregister")

    # -- the loop ------------------------------------------------------------------------

    def _endpoints_removed(self) -> None:
        """An endpoint was removed through this server: reload before the next claim."""
        self._reload = True
        self.signal.bump()

    def _loop(self) -> None:
        next_refresh = next_renewal = next_purge = 0.0
        while not self._stop.is_set():
            seen = self.signal.generation
            try:
                now = time.monotonic()
                if now >= next_refresh or self._reload:
                    self._reload = False
                    next_refresh = now + REFRESH_SECONDS
                    self._refresh()
                if now >= next_renewal:
                    next_renewal = now + self.lease_seconds / 3
                    self._renew()
                if now >= next_purge:
                    next_purge = now + 60
                    self.service.store.purge_push_deliveries(
                        self.service.clock.now() - DELIVERY_RETENTION)
                busy = self._claim_all()
            except Exception as exc:
                self._outages.say("push: dispatch round", exc)
                busy = False
                self._stop.wait(1.0)
            if busy:
                continue
            # Sleep until a run may have become claimable, a delivery ends, or a
            # fallback tick (runs due by time, endpoints coming back).
            deadline = time.monotonic() + 0.25
            while (not self._stop.is_set() and self.signal.generation == seen
                   and time.monotonic() < deadline):
                time.sleep(0.005)

    def _refresh(self) -> None:
        endpoints = {e.id: e for e in self.service.store.list_endpoints(with_secrets=True)}
        with self._lock:
            for endpoint_id, route in list(self._routes.items()):
                if endpoint_id not in endpoints:
                    # Removed: no new deliveries; the ones in flight finish first.
                    route.removed = True
                    if not route.in_flight:
                        del self._routes[endpoint_id]
            for endpoint_id, endpoint in endpoints.items():
                known = self._routes.get(endpoint_id)
                if known is None:
                    self._routes[endpoint_id] = _Route(endpoint)
                else:
                    known.endpoint, known.removed = endpoint, False
            served = (sorted({job for e in endpoints.values() for job in e.jobs}),
                      sum(e.concurrency for e in endpoints.values()))
        if served != self._served:
            self._served = served
            self._register()

    def _register(self) -> None:
        """Show the dispatcher in the worker registry (the dashboard's workers) while
        it serves some job; once the last endpoint is removed, leave it at once (its
        jobs would otherwise show it live until its heartbeat ran out)."""
        jobs, concurrency = self._served
        if jobs:
            self.service.store.register_worker(self.id, socket.gethostname(), os.getpid(), jobs,
                                               None, concurrency, self.service.clock.now())
            self._registered = True
        elif self._registered:
            self.service.store.unregister_worker(self.id)
            self._registered = False

    def _renew(self) -> None:
        """Renew the leases of the runs in flight, and the registry heartbeat."""
        with self._lock:
            leases = [lease for route in self._routes.values()
                      for lease in route.in_flight.values()]
        if leases:
            self.service.store.renew_leases(leases, self.service.clock.now(),
                                            self.lease_seconds)
        self._register()

    def _claim_all(self) -> bool:
        """Claim for every endpoint with free slots; whether any took a full batch."""
        busy = False
        now = time.monotonic()
        with self._lock:
            routes = [r for r in self._routes.values()
                      if r.paused_until <= now and not r.removed]
        for route in routes:
            endpoint = route.endpoint
            with self._lock:
                free = endpoint.concurrency - len(route.in_flight)
            if free <= 0 or endpoint.id not in self._routes:
                continue
            if route.unreachable and not self._reachable(route):
                continue
            self._claims += 1
            owner = f"{self.id}.{self._claims}"
            claimed = self.service.store.claim_runs(
                owner, endpoint.jobs, free, self.lease_seconds, self.service.clock.now(),
                None, ClaimRules(endpoint.key_limits, endpoint.on_failure))
            for item in claimed:
                with self._lock:
                    route.in_flight[item.run.id] = item.lease
                self._threads.submit(partial(self._deliver, route, item))
            busy = busy or (bool(claimed) and len(claimed) == free)
        return busy

    # -- one delivery --------------------------------------------------------------------

    def _deliver(self, route: _Route, claimed: ClaimedRun) -> None:
        endpoint = route.endpoint
        lease = claimed.lease
        outcome = FAILED
        try:
            try:
                check_endpoint_url(endpoint.url)
            except ValidationError as exc:
                # A URL registered with an earlier version, which checked less: no
                # delivery to it can ever succeed, so handing the run back would
                # deliver it again without end. The attempt fails instead.
                self._fail_undeliverable(claimed, f"endpoint {endpoint.id}: {exc}; register "
                                                  f"the route again with a URL the server "
                                                  f"can call")
                return
            delivery_id = new_id("dlv")
            self.service.store.insert_push_delivery(delivery_id, endpoint.id, lease.run_id,
                                                    lease.attempt, self.service.clock.now())
            body = p.Delivery(
                delivery_id=delivery_id, endpoint_id=endpoint.id, worker_id=lease.worker_id,
                lease_seconds=self.lease_seconds,
                claimed=w.ClaimedRun(
                    run=s.Run.of(claimed.run), attempt=lease.attempt,
                    retry_base=claimed.retry_base, new_attempt=claimed.new_attempt,
                    steps=[s.Step.of(step) for step in claimed.steps.values()]),
                logs_take_fields=True,
            ).model_dump_json(by_alias=True).encode()
            assert endpoint.secret is not None
            headers = sign(endpoint.secret, body, time.time())
            with self._lock:
                if self._stop.is_set() or lease.run_id not in route.in_flight:
                    return  # stopping: not sent, so handed back (here or by stop())
                route.sent.add(lease.run_id)
            response = self._http.post(endpoint.url, content=body, headers=headers)
            if response.is_success and _acknowledges(response, lease):
                outcome = DONE
            elif response.status_code == 504:
                outcome = UNKNOWN
                log.warning("push: %s answered 504 (a proxy's timeout) for run %s: the route "
                            "may still be executing it, so the run stays with it until its "
                            "lease runs out", endpoint.url, lease.run_id)
            elif not response.is_success:
                log.warning("push: %s answered %d for run %s: %s", endpoint.url,
                            response.status_code, lease.run_id, _reason(response))
            else:
                log.warning("push: %s answered %d for run %s, but not as a handler route "
                            "does (is it the route's URL?): %s", endpoint.url,
                            response.status_code, lease.run_id, response.text[:200])
        except httpx.InvalidURL as exc:  # as above, for a URL the check let through
            self._fail_undeliverable(claimed, f"endpoint {endpoint.id}: url "
                                              f"{endpoint.url!r} is not a URL the server "
                                              f"can call: {exc}")
        except httpx.ReadTimeout:
            outcome = UNKNOWN
            log.warning("push: %s did not answer for run %s in time: the route may still be "
                        "executing it, so the run stays with it until its lease runs out",
                        endpoint.url, lease.run_id)
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            # The request went out whole, and the connection closed before its answer:
            # the application died with it (it answers nothing now: the run is handed
            # back), or a proxy cut it while the route executes the run (as after a
            # timeout, the run stays with the route rather than run twice at once).
            if self._answers(route):
                outcome = UNKNOWN
                log.warning("push: the connection to %s closed before its answer for run %s"
                            " (%s), and the route answers: it may still be executing the"
                            " run, so the run stays with it until its lease runs out",
                            endpoint.url, lease.run_id, exc)
            else:
                log.warning("push: could not deliver run %s to %s: %s", lease.run_id,
                            endpoint.url, exc)
                with self._lock:
                    route.unreachable = True
        except httpx.HTTPError as exc:
            log.warning("push: could not deliver run %s to %s: %s", lease.run_id,
                        endpoint.url, exc)
            if isinstance(exc, httpx.TransportError):
                with self._lock:
                    route.unreachable = True
        except Exception:
            log.exception("push: delivering run %s failed", lease.run_id)
        finally:
            self._ended(route, lease, outcome)

    @staticmethod
    def _back_off(route: _Route) -> None:
        """Leave the route alone for a while, longer after each failure in a row."""
        route.failures += 1
        pause = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (route.failures - 1))
        route.paused_until = time.monotonic() + pause

    def _reachable(self, route: _Route) -> bool:
        """Whether a route the last delivery could not reach answers now: any answer
        to a plain GET (its 401 or 405) will do. Probed before a run is claimed for
        it, so that an application that is down costs its runs no claim and hand-back
        each time (two timeline entries a run, every few seconds, for as long as it
        is down)."""
        if not self._answers(route):
            with self._lock:
                self._back_off(route)
            return False
        with self._lock:
            route.unreachable = False
        return True

    def _answers(self, route: _Route) -> bool:
        """Whether the route's URL gives any answer to a plain GET now."""
        try:
            self._http.get(route.endpoint.url, timeout=PROBE_SECONDS)
        except httpx.HTTPError:
            return False
        return True

    def _fail_undeliverable(self, claimed: ClaimedRun, message: str) -> None:
        """Record the attempt of a run that could not be sent as failed, as a
        handler's error is: retried after the default backoff while the run's
        ``max_attempts`` allow, then failed (its failure handler, if any, starts)."""
        lease = claimed.lease
        log.warning("push: could not deliver run %s: %s", lease.run_id, message)
        now = self.service.clock.now()
        outcome = unsent(UNDELIVERABLE, message, attempts_used=lease.attempt - claimed.retry_base,
                         max_attempts=claimed.run.max_attempts, now=now)
        if self.service.store.finish_attempt(lease, outcome, [], now):
            self.service.notifier.notify()
            if outcome.retry_at is not None:
                self.service.notifier.due(outcome.retry_at)

    def _ended(self, route: _Route, lease: Lease, outcome: str) -> None:
        with self._lock:
            held = route.in_flight.pop(lease.run_id, None) is not None
            sent = lease.run_id in route.sent
            route.sent.discard(lease.run_id)
            if self._stop.is_set() and sent:
                # Stopping: a request that failed may have failed because this
                # process is closing it, not because of the route, which may still
                # be executing the run. It keeps the run (see stop()).
                outcome = UNKNOWN
            if outcome == DONE:
                route.failures = 0
                route.paused_until = 0.0
                route.unreachable = False
            elif outcome == FAILED:
                self._back_off(route)
        if outcome == FAILED and held:
            # Conditional on the lease: a no-op when the route recorded an ending.
            try:
                self.service.store.release_run(lease, self.service.clock.now())
            except Exception as exc:
                warn_of(log, exc, "push: could not hand back run %s", lease.run_id)
        # UNKNOWN: the route renews the lease while it executes the run and records
        # its ending; if it is gone, the lease runs out and the rescuer retries.
        self.signal.bump()


def _acknowledges(response: httpx.Response, lease: Lease) -> bool:
    """Whether ``response`` is a handler route's answer for the run it was given.

    Any other success (a welcome page, a proxy's) ran nothing: the run is handed
    back at once instead of staying leased until its lease runs out.
    """
    try:
        done = response.json()
        return bool(done["runId"] == lease.run_id and done["attempt"] == lease.attempt)
    except (ValueError, KeyError, TypeError):
        return False


def _reason(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


__all__ = ["Dispatcher"]
