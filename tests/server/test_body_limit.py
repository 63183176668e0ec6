"""The server's request body limit and the value limits agree: by default every
value within the limits reaches the server, however a remote worker's request
escapes it; a limit set lower by hand fails the attempt at once, in words that
name it, instead of leaving a live worker's run to be taken for lost."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import Server, start_server, stop_server

from stackshift import StackShift
from stackshift.serialization import MiB

pytestmark = pytest.mark.slow

#: A string whose JSON text is just under the 1 MiB step result limit, and whose
#: every character is escaped again in a worker's request: about 2 MiB there.
QUOTES = '"' * (MiB // 2 - 16)


def _remote(server: Server) -> StackShift:
    return StackShift(api_key=server.api_key, base_url=server.url)


def test_results_and_payloads_at_the_default_limits_reach_a_default_server(
        server: Server) -> None:
    app = _remote(server)
    name = f"big-{uuid.uuid4().hex[:8]}"

    @app.job(name, max_attempts=1)
    def big(ctx: Any) -> str:
        step = ctx.step.run("quotes", lambda: QUOTES)
        return str(step)

    try:
        payload = "x" * (MiB - 2)  # exactly the payload limit as JSON
        run = app.start(name, payload)
        assert app.runs.get(run.id).payload == payload
        with app.worker():
            done = app.runs.wait(run.id, timeout="60s")
        assert (done.status, done.attempt, done.result == QUOTES) == ("completed", 1, True)
        assert app.runs.steps(run.id)[0].result == QUOTES
    finally:
        app.close()


@pytest.fixture
def small_server(served_db: str, tmp_path: Path) -> Iterator[Server]:
    """A server whose body limit, set by hand, is under the value limits."""
    running = start_server(served_db, tmp_path / "server.log", "--max-body-bytes", "65536")
    try:
        yield running
    finally:
        stop_server(running)


def test_a_result_over_a_lowered_body_limit_fails_the_attempt_at_once_in_words_naming_it(
        small_server: Server) -> None:
    app = _remote(small_server)
    step_job, result_job = f"step-{uuid.uuid4().hex[:8]}", f"result-{uuid.uuid4().hex[:8]}"
    calls: list[str] = []

    @app.job(step_job, max_attempts=3)
    def big_step(ctx: Any) -> None:
        logging.getLogger("shop").warning("before the step")
        calls.append(step_job)
        ctx.step.run("big", lambda: "y" * 100_000)

    @app.job(result_job, max_attempts=3)
    def big_result(ctx: Any) -> str:
        logging.getLogger("shop").warning("before the ending")
        calls.append(result_job)
        return "z" * 100_000

    try:
        runs = [app.start(step_job), app.start(result_job)]
        with app.worker(concurrency=2):
            ended = [app.runs.wait(run.id, timeout="20s") for run in runs]
        for run in ended:
            # Failed on the first attempt, not retried, not taken for a lost worker.
            assert (run.status, run.attempt) == ("failed", 1)
            assert run.error is not None and run.error.type == "StepResultTooLargeError"
            assert "within the limit, but the server refused the request carrying it" \
                in run.error.message
            assert "over the limit of 65536 bytes" in run.error.message
            assert "--max-body-bytes" in run.error.message
        assert ended[0].error is not None and ended[0].error.message.startswith(
            "result of step 'big' is 100002 bytes as JSON")
        assert ended[1].error is not None and ended[1].error.message.startswith(
            "job result is 100002 bytes as JSON")
        assert sorted(calls) == sorted([step_job, result_job])
        step = app.runs.steps(runs[0].id)[0]
        assert (step.name, step.status) == ("big", "failed")
        # The records logged before the refused request are kept.
        assert [r.message for r in app.runs.logs(runs[0].id)
                if r.logger == "shop"] == ["before the step"]
        assert [r.message for r in app.runs.logs(runs[1].id)
                if r.logger == "shop"] == ["before the ending"]
    finally:
        app.close()
