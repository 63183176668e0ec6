"""A new remote client against a server from an earlier version, which has no
``GET /v1/limits`` (``older_server_app.py``: the real app without that route, and
other routes as they were before; see there).

The client takes such a server to have the default limits and works as before;
any other failure to read the limits still surfaces.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from chatty import register_logging_loop
from serverproc import STACKSHIFT, Server, assert_error, free_port, start_server, stop_server

from stackshift import (
    AuthenticationError,
    LockNotAcquiredError,
    PayloadTooLargeError,
    RemoteError,
    StackShift,
)
from stackshift.settings import Settings


@pytest.fixture(scope="module")
def server(served_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(served_db, tmp_path_factory.mktemp("log") / "server.log",
                           asgi="older_server_app:app")
    try:
        yield running
    finally:
        stop_server(running)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 (not a StackShift one) answering with
    ``handler``, for as long as the block runs; gives its address."""
    site = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}"
    finally:
        site.shutdown()
        site.server_close()
        thread.join(timeout=10)


def limits_asked(http: httpx.Client) -> int:
    """How many ``GET /v1/limits`` the server has answered (404s to no route)."""
    found = re.search(r'stackshift_http_responses_total\{method="GET",route="unmatched",'
                      r'status="404"\} (\d+)', http.get("/metrics").text)
    return int(found.group(1)) if found else 0


def test_a_remote_client_uses_the_default_limits_of_a_server_without_them(
        server: Server, http: httpx.Client) -> None:
    assert_error(http.get("/v1/limits"), 404, "not_found")
    before = limits_asked(http)
    name = f"older-{uuid.uuid4().hex[:8]}"
    with StackShift(api_key=server.api_key, base_url=server.url) as app:
        run = app.start(name, {"order": 42}, idempotency_key=name)
        assert app.runs.get(run.id).payload == {"order": 42}
        app.state.set(name, {"progress": 0.5})
        assert app.state.get(name) == {"progress": 0.5}
        sent = app.events.send(name, {"paid": True})
        assert app.events.get(sent.id).payload == {"paid": True}
        # the limits of Settings() hold, in the embedded words, checked before sending
        limit = Settings().max_state_value_bytes
        with pytest.raises(PayloadTooLargeError) as raised:
            app.state.set(name, "x" * limit)
        assert str(raised.value) == (
            f"state value for {name!r} is {limit + 2} bytes as JSON, over the limit of"
            f" {limit} bytes; raise the limit with the server's --setting"
            " max_state_value_bytes=...")
        assert app.state.get(name) == {"progress": 0.5}
    # asked once, like a server's answer
    assert limits_asked(http) == before + 1


def test_start_many_through_a_server_without_it_says_so_and_starts_nothing(
        server: Server) -> None:
    job = f"older-many-{uuid.uuid4().hex[:8]}"
    with StackShift(api_key=server.api_key, base_url=server.url) as app:
        with pytest.raises(RemoteError) as refused:
            app.start_many(job, [{"n": 1}, {"n": 2}])
        assert str(refused.value) == (
            f"the server at {server.url} has no POST /v1/runs/many (a server from an earlier"
            " version): upgrade it, or start the runs one at a time with start()")
        assert refused.value.code == "not_supported"
        assert app.runs.list(job=job).items == []
        assert app.start(job, {"n": 1}).created  # one at a time works


def test_start_again_through_a_server_without_it_says_so_and_starts_nothing(
        server: Server) -> None:
    job = f"older-again-{uuid.uuid4().hex[:8]}"
    with StackShift(api_key=server.api_key, base_url=server.url) as app:
        run = app.start(job, {"n": 1})
        with pytest.raises(RemoteError) as refused:
            app.runs.start_again(run.id)
        assert str(refused.value) == (
            f"the server at {server.url} has no POST /v1/runs/{{id}}/again (a server from an"
            " earlier version): upgrade it, or start the run's job with its payload with"
            " start()")
        assert refused.value.code == "not_supported"
        assert [r.id for r in app.runs.list(job=job).items] == [run.id]


def test_other_failures_to_read_the_limits_still_surface(server: Server) -> None:
    with (StackShift(api_key="ssk_unknown", base_url=server.url) as app,
          pytest.raises(AuthenticationError)):
        app.start("older", {"a": 1})
    nobody = f"http://127.0.0.1:{free_port()}"
    with (StackShift(api_key=server.api_key, base_url=nobody) as app,
          pytest.raises(httpx.ConnectError)):
        app.state.set("older", 1)

    class Unavailable(BaseHTTPRequestHandler):
        """A proxy whose server is down: 502 to everything."""

        def do_GET(self) -> None:
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serving(Unavailable) as url, \
            StackShift(api_key=server.api_key, base_url=url) as app:
        with pytest.raises(RemoteError) as raised:
            app.start("older", {"a": 1})
        assert raised.value.status == 502
        with pytest.raises(RemoteError):  # not remembered: asked again
            app.state.set("older", 1)


