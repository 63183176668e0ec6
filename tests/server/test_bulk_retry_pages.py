"""Bulk retry of any size through a real server, a page at a time: the remote
client, the HTTP API and ``stackshift queues retry`` report the true total, and no
run is retried twice by one call, even one that fails again while it goes on.

The page size is made small (``page_size``, ``--page-size``, ``limit`` over HTTP)
so that a few runs stand for the tens of thousands one request could not retry
within the remote client's 30 s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from serverproc import STACKSHIFT, Server, assert_error

from stackshift import NonRetriableError, StackShift
from stackshift.testing import run_until_idle


def failed_runs(engine: StackShift, job: str, queue: str, count: int) -> list[str]:
    """``count`` runs of ``job`` in ``queue`` that failed for good, newest first.
    The job fails every attempt, so a run retried fails again when executed."""

    @engine.job(job, queue=queue, max_attempts=1)
    def always_fails(ctx: object) -> None:
        raise NonRetriableError("still broken")

    ids = [engine.queue(queue).enqueue(job).id for _ in range(count)]
    run_until_idle(engine)
    assert {engine.runs.get(run_id).status for run_id in ids} == {"failed"}
    return sorted(ids, reverse=True)


def manual_retries(app: StackShift, run_id: str) -> int:
    return sum(1 for entry in app.runs.timeline(run_id) if entry.data.get("manual_retry"))


def retry_requests(http: httpx.Client) -> int:
    """How many bulk retries the server has answered with 200."""
    found = re.search(r'stackshift_http_responses_total\{method="POST",'
                      r'route="/v1/runs/retry-many",status="200"\} (\d+)',
                      http.get("/metrics").text)
    return int(found.group(1)) if found else 0


def test_a_bulk_retry_goes_in_pages_and_retries_each_run_once(
        client: StackShift, engine: StackShift, http: httpx.Client,
        unique: Callable[[str], str]) -> None:
    """Seven failed runs in pages of two: four pages (through a server, four
    requests), all seven retried and counted. The runs of the first page fail
    again before the second is asked for: they are not retried again."""
    queue = unique("bulk")
    ids = failed_runs(engine, unique("broken"), queue, 7)
    totals: list[int] = []

    def progress(total: int) -> None:
        totals.append(total)
        if len(totals) == 1:
            assert run_until_idle(engine) == 2  # the two retried fail again
            assert [engine.runs.get(i).status for i in ids[:2]] == ["failed", "failed"]

    before = retry_requests(http)
    retried = client.runs.retry_many(queue=queue, page_size=2, progress=progress)
    assert retried == ids  # newest first, each once
    assert totals == [2, 4, 6, 7]
    if client is not engine:
        assert retry_requests(http) == before + 4
    assert [manual_retries(engine, run_id) for run_id in ids] == [1] * 7
    assert [engine.runs.get(i).status for i in ids] == ["failed"] * 2 + ["queued"] * 5

    # With a limit: pages up to it, the newest failed runs first.
    run_until_idle(engine)
    totals.clear()
    assert client.runs.retry_many(queue=queue, limit=5, page_size=2,
                                  progress=totals.append) == ids[:5]
    assert totals == [2, 4, 5]
    assert [manual_retries(engine, run_id) for run_id in ids] == [2] * 5 + [1] * 2


def test_the_api_pages_a_bulk_retry_with_next_cursor(
        engine: StackShift, http: httpx.Client, unique: Callable[[str], str]) -> None:
    """``limit`` bounds one request; ``nextCursor`` (camelCase, ``null`` at the end)
    is sent back as ``cursor`` for the rest. A cursor no bulk retry returned is
    refused, and so is a ``limit`` of 0."""
    queue = unique("paged")
    ids = failed_runs(engine, unique("broken"), queue, 5)
    seen: list[str] = []
    cursors: list[str | None] = []
    body: dict[str, object] = {"queueName": queue, "limit": 2}
    while True:
        answer = http.post("/v1/runs/retry-many", json=body)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert set(page) == {"retried", "count", "nextCursor"}
        assert page["count"] == len(page["retried"])
        seen += page["retried"]
        cursors.append(page["nextCursor"])
        if page["nextCursor"] is None:
            break
        body["cursor"] = page["nextCursor"]
    assert seen == ids
    assert cursors == [ids[1], ids[3], None]
    run_until_idle(engine)  # all fail again
    whole = http.post("/v1/runs/retry-many", json={"queueName": queue}).json()
    assert (whole["retried"], whole["nextCursor"]) == (ids, None)
    error = assert_error(http.post("/v1/runs/retry-many", json={
        "queueName": queue, "cursor": "nope"}), 422, "validation_error")
    assert error["message"] == "cursor 'nope' is not one a list returned (a run_... id)"
    assert_error(http.post("/v1/runs/retry-many", json={"queueName": queue, "limit": 0}),
                 422, "validation_error")


@pytest.mark.parametrize("page_size", [0, 100_001, True, "2"])
def test_a_page_size_out_of_range_is_refused_before_any_retry(
        client: StackShift, page_size: object) -> None:
    from stackshift import ValidationError

    with pytest.raises(ValidationError, match="page_size must be an integer from 1 to 100000"):
        client.runs.retry_many(queue="any", page_size=page_size)  # type: ignore[arg-type]


def test_a_progress_that_is_no_function_is_refused_before_any_retry(
        client: StackShift, engine: StackShift, unique: Callable[[str], str]) -> None:
    # Taken, the first page was retried before the call failed with "'int' object
    # is not callable", and the caller learned of none of the runs it retried.
    from stackshift import ValidationError

    queue = unique("unsaid")
    ids = failed_runs(engine, unique("broken"), queue, 3)
    with pytest.raises(ValidationError) as refused:
        client.runs.retry_many(queue=queue, progress=1)  # type: ignore[arg-type]
    assert str(refused.value) == "progress must be a function of the total retried, got 1"
    assert [engine.runs.get(i).status for i in ids] == ["failed"] * 3


def test_the_command_line_retries_every_page_through_a_server(
        server: Server, engine: StackShift, unique: Callable[[str], str]) -> None:
    """``stackshift queues retry --page-size 2`` through the server: the total of
    every page, each run retried once."""
    queue = unique("cli")
    ids = failed_runs(engine, unique("broken"), queue, 5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    env.update(STACKSHIFT_URL=server.url, STACKSHIFT_API_KEY=server.api_key)
    done = subprocess.run([*STACKSHIFT, "queues", "retry", queue, "--page-size", "2", "--json"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"retried": ids, "count": 5}
    assert [manual_retries(engine, run_id) for run_id in ids] == [1] * 5
    run_until_idle(engine)
    done = subprocess.run([*STACKSHIFT, "queues", "retry", queue, "--page-size", "2"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Retried 5 failed runs of queue {queue}.\n"
    assert [manual_retries(engine, run_id) for run_id in ids] == [2] * 5
    # Of one job: said so (it read as the whole queue's).
    other = failed_runs(engine, unique("other"), queue, 1)
    run_until_idle(engine)
    job = engine.runs.get(ids[0]).job
    done = subprocess.run([*STACKSHIFT, "queues", "retry", queue, "--job", job],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Retried 5 failed runs of job {job} on queue {queue}.\n"
    assert [manual_retries(engine, run_id) for run_id in [*ids, *other]] == [3] * 5 + [0]


@pytest.mark.parametrize("through", ["database", "server"])
def test_runs_retry_many_retries_a_job_across_queues_by_creation_time(
        server: Server, served_db: str, engine: StackShift, unique: Callable[[str], str],
        through: str) -> None:
    """``stackshift runs retry-many``: a job's failed runs on every queue, not another
    job's on the same queue; ``--created-after`` leaves out the older ones; a time
    that is no time exits 2 and retries nothing."""
    job, other = unique("broken"), unique("other")
    first = failed_runs(engine, job, unique("east"), 2)
    cut = engine.clock.now()
    west = engine.queue(unique("west"))
    later = sorted((west.enqueue(job).id for _ in range(2)), reverse=True)
    run_until_idle(engine)
    kept = failed_runs(engine, other, unique("east"), 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    if through == "database":
        env["STACKSHIFT_DATABASE_URL"] = served_db
    else:
        env.update(STACKSHIFT_URL=server.url, STACKSHIFT_API_KEY=server.api_key)

    def retry_many(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*STACKSHIFT, "runs", "retry-many", *args], capture_output=True,
                              text=True, timeout=60, env=env)

    refused = retry_many("--job", job, "--created-after", "yesterday")
    assert refused.returncode == 2
    assert "--created-after: 'yesterday' is not an ISO-8601 time" in refused.stderr
    assert [manual_retries(engine, run_id) for run_id in first + later + kept] == [0] * 5

    done = retry_many("--job", job, "--page-size", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Retried 4 failed runs of job {job} on every queue.\n"
    assert [manual_retries(engine, run_id) for run_id in first + later + kept] == \
        [1] * 4 + [0]
    run_until_idle(engine)  # all four fail again

    since = datetime.fromtimestamp(cut, UTC).isoformat()
    done = retry_many("--job", job, "--created-after", since, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"retried": later, "count": 2}
    assert [manual_retries(engine, run_id) for run_id in first + later] == [1, 1, 2, 2]
