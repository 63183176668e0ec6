"""A worker process for the flow-control tests (several of them share one database).

    python tests/integration/flow_app.py URL RECORD_FILE [--concurrency 4] [--poll 0.1s]

Jobs:

* ``held`` (queue from the run): sleeps ``payload["seconds"]``;
* ``keyed`` (``key_concurrency=1``): sleeps ``payload["seconds"]``;
* ``quick``: returns at once.

Each handler appends ``<begin> <end> <run_id> <job> <key> <pid>`` (wall-clock
seconds, measured inside the handler) to RECORD_FILE in one ``O_APPEND`` write,
so the test can see from the handlers' side what ran when. The process prints
``ready <pid>`` once its worker is started, and stops gracefully on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackshift import StackShift

HERE = Path(__file__).resolve()


def build(url: str, record_file: str) -> StackShift:
    app = StackShift(url)

    def record(ctx: Any, begin: float) -> None:
        line = (f"{begin:.6f} {time.time():.6f} {ctx.run.id} {ctx.run.job} "
                f"{(ctx.payload or {}).get('key', '-')} {os.getpid()}\n")
        fd = os.open(record_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    @app.job("held")
    def held(ctx: Any) -> str:
        begin = time.time()
        time.sleep(float(ctx.payload["seconds"]))
        record(ctx, begin)
        return "held"

    @app.job("keyed", key_concurrency=1)
    def keyed(ctx: Any) -> str:
        begin = time.time()
        time.sleep(float(ctx.payload["seconds"]))
        record(ctx, begin)
        return "keyed"

    @app.job("quick")
    def quick(ctx: Any) -> str:
        record(ctx, time.time())
        return "quick"

    return app


@dataclass(frozen=True)
class Span:
    """One handler invocation as the handler saw it."""

    begin: float
    end: float
    run_id: str
    job: str
    key: str
    pid: int


def read_spans(record_file: Path) -> list[Span]:
    if not record_file.exists():
        return []
    spans = []
    for line in record_file.read_text().splitlines():
        begin, end, run_id, job, key, pid = line.split()
        spans.append(Span(float(begin), float(end), run_id, job, key, int(pid)))
    return spans


def most_at_once(spans: list[Span]) -> int:
    """The largest number of spans in progress at one moment."""
    edges = sorted([(s.begin, 1) for s in spans] + [(s.end, -1) for s in spans],
                   key=lambda e: (e[0], e[1]))  # an end before a begin at the same instant
    most = running = 0
    for _, change in edges:
        running += change
        most = max(most, running)
    return most


@contextmanager
def worker_processes(url: str, record_file: Path, count: int, logs: Path,
                     concurrency: int = 4) -> Iterator[list[subprocess.Popen[str]]]:
    """``count`` worker processes on ``url``, ready when this yields; stopped after."""
    from processes import stop_processes  # tests/ (not on the path of the workers)

    procs: list[subprocess.Popen[str]] = []
    try:
        for n in range(count):
            with open(logs / f"worker-{n}.log", "w") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, str(HERE), url, str(record_file),
                     "--concurrency", str(concurrency), "--poll", "0.05s"],
                    stdout=subprocess.PIPE, stderr=log, text=True))
        for n, proc in enumerate(procs):
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("ready"), (logs / f"worker-{n}.log").read_text()[-2000:]
        yield procs
    finally:
        stop_processes(procs, grace=20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("record_file")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--poll", default="0.1s")
    args = parser.parse_args()
    app = build(args.url, args.record_file)
    worker = app.worker(concurrency=args.concurrency, poll_interval=args.poll,
                        shutdown_grace="5s")
    worker.start()  # run() below finds it started and blocks until SIGTERM
    print(f"ready {os.getpid()}", flush=True)
    worker.run()
    app.close()

if __name__ == "__main__":
    main()