def test_the_command_line_starts_runs_through_a_server_that_lists_no_jobs(
        server: Server) -> None:
    """Such a server cannot say which jobs workers have registered: ``stackshift
    start`` starts the run as before, without a warning it cannot back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    env.update(STACKSHIFT_URL=server.url, STACKSHIFT_API_KEY=server.api_key)
    job = f"older-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([*STACKSHIFT, "start", job, "--json"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["job"] == job


@pytest.mark.parametrize("status", [200, 404])
def test_another_web_server_at_the_address_is_told_apart(server: Server, status: int) -> None:
    """A base_url that reaches a web site or a proxy's error page, not a StackShift
    server: the client says so, with the page's title, instead of showing the page's
    markup or failing to read it as JSON; a 404 page is not taken for an older server
    without ``GET /v1/limits``."""
    page = ("<!DOCTYPE html><html><head><title>Acme Intranet\n - Sign in</title>"
            "<style>body{}</style></head><body>" + "<p>hello</p>" * 100 + "</body></html>")

    class Website(BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = page.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _page

        def log_message(self, *args: object) -> None:
            pass

    with serving(Website) as url:
        told = (f"HTTP {status} from {url}{{path}} is not a StackShift server's answer "
                f"(text/html, {len(page):,} bytes: 'Acme Intranet - Sign in'); check the "
                "base_url")
        with StackShift(api_key=server.api_key, base_url=url) as app:
            with pytest.raises(RemoteError) as raised:
                app.runs.get("run_01")
            assert str(raised.value) == told.format(path="/v1/runs/run_01")
            assert raised.value.status == status
            with pytest.raises(RemoteError) as raised:
                app.state.set("older", 1)  # asks for the limits first
            assert str(raised.value) == told.format(path="/v1/limits")


def test_locks_are_taken_from_a_server_without_lock_holders(
        server: Server, http: httpx.Client) -> None:
    """Such a server refuses a ``holder`` in an acquire as an unknown field: the
    client takes its locks without saying who holds them, and asks so once."""
    key = f"older-{uuid.uuid4().hex[:8]}"
    body = {"key": key, "owner": "o", "ttl": "1m", "holder": "me"}
    refused = assert_error(http.post("/v1/locks/acquire", json=body), 422, "validation_error")
    # Servers of that time said no more; this one lists the fields it takes too.
    assert refused["message"].startswith("holder: Extra inputs are not permitted")
    before = refusals(http)
    with StackShift(api_key=server.api_key, base_url=server.url) as app:
        for _ in range(2):
            with app.state.lock(key, ttl="1m") as held:
                assert app.state.locks(key) == [
                    {"key": key, "holder": None, "expires_at": pytest.approx(
                        time.time() + 60, abs=5)}]
            assert held.lost is False
        with app.state.lock(key), pytest.raises(LockNotAcquiredError) as other, \
                app.state.lock(key):
            pass
        assert str(other.value).startswith(
            f"lock {key!r} is held by another owner (who did not say who it is), for ")
    assert refusals(http) == before + 1  # four locks taken, the holder refused once


def refusals(http: httpx.Client) -> int:
    """How many acquires the server has refused with 422."""
    found = re.search(r'stackshift_http_responses_total\{method="POST",'
                      r'route="/v1/locks/acquire",status="422"\} (\d+)', http.get("/metrics").text)
    return int(found.group(1)) if found else 0


def test_a_bulk_retry_through_a_server_without_pages_retries_every_match_once(
        server: Server, served_db: str) -> None:
    """Such a server takes no ``cursor`` and answers no ``nextCursor``: after a full
    first page the client asks for the rest in one request, as before pages."""
    from stackshift import NonRetriableError
    from stackshift.testing import run_until_idle

    queue, job = f"older-{uuid.uuid4().hex[:8]}", f"broken-{uuid.uuid4().hex[:8]}"
    with StackShift(served_db) as engine:
        @engine.job(job, queue=queue, max_attempts=1)
        def always_fails(ctx: object) -> None:
            raise NonRetriableError("still broken")

        ids = sorted((engine.queue(queue).enqueue(job).id for _ in range(5)), reverse=True)
        run_until_idle(engine)
        with StackShift(api_key=server.api_key, base_url=server.url) as app:
            totals: list[int] = []
            assert app.runs.retry_many(queue=queue, page_size=2,
                                       progress=totals.append) == ids
            assert totals == [5]
            run_until_idle(engine)
            assert app.runs.retry_many(queue=queue, limit=3, page_size=2) == ids[:3]
            run_until_idle(engine)
            assert app.runs.retry_many(queue=queue, limit=2, page_size=2) == ids[:2]
            assert app.runs.retry_many(queue=queue, page_size=10) == ids[2:]


def test_logs_are_read_whole_and_in_pages_from_a_server_without_pages(
        server: Server, served_db: str) -> None:
    """Such a server takes no ``limit`` or ``last`` (it refuses them as unknown):
    the client asks once, then reads a run's records after ``after`` whole and
    gives the first ``limit`` of them, or the whole log and gives its last
    ``last``; ``stackshift runs logs`` prints every record, or the latest."""
    from stackshift.testing import run_until_idle

    job = f"older-logs-{uuid.uuid4().hex[:8]}"
    with StackShift(served_db) as engine:
        @engine.job(job)
        def counting(ctx: Any) -> None:
            for n in range(12):
                ctx.log.info("record %d", n)

        run = engine.start(job)
        run_until_idle(engine)
        expected = [e.message for e in engine.runs.logs(run.id)]
    assert expected == [f"record {n}" for n in range(12)]
    with StackShift(api_key=server.api_key, base_url=server.url) as app:
        first = app.runs.logs(run.id, limit=5)
        assert [e.message for e in first] == expected[:5]
        assert [e.message for e in app.runs.logs(run.id, after=first[-1].id, limit=5)] == \
            expected[5:10]
        assert [e.message for e in app.runs.logs(run.id)] == expected
        assert [e.message for e in app.runs.logs(run.id, last=3)] == expected[-3:]
        assert [e.message for e in app.runs.logs(run.id, last=50)] == expected
        with pytest.raises(ValueError, match="limit must be a whole number from 1 to 10,000"):
            app.runs.logs(run.id, limit=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    env.update(STACKSHIFT_URL=server.url, STACKSHIFT_API_KEY=server.api_key)
    for tail, shown in (([], expected), (["--tail", "2"], expected[-2:])):
        done = subprocess.run([*STACKSHIFT, "runs", "logs", run.id, *tail], capture_output=True,
                              text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert [line.rsplit(": ", 1)[-1] for line in done.stdout.splitlines()] == shown


def test_a_remote_worker_puts_fields_in_the_message_for_a_server_without_them(
        server: Server) -> None:
    """Such a server refuses a log record's ``fields`` (its registration says
    nothing of them): a remote worker puts them at the end of the message, as
    ``name=value`` pairs, and the run completes."""
    job = f"older-fields-{uuid.uuid4().hex[:8]}"
    with StackShift(api_key=server.api_key, base_url=server.url) as remote:
        @remote.job(job, max_attempts=1)
        def charge(ctx: Any) -> str:
            ctx.log.info("charging", extra={"order": "o 1", "amount": 12.5})
            ctx.step.run("fetch", lambda: 1)
            try:
                raise KeyError("card")
            except KeyError:
                ctx.log.exception("declined", extra={"code": 51})
            return "done"

        with remote.worker(concurrency=1):
            run = remote.start(job)
            done = remote.runs.wait(run.id, timeout="30s")
        assert (done.status, done.error) == ("completed", None)
        charging, declined = remote.runs.logs(run.id)
    assert (charging.message, charging.fields) == ('charging order="o 1" amount=12.5', {})
    assert declined.message.startswith("declined\nTraceback")
    assert declined.message.endswith("KeyError: 'card'\ncode=51") and declined.fields == {}


def test_a_remote_worker_holds_a_runs_records_within_its_budget_for_a_server_without_them(
        server: Server) -> None:
    """Such a server's lease renewals take no log records (its registration says
    nothing of them): a remote worker sends a run's records with its checkpoints
    only, and a handler logging 4 MB in a tight loop between two of them (twice)
    leaves it holding no more than 512 KiB at any time: the first and the latest,
    and one warning per checkpoint for those dropped. Its renewals still hold
    the lease."""
    job = f"older-loop-{uuid.uuid4().hex[:8]}"
    held: list[int] = []
    with StackShift(api_key=server.api_key, base_url=server.url) as remote:
        # A renewal (every second) after each step, while nothing is logged.
        register_logging_loop(remote, job, held, pause=1.2)

        with remote.worker(concurrency=1, lease="3s"):
            run = remote.start(job)
            done = remote.runs.wait(run.id, timeout="120s")
        assert (done.status, done.result, done.error) == ("completed", "done", None)
        assert [a.status for a in remote.runs.attempts(run.id)] == ["completed"]
        entries = remote.runs.logs(run.id)
    # About 330 bytes a record as sent: some 1,550 records fit in 512 KiB.
    assert max(held) < 1_700, held
    warnings = [n for n, e in enumerate(entries) if e.level == "WARNING"]
    assert len(warnings) == 2, [e.message[:100] for e in entries if e.level == "WARNING"]
    words = [e.message.split()[:2] for e in entries]
    for segment, at in zip(("a", "b"), warnings, strict=True):
        head = [w for w in words[:at] if w[0] == segment]
        tail = [w for w in words[at + 1:] if w[0] == segment]
        assert head == [[segment, f"{n:05d}"] for n in range(len(head))] and len(head) > 500
        assert tail == [[segment, f"{n:05d}"] for n in range(20_000 - len(tail), 20_000)]
        assert len(tail) > 500
        dropped = 20_000 - len(head) - len(tail)
        warning = entries[at]
        assert (warning.logger, warning.attempt) == ("stackshift.worker", 1)
        assert warning.message.startswith(f"[... {dropped} log records (")
        assert ("bytes) dropped here: a remote worker holds at most 524288 bytes of a run's "
                "log records not yet sent, the first and the latest ...]") in warning.message
    kept = sum(len(e.message) for e in entries[:warnings[1]])
    assert 350 * 1024 < kept < 512 * 1024


def test_a_remote_worker_whose_server_is_replaced_by_an_earlier_version_keeps_runs_and_records(
        served_db: str, tmp_path: Path) -> None:
    """The server a worker registered with (its renewals take log records) is
    replaced, on the same address, by one from an earlier version (they take
    none): the first renewal, carrying the records logged meanwhile, is refused;
    the worker sends them with its checkpoints from then on, and its run keeps
    its lease and completes in its only attempt, with every record. Their fields,
    refused too, go in their messages from then on: those of the records logged
    before the change as well."""
    job = f"downgraded-{uuid.uuid4().hex[:8]}"
    stopped, logged, go = threading.Event(), threading.Event(), threading.Event()
    port = free_port()
    newer = start_server(served_db, tmp_path / "newer.log", port=port)
    older = None
    try:
        with StackShift(api_key=newer.api_key, base_url=newer.url) as remote:
            @remote.job(job, max_attempts=1)
            def logs_across(ctx: Any) -> str:
                def work() -> None:
                    ctx.log.info("before", extra={"phase": "before"})
                    stopped.wait(30)
                    for n in range(5):
                        ctx.log.info("during %d", n, extra={"n": n})
                    logged.set()
                    go.wait(30)
                ctx.step.run("work", work)
                ctx.log.info("after", extra={"phase": "after"})
                return "done"

            with remote.worker(concurrency=1, lease="6s"):
                run = remote.start(job)
                deadline = time.monotonic() + 15
                while not remote.runs.logs(run.id):  # sent with a renewal (every 2 s)
                    assert time.monotonic() < deadline, "no record while the step runs"
                    time.sleep(0.05)
                stop_server(newer)
                stopped.set()
                assert logged.wait(10)  # records no renewal can send: the server is away
                older = start_server(served_db, tmp_path / "older.log", port=port,
                                     asgi="older_server_app:app")
                time.sleep(4.5)  # renewals meanwhile: the first, with the records, refused
                go.set()
                done = remote.runs.wait(run.id, timeout="30s")
            assert (done.status, done.result, done.error) == ("completed", "done", None)
            assert [a.status for a in remote.runs.attempts(run.id)] == ["completed"]
            records = [(e.message, e.fields) for e in remote.runs.logs(run.id)]
        assert records == [("before", {"phase": "before"}),
                           *((f"during {n} n={n}", {}) for n in range(5)),
                           ("after phase=after", {})]
        with older.http() as http:
            metrics = http.get("/metrics").text
        renewals = {int(status): int(count) for status, count in re.findall(
            r'stackshift_http_responses_total\{method="POST",route="/v1/worker/renew",'
            r'status="(\d+)"\} (\d+)', metrics)}
        # Refused once, then renewed without records, as often as every 2 s.
        assert renewals.get(422) == 1 and renewals.get(200, 0) >= 1, renewals
    finally:
        stop_server(newer)
        if older is not None:
            stop_server(older)
