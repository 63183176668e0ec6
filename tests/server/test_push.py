"""Push mode end to end: ``stackshift server`` invokes an application's handler route.

The application is ``push_app.py``: FastAPI served by uvicorn in a subprocess
on 127.0.0.1, talking to a real ``stackshift server`` process with an API key
only. Steps leave fsynced lines in an effects file, so a killed application
leaves an exact record of what ran.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import httpx
import pytest
import uvicorn
from serverproc import (
    QuietHandler,
    Server,
    admin_service,
    free_port,
    running_server,
    start_server,
    stop_server,
)

import stackshift
from processes import stop_processes
from stackshift import AsyncStackShift, StackShift, ValidationError
from stackshift.ids import new_id
from stackshift.push import SECRET_ENV
from stackshift.signing import new_secret, sign

HERE = Path(__file__).parent

pytestmark = pytest.mark.slow


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    with running_server(db_url, tmp_path / "server.log") as running:
        yield running


@pytest.fixture
def client(remote: StackShift) -> StackShift:
    """The remote client (conftest) through this module's server."""
    return remote


class PushApp:
    """``uvicorn push_app:app`` on one port, started (and killed) by the test."""

    def __init__(self, server: Server, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/stackshift/"
        self.effects = tmp / "effects.txt"
        self.record = tmp / "requests.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, hang_at: str | None = None, hang_seconds: float | None = None,
              api_key: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STACKSHIFT_", "PUSH_"))}
        env.update(STACKSHIFT_URL=self.server.url,
                   STACKSHIFT_API_KEY=api_key or self.server.api_key,
                   PUSH_URL=self.url, PUSH_EFFECTS=str(self.effects),
                   PUSH_RECORD=str(self.record))
        if hang_at is not None:
            env["PUSH_HANG_AT"] = hang_at
        if hang_seconds is not None:
            env["PUSH_HANG_SECONDS"] = str(hang_seconds)
        log = self.tmp / f"app-{self.starts}.out"
        self.starts += 1
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "push_app:app", "--app-dir", str(HERE),
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.tmp,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).is_success:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the application did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_processes([self.proc], grace=10)

    def lines(self) -> list[str]:
        return self.effects.read_text().splitlines() if self.effects.exists() else []

    def effects_of(self, kind: str) -> Counter[str]:
        """How often each step reached ``start`` or ``done``."""
        return Counter(line.split(":")[1] for line in self.lines() if line.startswith(kind + ":"))

    def wait_for_line(self, prefix: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines()):
                return
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} in the effects after {timeout}s: {self.lines()}")

    def requests(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def push_app(server: Server, tmp_path: Path) -> Iterator[PushApp]:
    app = PushApp(server, tmp_path)
    try:
        yield app
    finally:
        app.stop()


def wait_status(client: StackShift, run_id: str, status: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.runs.get(run_id)
        if run.status == status:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} is not {status} after {timeout}s: "
                         f"{client.runs.get(run_id)}")


def test_user_onboarding_survives_a_killed_app_and_resumes_on_its_event(
    client: StackShift, push_app: PushApp
) -> None:
    push_app.start(hang_at="send-verification-email")
    run = client.start("userOnboarding", {"userId": "42", "email": "ada@example.com"})

    # The first step completes; the app is killed in the middle of the second.
    push_app.wait_for_line("start:send-verification-email")
    assert push_app.effects_of("done") == Counter({"create-user": 1})
    push_app.kill()

    # The server hands the run back and delivers it again once the app is up.
    push_app.start()
    waiting = wait_status(client, run.id, "waiting")
    assert waiting.waiting_for is not None
    assert (waiting.waiting_for.event_name, waiting.waiting_for.correlation_key) == (
        "email.verified", "user:42")
    steps = {s.name: s.status for s in client.runs.steps(run.id)}
    assert steps == {"create-user": "completed", "send-verification-email": "completed",
                     "email.verified": "waiting"}

    sent = client.events.send("email.verified", {"userId": "42"}, correlation_key="user:42")
    assert sent.resumed_run_ids == [run.id]
    done = wait_status(client, run.id, "completed")
    assert done.result == {"onboarded": "42", "eventId": sent.id}

    # No completed step ran twice: only the step the kill interrupted started again.
    assert push_app.effects_of("done") == Counter(
        {"create-user": 1, "send-verification-email": 1, "unlock-account": 1})
    assert push_app.effects_of("start") == Counter(
        {"create-user": 1, "send-verification-email": 2, "unlock-account": 1})
    # One attempt throughout: handing the run back after the kill ends no attempt.
    assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]
    kinds = [e.kind for e in client.runs.timeline(run.id)]
    assert "run.queued" in kinds[1:]  # handed back after the kill


