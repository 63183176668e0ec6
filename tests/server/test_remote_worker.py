"""Remote workers: ``stackshift worker APP --url URL --api-key KEY`` executes runs
through a real ``stackshift server`` process, with no database credentials.

The worker is a subprocess whose environment holds no ``STACKSHIFT_DATABASE_URL``
and whose working directory is empty (so not even the default SQLite file is the
server's database); the server maintains (rescues, timers) for it. Steps leave
fsynced lines in an effects file, so a killed worker leaves an exact record.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from serverproc import (
    Server,
    admin_service,
    free_port,
    running_server,
    start_server,
    stop_server,
)

from processes import stop_processes
from stackshift import NonRetriableError, RemoteError, StackShift
from stackshift.store import open_store
from stopping import stop_keeps_the_records_logged, stop_with_a_cancel_requested

APP = f"{Path(__file__).with_name('remote_worker_app.py')}:app"

pytestmark = pytest.mark.slow


class RemoteWorkers:
    """``stackshift worker --url`` subprocesses for one test; stopped at the end."""

    def __init__(self, url: str, api_key: str, tmp: Path) -> None:
        self.url = url
        self.api_key = api_key
        self.tmp = tmp
        self.effects = tmp / "effects.txt"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.terminated: set[int] = set()  # pids sent SIGTERM: their exit is expected

    def spawn(self, *args: str, hang_at: str | None = None,
              url: str | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
        env["REMOTE_EFFECTS"] = str(self.effects)
        env["STACKSHIFT_URL"] = url or self.url
        env["STACKSHIFT_API_KEY"] = self.api_key
        if hang_at is not None:
            env["REMOTE_HANG_AT"] = hang_at
        cwd = self.tmp / f"worker-{len(self.procs)}"
        cwd.mkdir()
        log = self.tmp / f"worker-{len(self.procs)}.out"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stackshift.cli", "worker", APP, "--lease", "1s",
                 "--concurrency", "4", "--log-level", "WARNING", *args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            )
        self.procs.append(proc)
        return proc

    def lines(self) -> list[str]:
        return self.effects.read_text().splitlines() if self.effects.exists() else []

    def wait_for_line(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.startswith(prefix):
                    return line
            self.check_alive()
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} in the effects after {timeout}s: {self.lines()}")

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.tmp / f"worker-{self.procs.index(proc)}.out").read_text(errors="replace")

    def wait_for_output(self, proc: subprocess.Popen[bytes], text: str,
                        timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output(proc):
            assert proc.poll() is None, f"worker exited ({proc.returncode}):\n{self.output(proc)}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout}s:\n" \
                                                f"{self.output(proc)}"
            time.sleep(0.02)

    def terminate(self, proc: subprocess.Popen[bytes]) -> None:
        self.terminated.add(proc.pid)
        proc.send_signal(signal.SIGTERM)

    def check_alive(self) -> None:
        for n, proc in enumerate(self.procs):
            if proc.pid in self.terminated:
                continue
            if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                output = (self.tmp / f"worker-{n}.out").read_text(errors="replace")
                raise AssertionError(f"worker {proc.pid} died ({proc.returncode}):\n{output}")

    def stop_all(self) -> None:
        stop_processes(self.procs)


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    with running_server(db_url, tmp_path / "server.log") as running:
        yield running


@pytest.fixture
def workers(server: Server, tmp_path: Path) -> Iterator[RemoteWorkers]:
    pool = RemoteWorkers(server.url, server.api_key, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def client(server: Server) -> Iterator[StackShift]:
    remote = StackShift(api_key=server.api_key, base_url=server.url)
    yield remote
    remote.close()


def wait_done(client: StackShift, run_id: str, workers: RemoteWorkers,
              timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return client.runs.wait(run_id, timeout=1)
        except TimeoutError:
            workers.check_alive()
    raise AssertionError(f"run {run_id} not finished after {timeout}s: {client.runs.get(run_id)}")


def test_remote_worker_runs_steps_retries_sleeps_and_event_waits(
    server: Server, workers: RemoteWorkers, client: StackShift
) -> None:
    proc = workers.spawn()
    steps = client.start("remoteSteps", {"tag": "s"})
    flaky = client.start("remoteFlaky", {"tag": "f"})
    sleeper = client.start("remoteSleeper", {"tag": "z"})
    waiter = client.start("remoteWaiter", {"tag": "order-7"})
    async_run = client.start("remoteAsync")

    done = wait_done(client, steps.id, workers)
    assert done.status == "completed"
    assert done.result == {"pids": [proc.pid] * 3}

    flaky_done = wait_done(client, flaky.id, workers)
    assert flaky_done.status == "completed", flaky_done.error
    assert flaky_done.result == {"first": "f-first", "attempt": 3}
    assert [a.status for a in client.runs.attempts(flaky.id)] == ["failed", "failed",
                                                                   "completed"]

    slept = wait_done(client, sleeper.id, workers)
    assert slept.status == "completed" and slept.result == "rested"
    nap = next(s for s in client.runs.steps(sleeper.id) if s.key == "nap")
    assert nap.finished_at is not None and nap.started_at is not None
    assert (nap.finished_at - nap.started_at).total_seconds() >= 1.0

    assert wait_done(client, async_run.id, workers).result == 6

    # The waiter parks on the event (its worker slot freed) until the event comes.
    deadline = time.monotonic() + 20
    while client.runs.get(waiter.id).status != "waiting":
        assert time.monotonic() < deadline, client.runs.get(waiter.id)
        time.sleep(0.05)
    client.events.send("approved", {"by": "ops"}, correlation_key="order-7")
    approved = wait_done(client, waiter.id, workers)
    assert approved.status == "completed" and approved.result == {"approvedBy": "ops"}
    assert any("approved by ops" in entry.message for entry in client.runs.logs(waiter.id))

    # Each completed step ran exactly once, in the remote worker's process.
    counts = Counter(workers.lines())
    assert counts, "no effects recorded"
    assert all(n == 1 for line, n in counts.items() if not line.startswith("start:f-first")), \
        counts
    assert {line.rsplit(":", 1)[1] for line in counts} == {str(proc.pid)}
    # The flaky run's first step completed once and was replayed on later attempts.
    assert counts[f"done:f-first:{proc.pid}"] == 1

    # The server lists the remote worker, registered through the API.
    service = admin_service(server.database_url)
    try:
        assert proc.pid in [info.pid for info in service.list_workers()]
    finally:
        service.close()


def test_a_remote_workers_replayed_wait_with_another_key_fails_with_non_determinism_error(
    client: StackShift, workers: RemoteWorkers, tmp_path: Path
) -> None:
    """The replay check of a wait's correlation key holds on a remote worker too:
    the event taken for the old key is not returned for the new one."""
    workers.spawn()
    keyfile = tmp_path / "key"
    keyfile.write_text("order-1")
    run = client.start("remoteKeyChange", {"keyfile": str(keyfile)})
    deadline = time.monotonic() + 20
    while client.runs.get(run.id).status != "waiting":
        assert time.monotonic() < deadline, client.runs.get(run.id)
        workers.check_alive()
        time.sleep(0.05)
    keyfile.write_text("order-2")
    client.events.send("approved", {"by": "ops"}, correlation_key="order-1")
    failed = wait_done(client, run.id, workers)
    assert failed.status == "failed" and failed.attempt == 1
    assert failed.error is not None and failed.error.type == "NonDeterminismError"
    assert failed.error.message == (
        "step 'approved' was recorded as a wait for event 'approved' with correlation key"
        " 'order-1', but this replay waits for event 'approved' with correlation key"
        " 'order-2': its recorded event is not returned for another key")


def test_gathered_waits_on_a_remote_worker_take_turns_without_a_lost_lease(
    client: StackShift, caplog: pytest.LogCaptureFixture
) -> None:
    """Waits gathered together called the server at once: the one after the wait
    that parked the run wrote with the lease it gave up, and the worker said
    "this worker lost the run's lease" of a run that was only waiting."""
    import asyncio

    @client.job("gatheredWaits")
    async def gathered(ctx: Any) -> list[int]:
        events = await asyncio.gather(*[
            ctx.step.wait_for_event("go", correlation_key=ctx.run.id, timeout="1m")
            for _ in range(3)])
        return sorted(event.payload["n"] for event in events)

    caplog.set_level(logging.INFO, logger="stackshift")
    with client.worker():
        runs = [client.start("gatheredWaits") for _ in range(3)]
        for n in range(3):
            for run in runs:
                deadline = time.monotonic() + 20
                while client.runs.get(run.id).status != "waiting":
                    assert time.monotonic() < deadline, client.runs.get(run.id)
                    time.sleep(0.02)
                client.events.send("go", {"n": n}, correlation_key=run.id)
        done = [client.runs.wait(run.id, timeout="30s") for run in runs]
    assert [(run.status, run.result, run.attempt) for run in done] == [
        ("completed", [0, 1, 2], 1)] * 3
    assert [r.getMessage() for r in caplog.records if "lease" in r.getMessage()] == []


def test_idle_remote_worker_starts_a_queued_run_quickly(
    workers: RemoteWorkers, client: StackShift
) -> None:
    workers.spawn()
    warm = client.start("remoteAsync")
    assert wait_done(client, warm.id, workers).status == "completed"
    time.sleep(2.5)  # idle: the worker's claim is waiting on the server
    delays = []
    for _ in range(3):
        run = client.start("remoteAsync")
        finished = wait_done(client, run.id, workers)
        assert finished.started_at is not None
        delays.append((finished.started_at - finished.created_at).total_seconds())
        time.sleep(0.3)
    assert max(delays) < 0.5, delays


def test_killed_remote_worker_is_rescued_without_repeating_steps(
    workers: RemoteWorkers, client: StackShift
) -> None:
    first = workers.spawn(hang_at="k-2")
    run = client.start("remoteSteps", {"tag": "k"})
    workers.wait_for_line("start:k-2")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()

    second = workers.spawn()
    done = wait_done(client, run.id, workers)
    assert done.status == "completed", done.error
    assert done.result == {"pids": [first.pid, second.pid, second.pid]}

    lines = workers.lines()
    assert lines.count(f"done:k-1:{first.pid}") == 1
    assert not any(line.startswith("start:k-1") and line.endswith(str(second.pid))
                   for line in lines), lines
    assert f"done:k-2:{second.pid}" in lines and f"done:k-3:{second.pid}" in lines
    attempts = client.runs.attempts(run.id)
    assert [a.status for a in attempts] == ["failed", "completed"]
    assert attempts[0].error is not None and attempts[0].error.type == "WorkerLost"


def test_a_remote_worker_takes_over_at_once_when_a_sibling_process_dies(
    workers: RemoteWorkers, client: StackShift
) -> None:
    # Leases of a minute: the run resumes long before, because the second worker,
    # on the same machine, sees the first one's process gone.
    first = workers.spawn("--lease", "60s", hang_at="d-2")
    run = client.start("remoteSteps", {"tag": "d"})
    workers.wait_for_line("start:d-2")
    second = workers.spawn("--lease", "60s")
    time.sleep(2.0)  # the second looks every second: a live holder keeps its run
    held = client.runs.get(run.id)
    assert (held.status, held.attempt) == ("running", 1)

    killed_at = time.time()
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    done = wait_done(client, run.id, workers, timeout=15)
    assert done.status == "completed", done.error
    assert done.result == {"pids": [first.pid, second.pid, second.pid]}
    lost = client.runs.attempts(run.id)[0]
    assert lost.error is not None and lost.error.type == "WorkerLost"
    assert f"pid {first.pid}) ended" in lost.error.message
    assert lost.finished_at is not None
    assert killed_at <= lost.finished_at.timestamp() < killed_at + 10
    assert workers.lines().count(f"done:d-1:{first.pid}") == 1


def test_a_server_restart_between_steps_neither_fails_nor_delays_the_run(
    server: Server, workers: RemoteWorkers, client: StackShift, tmp_path: Path
) -> None:
    """``kill -9`` of the server, back a moment later: the step that finished while
    it was down reaches it once it is back, and the run carries on in its only
    attempt, instead of failing as ``WorkerLost`` when its lease runs out."""
    gate = tmp_path / "gate"
    worker = workers.spawn("--lease", "10s")
    run = client.start("remoteGated", {"tag": "r", "gate": str(gate)}, max_attempts=1)
    deadline = time.monotonic() + 20
    while [s.status for s in client.runs.steps(run.id)] != ["completed"]:
        assert time.monotonic() < deadline, client.runs.get(run.id)
        time.sleep(0.02)
    server.process.kill()
    server.process.wait()
    gate.touch()
    workers.wait_for_line("done:r-2")  # its checkpoint finds no server
    port = int(server.url.rsplit(":", 1)[1])
    restarted = start_server(server.database_url, tmp_path / "restarted.log", port=port)
    try:
        done = wait_done(client, run.id, workers, timeout=8)  # well within the lease
        assert done.status == "completed", done.error
        assert done.result == "through"
        assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]
        assert [s.status for s in client.runs.steps(run.id)] == ["completed", "completed"]
        assert workers.lines().count(f"done:r-2:{worker.pid}") == 1
        # The restart is said in a line or two per loop, not in tracebacks.
        said = (workers.tmp / "worker-0.out").read_text()
        assert "Traceback" not in said and "ERROR" not in said, said
        assert "failed, the server is unavailable or its answer was lost (" in said, said
    finally:
        stop_server(restarted)


def test_sigterm_with_the_server_gone_still_stops_the_worker(
    server: Server, workers: RemoteWorkers, client: StackShift
) -> None:
    """Two runs hang in a step; the server is killed, then the worker is told to
    stop. It cannot hand the runs back (they are retried once their leases run
    out), but it tries each, says so, and exits."""
    worker = workers.spawn("--shutdown-grace", "0.3s", "--lease", "5s", hang_at="t-2")
    runs = [client.start("remoteSteps", {"tag": "t"}) for _ in range(2)]
    deadline = time.monotonic() + 20
    while workers.lines().count("start:t-2:" + str(worker.pid)) < 2:
        assert time.monotonic() < deadline, workers.lines()
        time.sleep(0.02)
    server.process.kill()
    server.process.wait()
    workers.terminate(worker)
    assert worker.wait(30) == 0
    output = (workers.tmp / "worker-0.out").read_text()
    for run in runs:
        assert f"run {run.id}: could not hand it back" in output, output


class LosingProxy:
    """An HTTP proxy on 127.0.0.1 in front of the server. It forwards every
    request, but the first to ``path`` that succeeds (for a claim: the first
    that leases a run) gets no answer: the connection closes after the server
    has carried it out (``after``), or before it reaches the server
    (``before``); or it gets the server's 503 for a database it cannot reach
    (``unavailable``), without reaching it."""

    def __init__(self, target: str, path: str = "/v1/worker/claim", *,
                 lost: Literal["before", "after", "unavailable"] = "after") -> None:
        #: the run ids of the claim whose answer was dropped; of another path, the path
        self.lost: list[str] = []
        forward = httpx.Client(base_url=target, timeout=60)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                dropped = self.path == path and not proxy.lost
                if dropped and lost == "before":
                    proxy.lost = [path]
                    self.close_connection = True  # the request goes no further
                    return
                if dropped and lost == "unavailable":
                    proxy.lost = [path]
                    refusal = json.dumps({"error": {
                        "code": "database_unavailable",
                        "message": "the database is unavailable; try again"}}).encode()
                    self.send_response(503)
                    self.send_header("content-type", "application/json")
                    self.send_header("Content-Length", str(len(refusal)))
                    self.end_headers()
                    self.wfile.write(refusal)
                    return
                answer = forward.request(self.command, self.path, content=body,
                                         headers=headers)
                if dropped and answer.status_code == 200 and (
                        path != "/v1/worker/claim" or answer.json()["items"]):
                    proxy.lost = ([item["run"]["id"] for item in answer.json()["items"]]
                                  if path == "/v1/worker/claim" else [path])
                    self.close_connection = True  # and no answer
                    return
                self.send_response(answer.status_code)
                for name in ("content-type", "www-authenticate", "allow"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._forward = forward

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._forward.close()


def test_runs_leased_by_a_claim_whose_answer_was_lost_are_handed_back_at_once(
    server: Server, workers: RemoteWorkers, client: StackShift
) -> None:
    """The server leases a run, but the answer never reaches the worker. The
    worker finds the run leased to it without running it, and hands it back:
    the run completes in its first attempt, long before its 60-second lease."""
    proxy = LosingProxy(server.url)
    try:
        run = client.start("remoteSteps", {"tag": "l"})
        started = time.monotonic()
        workers.spawn("--lease", "60s", url=proxy.url)
        done = wait_done(client, run.id, workers, timeout=20)
        assert proxy.lost == [run.id]
        assert done.status == "completed", done.error
        assert time.monotonic() - started < 15
        assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]
        kinds = [e.kind for e in client.runs.timeline(run.id)]
        assert "attempt.failed" not in kinds
    finally:
        proxy.close()


@pytest.mark.parametrize(("path", "lost"), [
    ("/v1/worker/steps", "before"), ("/v1/worker/steps", "after"),
    ("/v1/worker/steps", "unavailable"), ("/v1/worker/finish", "before"),
    ("/v1/worker/finish", "after")])
def test_a_write_whose_connection_drops_is_sent_again_and_costs_the_attempt_nothing(
    server: Server, workers: RemoteWorkers, client: StackShift, path: str,
    lost: Literal["before", "after", "unavailable"]
) -> None:
    """A step's checkpoint or an attempt's ending whose connection closes with no
    answer (a server paused or restarting, a proxy cut), before or after the server
    carried it out, or that the server refuses for its database (503), is sent
    again: the run completes in its only attempt, each step done once, not failed
    with the network error as the handler's own."""
    proxy = LosingProxy(server.url, path, lost=lost)
    try:
        worker = workers.spawn("--lease", "10s", url=proxy.url)
        run = client.start("remoteSteps", {"tag": "c"}, max_attempts=1)
        done = wait_done(client, run.id, workers, timeout=20)
        assert proxy.lost == [path]
        assert done.status == "completed", done.error
        assert done.result == {"pids": [worker.pid] * 3}
        assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]
        assert [workers.lines().count(f"done:c-{n}:{worker.pid}") for n in (1, 2, 3)] == [
            1, 1, 1]
    finally:
        proxy.close()


