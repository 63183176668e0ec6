"""W1's producer with no worker: how many runs per second its threads can start.

    .venv/bin/python -m bench.producer_alone [--store sqlite-full|sqlite-normal|postgres]
        [--seconds 4] [--rounds 3]

W1's steady enqueue cannot finish runs faster than its producer starts them.
This runs the same producer (``PRODUCER_THREADS`` threads, each calling
``app.start`` in a loop, in one process) against a fresh database with nothing
else writing to it, and counts the starts over ``--seconds`` after one second
of warm-up: the most the steady figure could reach on this machine, before the
worker takes its share of the database.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid

import psycopg

from bench.common import PG_URL, PRODUCER_THREADS
from bench.engines.stackshift_engine import build


def produce_alone(store: str, seconds: float) -> float:
    """Starts per second of one round."""
    schema = None
    if store == "postgres":
        schema = f"bench_producer_{uuid.uuid4().hex[:8]}"
        url = f"{PG_URL}?schema={schema}"
    else:
        folder = tempfile.mkdtemp(prefix="stackshift-producer-")
        url = f"sqlite:///{folder}/producer.db?synchronous={store.removeprefix('sqlite-')}"
    app = build(url)
    app.migrate()
    stop = threading.Event()
    counts = [0] * PRODUCER_THREADS

    def loop(slot: int) -> None:
        while not stop.is_set():
            app.start("noop")
            counts[slot] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(PRODUCER_THREADS)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        before, started = sum(counts), time.monotonic()
        time.sleep(seconds)
        return (sum(counts) - before) / (time.monotonic() - started)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        app.close()
        if schema is not None:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite-full",
                        choices=["sqlite-full", "sqlite-normal", "postgres"])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for n in range(1, args.rounds + 1):
        rate = produce_alone(args.store, args.seconds)
        print(f"{args.store} round {n}: {rate:,.0f} runs started per second", flush=True)


if __name__ == "__main__":
    main()
