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


def stop_keeps_the_records_logged(app: StackShift, caplog: pytest.LogCaptureFixture) -> None:
    """A worker stopped while a step runs hands the run back with the records its
    attempt logged since its last checkpoint: they are stored with the hand-back,
    and the next worker's records follow them. The handler, stopped at its next
    step, is said to be handed back, not to have lost its lease to another worker."""
    entered = threading.Event()
    release = threading.Event()

    @app.job("chatty")
    def chatty(ctx):  # type: ignore[no-untyped-def]
        ctx.log.info("before any step")

        def slow() -> int:
            ctx.log.info("inside the step")
            entered.set()
            release.wait(30)
            return 1

        return ctx.step.run("slow", slow)

    run = app.start("chatty")
    worker = app.worker(concurrency=1, poll_interval=0.05)
    worker.start()
    with caplog.at_level(logging.INFO, logger="stackshift"):
        try:
            assert entered.wait(15), "the step did not start"
            worker.stop(grace=0)
        finally:
            release.set()
            worker.stop(grace=1)
        said = f"run {run.id}: handed back as the worker stopped; its handler stopped at a step"
        deadline = time.monotonic() + 15
        while said not in [r.getMessage() for r in caplog.records]:
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.02)
    assert not [r.getMessage() for r in caplog.records if "lease" in r.getMessage()]
    assert app.runs.get(run.id).status == "queued"
    assert [e.message for e in app.runs.logs(run.id)] == ["before any step", "inside the step"]

    with app.worker(concurrency=1, poll_interval=0.05):
        assert app.runs.wait(run.id, timeout="30s").status == "completed"
    logs = app.runs.logs(run.id)
    assert [e.message for e in logs][:2] == ["before any step", "inside the step"]
    assert len(logs) == 4  # the second invocation logs both again
