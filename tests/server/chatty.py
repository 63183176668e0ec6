"""A handler that logs in a tight loop between two checkpoints, twice: 20,000
records of about 330 bytes (as a remote worker sends them) before each of its
steps ``after-a`` and ``after-b``, noting every 1,000 records how many its
worker holds not yet written."""

from __future__ import annotations

import time
from typing import Any

from stackshift import StackShift, runlogs

RECORDS = 20_000


def register_logging_loop(app: StackShift, job: str, held: list[int],
                          pause: float = 0.0) -> None:
    """Register ``job`` on ``app``; ``held`` gets the counts; ``pause``: seconds
    slept after each step."""

    @app.job(job, max_attempts=1)
    def loop(ctx: Any) -> str:
        invocation = runlogs.CURRENT.get()
        assert invocation is not None
        for segment in ("a", "b"):
            for n in range(RECORDS):
                ctx.log.info("%s %05d %s", segment, n, "x" * 200)
                if n % 1_000 == 999:
                    held.append(len(invocation._logs))
            ctx.step.run(f"after-{segment}", lambda: 1)
            time.sleep(pause)
        return "done"
