"""DBOS's side of the workloads (runs in bench/.peers-venv with the ``dbos`` package).

Settings: workflows on a queue with ``worker_concurrency`` equal to StackShift's
worker concurrency and a 1 ms queue polling interval (lower intervals gave it
more throughput and lower latency here); the notification listener polls every
1 ms (its documented minimum) on SQLite; PostgreSQL uses LISTEN/NOTIFY. SQLite connections
get WAL and the same ``synchronous`` mode as StackShift's.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, DBOSClient, DBOSConfig, SetWorkflowID
from sqlalchemy import event

from bench.common import (
    CONCURRENCY,
    DBOS_POLL,
    PG_URL,
    Ctx,
    await_ready,
    child,
    drain_rate,
    engine_main,
    latency_summary,
    paced,
    produce,
    say_ready,
    settle,
    sleep_until,
    steady_rate,
    stopping,
    wait_for_stdin_close,
    wait_until,
)

MODULE = "bench.engines.dbos_engine"
QUEUE = "bench"
#: DBOS's queue and notification listener polling interval (defaults 1 s).
POLL = DBOS_POLL
SETTINGS = {"queue_polling_interval_s": POLL, "notification_polling_interval_s": POLL,
            "worker_concurrency": CONCURRENCY}

_sync: str | None = None


@event.listens_for(sa.engine.Engine, "connect")
def _pragmas(dbapi_conn: Any, record: Any) -> None:
    """WAL and the chosen synchronous mode on every SQLite connection DBOS opens."""
    if _sync is not None and isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute(f"PRAGMA synchronous={_sync}")


# -- workflows --------------------------------------------------------------------------


@DBOS.step()
def nothing() -> None:
    return None


@DBOS.workflow(name="noop")
def noop() -> None:
    return None


@DBOS.workflow(name="steps10")
def steps10() -> None:
    for _ in range(10):
        nothing()


@DBOS.step()
def mark_ready() -> None:
    return None


@DBOS.workflow(name="waiter")
def waiter() -> float:
    mark_ready()
    DBOS.recv("go", timeout_seconds=3600)
    return time.time()


@DBOS.step()
def first_step(t0: float) -> float:
    return time.time() - t0


@DBOS.workflow(name="first")
def first(t0: float) -> float:
    return first_step(t0)


@DBOS.workflow(name="hold")
def hold() -> float:
    if os.environ.get("BENCH_HOLD"):
        time.sleep(3600)  # until this process is killed
    return time.time()


WORKFLOWS = {"noop": noop, "steps10": steps10, "first": first, "hold": hold}


# -- setup ------------------------------------------------------------------------------


def place(store: str, path: str, schema: str | None) -> dict[str, Any]:
    global _sync
    if store.startswith("sqlite"):
        _sync = store.split("-")[1].upper()
        return {"system_database_url": f"sqlite:///{path}"}
    return {"system_database_url": PG_URL, "dbos_system_schema": schema}


def launch(store: str, path: str, schema: str | None, executor: str,
           listen: list[str]) -> None:
    config: DBOSConfig = {
        "name": "bench",
        "application_version": "bench",
        "executor_id": executor,
        "log_level": "WARNING",
        "notification_listener_polling_interval_sec": POLL,
        **place(store, path, schema),  # type: ignore[typeddict-item]
    }
    DBOS(config=config)
    DBOS.listen_queues(listen)
    DBOS.launch()


def register_queue(worker_concurrency: int = CONCURRENCY) -> None:
    DBOS.register_queue(QUEUE, worker_concurrency=worker_concurrency,
                        polling_interval_sec=POLL, on_conflict="always_update")


def args_of(ctx: Ctx) -> list[str]:
    return [ctx.store.name, str(ctx.sqlite_path), ctx.schema or ""]


def start_main(ctx: Ctx, worker_concurrency: int = CONCURRENCY) -> None:
    """This process: launched (migrations done), dequeuing nothing, queue registered."""
    launch(ctx.store.name, str(ctx.sqlite_path), ctx.schema, "main", [])
    register_queue(worker_concurrency)


class Counter:
    """Counts workflows by status with plain SQL (no DBOS overhead in the measure)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        if ctx.store.kind == "sqlite":
            self.conn: Any = sqlite3.connect(str(ctx.sqlite_path), isolation_level=None)
            self.table = "workflow_status"
        else:
            import psycopg

            self.conn = psycopg.connect(PG_URL, autocommit=True)
            self.table = f'"{ctx.schema}".workflow_status'

    def __call__(self, status: str, name: str | None = None) -> int:
        sql = f"SELECT COUNT(*) FROM {self.table} WHERE status = '{status}'"
        if name is not None:
            sql += f" AND name = '{name}'"
        return int(self.conn.execute(sql).fetchone()[0])

    def steps(self) -> int:
        table = self.table.replace("workflow_status", "operation_outputs")
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def enqueue_many(ctx: Ctx, name: str, n: int) -> None:
    """A backlog (not timed): DBOS's own enqueue, a thousand per transaction."""
    client = client_for(ctx)
    engine = client._sys_db.engine
    for offset in range(0, n, 1000):
        with engine.begin() as conn:
            for _ in range(min(1000, n - offset)):
                client.enqueue_in_transaction(conn, {"queue_name": QUEUE, "workflow_name": name})
    client.destroy()


