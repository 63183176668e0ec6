"""What every engine's workload script shares: stores, sizes, the result line, helpers.

Imported by the project's interpreter and by the peers' one, so it needs only
the standard library (and psycopg, present in both, for PostgreSQL schemas).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("STACKSHIFT_BENCH_POSTGRES_URL",
                        "postgresql://postgres@127.0.0.1:5432/test")
RESULT_MARK = "BENCH-RESULT "

#: The worker concurrency every engine gets in every workload (W5 aside: a
#: worker holding 100 runs needs 100 slots).
CONCURRENCY = 10

#: Threads in the process that enqueues under steady load (W1, MEM): a web
#: application starts runs from several threads at once.
PRODUCER_THREADS = 4

#: The peers' polling intervals (their defaults: DBOS 1 s, Huey 0.1 s backing off
#: to 10 s). Lower is faster for both here; 1 ms is the lowest DBOS documents.
DBOS_POLL = float(os.environ.get("BENCH_DBOS_POLL", "0.001"))
HUEY_POLL = 0.001

#: Workload sizes. "quick" is a smoke run of the same code paths.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "warmup": 200,          # runs through the worker before any timing
        "w1_backlog": 10_000,   # runs drained from a backlog
        "w1_cap": 12.0,         # ... timed until drained or for this many seconds
        "w1_window": 3.0,       # seconds of steady enqueue measured
        "w2_runs": 200,         # runs of the 10-step job (and of the 0-step job)
        "w3_waiting": 1_000,    # runs waiting for an event
        "w3_events": 150,       # of them resumed (at 100 a second) and timed
        "w4_duplicates": 1_000,
        "w5_runs": 100,
        "w5_lease": 5.0,
        "w6_runs": 300,
        "w6_rate": 100.0,       # starts per second, open loop
        "mem_runs": 100_000,
    },
    "quick": {
        "warmup": 30,
        "w1_backlog": 500,
        "w1_cap": 5.0,
        "w1_window": 1.5,
        "w2_runs": 40,
        "w3_waiting": 100,
        "w3_events": 25,
        "w4_duplicates": 200,
        "w5_runs": 20,
        "w5_lease": 2.0,
        "w6_runs": 80,
        "w6_rate": 100.0,
        "mem_runs": 3_000,
    },
}


@dataclass(frozen=True)
class StoreSpec:
    name: str
    kind: str  # "sqlite" or "postgres"
    synchronous: str | None  # SQLite: "full" or "normal"

    @property
    def label(self) -> str:
        if self.kind == "postgres":
            return "PostgreSQL (synchronous_commit=on)"
        return f"SQLite WAL (synchronous={self.synchronous.upper() if self.synchronous else ''})"


STORES = {
    "sqlite-full": StoreSpec("sqlite-full", "sqlite", "full"),
    "sqlite-normal": StoreSpec("sqlite-normal", "sqlite", "normal"),
    "postgres": StoreSpec("postgres", "postgres", None),
}


@dataclass
class Ctx:
    """One workload run: where, how big, and scratch space."""

    store: StoreSpec
    sizes: dict[str, Any]
    workdir: Path
    schema: str | None  # PostgreSQL: a fresh schema for this run

    @property
    def sqlite_path(self) -> Path:
        return self.workdir / "bench.db"


# -- PostgreSQL schemas --------------------------------------------------------------


def new_schema(prefix: str = "bench") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def helper_parser(doc: str) -> argparse.ArgumentParser:
    """The command line the helper scripts share: ``--store`` and ``--rounds``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite-full",
                        choices=["sqlite-full", "sqlite-normal", "postgres"])
    parser.add_argument("--rounds", type=int, default=3)
    return parser


@contextmanager
def scratch_url(store: str, name: str) -> Iterator[tuple[str, str | None]]:
    """A StackShift URL on a fresh database for the helper scripts, and its
    PostgreSQL schema (None on SQLite); the schema is dropped afterwards."""
    if store == "postgres":
        schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
        try:
            yield f"{PG_URL}?schema={schema}", schema
        finally:
            drop_schema(schema)
        return
    import tempfile

    folder = tempfile.mkdtemp(prefix=f"stackshift-{name}-")
    yield f"sqlite:///{folder}/{name}.db?synchronous={store.removeprefix('sqlite-')}", None


def settle(ctx: Ctx) -> None:
    """PostgreSQL: ANALYZE the run's schema after a backlog is loaded (not timed).

    Autovacuum is off on the benchmark's server, so without this no engine's
    tables would ever have statistics; autovacuum would have analyzed them.
    """
    if ctx.schema is None:
        return
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (ctx.schema,))]
        for table in tables:
            conn.execute(f'ANALYZE "{ctx.schema}"."{table}"')