def test_a_step_longer_than_the_lease_runs_once_across_a_server_restart(
    client: StackShift, push_app: PushApp, server: Server, db_url: str, tmp_path: Path
) -> None:
    # The step outlasts the lease the server gave the run (30 s).
    push_app.start(hang_at="echo-1", hang_seconds=40)
    run = client.start("pushEcho", {"n": 1})
    push_app.wait_for_line("start:echo-1")

    # The server is restarted (a deploy) while the route executes the step: the
    # new server process did not deliver the run and does not know it is in flight.
    stop_server(server)
    port = int(server.url.rsplit(":", 1)[1])
    restarted = start_server(db_url, tmp_path / "server-2.log", port=port)
    try:
        done = client.runs.wait(run.id, timeout=90)
        assert (done.status, done.result) == ("completed", {"echo": 1})
        # The route kept the run's lease: the step was not delivered again while it
        # still ran, and the attempt did not end as lost.
        assert push_app.effects_of("start") == Counter({"echo-1": 1})
        assert [(a.status, a.error) for a in client.runs.attempts(run.id)] == [
            ("completed", None)]
    finally:
        stop_server(restarted)


def worker_pids(database_url: str) -> list[int]:
    """The pids of the registered workers (a server's dispatcher is one)."""
    service = admin_service(database_url)
    try:
        return [info.pid for info in service.list_workers()]
    finally:
        service.close()


def wait_for_dispatcher(server: Server, timeout: float = 20.0) -> None:
    """Until the server's dispatcher serves the registered route's jobs."""
    deadline = time.monotonic() + timeout
    while server.process.pid not in worker_pids(server.database_url):
        assert time.monotonic() < deadline, "the dispatcher never registered"
        time.sleep(0.05)


def signal_server(server: Server, sig: signal.Signals) -> None:
    """Send ``sig`` and wait for the server process to end (not killed by the test)."""
    server.process.send_signal(sig)
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise AssertionError(f"the server did not stop on {sig.name}:\n"
                             f"{server.log.read_text()}") from None


def test_a_server_stopped_with_sigterm_leaves_the_workers_list(
    server: Server, push_app: PushApp, db_url: str, tmp_path: Path
) -> None:
    push_app.start()
    wait_for_dispatcher(server)
    signal_server(server, signal.SIGTERM)
    assert server.process.pid not in worker_pids(db_url)

    port = int(server.url.rsplit(":", 1)[1])
    restarted = start_server(db_url, tmp_path / "server-2.log", port=port)
    try:
        wait_for_dispatcher(restarted)
        # Only the new server's dispatcher serves the route's jobs.
        assert server.process.pid not in worker_pids(db_url)
    finally:
        stop_server(restarted)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_run_mid_step_when_the_server_stops_completes_once_on_the_next_server(
    client: StackShift, push_app: PushApp, server: Server, db_url: str, tmp_path: Path,
    sig: signal.Signals,
) -> None:
    push_app.start(hang_at="echo-1", hang_seconds=4)
    wait_for_dispatcher(server)
    run = client.start("pushEcho", {"n": 1})
    push_app.wait_for_line("start:echo-1")

    # Stopped while the route executes the step: the server leaves the workers
    # list, but the run stays with its route; it is not handed back.
    signal_server(server, sig)
    assert server.process.pid not in worker_pids(db_url)
    port = int(server.url.rsplit(":", 1)[1])
    restarted = start_server(db_url, tmp_path / "server-2.log", port=port)
    try:
        done = client.runs.wait(run.id, timeout=60)
        assert (done.status, done.result) == ("completed", {"echo": 1})
        assert push_app.effects_of("start") == Counter({"echo-1": 1})
        assert push_app.effects_of("done") == Counter({"echo-1": 1})
        assert [(a.status, a.error) for a in client.runs.attempts(run.id)] == [
            ("completed", None)]
        kinds = [e.kind for e in client.runs.timeline(run.id)]
        assert kinds.count("run.queued") == 1, kinds  # never handed back
        assert server.process.pid not in worker_pids(db_url)
    finally:
        stop_server(restarted)


