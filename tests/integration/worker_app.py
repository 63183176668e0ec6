"""A worker process for the crash-recovery and shutdown tests.

    python tests/integration/worker_app.py URL EFFECTS [--flavour async] [--hang-at 3]
        [--step-seconds 0.5 [--slow-at N]] [--lease 1s] [--grace 10s]

It serves one job, ``fiveSteps``: five steps, each appending ``start:step-N:PID``
and ``done:step-N:PID`` to the EFFECTS file (flushed and fsynced, so a killed
process leaves an exact record of the side effects it made). ``--hang-at N``
makes step N block, so the test can kill the process in the middle of the run.
``--step-seconds`` makes every step (or only step ``--slow-at``) take that long.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from stackshift import StackShift

JOB = "fiveSteps"


def effect(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def build(url: str, effects: str, *, flavour: str = "sync", hang_at: int | None = None,
          step_seconds: float = 0.0, slow_at: int | None = None) -> StackShift:
    app = StackShift(url)
    pid = os.getpid()

    def pause(n: int) -> float:
        return step_seconds if slow_at is None or slow_at == n else 0.0

    def work(n: int) -> dict[str, int]:
        effect(effects, f"start:step-{n}:{pid}")
        if hang_at == n:
            time.sleep(600)
        time.sleep(pause(n))
        effect(effects, f"done:step-{n}:{pid}")
        return {"step": n, "pid": pid}

    async def work_async(n: int) -> dict[str, int]:
        effect(effects, f"start:step-{n}:{pid}")
        if hang_at == n:
            await asyncio.sleep(600)
        await asyncio.sleep(pause(n))
        effect(effects, f"done:step-{n}:{pid}")
        return {"step": n, "pid": pid}

    if flavour == "sync":

        @app.job(JOB, backoff={"base": "0.1s"})
        def five_steps(ctx: Any) -> dict[str, Any]:
            done = [ctx.step.run(f"step-{n}", work, n) for n in range(1, 6)]
            return {"pids": [d["pid"] for d in done]}

    else:

        @app.job(JOB, backoff={"base": "0.1s"})
        async def five_steps_async(ctx: Any) -> dict[str, Any]:
            done = [await ctx.step.run(f"step-{n}", work_async, n) for n in range(1, 6)]
            return {"pids": [d["pid"] for d in done]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("effects")
    parser.add_argument("--flavour", default="sync", choices=["sync", "async"])
    parser.add_argument("--hang-at", type=int, default=None)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--slow-at", type=int, default=None)
    parser.add_argument("--lease", default="1s")
    parser.add_argument("--grace", default="10s")
    args = parser.parse_args()
    app = build(args.url, args.effects, flavour=args.flavour, hang_at=args.hang_at,
                step_seconds=args.step_seconds, slow_at=args.slow_at)
    effect(args.effects, f"ready:{os.getpid()}")
    app.worker(lease=args.lease, shutdown_grace=args.grace, poll_interval="0.2s").run()
    effect(args.effects, f"exited:{os.getpid()}")


if __name__ == "__main__":
    main()