def pg_setting(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    return str(row[0]) if row else "?"


# -- measuring -----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank on the sorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": statistics.median(ms), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms), "samples": len(ms)}


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MiB (Linux)."""
    path = f"/proc/{pid or os.getpid()}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> float:
    """Poll ``check`` until true; return the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def drain_rate(count: Callable[[], int], warm: int, n: int, cap: float,
               interval: float = 0.02) -> tuple[float, int]:
    """Runs finished per second after the first ``warm`` (excluded), until ``warm + n``
    have finished or ``cap`` seconds have passed; returns (rate, runs timed)."""
    deadline = time.monotonic() + 600
    while (done := count()) < warm:
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for the warm-up runs")
        time.sleep(interval)
    start, base = time.monotonic(), done
    while True:
        done, now = count(), time.monotonic()
        elapsed = now - start
        if done >= warm + n or elapsed >= cap:
            return (done - base) / elapsed, done - base
        # Each look is a COUNT served by the engine's own database on the cores
        # the engine runs on: far from the end, sleep a quarter of the time the
        # rest should take at the rate so far (only a drain that speeds up more
        # than fourfold ends before the next look); near it, every ``interval``.
        rate = (done - base) / elapsed if done > base else 0.0
        ahead = (warm + n - done) / rate / 4 if rate else interval
        time.sleep(max(interval, min(ahead, cap - elapsed)))


def steady_rate(producer: subprocess.Popen[bytes], done: Callable[[], int],
                left: Callable[[], int], window: float) -> tuple[float, int]:
    """While ``producer`` enqueues (1 s of its warm-up first): runs finished per
    second over ``window`` seconds, and the backlog ``left`` at the end. Stops it."""
    with stopping(producer):
        await_ready(producer)
        time.sleep(1.0)
        c1, t1 = done(), time.monotonic()
        time.sleep(window)
        c2, t2 = done(), time.monotonic()
        return (c2 - c1) / (t2 - t1), left()


def paced(count: int, rate: float, start: Callable[[int], object]) -> None:
    """Call ``start(i)`` ``count`` times at ``rate`` a second, open loop (on schedule
    whatever each call takes)."""
    t = time.perf_counter()
    for i in range(count):
        t += 1.0 / rate
        sleep_until(t)
        start(i)


def sleep_until(moment: float) -> None:
    """Sleep until ``time.perf_counter()`` reaches ``moment``."""
    while True:
        left = moment - time.perf_counter()
        if left <= 0:
            return
        time.sleep(min(left, 0.05) if left > 0.002 else 0)


# -- child processes -----------------------------------------------------------------


def child(module: str, role: str, *args: str, env: dict[str, str] | None = None,
          stdin: Any = subprocess.DEVNULL, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m module role args...`` with this interpreter.

    Its stdout is a pipe (it prints ``ready`` once serving); stderr goes to ``log``.
    """
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", module, role, *args], cwd=ROOT,
                            env=full_env, stdin=stdin, stdout=subprocess.PIPE, stderr=err)


def await_ready(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline().strip()
    if line != b"ready":
        proc.kill()
        raise RuntimeError(f"child did not start (said {line!r}; exit {proc.poll()})")
    if time.monotonic() > deadline:
        raise TimeoutError("child was slow to start")


def say_ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


@contextmanager
def stopping(proc: subprocess.Popen[bytes], grace: float = 15.0) -> Iterator[None]:
    """Close the child's stdin at the end (its cue to stop); kill it if it lingers."""
    try:
        yield
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_stdin_close() -> None:
    sys.stdin.read()


def produce(enqueue: Callable[[], None]) -> None:
    """The producer process: ``PRODUCER_THREADS`` threads call ``enqueue`` in a loop
    until stdin closes."""
    import threading

    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            enqueue()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(PRODUCER_THREADS)]
    for t in threads:
        t.start()
    say_ready()
    wait_for_stdin_close()
    stop.set()
    for t in threads:
        t.join(10)


# -- the engine scripts' command line ---------------------------------------------------

Workload = Callable[[Ctx], dict[str, Any]]


def engine_main(workloads: dict[str, Workload], roles: dict[str, Callable[[list[str]], None]],
                schema_prefix: str = "bench") -> None:
    """``run --workload W --store S --scale full --workdir D`` prints one result line;
    ``<role> args...`` runs a helper process (a worker, a producer)."""
    if len(sys.argv) > 1 and sys.argv[1] in roles:
        roles[sys.argv[1]](sys.argv[2:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--workload", required=True, choices=sorted(workloads))
    parser.add_argument("--store", required=True, choices=sorted(STORES))
    parser.add_argument("--scale", default="full", choices=sorted(SIZES))
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    store = STORES[args.store]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for leftover in workdir.glob("bench.db*"):  # a fresh database for every run
        leftover.unlink()
    schema = new_schema(schema_prefix) if store.kind == "postgres" else None
    sizes = {**SIZES[args.scale], **json.loads(os.environ.get("BENCH_SIZES", "{}"))}
    ctx = Ctx(store, sizes, workdir, schema)
    try:
        result = workloads[args.workload](ctx)
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if schema is not None:
            try:
                drop_schema(schema)
            except Exception:
                traceback.print_exc()
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    # Peers may leave non-daemon threads behind; the result is out, so leave now.
    os._exit(0)