def test_a_url_answering_200_without_running_the_job_gets_the_run_handed_back(
    client: StackShift, push_app: PushApp, server: Server
) -> None:
    # A URL that is not the handler route: the application's welcome page, which
    # answers every POST with 200 and some HTML.
    posts: list[bytes] = []

    def welcome(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        posts.append(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<html>Welcome!</html>"]

    httpd = make_server("127.0.0.1", 0, welcome, handler_class=QuietHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/"
        with server.http() as http:
            first = http.post("/v1/endpoints", json={"url": url, "jobs": ["neverCalled"]})
            again = http.post("/v1/endpoints", json={"url": url, "jobs": ["pushEcho"]})
        # 201 for the URL's registration, 200 for its update: one endpoint, one secret.
        assert (first.status_code, again.status_code) == (201, 200)
        wrong = again.json()
        assert ((wrong["id"], wrong["secret"], wrong["jobs"])
                == (first.json()["id"], first.json()["secret"], ["pushEcho"]))
        # The remote client tells them apart as the embedded service does.
        remote = client._api
        assert remote.register_endpoint(url, ["pushEcho"]).created is False
        assert remote.register_endpoint(url + "other", ["pushEcho"]).created is True
        assert remote.remove_endpoint(
            next(e.id for e in remote.list_endpoints() if e.url == url + "other"))
        run = client.start("pushEcho", {"n": 7})
        deadline = time.monotonic() + 20
        while not posts and time.monotonic() < deadline:
            time.sleep(0.02)
        assert posts, "the server never posted to the registered URL"

        # The mistake is put right: the wrong URL is removed, the real route registered.
        with server.http() as http:
            assert http.delete(f"/v1/endpoints/{wrong['id']}").is_success
        push_app.start()
        # The run was not left running on a reply that is not the route's: it
        # completes at once, in its first attempt (the lease was not waited out).
        done = client.runs.wait(run.id, timeout=20)
        assert (done.status, done.result) == ("completed", {"echo": 7})
        assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]
    finally:
        httpd.shutdown()
        httpd.server_close()


UNUSABLE_URLS = [
    ("http://127.0.0.1:abc/x", "url: 'http://127.0.0.1:abc/x' is not a URL the server can call: "
                               "Invalid port: 'abc'"),
    ("http://h/a\u0000b", "url: 'http://h/a\\x00b' has '\\x00' at position 10: a URL has no "
                          "whitespace or control characters"),
    ("http://h/a\nb", "url: 'http://h/a\\nb' has '\\n' at position 10: a URL has no "
                      "whitespace or control characters"),
    ("http://x y/", "url: 'http://x y/' has ' ' at position 8: a URL has no whitespace or "
                    "control characters"),
    ("http://127.0.0.1:99999/x", "url: 'http://127.0.0.1:99999/x' has port 99999: a port is "
                                 "from 1 to 65535"),
    ("http://127.0.0.1:0/x", "url: 'http://127.0.0.1:0/x' has port 0: a port is from 1 to "
                             "65535"),
]


def test_a_url_the_server_cannot_call_is_refused_and_nothing_is_stored(
        server: Server) -> None:
    """Over the API (422) and through the SDK (a route's ``url=``: ValidationError)."""
    app = StackShift(api_key=server.api_key, base_url=server.url)
    app.job("neverCalled", lambda ctx: None)
    try:
        with server.http() as http:
            for url, message in UNUSABLE_URLS:
                refused = http.post("/v1/endpoints", json={"url": url, "jobs": ["neverCalled"]})
                assert refused.status_code == 422, (url, refused.text)
                error = refused.json()["error"]
                assert error["code"] == "validation_error"
                assert error["message"].startswith(message), (url, error)
                with pytest.raises(ValidationError) as raised:
                    stackshift.asgi_app(app, url=url)
                assert str(raised.value).startswith(message), url
            assert http.get("/v1/endpoints").json()["items"] == []
    finally:
        app.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc/x", "http://127.0.0.1:99999/x"])
def test_a_stored_url_the_server_cannot_call_fails_the_attempts_instead_of_looping(
        server: Server, client: StackShift, url: str) -> None:
    """An endpoint stored with such a URL (by an earlier version, which checked
    less): each delivery fails its attempt, as a handler's error does, so the run
    follows its max_attempts and ends failed rather than going round for ever."""
    service = admin_service(server.database_url)
    try:
        endpoint = service.store.upsert_endpoint(
            new_id("ep"), url, new_secret(), ["undeliverable"], {}, {}, 10,
            service.clock.now())
    finally:
        service.close()
    run = client.start("undeliverable", {"n": 1}, max_attempts=2)
    failed = wait_status(client, run.id, "failed")
    assert failed.error is not None and failed.error.type == "UndeliverableEndpointURL"
    assert failed.error.message.startswith(f"endpoint {endpoint.id}: url: {url!r} ")
    assert failed.error.message.endswith("register the route again with a URL the server "
                                         "can call")
    attempts = client.runs.attempts(run.id)
    assert [(a.status, a.error and a.error.type) for a in attempts] == [
        ("failed", "UndeliverableEndpointURL"), ("failed", "UndeliverableEndpointURL")]
    time.sleep(1.5)  # nothing more happens to it
    kinds = [e.kind for e in client.runs.timeline(run.id)]
    assert kinds == ["run.queued", "attempt.started", "attempt.failed", "run.retrying",
                     "run.queued", "attempt.started", "attempt.failed", "run.failed"], kinds
    assert client.runs.get(run.id).attempt == 2


def test_a_route_whose_key_is_revoked_mid_run_answers_503_and_the_run_is_handed_back(
        client: StackShift, push_app: PushApp, server: Server, tmp_path: Path) -> None:
    """Its checkpoints refused (401), the route cannot record the attempt's
    outcome: it says so (503, key_refused) rather than 200, so the server hands
    the run back at once instead of leaving it running until its lease runs out
    (and then counting the attempt lost)."""
    service = admin_service(server.database_url)
    try:
        listed, key = service.create_api_key("route")
        push_app.start(hang_at="echo-1", hang_seconds=1.5, api_key=key)
        run = client.start("pushEcho", {"n": 1})
        push_app.wait_for_line("start:echo-1")
        service.revoke_api_key(listed.id)
    finally:
        service.close()
    deadline = time.monotonic() + 10  # well within the 30 s lease
    while "run.queued" not in [e.kind for e in client.runs.timeline(run.id)][1:]:
        assert time.monotonic() < deadline, client.runs.timeline(run.id)
        time.sleep(0.05)
    log = (tmp_path / "server.log").read_text()
    assert f"answered 503 for run {run.id}" in log and "key_refused" in log
    # Served again with a key: the run completes in its first attempt.
    push_app.stop()
    push_app.start()
    assert client.runs.wait(run.id, timeout=30).result == {"echo": 1}
    assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]


def test_a_route_that_is_down_costs_its_runs_no_claim_after_the_first(
        client: StackShift, push_app: PushApp) -> None:
    """While the application is down, the server probes its route rather than
    claim a run and hand it back every few seconds (two timeline entries each
    time); once the route answers, the run goes to it."""
    push_app.start()
    push_app.kill()
    run = client.start("pushEcho", {"n": 5})
    time.sleep(5)  # four backoffs: 0.25 s, 0.5, 1 and 2
    kinds = [e.kind for e in client.runs.timeline(run.id)]
    assert kinds.count("run.queued") <= 2, kinds  # created, and one hand-back at most
    push_app.start()
    assert client.runs.wait(run.id, timeout=30).result == {"echo": 5}
    assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]


