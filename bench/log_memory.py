"""A handler that logs in a tight loop inside one step: how far the worker's
resident memory rises over it, and whether every record is stored.

    .venv/bin/python -m bench.log_memory [--store sqlite-full|sqlite-normal|postgres]
        [--records 200000] [--rounds 3]

Each round runs in a process of its own (a heap grown by an earlier round would
hide the next one's rise) and starts one run on a fresh database; its one step
logs ``--records`` records through ``ctx.log``. A thread samples the process's resident memory
(``/proc/self/statm``, Linux) every 10 ms while the run executes; the figure is
the highest sample less the one taken just before the run started.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import Any

from bench.common import helper_parser, scratch_url
from stackshift import StackShift

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def one_round(store: str, records: int) -> tuple[float, float, int]:
    """(MiB the resident memory rose, seconds the run took, records stored)."""
    with scratch_url(store, "logmem") as (url, _):
        app = StackShift(url)

        @app.job("chatty")
        def chatty(ctx: Any) -> None:
            def work() -> None:
                for i in range(records):
                    ctx.log.info("record %d of the import, with some text around it", i)

            ctx.step.run("work", work)

        try:
            with app.worker(concurrency=1):
                base = peak = resident()
                done = threading.Event()

                def sample() -> None:
                    nonlocal peak
                    while not done.wait(0.01):
                        peak = max(peak, resident())

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                started = time.monotonic()
                run = app.start("chatty")
                app.runs.wait(run.id, timeout="30m")
                took = time.monotonic() - started
                done.set()
                sampler.join()
            stored = len(app.runs.logs(run.id))
        finally:
            app.close()
    return (peak - base) / 2**20, took, stored


def main() -> None:
    parser = helper_parser(__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    spawn = multiprocessing.get_context("spawn")
    for n in range(1, args.rounds + 1):
        with spawn.Pool(1) as pool:
            rose, took, stored = pool.apply(one_round, (args.store, args.records))
        print(f"{args.store} round {n}: resident memory rose {rose:.1f} MiB over {took:.1f} s;"
              f" {stored:,} of {args.records:,} records stored", flush=True)


if __name__ == "__main__":
    main()
