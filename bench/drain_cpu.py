"""One worker draining a backlog of no-op runs: runs per second, and the CPU time
the process spends per run.

    .venv/bin/python -m bench.drain_cpu [--store sqlite-full|sqlite-normal|postgres]
        [--runs 10000] [--rounds 3]

The backlog is written first (not timed), then a worker with concurrency 10
runs in this process until every run has completed. The CPU time is the
process's user and system time over the drain, so it covers the worker's
threads and, on SQLite, the database engine; on PostgreSQL the server's share
is not in it. Each round uses a fresh SQLite file or PostgreSQL schema
(``STACKSHIFT_BENCH_POSTGRES_URL``, default the local test database).
"""

from __future__ import annotations

import time

import psycopg

from bench.common import PG_URL, helper_parser, scratch_url
from bench.engines.stackshift_engine import build, count, start_many


def drain(store: str, runs: int) -> tuple[float, float]:
    """(runs per second, CPU microseconds per run) of one drain."""
    with scratch_url(store, "drain") as (url, schema):
        app = build(url)
        try:
            start_many(app, "noop", runs)
            if schema is not None:  # as autovacuum would, once the backlog is in
                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f"ANALYZE {schema}.runs")
            started, cpu = time.monotonic(), time.process_time()
            with app.worker(concurrency=10):
                while count(app, "completed") < runs:
                    time.sleep(0.01)
                took, used = time.monotonic() - started, time.process_time() - cpu
        finally:
            app.close()
    return runs / took, used / runs * 1e6


def main() -> None:
    parser = helper_parser(__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    for n in range(1, args.rounds + 1):
        rate, cpu = drain(args.store, args.runs)
        print(f"{args.store} round {n}: {rate:,.0f} runs/s, {cpu:,.0f} µs of CPU per run",
              flush=True)


if __name__ == "__main__":
    main()
