"""How late retries, sleeps and delayed starts begin after their due time.

    .venv/bin/python -m bench.due_lateness [--store sqlite-full|sqlite-normal|postgres]
        [--rounds 3]

One worker with default settings, nothing else running. Each round starts, at
once, three runs that fail their first attempt (retried 0.4 s later), three that
sleep 0.4 s and three started with a 0.4 s delay, then waits 1.2 s for them. A
quiet worker is the hard case: no other activity wakes it near the due time.

Measured per run: a retry from the failed attempt's end to the next attempt's
start, less the backoff; a sleep from the step just before it to the step just
after it, less 0.4 s (so it includes parking the run and claiming it again); a
delayed start from just before ``start`` to the handler, less 0.4 s. Prints the
median and maximum of each.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import helper_parser, scratch_url
from stackshift import StackShift

DELAY = 0.4
PER_ROUND = 3


def build(url: str) -> StackShift:
    app = StackShift(url)

    @app.job("flaky", max_attempts=2, backoff={"base": DELAY, "jitter": False})
    def flaky(ctx: Any) -> str:
        if ctx.run.attempt == 1:
            raise RuntimeError("the first attempt fails")
        return "ok"

    @app.job("nap")
    def nap(ctx: Any) -> float:
        before = ctx.step.run("before", time.time)
        ctx.step.sleep("nap", DELAY)
        return float(ctx.step.run("after", time.time)) - before - DELAY

    @app.job("later")
    def later(ctx: Any) -> float:
        return time.time()

    return app


def measure(url: str, rounds: int) -> dict[str, list[float]]:
    app = build(url)
    app.migrate()
    retries: list[str] = []
    naps: list[str] = []
    delayed: list[tuple[str, float]] = []
    with app.worker():
        time.sleep(0.5)
        for _ in range(rounds):
            for _ in range(PER_ROUND):
                retries.append(app.start("flaky").id)
                naps.append(app.start("nap").id)
                delayed.append((app.start("later", delay=DELAY).id, time.time()))
            time.sleep(3 * DELAY)
        for run_id in retries + naps + [run_id for run_id, _ in delayed]:
            assert app.runs.wait(run_id, timeout=30).status == "completed"
    found: dict[str, list[float]] = {"retry": [], "sleep": [], "delayed start": []}
    for run_id in retries:
        first, second = app.runs.attempts(run_id)
        gap = (second.started_at - first.finished_at).total_seconds()
        found["retry"].append(gap - DELAY)
    found["sleep"] = [float(app.runs.get(run_id).result) for run_id in naps]
    # The time was taken just after start returned: a bound on the lateness.
    found["delayed start"] = [float(app.runs.get(run_id).result) - started - DELAY
                              for run_id, started in delayed]
    app.close()
    return found


def main() -> None:
    args = helper_parser(__doc__ or "").parse_args()
    with scratch_url(args.store, "lateness") as (url, _):
        found = measure(url, args.rounds)
    for what, late in found.items():
        ms = sorted(x * 1000 for x in late)
        print(f"{args.store}: {what} late by median {statistics.median(ms):.1f} ms,"
              f" max {ms[-1]:.1f} ms ({len(ms)} runs)")


if __name__ == "__main__":
    main()
