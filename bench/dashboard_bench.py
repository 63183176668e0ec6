"""Dashboard response times with a large history: the runs list and a run page.

    .venv/bin/python bench/dashboard_bench.py [--url URL] [--runs 100000] [--requests 21]

Stores ``--runs`` runs (a week of history over six jobs and queues, in every
status) in batches through the store's transactions, plus one real run executed
by a worker: three attempts, eight steps and a wait resumed by an event. Then
serves the dashboard with uvicorn on 127.0.0.1 and times full page requests
(server render and transfer, over HTTP) for the runs list, its filters and
search, and the run page. Prints the median and 95th percentile of each.
Default URL: a fresh SQLite file in a temporary directory; pass a
``postgresql://...?schema=NAME`` URL to measure PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import uvicorn

from stackshift import StackShift
from stackshift.dashboard import create_dashboard

JOBS = [("send-receipt", "emails"), ("sync-invoice", "billing"), ("resize-image", "media"),
        ("import-feed", "imports"), ("checkout", "orders"), ("nightly-report", "default")]
#: Share of each status in the stored history.
STATUSES = [("completed", 0.78), ("failed", 0.08), ("queued", 0.05), ("waiting", 0.03),
            ("scheduled", 0.02), ("retrying", 0.01), ("cancelled", 0.03)]
INSERT_RUN = (
    "INSERT INTO runs (id, job, queue, status, payload, result, error, attempt, max_attempts,"
    " idempotency_key, priority, created_at, scheduled_at, available_at, started_at,"
    " finished_at, waiting_for, updated_at) VALUES (:id, :job, :queue, :status, :payload,"
    " :result, :error, :attempt, 3, :idempotency_key, 0, :created_at, :scheduled_at,"
    " :available_at, :started_at, :finished_at, :waiting_for, :updated_at)"
)


def register(app: StackShift) -> None:
    @app.job("checkout", queue="orders", max_attempts=3, backoff={"base": 0.05})
    def checkout(ctx: Any) -> dict[str, Any]:
        for name in ("load-cart", "reserve-stock", "price-order", "apply-coupon"):
            ctx.step.run(name, lambda: {"ok": True})

        def charge() -> dict[str, int]:
            ctx.log.info("charging, attempt %d", ctx.run.attempt)
            if ctx.run.attempt < 3:
                raise ConnectionError("card processor unavailable")
            return {"charged": 4200}

        ctx.step.run("charge-card", charge)
        ctx.step.wait_for_event("payment.settled", correlation_key="order:bench", timeout="1h")
        for name in ("send-receipt", "notify-warehouse", "close-order"):
            ctx.step.run(name, lambda: {"ok": True})
        return {"closed": True}


def showcase_run(app: StackShift) -> str:
    """One real run through a worker: 3 attempts, 8 steps, a wait and its event."""
    with app.worker(concurrency=2, poll_interval=0.05, maintenance_interval=0.05):
        run = app.start("checkout", {"order": "bench"})
        deadline = time.monotonic() + 30
        while app.runs.get(run.id).status != "waiting":
            if time.monotonic() > deadline:
                raise RuntimeError("the showcase run did not reach its wait")
            time.sleep(0.02)
        app.events.send("payment.settled", {"amount": 4200}, correlation_key="order:bench")
        app.runs.wait(run.id, timeout=30)
    return run.id


def seed(app: StackShift, count: int, batch: int = 5000) -> None:
    """Insert ``count`` runs spread over the last seven days, newest last."""
    rng = random.Random(7)
    now = time.time()
    start = now - 7 * 86400
    weights = [w for _, w in STATUSES]
    names = [s for s, _ in STATUSES]
    db = app._service.store.db
    done = 0
    while done < count:
        rows = []
        for i in range(done, min(count, done + batch)):
            created = start + (now - 60 - start) * i / count
            job, queue = JOBS[i % len(JOBS)]
            status = rng.choices(names, weights)[0]
            started = created + rng.uniform(0.001, 2) if status not in (
                "queued", "scheduled") else None
            finished = (started or created) + rng.uniform(0.01, 30) if status in (
                "completed", "failed", "cancelled") else None
            error = None
            if status in ("failed", "retrying", "cancelled"):
                error = json.dumps({"type": "TimeoutError", "message": f"upstream timed out ({i})",
                                    "traceback": "Traceback (most recent call last):\n  ..."})
            waiting = None
            if status == "waiting":
                waiting = json.dumps({"kind": "event", "step": "wait", "event": "doc.signed",
                                      "correlation_key": f"doc:{i}", "until": now + 86400})
            millis = int(created * 1000)
            rows.append({
                "id": f"run_{millis:012x}{i:014x}", "job": job, "queue": queue, "status": status,
                "payload": json.dumps({"n": i, "customer": f"cus_{i % 977}"}),
                "result": json.dumps({"ok": True}) if status == "completed" else None,
                "error": error, "attempt": 0 if started is None else 1,
                "idempotency_key": f"bench:{i}" if i % 10 == 0 else None,
                "created_at": created,
                "scheduled_at": now + 3600 if status == "scheduled" else None,
                "available_at": None if finished or status == "waiting" else (
                    now + 3600 if status == "scheduled" else created),
                "started_at": started, "finished_at": finished, "waiting_for": waiting,
                "updated_at": finished or started or created,
            })
        with db.write() as tx:
            for row in rows:
                tx.raw(INSERT_RUN, row)
        done += len(rows)
        sys.stdout.write(f"\r  stored {done:,} runs")
        sys.stdout.flush()
    sys.stdout.write("\n")


def serve(app: StackShift) -> tuple[uvicorn.Server, threading.Thread, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_dashboard(app._service), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


def measure(client: httpx.Client, url: str, requests: int) -> tuple[float, float]:
    client.get(url).raise_for_status()  # warm up: templates, connections, caches
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: a new SQLite file)")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stackshift-dashboard-bench-") as folder:
        bench(args.url or f"sqlite:///{os.path.join(folder, 'bench.db')}", args.runs,
              args.requests)


def bench(url: str, runs: int, requests: int) -> None:
    app = StackShift(url)
    register(app)
    print(f"database: {url}")
    # The real run first, so that the worker does not pick up the stored history.
    run_id = showcase_run(app)
    began = time.perf_counter()
    seed(app, runs)
    print(f"  seeded in {time.perf_counter() - began:.1f}s")
    server, thread, base = serve(app)
    pages = [
        ("runs list", "/"),
        ("runs list, failed", "/?status=failed"),
        ("runs list, queue", "/?queue=billing"),
        ("runs list, job + last 24h", "/?job=import-feed&created=24h"),
        ("runs list, page 2", None),
        ("search: run id", f"/?q={run_id}"),
        ("search: idempotency key", "/?q=bench:50000"),
        ("search: correlation key", "/?q=order:bench"),
        ("run page (3 attempts, 8 steps, wait)", f"/runs/{run_id}"),
        ("queues", "/queues"),
        ("jobs and workers", "/jobs"),
    ]
    print(f"\n{'page':<40} {'median':>9} {'p95':>9}   ({requests} requests each)")
    with httpx.Client(base_url=base, timeout=30) as client:
        second = app.runs.list(limit=50).next_cursor
        for label, path in pages:
            target = path or f"/?cursor={second}"
            median, p95 = measure(client, target, requests)
            print(f"{label:<40} {median:>7.1f}ms {p95:>7.1f}ms")
    server.should_exit = True
    thread.join(timeout=10)
    app.close()


if __name__ == "__main__":
    main()
