"""What a worker stopped in the middle of a run does with it, embedded or remote."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from stackshift import StackShift


def stop_with_a_cancel_requested(app: StackShift, caplog: pytest.LogCaptureFixture) -> None:
    """A worker stopped with no grace while a run it executes was asked to cancel:
    the run ends cancelled, not handed back, and the worker's log says so."""
    release = threading.Event()

    @app.job("blocked")
    def blocked(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("wait", release.wait, 30)

    worker = app.worker(concurrency=1, poll_interval=0.05)
    worker.start()
    try:
        run = app.start("blocked")
        deadline = time.monotonic() + 15
        while app.runs.get(run.id).status != "running":
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.02)
        app.runs.cancel(run.id, reason="not needed")
        with caplog.at_level(logging.WARNING):
            worker.stop(grace=0)
    finally:
        release.set()
        worker.stop(grace=1)
    done = app.runs.get(run.id)
    assert done.status == "cancelled"
    said = [r.getMessage() for r in caplog.records if "when the worker stopped" in r.getMessage()]
    assert said == [f"run {run.id}: still running when the worker stopped, with a cancel"
                    " requested; cancelled"], said