def test_a_removed_endpoint_gets_no_new_delivery_while_one_is_in_flight(
        client: StackShift, push_app: PushApp, server: Server) -> None:
    """The run being delivered when its endpoint is removed finishes there; runs
    started after the removal wait for a route, however long that one runs."""
    push_app.start(hang_at="echo-1", hang_seconds=4)
    first = client.start("pushEcho", {"n": 1})
    push_app.wait_for_line("start:echo-1")
    with server.http() as http:
        [endpoint] = [e for e in http.get("/v1/endpoints").json()["items"]
                      if e["url"] == push_app.url]
        assert http.delete(f"/v1/endpoints/{endpoint['id']}").status_code == 200
    later = [client.start("pushEcho", {"n": 2})]
    time.sleep(1.5)  # past the dispatcher's reload of the endpoints
    later.append(client.start("pushEcho", {"n": 3}))
    assert wait_status(client, first.id, "completed").result == {"echo": 1}
    time.sleep(1.5)
    assert [client.runs.get(run.id).status for run in later] == ["queued", "queued"]
    assert not any(line.startswith(("start:echo-2", "start:echo-3"))
                   for line in push_app.lines())


def test_removing_the_last_endpoint_takes_the_dispatcher_off_the_workers_list(
        server: Server) -> None:
    """Its jobs stop counting it as a live worker at once, not when its heartbeat
    has aged out."""
    app = StackShift(api_key=server.api_key, base_url=server.url)
    app.job("pushedReport", lambda ctx: None)
    url = f"http://127.0.0.1:{free_port()}/stackshift/"
    try:
        route = stackshift.asgi_app(app, url=url)  # registers the endpoint, publishes the job
        with server.http() as http:
            wait_for_dispatcher(server)
            [job] = http.get("/v1/jobs").json()["items"]
            assert (job["name"], job["liveWorkers"]) == ("pushedReport", 1)
            assert "\nstackshift_workers_live 1\n" in http.get("/metrics").text
            assert http.delete(f"/v1/endpoints/{route.route.endpoint_id}").status_code == 200
            deadline = time.monotonic() + 5
            while server.process.pid in worker_pids(server.database_url):
                assert time.monotonic() < deadline, "the dispatcher is still registered"
                time.sleep(0.05)
            [job] = http.get("/v1/jobs").json()["items"]
            assert (job["name"], job["liveWorkers"]) == ("pushedReport", 0)
            assert "\nstackshift_workers_live 0\n" in http.get("/metrics").text
            # Registered again, it serves (and shows) again.
            stackshift.asgi_app(app, url=url)
            wait_for_dispatcher(server)
            [job] = http.get("/v1/jobs").json()["items"]
            assert (job["name"], job["liveWorkers"]) == ("pushedReport", 1)
    finally:
        app.close()