def serve(args: list[str]) -> None:
    """``serve STORE PATH SCHEMA EXECUTOR``: dequeue and run until stdin closes."""
    store, path, schema, executor = args[:4]
    launch(store, path, schema or None, executor, [QUEUE])
    say_ready()
    wait_for_stdin_close()
    os._exit(0)


def producer(args: list[str]) -> None:
    """``producer STORE PATH SCHEMA``: enqueue no-op workflows until stdin closes."""
    store, path, schema = args[:3]
    settings = place(store, path, schema or None)
    client = DBOSClient(system_database_url=settings["system_database_url"],
                        dbos_system_schema=settings.get("dbos_system_schema") or "dbos",
                        application_name="bench")
    produce(lambda: client.enqueue({"queue_name": QUEUE, "workflow_name": "noop"}))
    os._exit(0)


def client_for(ctx: Ctx) -> DBOSClient:
    settings = place(ctx.store.name, str(ctx.sqlite_path), ctx.schema)
    return DBOSClient(system_database_url=settings["system_database_url"],
                      dbos_system_schema=settings.get("dbos_system_schema") or "dbos",
                      application_name="bench")


# -- workloads --------------------------------------------------------------------------


def w1(ctx: Ctx) -> dict[str, Any]:
    start_main(ctx)
    count = Counter(ctx)
    warm, n = ctx.sizes["warmup"], ctx.sizes["w1_backlog"]
    enqueue_many(ctx, "noop", warm + n)
    settle(ctx)
    worker = child(MODULE, "serve", *args_of(ctx), "worker", stdin=-1,
                   log=ctx.workdir / "worker.log")
    with stopping(worker):
        await_ready(worker)
        drain, drained = drain_rate(lambda: count("SUCCESS"), warm, n, ctx.sizes["w1_cap"])
        prod = child(MODULE, "producer", *args_of(ctx), stdin=-1,
                     log=ctx.workdir / "producer.log")
        steady, left = steady_rate(prod, lambda: count("SUCCESS"), lambda: count("ENQUEUED"),
                                   ctx.sizes["w1_window"])
    return {"drain_rps": drain, "drained": drained, "steady_rps": steady,
            "backlog_left": left, "settings": SETTINGS}


def w2(ctx: Ctx) -> dict[str, Any]:
    start_main(ctx)
    count = Counter(ctx)
    warm, n = ctx.sizes["warmup"], ctx.sizes["w2_runs"]
    enqueue_many(ctx, "noop", warm + n)
    enqueue_many(ctx, "steps10", n)
    settle(ctx)
    worker = child(MODULE, "serve", *args_of(ctx), "worker", stdin=-1,
                   log=ctx.workdir / "worker.log")
    with stopping(worker):
        await_ready(worker)
        t_warm = wait_until(lambda: count("SUCCESS") >= warm, 300, "warm-up", 0.005)
        t_mid = wait_until(lambda: count("SUCCESS") >= warm + n, 1200, "0-step runs", 0.005)
        t_end = wait_until(lambda: count("SUCCESS") >= warm + 2 * n, 1200, "10-step runs",
                           0.005)
    zero, ten = (t_mid - t_warm) / n, (t_end - t_mid) / n
    return {"step_overhead_ms": (ten - zero) / 10 * 1000, "run0_ms": zero * 1000,
            "run10_ms": ten * 1000, "settings": SETTINGS}


