"""StackShift's side of every workload (runs in the project's virtual environment).

    python -m bench.engines.stackshift_engine run --workload W1 --store sqlite-full --workdir D
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from typing import Any

from bench.common import (
    CONCURRENCY,
    PG_URL,
    Ctx,
    StoreSpec,
    await_ready,
    child,
    drain_rate,
    engine_main,
    latency_summary,
    paced,
    produce,
    rss_mb,
    say_ready,
    settle,
    sleep_until,
    steady_rate,
    stopping,
    wait_for_stdin_close,
    wait_until,
)
from stackshift import StackShift
from stackshift.ids import new_id
from stackshift.store.base import NewRun
from stackshift.store.runs import insert_run

MODULE = "bench.engines.stackshift_engine"


def url_for(store: StoreSpec, ctx_path: str, schema: str | None) -> str:
    if store.kind == "postgres":
        return f"{PG_URL}?schema={schema}"
    return f"sqlite:///{ctx_path}?synchronous={store.synchronous}"


def _nothing() -> None:
    return None


def build(url: str) -> StackShift:
    app = StackShift(url)

    @app.job("noop")
    def noop(ctx: Any) -> None:
        return None

    @app.job("steps10")
    def steps10(ctx: Any) -> None:
        for _ in range(10):
            ctx.step.run("s", _nothing)

    @app.job("waiter")
    def waiter(ctx: Any) -> float:
        ctx.step.wait_for_event("go", correlation_key=ctx.payload["key"], timeout="1h")
        return time.time()

    @app.job("first")
    def first(ctx: Any) -> float:
        t0 = ctx.payload["t0"]
        return float(ctx.step.run("first", lambda: time.time() - t0))

    @app.job("hold")
    def hold(ctx: Any) -> float:
        if os.environ.get("BENCH_HOLD"):
            time.sleep(3600)  # until this process is killed
        return time.time()

    return app


def count(app: StackShift, status: str, job: str | None = None) -> int:
    sql = "SELECT COUNT(*) AS n FROM runs WHERE status = :status"
    params: dict[str, Any] = {"status": status}
    if job is not None:
        sql += " AND job = :job"
        params["job"] = job
    with app._service.store.db.read() as tx:
        return int(tx.raw(sql, params)[0]["n"])


def results(app: StackShift, job: str) -> list[float]:
    with app._service.store.db.read() as tx:
        found = tx.raw("SELECT result FROM runs WHERE job = :job AND status = 'completed'",
                       {"job": job})
    return [float(json.loads(r["result"])) for r in found]


def url(ctx: Ctx) -> str:
    return url_for(ctx.store, str(ctx.sqlite_path), ctx.schema)


def start_many(app: StackShift, job: str, n: int, payload: Any = None) -> None:
    """A backlog (not timed): the rows ``start`` writes, a thousand per transaction."""
    store = app._service.store
    text = json.dumps(payload)
    for offset in range(0, n, 1000):
        now = time.time()
        with store.db.write() as tx:
            for _ in range(min(1000, n - offset)):
                insert_run(tx, NewRun(id=new_id("run"), job=job, queue="default", payload=text,
                                      max_attempts=None, priority=0, concurrency_key=None,
                                      scheduled_at=None, idempotency_key=None,
                                      idempotency_expires_at=None), now)


# -- W1 ---------------------------------------------------------------------------------


def w1(ctx: Ctx) -> dict[str, Any]:
    app = build(url(ctx))
    warm, n = ctx.sizes["warmup"], ctx.sizes["w1_backlog"]
    start_many(app, "noop", warm + n)
    settle(ctx)
    with app.worker(concurrency=CONCURRENCY):
        drain, drained = drain_rate(lambda: count(app, "completed"), warm, n,
                                    ctx.sizes["w1_cap"])
        # Steady enqueue: a producer process starts runs as fast as it can.
        producer = child(MODULE, "producer", url(ctx), stdin=-1,
                         log=ctx.workdir / "producer.log")
        steady, queued = steady_rate(producer, lambda: count(app, "completed"),
                                     lambda: count(app, "queued"), ctx.sizes["w1_window"])
    app.close()
    return {"drain_rps": drain, "drained": drained, "steady_rps": steady,
            "backlog_left": queued}


def producer(args: list[str]) -> None:
    app = build(args[0])
    produce(lambda: app.start("noop"))
    app.close()


# -- W2 ---------------------------------------------------------------------------------


def w2(ctx: Ctx) -> dict[str, Any]:
    app = build(url(ctx))
    warm, n = ctx.sizes["warmup"], ctx.sizes["w2_runs"]
    start_many(app, "noop", warm + n)
    start_many(app, "steps10", n)
    settle(ctx)
    with app.worker(concurrency=CONCURRENCY):
        t_warm = wait_until(lambda: count(app, "completed") >= warm, 120, "warm-up", 0.005)
        t_mid = wait_until(lambda: count(app, "completed") >= warm + n, 600, "0-step runs",
                           0.005)
        t_end = wait_until(lambda: count(app, "completed") >= warm + 2 * n, 600,
                           "10-step runs", 0.005)
    app.close()
    zero, ten = (t_mid - t_warm) / n, (t_end - t_mid) / n
    return {"step_overhead_ms": (ten - zero) / 10 * 1000, "run0_ms": zero * 1000,
            "run10_ms": ten * 1000}


# -- W3 ---------------------------------------------------------------------------------


def w3(ctx: Ctx) -> dict[str, Any]:
    app = build(url(ctx))
    waiting, sample = ctx.sizes["w3_waiting"], ctx.sizes["w3_events"]
    warm = 20
    for i in range(waiting):
        app.start("waiter", {"key": f"k{i}"})
    settle(ctx)
    sent: dict[str, float] = {}
    with app.worker(concurrency=CONCURRENCY):
        wait_until(lambda: count(app, "waiting") >= waiting, 300, "runs to wait", 0.1)
        keys = random.sample(range(waiting), warm + sample)
        step = 1.0 / 100  # 100 events a second, open loop
        t = time.perf_counter()
        for i in keys:
            t += step
            sleep_until(t)
            sent[f"k{i}"] = time.time()
            app.events.send("go", None, correlation_key=f"k{i}")
        wait_until(lambda: count(app, "completed") >= warm + sample, 120, "resumed runs", 0.05)
    with app._service.store.db.read() as tx:
        found = tx.raw("SELECT payload, result FROM runs WHERE status = 'completed'", {})
    app.close()
    latencies = []
    for r in found:
        key = json.loads(r["payload"])["key"]
        latencies.append((sent[key], float(json.loads(r["result"])) - sent[key]))
    latencies.sort()
    return latency_summary([lat for _, lat in latencies[warm:]])


# -- W4 ---------------------------------------------------------------------------------


def w4(ctx: Ctx) -> dict[str, Any]:
    app = build(url(ctx))
    n = ctx.sizes["w4_duplicates"]
    for _ in range(50):  # warm-up, another key
        app.start("noop", idempotency_key="warm")
    app.start("noop", idempotency_key="dup")
    t0 = time.perf_counter()
    for _ in range(n):
        run = app.start("noop", idempotency_key="dup")
        assert not run.created
    elapsed = time.perf_counter() - t0
    with app._service.store.db.read() as tx:
        total = int(tx.raw("SELECT COUNT(*) AS n FROM runs", {})[0]["n"])
    app.close()
    return {"dup_ms": elapsed / n * 1000, "extra_runs": total - 2}


# -- W5 ---------------------------------------------------------------------------------


def serve(args: list[str]) -> None:
    """A worker process: ``serve URL CONCURRENCY LEASE``; stops when stdin closes."""
    app = build(args[0])
    worker = app.worker(concurrency=int(args[1]), lease=float(args[2]))
    worker.start()
    say_ready()
    wait_for_stdin_close()
    worker.stop(grace=1)
    app.close()


def w5(ctx: Ctx) -> dict[str, Any]:
    app = build(url(ctx))
    n, lease = ctx.sizes["w5_runs"], ctx.sizes["w5_lease"]
    start_many(app, "hold", n)
    log = ctx.workdir / "workers.log"
    first = child(MODULE, "serve", url(ctx), str(n), str(lease), stdin=-1,
                  env={"BENCH_HOLD": "1"}, log=log)
    await_ready(first)
    wait_until(lambda: count(app, "running") >= n, 120, "the worker to hold every run", 0.05)
    first.send_signal(signal.SIGKILL)
    killed_at = time.time()
    first.wait()
    second = child(MODULE, "serve", url(ctx), str(n), str(lease), stdin=-1, log=log)
    with stopping(second):
        await_ready(second)
        wait_until(lambda: count(app, "completed") >= n, lease + 120, "recovery", 0.05)
    resumed = results(app, "hold")
    app.close()
    return {"recovery_s": max(resumed) - killed_at, "lease_s": lease, "budget_s": lease + 1.0}


# -- W6 ---------------------------------------------------------------------------------


def w6(ctx: Ctx) -> dict[str, Any]:
    app = build(url(ctx))
    n, rate, warm = ctx.sizes["w6_runs"], ctx.sizes["w6_rate"], 20
    worker = child(MODULE, "serve", url(ctx), str(CONCURRENCY), "30", stdin=-1,
                   log=ctx.workdir / "worker.log")
    with stopping(worker):
        await_ready(worker)
        time.sleep(0.5)
        paced(warm + n, rate, lambda i: app.start("first", {"t0": time.time(), "i": i}))
        wait_until(lambda: count(app, "completed") >= warm + n, 120, "every run", 0.05)
    with app._service.store.db.read() as tx:
        found = tx.raw("SELECT payload, result FROM runs WHERE status = 'completed'", {})
    app.close()
    pairs = sorted((json.loads(r["payload"])["i"], float(json.loads(r["result"])))
                   for r in found)
    return latency_summary([lat for i, lat in pairs if i >= warm])


# -- memory -----------------------------------------------------------------------------


def mem(ctx: Ctx) -> dict[str, Any]:
    app = build(url(ctx))
    n = ctx.sizes["mem_runs"]
    worker = child(MODULE, "serve", url(ctx), str(CONCURRENCY), "30", stdin=-1,
                   log=ctx.workdir / "worker.log")
    samples: list[tuple[int, float]] = []
    with stopping(worker):
        await_ready(worker)
        producers = [child(MODULE, "producer", url(ctx), stdin=-1,
                           log=ctx.workdir / "producer.log")]
        for p in producers:
            await_ready(p)
        done = 0
        while done < n:
            time.sleep(0.5)
            done = count(app, "completed")
            samples.append((done, rss_mb(worker.pid)))
            if count(app, "queued") + done >= n:
                for p in producers:
                    if p.stdin is not None and not p.stdin.closed:
                        p.stdin.close()
        for p in producers:
            p.wait(30)
        wait_until(lambda: count(app, "queued") == 0 and count(app, "running") == 0, 300,
                   "the last runs")
        total = count(app, "completed")
        samples.append((total, rss_mb(worker.pid)))
    app.close()
    return memory_result(samples, total)


def memory_result(samples: list[tuple[int, float]], total: int) -> dict[str, Any]:
    """RSS after the first tenth of the runs (warm) against RSS at the end."""
    tenth = next(rss for done, rss in samples if done >= total / 10)
    end = samples[-1][1]
    return {"runs": total, "rss_warm_mb": tenth, "rss_end_mb": end,
            "rss_max_mb": max(rss for _, rss in samples),
            "growth_pct": (end - tenth) / tenth * 100}


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "MEM": mem}
ROLES = {"producer": producer, "serve": serve}

if __name__ == "__main__":
    engine_main(WORKLOADS, ROLES, schema_prefix="bench_ss")
