"""Prometheus metrics in the text exposition format (version 0.0.4).

Gauges are read from the database at scrape time, so every server of an
installation reports the same numbers; request counters are per process.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

from ..engine.transitions import Status

if TYPE_CHECKING:
    from ..service import Service

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Statuses that count towards a queue's depth: runs due or about to be due.
DEPTH_STATUSES = (Status.QUEUED.value, Status.RETRYING.value)

#: The methods of HTTP (RFC 9110, and PATCH) that ``method`` keeps as they are. A
#: client may send any token as its method, and each would be a series of its own
#: (even without a key: the ``401`` is counted): the others count as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                     "CONNECT"})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{name}="{_label(value)}"' for name, value in labels.items())
    return "{" + inner + "}"


class RequestCounter:
    """HTTP responses served, by method (one of :data:`METHODS`, else ``other``),
    route template and status code."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._lock = threading.Lock()

    def add(self, method: str, route: str, status: int) -> None:
        if method not in METHODS:
            method = "other"
        with self._lock:
            self._counts[(method, route, status)] += 1

    def snapshot(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            return dict(self._counts)


def render(service: Service, requests: RequestCounter) -> str:
    counts = service.run_counts()
    # A configured queue (paused, limited) is shown even while it holds no runs.
    queues = sorted({queue for queue, _ in counts} | set(service.queue_settings()))
    lines = [
        "# HELP stackshift_runs Runs by queue and status.",
        "# TYPE stackshift_runs gauge",
    ]
    for queue in queues:
        for status in Status:
            n = counts.get((queue, status.value), 0)
            lines.append(f"stackshift_runs{_labels(queue=queue, status=status.value)} {n}")
    lines += [
        "# HELP stackshift_queue_depth Runs queued or retrying, per queue.",
        "# TYPE stackshift_queue_depth gauge",
    ]
    for queue in queues:
        depth = sum(counts.get((queue, s), 0) for s in DEPTH_STATUSES)
        lines.append(f"stackshift_queue_depth{_labels(queue=queue)} {depth}")
    live = service.live_workers(service.clock.now())
    lines += [
        "# HELP stackshift_queue_live_workers Live workers that take the queue.",
        "# TYPE stackshift_queue_live_workers gauge",
    ]
    for queue in queues:
        takers = sum(worker.takes(queue) for worker in live)
        lines.append(f"stackshift_queue_live_workers{_labels(queue=queue)} {takers}")
    lines += [
        "# HELP stackshift_workers_live Live workers (a heartbeat within the last minute).",
        "# TYPE stackshift_workers_live gauge",
        f"stackshift_workers_live {len(live)}",
        "# HELP stackshift_events Events kept (within their retention).",
        "# TYPE stackshift_events gauge",
        f"stackshift_events {service.event_count()}",
        "# HELP stackshift_http_responses_total HTTP responses served by this process.",
        "# TYPE stackshift_http_responses_total counter",
    ]
    for (method, route, code), n in sorted(requests.snapshot().items()):
        labels = _labels(method=method, route=route, status=str(code))
        lines.append(f"stackshift_http_responses_total{labels} {n}")
    return "\n".join(lines) + "\n"
