"""``python -m bench``: run the workloads for every engine and store, write the results.

    python -m bench                      # everything, 3 repetitions (about 35 minutes on 2 cores)
    python -m bench --quick              # a smoke run: small sizes, 1 repetition
    python -m bench --workloads W1,W6 --engines stackshift,dbos --stores postgres --reps 5
    python -m bench --workloads W4 --engines stackshift,dbos --out /tmp/w4
    python -m bench --merge /tmp/w4/results.json   # W4's rows into docs/benchmarks

Results go to ``docs/benchmarks/`` (``results.json``, ``results.md``,
``results.png``); a ``--quick`` run writes to ``bench/.quick-results/`` unless
``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench import peers
from bench.common import (
    CONCURRENCY,
    DBOS_POLL,
    HUEY_POLL,
    PRODUCER_THREADS,
    RESULT_MARK,
    ROOT,
    SIZES,
    STORES,
    pg_setting,
)
from bench.report import (
    ENGINES,
    SUPPORT,
    WORKLOADS,
    check_targets,
    markdown,
    merge,
    summarise,
)

MODULES = {
    "stackshift": "bench.engines.stackshift_engine",
    "dbos": "bench.engines.dbos_engine",
    "huey": "bench.engines.huey_engine",
    "procrastinate": "bench.engines.procrastinate_engine",
}
LOAD_LIMIT = 1.5


def _list(text: str, allowed: list[str], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmark workloads for every engine and store; write the"
                    " results to docs/benchmarks/.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: small sizes and 1 repetition")
    p.add_argument("--reps", type=int, help="repetitions per cell (default 3; --quick: 1)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated, from {','.join(WORKLOADS)}")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"comma-separated, from {','.join(ENGINES)}")
    p.add_argument("--stores", default=",".join(STORES),
                   help=f"comma-separated, from {','.join(STORES)}")
    p.add_argument("--mem-stores", default="sqlite-normal",
                   help="stores for the memory check (one repetition each; default"
                        " sqlite-normal)")
    p.add_argument("--out", type=Path, help="output folder (default docs/benchmarks;"
                                            " --quick: bench/.quick-results)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds one cell may take before it is stopped (default 900)")
    p.add_argument("--render", action="store_true",
                   help="run nothing: rewrite results.md and results.png from the"
                        " results.json in --out")
    p.add_argument("--merge", type=Path, metavar="RESULTS_JSON",
                   help="run nothing: take the workloads measured in RESULTS_JSON (a"
                        " run of some workloads, e.g. --out elsewhere) into the"
                        " results.json in --out, keeping the other workloads' figures;"
                        " then rewrite results.md and results.png")
    p.add_argument("--no-install", action="store_true",
                   help="do not create or update bench/.peers-venv (peers are skipped if"
                        " it is missing)")
    args = p.parse_args(argv)
    args.workloads = _list(args.workloads, list(WORKLOADS), "workload")
    args.engines = _list(args.engines, list(ENGINES), "engine")
    args.stores = _list(args.stores, list(STORES), "store")
    args.mem_stores = _list(args.mem_stores, list(STORES), "store")
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1:
        raise SystemExit("--reps must be at least 1")
    if args.out is None:
        args.out = ROOT / ("bench/.quick-results" if args.quick else "docs/benchmarks")
    return args


def plan(args: argparse.Namespace) -> list[tuple[int, str, str, str]]:
    """(repetition, workload, store, engine) in run order: repetitions interleaved."""
    cells = []
    for rep in range(args.reps):
        for workload in args.workloads:
            for store in args.stores:
                if workload == "MEM" and (rep > 0 or store not in args.mem_stores):
                    continue
                for engine in args.engines:
                    if store in SUPPORT[engine].get(workload, ()):
                        cells.append((rep, workload, store, engine))
    return cells


def run_cell(engine: str, workload: str, store: str, scale: str, workdir: Path,
             timeout: float) -> dict[str, Any]:
    python = sys.executable if engine == "stackshift" else str(peers.python())
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("BENCH_SIZES", None)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", MODULES[engine], "run", "--workload", workload, "--store", store,
           "--scale", scale, "--workdir", str(workdir)]
    with open(workdir / "stderr.log", "wb") as err:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
                                  stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.decode(errors="replace").splitlines()):
        if line.startswith(RESULT_MARK):
            return dict(json.loads(line[len(RESULT_MARK):]))
    tail = (workdir / "stderr.log").read_text(errors="replace").strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores, {mem:.0f} GiB memory, Linux {platform.release()},"
            f" Python {platform.python_version()}")


def probe() -> dict[str, float]:
    """How fast this machine is at the moment at what the workloads spend their time
    on, so that runs on different days can be told apart: a pure-Python loop (5
    million additions, ms), a hand-off between two threads and back (µs), and a
    4 KiB write flushed to disk (µs); best of 3 each."""

    def loop() -> float:
        started, total = time.perf_counter(), 0
        for i in range(5_000_000):
            total += i
        return (time.perf_counter() - started) * 1000

    def hand_off(n: int = 5000) -> float:
        there, back = threading.Event(), threading.Event()

        def echo() -> None:
            for _ in range(n):
                there.wait()
                there.clear()
                back.set()

        thread = threading.Thread(target=echo)
        thread.start()
        started = time.perf_counter()
        for _ in range(n):
            there.set()
            back.wait()
            back.clear()
        thread.join()
        return (time.perf_counter() - started) / n * 1e6

    def flush(n: int = 100) -> float:
        with tempfile.TemporaryFile() as f:
            started = time.perf_counter()
            for _ in range(n):
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
            return (time.perf_counter() - started) / n * 1e6

    return {"python_loop_ms": min(loop() for _ in range(3)),
            "thread_round_trip_us": min(hand_off() for _ in range(3)),
            "fsync_us": min(flush() for _ in range(3))}


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out + ("+uncommitted src changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fairness(args: argparse.Namespace, pg: dict[str, str], versions: dict[str, str]
             ) -> list[str]:
    sizes = SIZES["quick" if args.quick else "full"]
    return [
        "Same durability: SQLite in WAL mode with `synchronous=FULL` and, separately,"
        " `NORMAL`, set on every connection of every engine (DBOS through a SQLAlchemy"
        " connect hook, Huey through its storage class); PostgreSQL"
        f" {pg.get('server_version', '?')} with `synchronous_commit={pg.get('synchronous_commit')}`"
        f" and `fsync={pg.get('fsync')}` (read from the server).",
        f"Same worker concurrency: {CONCURRENCY} for every engine (StackShift's worker"
        " concurrency, DBOS's queue `worker_concurrency`, Huey's worker threads,"
        " Procrastinate's concurrency). W5 gives each engine's worker 100 slots so that it"
        " can hold 100 runs.",
        f"Autovacuum is {pg.get('autovacuum', '?')} on this PostgreSQL server, so after a"
        " backlog is loaded (W1, W2, W3) every engine's tables are analyzed, as autovacuum"
        " would have done (without statistics PostgreSQL picks poor plans for every"
        " engine's queue queries).",
        (f"{args.reps} repetitions" if args.reps > 1 else "One repetition")
        + " of every cell, each in a fresh process on a fresh database"
        " (a new SQLite file, a new PostgreSQL schema)"
        + ("; medians with min and max" if args.reps > 1 else "")
        + ". The memory check runs once per store.",
        "Repetitions are interleaved (every engine runs a workload before the next"
        " repetition starts), so load from elsewhere on the machine falls on all engines"
        " alike.",
        f"Warm-up excluded: throughput is timed from the moment the first {sizes['warmup']}"
        " runs have completed; latency samples skip the first 20 of each repetition; W4"
        " makes 50 warm-up starts before timing.",
        "Peers get their best documented settings: DBOS's queue `polling_interval_sec` and"
        f" `notification_listener_polling_interval_sec` at {DBOS_POLL:g} s"
        " (defaults 1 s; its queue throughput rises as the interval falls, and 1 ms is the"
        " documented minimum of its listener); Huey's consumer polls every"
        f" {HUEY_POLL * 1000:g} ms without"
        " backoff (defaults 100 ms, backing off to 10 s); Procrastinate uses LISTEN/NOTIFY"
        " (its default) and async tasks.",
        "Completions are counted outside the engines: a plain SQL `COUNT` over each engine's"
        " own table every 5-20 ms (Huey, which keeps no record of finished tasks: its"
        " completion signal). While a backlog drains, the count is taken less often far from"
        " the end (after a quarter of the time the rest should take at the rate so far),"
        " since each count is work for the engine's own database.",
        "Each engine runs in its own interpreter: StackShift in the project's virtual"
        " environment, the peers in `bench/.peers-venv` (installed with pip: "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + "); no peer code enters the"
        " project.",
        "Where a peer cannot do a workload, its row is missing and a note under the table"
        " says why.",
    ]


def method(args: argparse.Namespace) -> list[str]:
    s = SIZES["quick" if args.quick else "full"]
    return [
        f"W1: {s['warmup'] + s['w1_backlog']:,} no-op runs are enqueued, then one worker"
        f" drains them; the rate is timed from the moment the first {s['warmup']} have"
        f" finished until the other {s['w1_backlog']:,} have, or for at most"
        f" {s['w1_cap']:g} s (an engine slower than {s['w1_backlog'] / s['w1_cap']:,.0f}"
        " runs/s is timed over part of the backlog). Then another process enqueues no-op"
        f" runs from {PRODUCER_THREADS} threads as fast as they can while the worker runs,"
        f" and completions are counted over {s['w1_window']:g} s after 1 s of warm-up.",
        f"W2: {s['w2_runs']:,} runs of a job with no steps, then {s['w2_runs']:,} runs of a"
        " job with 10 no-op steps, drained by one worker; overhead per step ="
        " (time per 10-step run - time per 0-step run) / 10, at the same concurrency.",
        f"W3: {s['w3_waiting']:,} runs wait for an event each (correlation key per run);"
        f" events are sent to {s['w3_events']} of them at 100 a second from the worker's"
        " process; latency = from just before the send to the handler continuing after"
        " the wait.",
        f"W4: one run is started with an idempotency key (DBOS: a workflow id), then"
        f" {s['w4_duplicates']:,} more starts with the same key; time per duplicate and"
        " the number of extra runs stored.",
        f"W5: a worker process holds {s['w5_runs']} runs (their handlers block) and is"
        " killed with SIGKILL; a new worker process starts at once; time from the kill to"
        f" the last run's handler running again. StackShift's lease is {s['w5_lease']:g} s,"
        " so its budget is lease + 1 s; the new worker runs on the same machine, so it"
        " sees the killed process gone and does not wait for the lease. DBOS recovers a"
        " process's workflows when a process with the same executor id starts.",
        f"W6: an idle worker process; another process starts {s['w6_runs']} runs at"
        f" {s['w6_rate']:g} a second (open loop); latency = from just before the start to"
        " the first step beginning (Huey and Procrastinate: the task beginning).",
        f"MEM: {s['mem_runs']:,} no-op runs through one worker process while another"
        " process enqueues them; the worker's resident memory after the first tenth"
        " against at the end (StackShift only: it is a StackShift target).",
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    console = Console()
    if args.render or args.merge:
        data = json.loads((args.out / "results.json").read_text())
        if args.merge:
            data = merge(data, json.loads(args.merge.read_text()))
        notes = ROOT / "bench" / "analysis.md"
        if notes.exists() and not data["run"]["quick"]:
            data["analysis"] = notes.read_text()
        write(args.out, data, console)
        return
    scale = "quick" if args.quick else "full"
    if any(e != "stackshift" for e in args.engines):
        if args.no_install:
            if not peers.ready():
                console.print("[yellow]bench/.peers-venv is missing: running StackShift only")
                args.engines = ["stackshift"]
        else:
            with console.status("Installing the peers into bench/.peers-venv ..."):
                peers.ensure(ROOT / "bench" / ".peers-install.log")
    versions = peers.versions() if peers.ready() else {}
    pg: dict[str, str] = {}
    if "postgres" in args.stores:
        pg = {k: pg_setting(k) for k in ("server_version", "synchronous_commit", "fsync",
                                         "autovacuum")}
    cells = plan(args)
    load_before = os.getloadavg()[0]
    if load_before > LOAD_LIMIT:
        console.print(f"[yellow]Load average is {load_before:.2f} (over {LOAD_LIMIT}): the"
                      " machine is busy; figures will be lower than on an idle machine.")
    probe_before = probe()
    started = datetime.now(UTC)
    scratch = Path(tempfile.mkdtemp(prefix="stackshift-bench-"))
    raw: dict[str, list[dict[str, Any]]] = {}
    loads = [load_before]
    progress = Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    with progress:
        task = progress.add_task("starting", total=len(cells))
        for rep, workload, store, engine in cells:
            progress.update(task, description=f"{workload} {ENGINES[engine]} {store}"
                                              f" (rep {rep + 1}/{args.reps})")
            workdir = scratch / f"{engine}-{store}-{workload}-r{rep + 1}"
            result = run_cell(engine, workload, store, scale, workdir, args.timeout)
            raw.setdefault(f"{engine}/{store}/{workload}", []).append(result)
            if "error" in result:
                progress.console.print(f"[red]{workload} {engine} {store}: {result['error']}"
                                       f" (logs in {workdir})")
            else:  # its databases and logs hold nothing more to look into
                shutil.rmtree(workdir, ignore_errors=True)
            loads.append(os.getloadavg()[0])
            progress.advance(task)
    if any(scratch.iterdir()):
        console.print(f"[yellow]The logs of the cells that failed are kept in {scratch}")
    else:
        scratch.rmdir()
    load_after = os.getloadavg()[0]
    summary = {key: summarise(reps) for key, reps in raw.items()}
    busy = max(loads) > LOAD_LIMIT
    data = {
        "run": {
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python -m bench",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "commit": commit(),
            "machine": machine(),
            "load_before": load_before,
            "load_after": load_after,
            "load_max": max(loads),
            "load_mean": sum(loads) / len(loads),
            "probe": [probe_before, probe()],
            "load_note": ("The machine was shared with other work during the run (1-minute"
                          f" load average up to {max(loads):.1f}, over {LOAD_LIMIT}, on 2"
                          " cores): absolute figures are lower than on an idle machine;"
                          " ratios were measured side by side."
                          if busy else "The machine was otherwise idle."),
            "quick": args.quick,
            "repetitions": args.reps,
            "workloads": args.workloads,
            "engines": args.engines,
            "stores": args.stores,
            "sizes": SIZES[scale],
            "concurrency": CONCURRENCY,
            "postgres": pg,
            "peers": versions,
        },
        "cells": summary,
        "raw": raw,
    }
    data["targets"] = check_targets(summary)
    data["fairness"] = fairness(args, pg, versions)
    data["method"] = method(args)
    notes = ROOT / "bench" / "analysis.md"
    if notes.exists() and not args.quick:
        data["analysis"] = notes.read_text()
    write(args.out, data, console)


def write(out: Path, data: dict[str, Any], console: Console) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "results.md").write_text(markdown(data))
    chart = out / "results.png"
    if peers.ready():
        done = subprocess.run([str(peers.python()), str(ROOT / "bench" / "chart.py"),
                               str(out / "results.json"), str(chart)], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:
            console.print(f"[red]chart failed: {done.stderr.strip()[-300:]}")
    console.print(f"Results: {out / 'results.md'}")
    missed = [t for t in data["targets"] if not t["met"]]
    console.print(f"Targets met: {len(data['targets']) - len(missed)} of {len(data['targets'])}")


if __name__ == "__main__":
    main()
