"""Claim throughput with 1,000,000 finished runs in the database vs an empty one.

    .venv/bin/python bench/claim_bench.py [--stores postgres,sqlite] [--finished 1000000]
        [--ready 10000] [--batch 10] [--claimers 1] [--rounds 3]

For each store, two databases are built from the migrations: one empty, one
holding ``--finished`` completed runs (inserted in bulk by SQL, then
analysed/vacuumed as a long-running installation would be). Each round loads
``--ready`` queued runs into both and times ``claim_runs`` (batches of
``--batch``, from ``--claimers`` threads) until none is left; rounds alternate
between the two databases so that load from elsewhere on the machine hits both
alike. Prints claims per second (best round) and the ratio full/empty, which
the claim path keeps near 1 because finished runs are not in the index it
reads (``runs_ready`` is partial).

PostgreSQL: ``STACKSHIFT_BENCH_POSTGRES_URL`` (default the local test
database); each database is a schema of its own, dropped at the end. SQLite:
files in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from stackshift.store import SqlStore, open_store

PG_URL = os.environ.get("STACKSHIFT_BENCH_POSTGRES_URL",
                        "postgresql://postgres@127.0.0.1:5432/test")
JOB = "bench"

_FILL = {
    "postgres": """
        INSERT INTO runs (id, job, queue, status, payload, result, attempt, max_attempts,
                          created_at, available_at, started_at, finished_at, updated_at)
        SELECT :prefix || lpad(to_hex(g), 16, '0'), :job, 'default', :status, '{}',
               CAST(:result AS text), :attempt, 3, CAST(:t0 AS float8) + g * 0.001,
               CAST(:available_at AS float8), CAST(:started_at AS float8),
               CAST(:finished_at AS float8), CAST(:t0 AS float8) + g * 0.001
        FROM generate_series(1, :n) AS g
    """,
    "sqlite": """
        WITH RECURSIVE c(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM c WHERE g < :n)
        INSERT INTO runs (id, job, queue, status, payload, result, attempt, max_attempts,
                          created_at, available_at, started_at, finished_at, updated_at)
        SELECT :prefix || printf('%016x', g), :job, 'default', :status, '{}', :result,
               :attempt, 3, :t0 + g * 0.001, :available_at, :started_at, :finished_at,
               :t0 + g * 0.001
        FROM c
    """,
}


def fill(store: SqlStore, n: int, *, finished: bool, prefix: str) -> None:
    t0 = time.time() - 86400.0
    with store.db.write() as tx:
        tx.raw(_FILL[store.dialect], {
            "n": n, "prefix": prefix, "job": JOB, "t0": t0,
            "status": "completed" if finished else "queued",
            "result": "null" if finished else None,
            "attempt": 1 if finished else 0,
            "available_at": None if finished else t0,
            "started_at": t0 if finished else None,
            "finished_at": t0 + 1.0 if finished else None,
        })


def settle(store: SqlStore) -> None:
    """What a long-lived database's autovacuum / ANALYZE would have done."""
    if store.dialect == "postgres":
        import psycopg

        from stackshift.store.postgres import parse_postgres_url

        conninfo, options = parse_postgres_url(store.db.url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'SET search_path = "{options["schema"]}"')
            conn.execute("VACUUM ANALYZE runs")
    else:
        with store.db.write() as tx:
            tx.raw("ANALYZE", {})


def clear_claimed(store: SqlStore) -> None:
    """Finish the runs a round claimed, so every round starts with the same backlog shape."""
    with store.db.write() as tx:
        tx.raw("DELETE FROM timeline WHERE run_id LIKE 'rdy%'", {})
        tx.raw("DELETE FROM attempts WHERE run_id LIKE 'rdy%'", {})
        tx.raw("DELETE FROM runs WHERE id LIKE 'rdy%'", {})


def claim_all(store: SqlStore, batch: int, claimers: int) -> tuple[int, float]:
    counts = [0] * claimers

    def claimer(i: int) -> None:
        while True:
            got = store.claim_runs(f"bench-{i}", [JOB], batch, 300.0, time.time())
            if not got:
                return
            counts[i] += len(got)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), time.perf_counter() - start


@contextmanager
def database(dialect: str, tmp: str) -> Iterator[SqlStore]:
    if dialect == "sqlite":
        store = open_store(f"sqlite:///{tmp}/{uuid.uuid4().hex[:8]}.db")
        try:
            store.migrate()
            yield store
        finally:
            store.close()
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    store = open_store(f"{PG_URL}?schema={schema}")
    try:
        store.migrate()
        yield store
    finally:
        store.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def bench(dialect: str, args: argparse.Namespace, tmp: str) -> None:
    with database(dialect, tmp) as empty, database(dialect, tmp) as full:
        started = time.perf_counter()
        step = 100_000
        for offset in range(0, args.finished, step):
            fill(full, min(step, args.finished - offset), finished=True,
                 prefix=f"fin{offset // step:04d}_")
        settle(full)
        settle(empty)
        print(f"{dialect}: {args.finished:,} finished runs loaded in"
              f" {time.perf_counter() - started:.0f}s", flush=True)
        best = {"empty": 0.0, "full": 0.0}
        for round_ in range(args.rounds):
            for name, store in (("empty", empty), ("full", full)):
                fill(store, args.ready, finished=False, prefix="rdy_")
                settle(store)
                claimed, seconds = claim_all(store, args.batch, args.claimers)
                assert claimed == args.ready, (claimed, args.ready)
                rate = claimed / seconds
                best[name] = max(best[name], rate)
                print(f"  round {round_ + 1} {name:5}: {claimed:,} claims in {seconds:.2f}s"
                      f" = {rate:,.0f}/s", flush=True)
                clear_claimed(store)
        ratio = best["full"] / best["empty"]
        print(f"{dialect}: claims/s empty {best['empty']:,.0f},"
              f" with {args.finished:,} finished runs {best['full']:,.0f};"
              f" ratio {ratio:.2f} (batch {args.batch}, {args.claimers} claimer(s))", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--ready", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--claimers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for dialect in args.stores.split(","):
            bench(dialect.strip(), args, tmp)


if __name__ == "__main__":
    main()