class _Proxy(socketserver.BaseRequestHandler):
    """Between the server and the route: passes each request on, and when the route
    takes longer than 2 s, as nginx after its proxy_read_timeout, answers 504
    (``cut`` false) or closes the connection without an answer (``cut`` true)."""

    upstream = ""
    cut = False

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        method, path, _ = head.decode("latin-1").split("\r\n")[0].split(" ", 2)
        headers = dict(line.split(": ", 1)
                       for line in head.decode("latin-1").split("\r\n")[1:])
        length = int(next((v for k, v in headers.items() if k.lower() == "content-length"),
                          "0"))
        while len(body) < length:
            body += self.request.recv(65536)
        passed = {k: v for k, v in headers.items()
                  if k.lower() not in ("host", "content-length", "connection")}
        try:
            answer = httpx.request(method, self.upstream + path, content=body,
                                   headers=passed, timeout=2)
        except httpx.TimeoutException:
            if not self.cut:
                page = b"<html>504 Gateway Time-out</html>"
                self.request.sendall(b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: "
                                     b"text/html\r\nConnection: close\r\nContent-Length: "
                                     + str(len(page)).encode() + b"\r\n\r\n" + page)
            return  # closed with no answer
        self.request.sendall(
            f"HTTP/1.1 {answer.status_code} {answer.reason_phrase}\r\nContent-Type: "
            f"{answer.headers.get('content-type', 'text/plain')}\r\nConnection: close\r\n"
            f"Content-Length: {len(answer.content)}\r\n\r\n".encode() + answer.content)


