"""A worker process for the many-process PostgreSQL tests (restart, chaos, election).

    python tests/integration/cluster_app.py worker URL EFFECTS [--lease 2s] [--concurrency 4]
        [--step-seconds 0] [--poll-interval 0.5s]
    python tests/integration/cluster_app.py lead URL

``worker`` serves ``stamp`` (returns the time its handler began) and
``fiveEffects``: five steps, each making one side
effect. EFFECTS is ``table`` (a row ``(run_id, step, pid)`` inserted and
committed into the ``effects`` table of the same schema, on a connection of its
own) or a file path (a line ``run_id step pid`` appended and fsynced). A killed
process thus leaves an exact record of the effects it made.

``lead`` takes the maintenance leadership and holds it until killed, printing
``leading`` once it does.

``starts`` and ``increments`` (``... starts URL KEY N``) print ``ready``, wait
for a line on stdin, then start N runs with idempotency key KEY, or increment
state key KEY N times, and print what they got as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from stackshift import StackShift
from stackshift.store import open_store
from stackshift.store.database import LEAD_SILENCE

JOB = "fiveEffects"


class TableEffects:
    """One autocommit connection per worker thread, reopened after a failure."""

    def __init__(self, url: str) -> None:
        from stackshift.store.postgres import parse_postgres_url

        self.conninfo, options = parse_postgres_url(url)
        self.schema = options["schema"]
        self.local = threading.local()

    def __call__(self, run_id: str, step: int) -> None:
        import psycopg

        conn = getattr(self.local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.conninfo, autocommit=True,
                                   options=f"-c search_path={self.schema}")
            self.local.conn = conn
        try:
            conn.execute("INSERT INTO effects (run_id, step, pid) VALUES (%s, %s, %s)",
                         (run_id, step, os.getpid()))
        except psycopg.OperationalError:
            conn.close()
            raise


class FileEffects:
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, run_id: str, step: int) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{run_id} {step} {os.getpid()}\n")
            f.flush()
            os.fsync(f.fileno())


def build(url: str, effects: str, step_seconds: float = 0.0) -> StackShift:
    app = StackShift(url)
    record = TableEffects(url) if effects == "table" else FileEffects(effects)

    def effect(run_id: str, step: int) -> int:
        if step_seconds:
            time.sleep(step_seconds)
        record(run_id, step)
        return step

    @app.job("stamp")
    def stamp(ctx: Any) -> float:
        return time.time()

    @app.job(JOB, max_attempts=50, backoff={"base": "0.05s", "cap": "0.5s"})
    def five_effects(ctx: Any) -> str:
        for n in range(1, 6):
            ctx.step.run(f"step-{n}", effect, ctx.run.id, n)
        return str(ctx.run.id)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["worker", "lead", "starts", "increments"])
    parser.add_argument("url")
    parser.add_argument("effects", nargs="?", default="table",
                        help="worker: table or a file; starts/increments: the key")
    parser.add_argument("--lease", default="2s")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--poll-interval", default="0.5s")
    parser.add_argument("--times", type=int, default=200)
    parser.add_argument("--silence", type=float, default=LEAD_SILENCE,
                        help="lead: seconds the lead may go unconfirmed")
    args = parser.parse_args()
    if args.mode in ("starts", "increments"):
        client = StackShift(args.url, migrate=False)
        print("ready", flush=True)
        sys.stdin.readline()
        if args.mode == "starts":
            got: list[Any] = [
                [run.id, run.created]
                for run in (client.start("charge", {"order": 1}, idempotency_key=args.effects)
                            for _ in range(args.times))
            ]
        else:
            got = [client.state.increment(args.effects) for _ in range(args.times)]
        print(json.dumps(got), flush=True)
        client.close()
        return
    if args.mode == "lead":
        store = open_store(args.url)
        while not store.try_lead(f"holder-{os.getpid()}", args.silence):
            time.sleep(0.05)
        print("leading", flush=True)
        while True:  # and never calls again, like a hung process
            time.sleep(60)
    app = build(args.url, args.effects, args.step_seconds)
    print(f"ready {os.getpid()}", flush=True)
    app.worker(lease=args.lease, concurrency=args.concurrency, poll_interval=args.poll_interval,
               shutdown_grace="5s").run()


if __name__ == "__main__":
    main()
