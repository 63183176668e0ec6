"""Huey's side (a plain queue on SQLite; runs in bench/.peers-venv).

Settings: ``SqliteHuey`` with WAL and the same ``synchronous`` mode as
StackShift's, a consumer of 10 worker threads polling every 1 ms without
backoff (its default is 100 ms, growing to 10 s when idle). Huey has no durable
steps, waits, idempotency keys or recovery of tasks a killed consumer took, so
it runs W1 and W6 only.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from huey import SqliteHuey
from huey.signals import SIGNAL_COMPLETE
from huey.storage import SqliteStorage

from bench.common import (
    CONCURRENCY,
    HUEY_POLL,
    Ctx,
    await_ready,
    child,
    drain_rate,
    engine_main,
    latency_summary,
    paced,
    produce,
    say_ready,
    steady_rate,
    stopping,
    wait_for_stdin_close,
)

MODULE = "bench.engines.huey_engine"
POLL = HUEY_POLL
SETTINGS = {"workers": CONCURRENCY, "worker_type": "thread", "polling_interval_s": POLL,
            "backoff": 1.0}


class _Storage(SqliteStorage):
    """Huey's SQLite storage with the benchmark's synchronous mode."""

    synchronous = "FULL"

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn


def make_huey(store: str, path: str) -> SqliteHuey:
    _Storage.synchronous = store.split("-")[1].upper()
    huey = SqliteHuey("bench", filename=path, journal_mode="wal", storage_class=_Storage)
    tasks = {}

    @huey.task(name="noop")
    def noop() -> None:
        return None

    @huey.task(name="first")
    def first(t0: float) -> float:
        return time.time() - t0

    tasks["noop"], tasks["first"] = noop, first
    huey.bench_tasks = tasks  # type: ignore[attr-defined]
    return huey


class Completed:
    def __init__(self, huey: SqliteHuey) -> None:
        self.n = 0
        self._lock = threading.Lock()

        @huey.signal(SIGNAL_COMPLETE)
        def done(signal: Any, task: Any) -> None:
            with self._lock:
                self.n += 1


def consumer(huey: SqliteHuey) -> Any:
    return huey.create_consumer(workers=CONCURRENCY, worker_type="thread", initial_delay=POLL,
                                backoff=1.0, max_delay=POLL, periodic=False)


def serve(args: list[str]) -> None:
    huey = make_huey(args[0], args[1])
    c = consumer(huey)
    c.start()
    say_ready()
    wait_for_stdin_close()
    os._exit(0)


def producer(args: list[str]) -> None:
    huey = make_huey(args[0], args[1])
    produce(huey.bench_tasks["noop"])  # type: ignore[attr-defined]
    os._exit(0)


def w1(ctx: Ctx) -> dict[str, Any]:
    huey = make_huey(ctx.store.name, str(ctx.sqlite_path))
    done = Completed(huey)
    noop = huey.bench_tasks["noop"]  # type: ignore[attr-defined]
    warm, n = ctx.sizes["warmup"], ctx.sizes["w1_backlog"]
    for _ in range(warm + n):
        noop()
    c = consumer(huey)
    c.start()
    drain, drained = drain_rate(lambda: done.n, warm, n, ctx.sizes["w1_cap"], 0.005)
    prod = child(MODULE, "producer", ctx.store.name, str(ctx.sqlite_path), stdin=-1,
                 log=ctx.workdir / "producer.log")
    steady, left = steady_rate(prod, lambda: done.n, huey.pending_count,
                               ctx.sizes["w1_window"])
    c.stop()
    return {"drain_rps": drain, "drained": drained, "steady_rps": steady,
            "backlog_left": left, "settings": SETTINGS}


def w6(ctx: Ctx) -> dict[str, Any]:
    huey = make_huey(ctx.store.name, str(ctx.sqlite_path))
    first = huey.bench_tasks["first"]  # type: ignore[attr-defined]
    n, rate, warm = ctx.sizes["w6_runs"], ctx.sizes["w6_rate"], 20
    worker = child(MODULE, "serve", ctx.store.name, str(ctx.sqlite_path), stdin=-1,
                   log=ctx.workdir / "worker.log")
    results = []
    with stopping(worker):
        await_ready(worker)
        time.sleep(0.5)
        paced(warm + n, rate, lambda _i: results.append(first(time.time())))
        latencies = [float(r.get(blocking=True, timeout=120)) for r in results]
    return {**latency_summary(latencies[warm:]), "settings": SETTINGS}


WORKLOADS = {"W1": w1, "W6": w6}
ROLES = {"serve": serve, "producer": producer}

if __name__ == "__main__":
    engine_main(WORKLOADS, ROLES)