def w3(ctx: Ctx) -> dict[str, Any]:
    start_main(ctx)
    count = Counter(ctx)
    waiting, sample, warm = ctx.sizes["w3_waiting"], ctx.sizes["w3_events"], 20
    handles = [DBOS.start_workflow(waiter) for _ in range(waiting)]
    wait_until(lambda: count.steps() >= waiting, 300, "workflows to wait", 0.1)
    settle(ctx)
    time.sleep(0.5)  # from their last step to inside recv
    chosen = random.sample(handles, warm + sample)
    sent: list[float] = []
    t = time.perf_counter()
    for handle in chosen:
        t += 1.0 / 100
        sleep_until(t)
        sent.append(time.time())
        DBOS.send(handle.get_workflow_id(), None, topic="go")
    latencies = [h.get_result() - at for h, at in zip(chosen, sent, strict=True)]
    return {**latency_summary(latencies[warm:]), "settings": SETTINGS}


def w4(ctx: Ctx) -> dict[str, Any]:
    start_main(ctx)
    count = Counter(ctx)
    n = ctx.sizes["w4_duplicates"]
    for _ in range(50):
        with SetWorkflowID("warm"):
            DBOS.enqueue_workflow(QUEUE, noop)
    with SetWorkflowID("dup"):
        DBOS.enqueue_workflow(QUEUE, noop)
    t0 = time.perf_counter()
    for _ in range(n):
        with SetWorkflowID("dup"):
            DBOS.enqueue_workflow(QUEUE, noop)
    elapsed = time.perf_counter() - t0
    total = sum(count(s) for s in ("ENQUEUED", "PENDING", "SUCCESS"))
    return {"dup_ms": elapsed / n * 1000, "extra_runs": total - 2, "settings": SETTINGS}


def w5(ctx: Ctx) -> dict[str, Any]:
    n = ctx.sizes["w5_runs"]
    start_main(ctx, worker_concurrency=n)
    count = Counter(ctx)
    handles = [DBOS.enqueue_workflow(QUEUE, hold) for _ in range(n)]
    log = ctx.workdir / "workers.log"
    first_worker = child(MODULE, "serve", *args_of(ctx), "w5", stdin=-1,
                         env={"BENCH_HOLD": "1"}, log=log)
    await_ready(first_worker)
    wait_until(lambda: count("PENDING") >= n, 120, "the worker to hold every workflow", 0.05)
    time.sleep(0.2)  # let the dequeued workflows enter their function
    first_worker.send_signal(signal.SIGKILL)
    killed_at = time.time()
    first_worker.wait()
    # DBOS recovers a process's workflows when it restarts with the same executor id.
    second = child(MODULE, "serve", *args_of(ctx), "w5", stdin=-1, log=log)
    with stopping(second):
        await_ready(second)
        wait_until(lambda: count("SUCCESS") >= n, 300, "recovery", 0.05)
    resumed = [h.get_result() for h in handles]
    return {"recovery_s": max(resumed) - killed_at, "settings": SETTINGS,
            "note": "recovered by restarting the killed process's executor id"}


def w6(ctx: Ctx) -> dict[str, Any]:
    launch(ctx.store.name, str(ctx.sqlite_path), ctx.schema, "main", [])
    register_queue()
    count = Counter(ctx)
    client = client_for(ctx)
    n, rate, warm = ctx.sizes["w6_runs"], ctx.sizes["w6_rate"], 20
    worker = child(MODULE, "serve", *args_of(ctx), "worker", stdin=-1,
                   log=ctx.workdir / "worker.log")
    handles = []
    with stopping(worker):
        await_ready(worker)
        time.sleep(1.0)
        paced(warm + n, rate, lambda _i: handles.append(
            client.enqueue({"queue_name": QUEUE, "workflow_name": "first"}, time.time())))
        wait_until(lambda: count("SUCCESS") >= warm + n, 120, "every workflow", 0.05)
    latencies = [float(h.get_result()) for h in handles[warm:]]
    return {**latency_summary(latencies), "settings": SETTINGS}


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6}
ROLES = {"serve": serve, "producer": producer}

if __name__ == "__main__":
    engine_main(WORKLOADS, ROLES, schema_prefix="bench_dbos")
