"""Maintenance in the server process, for the runs of remote workers.

Remote workers hold no database credentials, so they cannot rescue expired
leases, fire timers and schedules or apply retention: ``stackshift server``
does, in a background thread that runs the worker's own
:meth:`~stackshift.worker.Worker.maintain` whenever the store elects it (on
PostgreSQL one maintainer across every server and worker; on SQLite every
process maintains, all writes being conditional).

A run rescued here after its worker was lost is retried at once, as on a
worker (the lost attempt still counts against ``max_attempts``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, cast

from ..service import Service
from ..worker import Worker
from ..worker.invocation import Retrying, warn_of

if TYPE_CHECKING:
    from ..client import StackShift

log = logging.getLogger("stackshift.server")


class _ServiceApp:
    """The parts of a client :class:`Worker` reads, over the server's service."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._registry = service.registry


class Maintainer:
    """Runs maintenance rounds every ``interval`` seconds while this process leads."""

    def __init__(self, service: Service, interval: Any = "0.25s") -> None:
        self.service = service
        self.worker = Worker(cast("StackShift", _ServiceApp(service)),
                             maintenance_interval=interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outages = Retrying(log, Worker.OUTAGE_SAID_EVERY)

    @property
    def id(self) -> str:
        return self.worker.id

    def start(self) -> Maintainer:
        if self._thread is None:
            self._stop.clear()
            self.service.notifier.subscribe_due(self.worker.due_plan.note)
            self._thread = threading.Thread(target=self._loop, name="stackshift-maintenance",
                                            daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        store = self.service.store
        plan = self.worker.due_plan
        while True:
            # Each round plans the next one at the earliest due timer, retry or start.
            plan.sleep(self.worker.maintenance_interval, self.service.clock.now(), self._stop)
            if self._stop.is_set():
                return
            try:
                plan.take_passed(self.service.clock.now())
                if store.try_lead(self.id, self.worker.lead_silence) and self.worker.maintain():
                    self.service.notifier.notify()  # waiting claims look again
            except Exception as exc:
                self._outages.say("maintenance round", exc)

    def stop(self) -> None:
        self._stop.set()
        self.service.notifier.unsubscribe_due(self.worker.due_plan.note)
        self.worker.due_plan.changed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.service.store.resign(self.id)
        except Exception as exc:
            warn_of(log, exc, "maintenance: could not resign")
