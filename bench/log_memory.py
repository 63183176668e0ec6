"""A handler that logs in a tight loop inside one step: how far the worker's
resident memory rises over it, and whether every record is stored.

    .venv/bin/python -m bench.log_memory [--store sqlite-full|sqlite-normal|postgres]
        [--records 200000] [--rounds 3] [--remote]

Each round runs in a process of its own (a heap grown by an earlier round would
hide the next one's rise) and starts one run on a fresh database; its one step
logs ``--records`` records through ``ctx.log``. A thread samples the process's resident memory
(``/proc/self/statm``, Linux) every 10 ms while the run executes; the figure is
the highest sample less the one taken just before the run started.

With ``--remote`` the worker is a remote one, through a ``stackshift server``
(its own process, started on the round's database with a new API key); the
memory measured is the worker's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from bench.common import helper_parser, scratch_url, wait_until
from stackshift import StackShift
from stackshift.clock import SystemClock
from stackshift.jobs import JobRegistry
from stackshift.service import Service
from stackshift.settings import Settings
from stackshift.store import open_store

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


@contextlib.contextmanager
def served(url: str) -> Iterator[StackShift]:
    """A remote client through a ``stackshift server`` on ``url``, for the block."""
    service = Service(open_store(url), SystemClock(), Settings(), JobRegistry())
    try:
        service.migrate()
        _, key = service.create_api_key("log memory")
    finally:
        service.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "stackshift.server", "--database-url", url, "--host",
         "127.0.0.1", "--port", str(port), "--log-level", "warning"])
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode})")
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 60, "the server to answer", interval=0.05)
        yield StackShift(api_key=key, base_url=base)
    finally:
        server.terminate()
        server.wait(timeout=30)


def one_round(store: str, records: int, remote: bool) -> tuple[float, float, int]:
    """(MiB the resident memory rose, seconds the run took, records stored)."""
    with scratch_url(store, "logmem") as (url, _), contextlib.ExitStack() as stack:
        app = stack.enter_context(served(url)) if remote else StackShift(url)

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
    parser.add_argument("--remote", action="store_true",
                        help="a remote worker, through a stackshift server on the store")
    args = parser.parse_args()
    spawn = multiprocessing.get_context("spawn")
    what = f"{args.store}{' through a server' if args.remote else ''}"
    for n in range(1, args.rounds + 1):
        with spawn.Pool(1) as pool:
            rose, took, stored = pool.apply(one_round, (args.store, args.records, args.remote))
        print(f"{what} round {n}: resident memory rose {rose:.1f} MiB over {took:.1f} s;"
              f" {stored:,} of {args.records:,} records stored", flush=True)


if __name__ == "__main__":
    main()