def test_sigterm_hands_the_run_back_through_the_server(
    workers: RemoteWorkers, client: StackShift
) -> None:
    first = workers.spawn("--shutdown-grace", "0.5s", hang_at="g-2")
    run = client.start("remoteSteps", {"tag": "g"})
    workers.wait_for_line("start:g-2")
    workers.terminate(first)

    # Released, not lost: queued again at once, the same attempt to be continued.
    deadline = time.monotonic() + 10
    while client.runs.get(run.id).status != "queued":
        assert time.monotonic() < deadline, client.runs.get(run.id)
        time.sleep(0.02)
    second = workers.spawn()
    done = wait_done(client, run.id, workers)
    assert done.status == "completed", done.error
    assert done.result == {"pids": [first.pid, second.pid, second.pid]}
    assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]
    assert workers.lines().count(f"done:g-1:{first.pid}") == 1
    assert not any(line.startswith("start:g-1") and line.endswith(str(second.pid))
                   for line in workers.lines())
    # It exits cleanly although its handler thread still sleeps in the hung step.
    assert first.wait(20) == 0


def test_remote_worker_refuses_to_start_without_a_key(server: Server, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    result = subprocess.run(
        [sys.executable, "-m", "stackshift.cli", "worker", APP, "--url", server.url],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 2
    assert "API key" in result.stderr


def test_a_remote_worker_whose_key_is_revoked_while_it_runs_says_so_once_and_exits_1(
        server: Server, tmp_path: Path) -> None:
    """No retry can mend a revoked key: the worker stops, rather than fail every
    claim, renewal and heartbeat from then on."""
    service = admin_service(server.database_url)
    listed, key = service.create_api_key("revoked-later")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    err = tmp_path / "worker.err"
    with open(err, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "stackshift.cli", "worker", APP, "--url", server.url,
             "--api-key", key], stdout=subprocess.DEVNULL, stderr=out, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "Stop with Ctrl-C" not in err.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        service.revoke_api_key(listed.id)
        assert worker.wait(20) == 1, err.read_text()
    finally:
        stop_processes([worker])
        service.close()
    said = err.read_text()
    assert said.count("the server refused its API key") == 1, said
    assert f"stopped: the server at {server.url} refused the API key" in said
    assert "claim failed" not in said and "heartbeat failed" not in said
    assert "Traceback" not in said


@pytest.fixture
def absent_server(db_url: str, tmp_path: Path) -> Iterator[RemoteWorkers]:
    """Workers of a server not started yet: the database is ready and holds their
    key, but nothing listens on the server's port."""
    store = open_store(db_url)
    store.migrate()
    store.close()
    service = admin_service(db_url)
    try:
        _, key = service.create_api_key("early worker")
    finally:
        service.close()
    pool = RemoteWorkers(f"http://127.0.0.1:{free_port()}", key, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


def test_a_worker_started_before_its_server_waits_for_it(
    absent_server: RemoteWorkers, db_url: str, tmp_path: Path
) -> None:
    workers = absent_server
    worker = workers.spawn()
    # It says, try after try, which server it waits for and for how long.
    workers.wait_for_output(worker, "trying again in 1s")
    output = workers.output(worker)
    assert f"server {workers.url} not reachable" in output, output
    assert "trying again in 0.5s" in output, output

    port = int(workers.url.rsplit(":", 1)[1])
    server = start_server(db_url, tmp_path / "server.log", port=port)
    client = StackShift(api_key=server.api_key, base_url=server.url)
    try:
        run = client.start("remoteSteps", {"tag": "early"})
        done = wait_done(client, run.id, workers, timeout=30)
        assert done.status == "completed", done.error
        assert done.result == {"pids": [worker.pid] * 3}
        service = admin_service(db_url)
        try:
            assert worker.pid in [info.pid for info in service.list_workers()]
        finally:
            service.close()
    finally:
        client.close()
        stop_server(server)


def test_sigterm_stops_a_worker_waiting_for_its_server_at_once(
    absent_server: RemoteWorkers
) -> None:
    workers = absent_server
    worker = workers.spawn()
    # Its next try is 4 s away: the signal does not wait for it.
    workers.wait_for_output(worker, "trying again in 4s")
    signalled = time.monotonic()
    workers.terminate(worker)
    assert worker.wait(10) == 0, workers.output(worker)
    assert time.monotonic() - signalled < 3.0
    # It never started: no banner, and its last line says what it waited for.
    output = workers.output(worker)
    assert "Stop with Ctrl-C" not in output, output
    assert output.rstrip("\n").endswith(f": stopped before the server {workers.url} answered."), \
        output

    second = workers.spawn()
    workers.wait_for_output(second, "trying again in 0.5s")
    second.send_signal(signal.SIGINT)
    assert second.wait(10) == 0, workers.output(second)


def test_stop_ends_a_start_waiting_for_its_server(caplog: pytest.LogCaptureFixture) -> None:
    """In Python: ``start()`` waits while nothing listens at the server's address,
    and ``stop()`` from another thread ends the wait; the worker never starts."""
    url = f"http://127.0.0.1:{free_port()}"
    app = StackShift(api_key="ssk_unused", base_url=url)
    app.job("noop", lambda ctx: None)
    worker = app.worker()
    starting = threading.Thread(target=worker.start)
    try:
        with caplog.at_level(logging.WARNING, logger="stackshift.worker"):
            starting.start()
            deadline = time.monotonic() + 10
            while "trying again in 1s" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.02)
            stopped = time.monotonic()
            worker.stop()
            starting.join(timeout=5)
            assert not starting.is_alive()
            assert time.monotonic() - stopped < 1.0
        assert f"server {url} not reachable" in caplog.text
        assert worker.active_runs == []
        assert not worker._threads  # no claim loop, no heartbeat
    finally:
        worker.stop()
        app.close()


def test_what_waiting_cannot_fix_ends_the_worker_at_once(
    server: Server, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}

    def worker(url: str, api_key: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "stackshift.cli", "worker", APP, "--url", url,
             "--api-key", api_key],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
        )
        assert time.monotonic() - started < 15, result.stderr
        assert "trying again" not in result.stderr
        return result

    wrong_key = worker(server.url, "sk_not_a_key")
    assert wrong_key.returncode == 1, wrong_key.stderr
    assert f"the server at {server.url} refused the API key" in wrong_key.stderr

    not_http = worker("ftp://127.0.0.1:21", server.api_key)
    assert not_http.returncode == 2, not_http.stderr
    assert ("--url (STACKSHIFT_URL) must be an http:// or https:// URL, got"
            " 'ftp://127.0.0.1:21'") in not_http.stderr, not_http.stderr
    assert "Traceback" not in not_http.stderr

    # Not the server's API (a path below it): its 404 is no reason to wait, and says
    # to check the address.
    elsewhere = worker(f"{server.url}/somewhere", server.api_key)
    assert elsewhere.returncode == 1, elsewhere.stderr
    assert "check the base_url" in elsewhere.stderr, elsewhere.stderr
    below = worker(f"{server.url}/v1/runs", server.api_key)
    assert below.returncode == 1, below.stderr
    assert (f"error: the StackShift server at {server.url} has no route POST"
            " /v1/runs/v1/worker/") in below.stderr, below.stderr
    assert "check the base_url" in below.stderr
    # The API's address, as the server prints it: refused, saying which to use.
    api = worker(f"{server.url}/v1", server.api_key)
    assert api.returncode == 2, api.stderr
    assert (f"--url (STACKSHIFT_URL) must be the server's address, without the API's /v1:"
            f" use '{server.url}', not '{server.url}/v1'") in api.stderr, api.stderr

    service = admin_service(server.database_url)
    try:
        assert service.list_workers() == []  # none of them registered
    finally:
        service.close()


def test_a_lost_lease_refuses_the_checkpoint(server: Server, client: StackShift) -> None:
    with server.http() as http:
        answer = http.post("/v1/worker/steps", json={
            "lease": {"runId": "run_nope", "workerId": "wkr_x", "attempt": 1},
            "step": {"key": "a", "name": "a", "kind": "run", "status": "completed",
                     "result": "1", "startedAt": 1.0, "finishedAt": 2.0},
            "leaseSeconds": 5,
        })
        assert answer.status_code == 409
        assert answer.json()["error"]["code"] == "lease_lost"
        assert http.post("/v1/worker/claim", json={
            "workerId": "wkr_x", "jobs": ["remoteSteps"], "limit": 1, "leaseSeconds": 5,
        }, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_database_or_server_is_chosen_as_for_clients(server: Server, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    both = subprocess.run(
        [sys.executable, "-m", "stackshift.cli", "worker", APP, "--url", server.url,
         "--api-key", server.api_key, "--database-url", server.database_url],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert both.returncode == 2 and "not both" in both.stderr

    # Both in the environment: the database wins, as it does for StackShift().
    env.update(STACKSHIFT_DATABASE_URL=server.database_url, STACKSHIFT_URL=server.url,
               STACKSHIFT_API_KEY=server.api_key, REMOTE_EFFECTS=str(tmp_path / "fx"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackshift.cli", "worker", APP, "--log-level", "WARNING"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline().decode()  # one line, however long, in a pipe
        assert banner.startswith("worker wkr_"), banner
        assert banner.endswith("Stop with Ctrl-C or SIGTERM.\n"), banner
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert f"database {server.database_url}" in banner, banner


def test_the_workers_own_requests_are_not_logged_as_the_runs(
    server: Server, workers: RemoteWorkers, client: StackShift, tmp_path: Path
) -> None:
    """At --log-level INFO a run's logs hold what its handler logged, not the
    checkpoints its worker sent to the server, and the worker's output is not a
    line per claim request."""
    workers.spawn("--log-level", "INFO")
    run = client.start("remoteWaiter", {"tag": "logs"})
    deadline = time.monotonic() + 20
    while client.runs.get(run.id).status != "waiting":
        assert time.monotonic() < deadline, client.runs.get(run.id)
        workers.check_alive()
        time.sleep(0.05)
    client.events.send("approved", {"by": "ops"}, correlation_key="logs")
    assert wait_done(client, run.id, workers).status == "completed"
    assert [(e.logger, e.message) for e in client.runs.logs(run.id)] == [
        ("stackshift.run", "approved by ops")]
    time.sleep(2.5)  # an idle worker's claim long-polls end every 2 s
    output = (tmp_path / "worker-0.out").read_text(errors="replace")
    assert "/v1/worker/" not in output, output


def test_a_remote_workers_records_keep_their_fields(
        server: Server, client: StackShift) -> None:
    """A record's fields (``extra=``) go to the server with the record, with its
    checkpoint and with a lease renewal alike, and read back as they were given."""
    @client.job("remote-fields", max_attempts=1)
    def fields(ctx):  # type: ignore[no-untyped-def]
        ctx.log.info("charging", extra={"order": "o-1", "amount": 12.5, "tags": ["a", "b"]})
        ctx.step.run("fetch", lambda: 1)
        ctx.log.info("waited", extra={"order": "o-1"})
        time.sleep(1.5)  # a renewal of the 3 s lease sends this one ahead
        ctx.log.info("plain")
        return "done"

    with client.worker(concurrency=1, lease="3s"):
        run = client.start("remote-fields")
        done = client.runs.wait(run.id, timeout="20s")
    assert (done.status, done.error) == ("completed", None)
    assert [(e.message, e.fields) for e in client.runs.logs(run.id)] == [
        ("charging", {"order": "o-1", "amount": 12.5, "tags": ["a", "b"]}),
        ("waited", {"order": "o-1"}), ("plain", {})]


def test_a_log_record_of_megabytes_does_not_fail_a_remote_workers_step(
        server: Server, client: StackShift) -> None:
    """A remote worker sends a run's records with its next checkpoint, through the
    server's request body limit (1 MiB): a record of 2 MB is kept shortened
    rather than fail the step with a 413, and the run completes."""
    @client.job("remote-verbose", max_attempts=1)
    def verbose(ctx):  # type: ignore[no-untyped-def]
        ctx.log.info("before " + "x" * 2_000_000)
        ctx.step.run("fetch", lambda: 1)
        ctx.log.warning("z" * 2_000_000 + " after")
        return "done"

    with client.worker(concurrency=1):
        run = client.start("remote-verbose")
        done = client.runs.wait(run.id, timeout="20s")
    assert (done.status, done.result, done.error) == ("completed", "done", None)
    before, after = client.runs.logs(run.id)
    assert (before.step, before.level, after.level) == (None, "INFO", "WARNING")
    assert before.message.startswith("before xxx") and after.message.endswith("zzz after")
    assert all(len(e.message) < 70_000 and "characters cut ...]" in e.message
               for e in (before, after))


def test_a_remote_worker_stopped_as_its_run_is_cancelled_says_cancelled(
        client: StackShift, caplog: pytest.LogCaptureFixture) -> None:
    stop_with_a_cancel_requested(client, caplog)


def test_a_remote_worker_says_a_failing_attempt_asked_to_cancel_ends_the_run_cancelled(
        client: StackShift, caplog: pytest.LogCaptureFixture) -> None:
    # The server says how the run ended: cancelled, not retried as the outcome
    # the worker sent would have it.
    caplog.set_level(logging.INFO, logger="stackshift.attempts")
    entered, gate = threading.Event(), threading.Event()

    def call_provider() -> None:
        entered.set()
        gate.wait(10)
        raise ConnectionError("provider timed out")

    @client.job("sync-invoice", max_attempts=5, backoff={"base": "0.01s"})
    def sync_invoice(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("call-provider", call_provider)

    with client.worker():
        run = client.start("sync-invoice")
        assert entered.wait(10)
        client.runs.cancel(run.id, reason="stuck")
        gate.set()
        assert client.runs.wait(run.id, timeout="20s").status == "cancelled"
    said = [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "stackshift.attempts" and run.id in r.getMessage()]
    assert said == [("INFO", f"sync-invoice {run.id}: attempt 1 of 5 failed: ConnectionError:"
                             " provider timed out; the run is cancelled, as asked while it ran")]


def test_a_remote_workers_step_result_over_the_limit_says_to_raise_the_servers_setting(
        client: StackShift) -> None:
    # The limit is the server's: Settings(...) in the worker's program changes nothing.
    @client.job("oversized", max_attempts=1)
    def oversized(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("big", lambda: "y" * (1024 * 1024 + 1))

    with client.worker():
        failed = client.runs.wait(client.start("oversized").id, timeout="20s")
    assert failed.error is not None and failed.error.type == "StepResultTooLargeError"
    assert failed.error.message.endswith(
        "or raise the limit with the server's --setting max_step_result_bytes=..."), failed.error
    assert "Settings(" not in failed.error.message


def test_a_remote_worker_stopped_mid_step_keeps_the_records_its_attempt_logged(
        client: StackShift, caplog: pytest.LogCaptureFixture) -> None:
    stop_keeps_the_records_logged(client, caplog)


class UpstreamError(Exception):
    pass


def _call_loud_upstream() -> None:
    raise UpstreamError("upstream said: " + "q" * 2_000_000 + " end")


def test_errors_of_megabytes_are_recorded_shortened_by_a_remote_worker(
        server: Server, client: StackShift) -> None:
    """A step's error and an attempt's error of megabytes keep their beginning and
    their end, as a log record does, rather than make the request recording them
    pass the server's body limit (1 MiB): the step's own error reaches the handler
    and is recorded on the step, and a NonRetriableError fails the run at once."""
    @client.job("remote-loud", max_attempts=3)
    def loud(ctx):  # type: ignore[no-untyped-def]
        with contextlib.suppress(UpstreamError):
            ctx.step.run("call", _call_loud_upstream)
        raise NonRetriableError("card declined; " + "z" * 3_500_000 + " end")

    with client.worker(concurrency=1):
        run = client.start("remote-loud")
        done = client.runs.wait(run.id, timeout="20s")
    assert (done.status, done.attempt) == ("failed", 1)
    assert done.error is not None and done.error.type == "NonRetriableError"
    message, traceback = done.error.message, done.error.traceback or ""
    assert message.startswith("card declined; zzz") and message.endswith("zzz end")
    assert "characters cut ...]" in message and len(message) < 70_000
    assert "characters cut ...]" in traceback and len(traceback) < 70_000
    assert traceback.startswith("Traceback (most recent call last):")
    (step,) = client.runs.steps(run.id)
    assert (step.name, step.status) == ("call", "failed")
    assert step.error is not None and step.error.type == "UpstreamError"
    assert step.error.message.endswith("qqq end") and len(step.error.message) < 70_000


def test_a_handler_logging_megabytes_between_two_steps_completes_on_a_remote_worker(
        server: Server, client: StackShift) -> None:
    """3 MB of records between two steps, each record short, would make one
    checkpoint's request pass the server's body limit (1 MiB): the worker sends
    them ahead of the checkpoint with lease renewals, in batches within it, and
    every record is kept, in order."""
    @client.job("remote-chatty", max_attempts=1)
    def chatty(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("first", lambda: 1)
        for n in range(2_000):
            ctx.log.info("record %04d %s", n, "x" * 1_500)
        ctx.step.run("second", lambda: 2)
        ctx.log.info("last words")
        return "done"

    with client.worker(concurrency=1):
        run = client.start("remote-chatty")
        done = client.runs.wait(run.id, timeout="60s")
    assert (done.status, done.result, done.error) == ("completed", "done", None)
    entries = client.runs.logs(run.id)
    assert [e.message[:11] for e in entries] == [
        *(f"record {n:04d}" for n in range(2_000)), "last words"]
    assert {e.level for e in entries} == {"INFO"}


def test_a_long_steps_records_show_while_it_runs_on_a_remote_worker(
        server: Server, client: StackShift) -> None:
    """A remote worker sends a running step's records with its lease renewals
    (every third of the lease), not only with the step's checkpoint."""
    release = threading.Event()

    @client.job("remote-long", max_attempts=1)
    def long(ctx):  # type: ignore[no-untyped-def]
        def work() -> None:
            ctx.log.info("started")
            release.wait(20)
        ctx.step.run("work", work)
        ctx.log.info("done")

    with client.worker(concurrency=1, lease="3s"):
        run = client.start("remote-long")
        deadline = time.monotonic() + 10
        while not client.runs.logs(run.id):
            assert time.monotonic() < deadline, "no record while the step runs"
            time.sleep(0.05)
        assert client.runs.get(run.id).status == "running"
        assert [(e.step, e.message) for e in client.runs.logs(run.id)] == [("work", "started")]
        release.set()
        client.runs.wait(run.id, timeout="10s")
    assert [(e.step, e.message) for e in client.runs.logs(run.id)] == [
        ("work", "started"), (None, "done")]


def test_a_renewal_writes_log_records_of_the_runs_it_renews_only(
        server: Server, client: StackShift) -> None:
    """``POST /v1/worker/renew`` writes the records it carries for a run whose
    lease holds, drops those of a lease lost, and refuses (422, nothing written)
    records of a run it does not renew."""
    record = {"at": 1.0, "level": "INFO", "logger": "app", "message": "ahead",
              "step": "a", "attempt": 1}
    run = client.start("remote-renewed")
    with server.http() as http:
        registered = http.post("/v1/worker/register", json={
            "workerId": "wkr_renewing", "hostname": "h", "pid": 1, "jobs": ["remote-renewed"],
            "concurrency": 1})
        assert registered.json() == {"ok": True, "renewTakesLogs": True, "logsTakeFields": True}
        items = http.post("/v1/worker/claim", json={
            "workerId": "wkr_renewing", "jobs": ["remote-renewed"], "limit": 1,
            "leaseSeconds": 60}).json()["items"]
        lease = {"runId": run.id, "workerId": "wkr_renewing", "attempt": items[0]["attempt"]}
        other = client.start("remote-renewed-other")

        refused = http.post("/v1/worker/renew", json={
            "leases": [lease], "leaseSeconds": 60, "logs": {other.id: [record]}})
        assert refused.status_code == 422, refused.text
        assert other.id in refused.json()["error"]["message"]
        assert client.runs.logs(run.id) == [] and client.runs.logs(other.id) == []

        renewed = http.post("/v1/worker/renew", json={
            "leases": [lease], "leaseSeconds": 60, "logs": {run.id: [record]}})
        assert renewed.json() == {"cancelRequested": [], "lost": []}
        assert [(e.step, e.message) for e in client.runs.logs(run.id)] == [("a", "ahead")]

        stale = {**lease, "attempt": lease["attempt"] + 1}
        lost = http.post("/v1/worker/renew", json={
            "leases": [stale], "leaseSeconds": 60, "logs": {run.id: [record]}})
        assert lost.json() == {"cancelRequested": [], "lost": [run.id]}
        assert len(client.runs.logs(run.id)) == 1


def test_records_a_remote_worker_could_not_send_while_its_server_was_down_are_kept(
        server: Server, client: StackShift, tmp_path: Path) -> None:
    """``kill -9`` of the server while a step logs: the records sent ahead before
    it are stored, those its worker could not send are kept and sent once the
    server is back, and every record is stored once, in order."""
    down, back = threading.Event(), threading.Event()

    @client.job("remote-outage", max_attempts=1)
    def outage(ctx):  # type: ignore[no-untyped-def]
        def work() -> None:
            ctx.log.info("before")
            down.wait(30)
            for n in range(1_200):  # a write ahead at the 1,000th, refused
                ctx.log.info("during %04d", n)
            back.wait(30)
            ctx.log.info("after")
        ctx.step.run("work", work)

    with client.worker(concurrency=1, lease="10s"):
        run = client.start("remote-outage")
        deadline = time.monotonic() + 15
        while not client.runs.logs(run.id):  # sent with a renewal (every 3.3 s)
            assert time.monotonic() < deadline, "no record while the step runs"
            time.sleep(0.05)
        server.process.kill()
        server.process.wait()
        down.set()
        time.sleep(0.5)
        port = int(server.url.rsplit(":", 1)[1])
        restarted = start_server(server.database_url, tmp_path / "restarted.log", port=port)
        try:
            back.set()
            done = client.runs.wait(run.id, timeout="20s")
            assert done.status == "completed", done.error
            assert [a.status for a in client.runs.attempts(run.id)] == ["completed"]
            messages = [e.message for e in client.runs.logs(run.id)]
        finally:
            stop_server(restarted)
    assert messages == ["before", *(f"during {n:04d}" for n in range(1_200)), "after"]


def test_a_renewal_sent_in_parts_that_fails_midway_puts_back_only_what_it_did_not_write(
) -> None:
    """Runs' records over one request's budget go in several renewals; should a
    later one fail, the records the earlier ones wrote are not put back (they
    would be stored twice) and the rest are, each run's in order."""
    from stackshift.jobs import JobRegistry
    from stackshift.remote import RemoteService
    from stackshift.remote_worker import LogsSentAhead, RemoteWorkerStore
    from stackshift.store.base import Lease, LogWrite

    received: list[dict[str, Any]] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            if len(received) == 1:
                status, body = 200, {"cancelRequested": [], "lost": []}
            else:
                status, body = 503, {"error": {"code": "unavailable", "message": "restarting"}}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    remote = RemoteService(f"http://127.0.0.1:{site.server_address[1]}", "ss_test_key",
                           JobRegistry())
    try:
        store = RemoteWorkerStore(remote)
        runs = [f"run_{n}" for n in range(4)]
        pending = {run: LogsSentAhead(lambda records: None) for run in runs}
        written = {run: [LogWrite(float(n), "INFO", "app", f"{run} {n} " + "x" * 1_500, "s", 1)
                         for n in range(100)] for run in runs}  # some 160 KB a run
        for run in runs:
            for item in written[run]:
                pending[run]._held.add(item)
        leases = [Lease(run, "wkr_parts", 1) for run in runs]
        with pytest.raises(RemoteError), contextlib.ExitStack() as taken:
            logs = {run: taken.enter_context(pending[run].ahead()) for run in runs}
            store.renew_leases(leases, time.time(), 30, logs)
    finally:
        remote.close()
        site.shutdown()
        site.server_close()
    assert len(received) == 2  # three runs' records in 512 KiB, the fourth's in another
    first = list(received[0]["logs"])
    assert first == runs[:3] and list(received[1]["logs"]) == runs[3:]
    assert [lease["runId"] for lease in received[0]["leases"]] == runs
    for run in runs:
        assert pending[run].take() == ([] if run in first else written[run])
