"""Start-to-run latency across processes: how soon an idle worker starts a run
that another process started.

    .venv/bin/python bench/wakeup_latency.py [--url URL] [--runs 200]

A worker process waits idle; this process starts runs one at a time, each after
the previous one finished and a random pause (so the worker is idle again), and
measures from just before ``start`` to the moment the handler began. Prints the
median, 95th percentile and maximum. Default URL: a fresh schema on the local
PostgreSQL (``STACKSHIFT_BENCH_POSTGRES_URL``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from stackshift import StackShift

DEFAULT_PG = os.environ.get("STACKSHIFT_BENCH_POSTGRES_URL",
                            "postgresql://postgres@127.0.0.1:5432/test")


def build(url: str) -> StackShift:
    app = StackShift(url)

    @app.job("stamp")
    def stamp(ctx: Any) -> float:
        return time.time()

    return app


def serve(url: str) -> None:
    app = build(url)
    # A long poll interval: any quick start must come from a wake-up, not polling.
    with app.worker(concurrency=4, poll_interval="5s"):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the parent closes our stdin
    app.close()


def measure(url: str, runs: int) -> list[float]:
    app = build(url)
    worker = subprocess.Popen([sys.executable, __file__, "--serve", "--url", url],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert worker.stdout is not None and worker.stdin is not None
    assert worker.stdout.readline().strip() == b"ready"
    latencies = []
    try:
        for _ in range(runs):
            time.sleep(random.uniform(0.02, 0.1))
            before = time.time()
            run = app.start("stamp")
            done = app.runs.wait(run.id, timeout=30)
            latencies.append(float(done.result) - before)
    finally:
        worker.stdin.close()
        worker.wait(30)
        app.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.url)
        return
    schema = None
    url = args.url
    if url is None:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        url = f"{DEFAULT_PG}?schema={schema}"
    try:
        found = sorted(measure(url, args.runs))
    finally:
        if schema is not None:
            import psycopg

            with psycopg.connect(DEFAULT_PG, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    ms = [x * 1000 for x in found]
    print(f"{url.split('?')[0].split(':')[0]}: {len(ms)} runs started by another process;"
          f" start-to-run latency median {statistics.median(ms):.1f} ms,"
          f" p95 {ms[int(len(ms) * 0.95) - 1]:.1f} ms, max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