@pytest.mark.parametrize("cut", [False, True], ids=["504", "connection-cut"])
def test_a_step_longer_than_a_proxys_timeout_runs_once(
    client: StackShift, push_app: PushApp, cut: bool
) -> None:
    """The proxy gives up on the route while the app carries on: whether it answers
    504 or closes the connection, the request was delivered, so the run stays with
    the route rather than go to a second execution of the step beside the first."""
    handler = type("Proxy", (_Proxy,), {"upstream": f"http://127.0.0.1:{push_app.port}",
                                        "cut": cut})
    proxy = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        push_app.url = f"http://127.0.0.1:{proxy.server_address[1]}/stackshift/"  # registered
        push_app.start(hang_at="echo-1", hang_seconds=5)
        run = client.start("pushEcho", {"n": 1})
        done = client.runs.wait(run.id, timeout=30)
        assert (done.status, done.result) == ("completed", {"echo": 1})
        # The route kept the run and recorded it.
        assert push_app.effects_of("start") == Counter({"echo-1": 1})
        assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]
    finally:
        proxy.shutdown()
        proxy.server_close()


def _post(url: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    return httpx.post(url, content=body, headers={"content-type": "application/json",
                                                  **headers}, timeout=30)


def test_forged_tampered_stale_and_replayed_requests_get_401_and_run_nothing(
    client: StackShift, push_app: PushApp, server: Server
) -> None:
    push_app.start()
    first = client.start("pushEcho", {"n": 1})
    assert client.runs.wait(first.id, timeout=30).result == {"echo": 1}
    [captured] = push_app.requests()
    body = base64.b64decode(captured["body"])
    genuine = {k: v for k, v in captured["headers"].items() if k.startswith("stackshift-")}
    assert set(genuine) == {"stackshift-timestamp", "stackshift-signature"}
    before = push_app.lines()

    # The secret, as an application registering the same URL is given it.
    with server.http() as http:
        secret = http.post("/v1/endpoints", json={"url": push_app.url, "jobs": ["pushEcho"]}
                           ).json()["secret"]
    fresh = json.loads(body)
    fresh["deliveryId"] = "dlv_never_sent"
    fresh_body = json.dumps(fresh).encode()

    attempts = {
        "replayed": (genuine, body),
        "unsigned": ({}, body),
        "forged": (sign("whsec_not-the-secret", body, time.time()), body),
        "tampered": (genuine, body.replace(b'"n":1', b'"n":2')),
        "stale": (sign(secret, fresh_body, time.time() - 301), fresh_body),
        "unknown delivery": (sign(secret, fresh_body, time.time()), fresh_body),
    }
    codes = {}
    for what, (headers, content) in attempts.items():
        assert content != b""
        response = _post(push_app.url, headers, content)
        assert response.status_code == 401, (what, response.text)
        codes[what] = response.json()["error"]["code"]
        if what == "stale":
            assert re.search(r"signed 30\ds ago; at most 300s either way",
                             response.json()["error"]["message"])
    assert codes == {"replayed": "replayed", "unsigned": "unsigned", "forged": "bad_signature",
                     "tampered": "bad_signature", "stale": "stale_signature",
                     "unknown delivery": "replayed"}

    # Nothing ran: no step, no new attempt, no new run.
    assert push_app.lines() == before
    assert [a.status for a in client.runs.attempts(first.id)] == ["completed"]
    assert [r.id for r in client.runs.list(job="pushEcho")] == [first.id]

    # The server's own deliveries still go through.
    second = client.start("pushEcho", {"n": 2})
    assert client.runs.wait(second.id, timeout=30).result == {"echo": 2}


def test_wsgi_route_runs_a_sleeping_job_and_enforces_a_timeout(server: Server) -> None:
    app = StackShift(api_key=server.api_key, base_url=server.url)
    invocations: list[int] = []

    @app.job("wsgiNap")
    def wsgi_nap(ctx: Any) -> dict[str, Any]:
        invocations.append(ctx.run.attempt)
        before = ctx.step.run("before", lambda: "slept")
        ctx.log.info("napping", extra={"for": "1s", "invocation": len(invocations)})
        ctx.step.sleep("nap", "1s")
        return {"before": before, "invocations": len(invocations)}

    @app.job("wsgiSlow", timeout="0.5s", max_attempts=1)
    def wsgi_slow(ctx: Any) -> None:
        time.sleep(3)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    route = app.wsgi_app(url=url)  # the client's method: stackshift.wsgi_app(app, ...)
    httpd = make_server("127.0.0.1", port, route, handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        run = app.start("wsgiNap")
        done = app.runs.wait(run.id, timeout=30)
        assert done.status == "completed"
        assert done.result == {"before": "slept", "invocations": 2}
        assert invocations == [1, 1]  # before the sleep and after it, one attempt
        # A record's fields reach the server with it, as from a worker (logged
        # outside a step, the record is logged again by the second invocation).
        assert [(e.message, e.fields) for e in app.runs.logs(run.id)] == [
            ("napping", {"for": "1s", "invocation": n}) for n in (1, 2)]
        [endpoint] = [e for e in app._api.list_endpoints() if e.url == url]
        assert endpoint.jobs == ["wsgiNap", "wsgiSlow"] and endpoint.secret is None

        slow = app.runs.wait(app.start("wsgiSlow").id, timeout=30)
        assert slow.status == "failed"
        assert slow.error is not None and slow.error.type == "AttemptTimeoutError"
    finally:
        httpd.shutdown()
        httpd.server_close()
        app.close()


def test_a_pushed_step_whose_result_is_not_json_runs_once_and_fails_the_run(
        server: Server) -> None:
    """Push mode records a step result that cannot be stored as an embedded worker
    does: the step's function ran once, and the run fails on its first attempt."""
    app = StackShift(api_key=server.api_key, base_url=server.url)
    charges: list[str] = []

    def charge(flavour: str) -> Any:
        charges.append(flavour)
        return {"amount": Decimal("12.50")}

    @app.job("pushCharge", max_attempts=3)
    def push_charge(ctx: Any) -> Any:
        return ctx.step.run("charge-card", charge, "sync")

    @app.job("pushChargeAsync", max_attempts=3)
    async def push_charge_async(ctx: Any) -> Any:
        return await ctx.step.run("charge-card", charge, "async")

    port = free_port()
    route = stackshift.wsgi_app(app, url=f"http://127.0.0.1:{port}/")
    httpd = make_server("127.0.0.1", port, route, handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        for job in ("pushCharge", "pushChargeAsync"):
            failed = app.runs.wait(app.start(job).id, timeout=30)
            assert (failed.status, failed.attempt) == ("failed", 1)
            assert failed.error is not None and failed.error.type == "StepResultNotJSONError"
            assert failed.error.message.startswith(
                "result of step 'charge-card': Decimal is not JSON-serialisable")
            assert "The step's function already ran" in failed.error.message
        time.sleep(2)  # a retry, had one been planned, would have been posted by now
        assert charges == ["sync", "async"]
    finally:
        httpd.shutdown()
        httpd.server_close()
        app.close()


def test_a_route_publishes_its_jobs_as_a_worker_does(server: Server, client: StackShift) -> None:
    """The jobs' ``cron=`` schedules exist, and runs started without the jobs' code
    (another service, the CLI) take their queue and max_attempts."""
    app = StackShift(api_key=server.api_key, base_url=server.url)
    app.job("nightlyReport", lambda ctx: None, cron="0 3 * * *", timezone="Europe/Paris")
    app.job("resizeAvatar", lambda ctx: None, queue="media", max_attempts=7)
    try:
        stackshift.asgi_app(app, url=f"http://127.0.0.1:{free_port()}/stackshift/")
        [schedule] = client.schedules.list()
        assert (schedule.job, schedule.cron, schedule.timezone, schedule.source) == (
            "nightlyReport", "0 3 * * *", "Europe/Paris", "code")
        run = client.start("resizeAvatar", {"imageId": "img_1"})
        assert (run.queue, run.max_attempts) == ("media", 7)
    finally:
        app.close()


def test_an_async_client_serves_its_jobs_from_an_asgi_route(server: Server) -> None:
    app = AsyncStackShift(api_key=server.api_key, base_url=server.url)

    @app.job("asyncGreeting")
    async def greeting(ctx: Any) -> dict[str, Any]:
        name = await ctx.step.run("name", lambda: ctx.payload["name"])
        return {"greeting": f"hello {name}"}

    port = free_port()
    route = app.asgi_app(url=f"http://127.0.0.1:{port}/")  # the async client's method
    web = uvicorn.Server(uvicorn.Config(route, host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()

    async def scenario() -> Any:
        run = await app.start("asyncGreeting", {"name": "ada"})
        return await app.runs.wait(run.id, timeout=30)

    try:
        done = asyncio.run(scenario())
        assert (done.status, done.result) == ("completed", {"greeting": "hello ada"})
    finally:
        web.should_exit = True
        thread.join(timeout=10)
        asyncio.run(app.close())


def test_a_route_starts_while_the_server_is_out_of_reach(
        caplog: pytest.LogCaptureFixture) -> None:
    """The application's web process starts although the server is down; the
    jobs are published with the first delivery instead."""
    app = StackShift(api_key="sk_unused", base_url=f"http://127.0.0.1:{free_port()}")
    app.job("resizeAvatar", lambda ctx: None, queue="media", max_attempts=7)
    try:
        with caplog.at_level(logging.WARNING, logger="stackshift.push"):
            stackshift.asgi_app(app, secret="whsec_test")
        assert "could not publish the jobs' schedules and defaults" in caplog.text
    finally:
        app.close()


def test_a_secret_pasted_with_whitespace_signs_and_one_that_is_no_secret_is_refused(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signing secret read from a file or a secret store keeps its newline: the
    route takes it without surrounding whitespace, as API keys are taken, so the
    server's deliveries run. One that can still be no secret is refused when the
    route is made, without showing it, and nothing is published."""
    app = StackShift(api_key=server.api_key, base_url=server.url)
    app.job("pastedEcho", lambda ctx: {"echo": ctx.payload["n"]})
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with server.http() as http:  # as `stackshift endpoints add URL --jobs pastedEcho`
        secret = http.post("/v1/endpoints", json={"url": url, "jobs": ["pastedEcho"]}
                           ).json()["secret"]
    monkeypatch.delenv(SECRET_ENV, raising=False)
    current: list[Any] = [stackshift.wsgi_app(app, secret=f"  {secret}\r\n")]
    httpd = make_server("127.0.0.1", port, lambda env, start: current[0](env, start),
                        handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        done = app.runs.wait(app.start("pastedEcho", {"n": 1}).id, timeout=15)
        assert (done.status, done.result) == ("completed", {"echo": 1})
        monkeypatch.setenv(SECRET_ENV, f"{secret}\n")
        current[0] = stackshift.wsgi_app(app)
        done = app.runs.wait(app.start("pastedEcho", {"n": 2}).id, timeout=15)
        assert (done.status, done.result) == ("completed", {"echo": 2})
    finally:
        httpd.shutdown()
        httpd.server_close()

    refused = StackShift(api_key=server.api_key, base_url=server.url)
    refused.job("pastedNightly", lambda ctx: None, cron="0 3 * * *")
    inside = f"{secret[:9]} {secret[9:]}"
    try:
        for make in (stackshift.asgi_app, stackshift.wsgi_app):
            for given, message in [
                (" \n", "the signing secret (secret=) is blank"),
                (inside, "the signing secret (secret=) holds a space or a control "
                         "character inside it"),
                (secret.encode(), "the signing secret (secret=) must be a string, got bytes"),
            ]:
                with pytest.raises(ValidationError) as refusal:
                    make(refused, secret=given)  # type: ignore[arg-type]
                assert str(refusal.value).startswith(message)
                assert secret[9:] not in str(refusal.value)
            monkeypatch.setenv(SECRET_ENV, f"{secret[:9]}\t{secret[9:]}\n")
            with pytest.raises(ValidationError, match=rf"^the signing secret \({SECRET_ENV}\) "
                                                      "holds a space"):
                make(refused)
            monkeypatch.delenv(SECRET_ENV)
        assert app.schedules.list() == []  # the refused routes published nothing
    finally:
        refused.close()
        app.close()
