"""Procrastinate's side (a plain queue on PostgreSQL; runs in bench/.peers-venv).

Settings: async tasks, a worker with concurrency 10, LISTEN/NOTIFY on (its
default) and jobs kept after they finish (its default). Procrastinate has no
durable steps or waits, and stalled jobs of a killed worker are only retried by
code the application schedules itself, so it runs W1 and W6 only.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import psycopg
from procrastinate import App, PsycopgConnector

from bench.common import (
    CONCURRENCY,
    PG_URL,
    PRODUCER_THREADS,
    Ctx,
    await_ready,
    child,
    drain_rate,
    engine_main,
    latency_summary,
    say_ready,
    settle,
    steady_rate,
    stopping,
    wait_for_stdin_close,
    wait_until,
)

MODULE = "bench.engines.procrastinate_engine"
SETTINGS = {"concurrency": CONCURRENCY, "listen_notify": True, "task": "async"}


def make_app(schema: str) -> App:
    connector = PsycopgConnector(conninfo=PG_URL,
                                 kwargs={"options": f"-c search_path={schema}"})
    app = App(connector=connector)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    @app.task(name="first")
    async def first(t0: float) -> None:
        latency = time.time() - t0
        with open(os.environ["BENCH_LATENCY_FILE"], "a") as f:
            f.write(f"{t0!r} {latency!r}\n")

    return app


def create_schema(schema: str) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    app = make_app(schema)
    with app.open():
        app.schema_manager.apply_schema()


def count(schema: str, status: str) -> int:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        row = conn.execute(f'SELECT COUNT(*) FROM "{schema}".procrastinate_jobs'
                           f" WHERE status = %s", (status,)).fetchone()
    return int(row[0]) if row else 0


class Counter:
    def __init__(self, schema: str) -> None:
        self.conn = psycopg.connect(PG_URL, autocommit=True)
        self.schema = schema

    def __call__(self, status: str) -> int:
        row = self.conn.execute(f'SELECT COUNT(*) FROM "{self.schema}".procrastinate_jobs'
                                f" WHERE status = %s", (status,)).fetchone()
        return int(row[0]) if row else 0


def serve(args: list[str]) -> None:
    app = make_app(args[0])
    stop = threading.Event()

    async def main() -> None:
        async with app.open_async():
            task = asyncio.create_task(app.run_worker_async(
                concurrency=CONCURRENCY, install_signal_handlers=False))
            say_ready()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            task.cancel()

    threading.Thread(target=lambda: (wait_for_stdin_close(), stop.set()), daemon=True).start()
    try:
        asyncio.run(main())
    finally:
        os._exit(0)


def producer(args: list[str]) -> None:
    app = make_app(args[0])
    stop = threading.Event()

    async def main() -> None:
        async with app.open_async():
            noop = app.tasks["noop"]

            async def loop() -> None:
                while not stop.is_set():
                    await noop.defer_async()

            say_ready()
            await asyncio.gather(*(loop() for _ in range(PRODUCER_THREADS)))

    threading.Thread(target=lambda: (wait_for_stdin_close(), stop.set()), daemon=True).start()
    asyncio.run(main())
    os._exit(0)


async def _defer(app: App, name: str, n: int) -> None:
    """A backlog (not timed): a thousand jobs per batch."""
    async with app.open_async():
        task = app.tasks[name]
        for offset in range(0, n, 1000):
            await task.batch_defer_async(*({} for _ in range(min(1000, n - offset))))


def w1(ctx: Ctx) -> dict[str, Any]:
    assert ctx.schema is not None
    create_schema(ctx.schema)
    app = make_app(ctx.schema)
    count = Counter(ctx.schema)
    warm, n = ctx.sizes["warmup"], ctx.sizes["w1_backlog"]
    asyncio.run(_defer(app, "noop", warm + n))
    settle(ctx)
    worker = child(MODULE, "serve", ctx.schema, stdin=-1, log=ctx.workdir / "worker.log")
    with stopping(worker):
        await_ready(worker)
        drain, drained = drain_rate(lambda: count("succeeded"), warm, n, ctx.sizes["w1_cap"])
        prod = child(MODULE, "producer", ctx.schema, stdin=-1,
                     log=ctx.workdir / "producer.log")
        steady, left = steady_rate(prod, lambda: count("succeeded"), lambda: count("todo"),
                                   ctx.sizes["w1_window"])
    return {"drain_rps": drain, "drained": drained, "steady_rps": steady,
            "backlog_left": left, "settings": SETTINGS}


def w6(ctx: Ctx) -> dict[str, Any]:
    assert ctx.schema is not None
    create_schema(ctx.schema)
    app = make_app(ctx.schema)
    count = Counter(ctx.schema)
    n, rate, warm = ctx.sizes["w6_runs"], ctx.sizes["w6_rate"], 20
    latency_file = ctx.workdir / "latency.txt"
    worker = child(MODULE, "serve", ctx.schema, stdin=-1, log=ctx.workdir / "worker.log",
                   env={"BENCH_LATENCY_FILE": str(latency_file)})
    starts: list[float] = []

    async def feed() -> None:
        async with app.open_async():
            first = app.tasks["first"]
            t = time.perf_counter()
            for _ in range(warm + n):
                t += 1.0 / rate
                while (left := t - time.perf_counter()) > 0:
                    await asyncio.sleep(left if left > 0.002 else 0)
                t0 = time.time()
                starts.append(t0)
                await first.defer_async(t0=t0)

    with stopping(worker):
        await_ready(worker)
        time.sleep(1.0)
        asyncio.run(feed())
        wait_until(lambda: count("succeeded") >= warm + n, 120, "every job", 0.05)
    found = sorted(tuple(map(float, line.split())) for line in
                   latency_file.read_text().splitlines())
    return {**latency_summary([lat for _, lat in found[warm:]]), "settings": SETTINGS}


WORKLOADS = {"W1": w1, "W6": w6}
ROLES = {"serve": serve, "producer": producer}

if __name__ == "__main__":
    engine_main(WORKLOADS, ROLES, schema_prefix="bench_pc")
