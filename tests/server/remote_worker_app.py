"""The app a remote worker serves in ``test_remote_worker.py``.

Built with ``StackShift()``: run as ``stackshift worker ... --url URL --api-key KEY``
it talks to the server only. Each step appends ``start:NAME:PID`` and
``done:NAME:PID`` to the file in ``REMOTE_EFFECTS`` (fsynced, so a killed process
leaves an exact record); ``REMOTE_HANG_AT=NAME`` makes that step block.
``remoteGated`` waits between its two steps until the file named in its payload exists.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from stackshift import StackShift

app = StackShift()
PID = os.getpid()


def effect(line: str) -> None:
    with open(os.environ["REMOTE_EFFECTS"], "a", encoding="utf-8") as f:
        f.write(f"{line}:{PID}\n")
        f.flush()
        os.fsync(f.fileno())


def work(name: str) -> dict[str, Any]:
    effect(f"start:{name}")
    if os.environ.get("REMOTE_HANG_AT") == name:
        time.sleep(600)
    effect(f"done:{name}")
    return {"step": name, "pid": PID, "host": socket.gethostname()}


@app.job("remoteSteps", backoff={"base": "0.1s"})
def remote_steps(ctx: Any) -> dict[str, Any]:
    tag = ctx.payload["tag"]
    done = [ctx.step.run(f"{tag}-{n}", work, f"{tag}-{n}") for n in range(1, 4)]
    return {"pids": [d["pid"] for d in done]}


@app.job("remoteFlaky", max_attempts=3, backoff={"base": "0.1s", "jitter": False})
def remote_flaky(ctx: Any) -> dict[str, Any]:
    tag = ctx.payload["tag"]
    first = ctx.step.run(f"{tag}-first", work, f"{tag}-first")
    if ctx.run.attempt < 3:
        raise RuntimeError(f"attempt {ctx.run.attempt} fails")
    return {"first": first["step"], "attempt": ctx.run.attempt}


@app.job("remoteGated", max_attempts=1)
def remote_gated(ctx: Any) -> str:
    tag = ctx.payload["tag"]
    ctx.step.run(f"{tag}-1", work, f"{tag}-1")
    while not Path(ctx.payload["gate"]).exists():
        time.sleep(0.01)
    ctx.step.run(f"{tag}-2", work, f"{tag}-2")
    return "through"


@app.job("remoteSleeper")
def remote_sleeper(ctx: Any) -> str:
    tag = ctx.payload["tag"]
    ctx.step.run(f"{tag}-before", work, f"{tag}-before")
    ctx.step.sleep("nap", "1s")
    ctx.step.run(f"{tag}-after", work, f"{tag}-after")
    return "rested"


@app.job("remoteWaiter")
def remote_waiter(ctx: Any) -> dict[str, Any]:
    tag = ctx.payload["tag"]
    ctx.step.run(f"{tag}-before", work, f"{tag}-before")
    event = ctx.step.wait_for_event("approved", correlation_key=tag, timeout="5m")
    ctx.log.info("approved by %s", event.payload["by"])
    return {"approvedBy": event.payload["by"]}


@app.job("remoteKeyChange", max_attempts=3)
def remote_key_change(ctx: Any) -> str:
    """Waits with the correlation key in the file named in its payload, which a
    test rewrites between the wait and its replay, as a deploy would change it."""
    key = Path(ctx.payload["keyfile"]).read_text()
    event = ctx.step.wait_for_event("approved", correlation_key=key, timeout="5m")
    return f"approved for {event.correlation_key}"


async def add_one(n: int) -> int:
    return n + 1


@app.job("remoteAsync")
async def remote_async(ctx: Any) -> int:
    total = 0
    for n in range(3):
        total += await ctx.step.run(f"add-{n}", add_one, n)
    return total
