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

import threading
import time

from bench.common import PRODUCER_THREADS, helper_parser, scratch_url
from bench.engines.stackshift_engine import build


def produce_alone(store: str, seconds: float) -> float:
    """Starts per second of one round."""
    with scratch_url(store, "producer") as (url, _):
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


def main() -> None:
    parser = helper_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    for n in range(1, args.rounds + 1):
        rate = produce_alone(args.store, args.seconds)
        print(f"{args.store} round {n}: {rate:,.0f} runs started per second", flush=True)


if __name__ == "__main__":
    main()
