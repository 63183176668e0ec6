"""A client used before ``os.fork()`` goes on working in the parent and in every
child (gunicorn's ``--preload``, ``multiprocessing`` on Linux, pre-forked task
runners): each process gets connections of its own, and nothing either writes
is lost.

The side-by-side test runs through an embedded client and a remote one, on
each store; the others on each store.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from wsgiref.simple_server import make_server

import pytest
from serverproc import QuietHandler, free_port, running_server

from stackshift import StackShift, ids
from stackshift.testing import run_until_idle

#: Seconds a forked child may take before the test gives up on it.
CHILD_TIMEOUT = 60.0


class Child:
    """``work()`` run in a forked child; its JSON result read back with :meth:`join`."""

    def __init__(self, work: Callable[[], Any], out: Path) -> None:
        self.out = out
        self.status: int | None = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into the test
            code = 1
            try:
                result = {"result": work()}
                code = 0
            except BaseException as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                try:
                    out.write_text(json.dumps(result))
                finally:
                    os._exit(code)

    def running(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is None

    def join(self) -> Any:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while self.running():
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                pytest.fail(f"the forked child took more than {CHILD_TIMEOUT} s")
            time.sleep(0.01)
        assert self.status is not None
        report = json.loads(self.out.read_text()) if self.out.exists() else {}
        assert os.waitstatus_to_exitcode(self.status) == 0, report.get("error", report)
        return report["result"]


def _start_and_read_back(client: StackShift, job: str, by: str, count: int) -> dict[str, Any]:
    """Start ``count`` runs and read each back: the ids, and any run that came
    back with another process's payload."""
    started, wrong = [], []
    for i in range(count):
        payload = {"by": by, "i": i}
        run = client.start(job, payload)
        started.append(run.id)
        read = client.runs.get(run.id)
        if read.id != run.id or read.payload != payload:
            wrong.append([payload, read.id, read.payload])
    return {"ids": started, "wrong": wrong}


def test_a_client_used_before_a_fork_serves_the_parent_and_its_children_side_by_side(
        client: StackShift, unique: Callable[[str], str], tmp_path: Path) -> None:
    job = unique("forked")
    client.start(job, {"by": "parent", "i": -1})  # its connections are open at the fork
    children = [Child(lambda by=f"child{n}": _start_and_read_back(client, job, by, 100),
                      tmp_path / f"child{n}.json") for n in range(2)]
    mine = _start_and_read_back(client, job, "parent", 100)
    theirs = [child.join() for child in children]

    for result in [mine, *theirs]:
        assert result["wrong"] == []
    started = mine["ids"] + theirs[0]["ids"] + theirs[1]["ids"]
    assert len(set(started)) == 300
    # The parent's client, still on its own connections, reads every run.
    for by, result in (("parent", mine), ("child0", theirs[0]), ("child1", theirs[1])):
        assert [client.runs.get(run_id).payload for run_id in result["ids"]] == [
            {"by": by, "i": i} for i in range(100)]


def test_runs_a_child_starts_stay_when_its_parent_closes_the_client(
        db_url: str, tmp_path: Path) -> None:
    # On SQLite the parent's last close removes the WAL when no other process
    # holds the file's locks; a child going on over the parent's connections
    # held none, and its runs written after that close were lost with the WAL.
    app = StackShift(db_url)
    app.start("noop", {"i": -1})
    halfway_r, halfway_w = os.pipe()
    go_on_r, go_on_w = os.pipe()

    def child_work() -> list[str]:
        started = [app.start("noop", {"i": i}).id for i in range(20)]
        os.write(halfway_w, b".")
        os.read(go_on_r, 1)  # the parent has closed its client
        return started + [app.start("noop", {"i": i}).id for i in range(20, 40)]

    child = Child(child_work, tmp_path / "child.json")
    assert os.read(halfway_r, 1) == b"."
    app.close()
    os.write(go_on_w, b".")
    started = child.join()

    reopened = StackShift(db_url)
    try:
        assert [reopened.runs.get(run_id).payload for run_id in started] == [
            {"i": i} for i in range(40)]
        assert len(reopened.runs.list(job="noop", limit=100).items) == 41
    finally:
        reopened.close()
        for fd in (halfway_r, halfway_w, go_on_r, go_on_w):
            os.close(fd)


def test_a_worker_started_in_a_child_runs_what_the_parent_started(
        db_url: str, tmp_path: Path) -> None:
    app = StackShift(db_url)

    @app.job("double")
    def double(ctx: Any) -> int:
        return int(ctx.step.run("times-two", lambda n: n * 2, ctx.payload["n"]))

    try:
        started = [app.start("double", {"n": n}).id for n in range(10)]
        child = Child(lambda: run_until_idle(app), tmp_path / "child.json")
        # Meanwhile the parent's client reads on.
        reads = 0
        while child.running() or reads < 20:
            run = app.runs.get(started[reads % 10])
            assert (run.id, run.payload) == (started[reads % 10], {"n": reads % 10})
            reads += 1
        assert child.join() == 10
        runs = [app.runs.get(run_id) for run_id in started]
        assert [(run.status, run.result) for run in runs] == [
            ("completed", n * 2) for n in range(10)]
    finally:
        app.close()


def _forks_while(app: StackShift, busy: Callable[[], object], threads: int, pause: float,
                 tmp_path: Path) -> tuple[list[str], list[float], list[int]]:
    """Six forks, ``pause`` apart, while ``threads`` threads of the parent call
    ``busy()`` without pause; each child starts a run. The children's run ids,
    how long each fork took, and how many calls each thread made meanwhile."""
    stop = threading.Event()
    calls = [0] * threads

    def loop(n: int) -> None:
        while not stop.is_set():
            busy()
            calls[n] += 1

    running = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for thread in running:
        thread.start()
    started, took = [], []
    try:
        for n in range(6):
            time.sleep(pause)
            before = time.monotonic()
            child = Child(lambda n=n: app.start("forked", {"n": n}).id,
                          tmp_path / f"child{n}.json")
            took.append(time.monotonic() - before)
            started.append(child.join())
    finally:
        stop.set()
        for thread in running:
            thread.join()
    return started, took, calls


def test_a_child_forked_while_other_threads_write_can_write(
        db_url: str, tmp_path: Path) -> None:
    """A fork taken while threads of the parent start runs (a web app's request
    threads, a worker's): the child writes too. On SQLite a connection copied in
    the middle of a write would keep the write lock in the child's memory, and
    every write of the child would wait for it until refused as "database is
    locked"; the fork waits for the write under way instead."""
    url = db_url + "?busy_timeout=3" if db_url.startswith("sqlite") else db_url
    app = StackShift(url)
    try:
        started, _, calls = _forks_while(app, lambda: app.start("busy", {}), 4, 0.1, tmp_path)
        assert sum(calls) > 20  # the threads were writing all along
        assert [app.runs.get(run_id).payload for run_id in started] == [
            {"n": n} for n in range(6)]
    finally:
        app.close()


def test_ids_made_on_both_sides_of_a_fork_differ(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Within one process ids made in the same millisecond bump the last one's
    # random part; a child carrying on from its parent's would make the
    # parent's next ids. The clock stands still here: every id is of one
    # millisecond.
    monkeypatch.setattr(ids, "time", SimpleNamespace(time=lambda: 1_800_000_000.0))
    first = ids.new_id("run")
    child = Child(lambda: [ids.new_id("run") for _ in range(100)], tmp_path / "child.json")
    mine = [ids.new_id("run") for _ in range(100)]
    theirs = child.join()
    assert len({first, *mine, *theirs}) == 201
    assert sorted(mine) == mine and sorted(theirs) == theirs


def test_a_push_route_that_served_before_a_fork_serves_in_the_child(
        db_url: str, tmp_path: Path) -> None:
    # The parent's handler thread, idle in the route's pool at the fork, is
    # not in the child: a pool that still counted it handed the child's first
    # delivery to no thread, and the run never finished.
    with running_server(db_url, tmp_path / "server.log") as server:
        app = StackShift(api_key=server.api_key, base_url=server.url)

        @app.job("forkedEcho")
        def forked_echo(ctx: Any) -> dict[str, int]:
            return {"pid": ctx.step.run("pid", os.getpid)}

        port = free_port()
        route = app.wsgi_app(url=f"http://127.0.0.1:{port}/")
        httpd = make_server("127.0.0.1", port, route, handler_class=QuietHandler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        stop_r, stop_w = os.pipe()
        ready_r, ready_w = os.pipe()
        try:
            first = app.runs.wait(app.start("forkedEcho").id, timeout=30)
            assert (first.status, first.result) == ("completed", {"pid": os.getpid()})
            httpd.shutdown()
            httpd.server_close()

            def serve_in_child() -> None:
                served = make_server("127.0.0.1", port, route, handler_class=QuietHandler)
                threading.Thread(target=served.serve_forever, daemon=True).start()
                os.write(ready_w, b".")
                os.read(stop_r, 1)

            child = Child(serve_in_child, tmp_path / "child.json")
            assert os.read(ready_r, 1) == b"."
            second = app.runs.wait(app.start("forkedEcho").id, timeout=30)
            assert (second.status, second.result) == ("completed", {"pid": child.pid})
            os.write(stop_w, b".")
            child.join()
        finally:
            os.write(stop_w, b".")
            app.close()
            for fd in (stop_r, stop_w, ready_r, ready_w):
                os.close(fd)


def test_a_fork_taken_while_other_threads_read_neither_waits_for_them_nor_hangs(
        db_url: str, tmp_path: Path) -> None:
    """Threads that read without pause (a web app's request threads): on SQLite
    the fork waited up to its 5 s limit for their reads, as new ones kept
    starting, and then forked in the middle of one. The child then closed the
    connection of that read as the threads it does not have ended, and hung for
    good. New reads now wait for the fork, and the child leaves such a close to
    its start-over, which keeps a connection in use unclosed."""
    app = StackShift(db_url)
    app.start("read", {})
    try:
        started, took, calls = _forks_while(app, lambda: app.runs.list(limit=5), 2, 0.05,
                                            tmp_path)
        assert min(calls) > 10  # the threads were reading all along
        assert max(took) < 2.5, took
        assert [app.runs.get(run_id).payload for run_id in started] == [
            {"n": n} for n in range(6)]
    finally:
        app.close()


def test_a_worker_started_before_a_fork_stays_the_parents(
        db_url: str, tmp_path: Path) -> None:
    """A child that closes its copy of the client (or stops its copy of the
    worker) handed back the parent's running runs, whose handlers then ran twice
    at once, and unregistered the parent's worker; a start of the copy did
    nothing, and the child's runs waited for good."""
    app = StackShift(db_url)
    release = tmp_path / "release"
    entered: list[int] = []

    @app.job("hold")
    def hold(ctx: Any) -> int:
        entered.append(os.getpid())
        while not release.exists():
            time.sleep(0.01)
        return os.getpid()

    worker = app.worker(shutdown_grace="1s").start()
    try:
        run = app.start("hold", {})
        deadline = time.monotonic() + 30
        while app.runs.get(run.id).status != "running" and time.monotonic() < deadline:
            time.sleep(0.01)

        def child_work() -> str:
            try:
                worker.start()
            except RuntimeError as exc:
                refused = str(exc)
            else:
                refused = "started"
            app.close()
            return refused

        refused = Child(child_work, tmp_path / "child.json").join()
        assert refused == (
            f"worker {worker.id} was started in the parent of this forked process, where its"
            " threads and runs stay: make a new worker in this process (app.worker())")
        assert app.runs.get(run.id).status == "running"
        assert [job.live_workers for job in app.list_jobs() if job.name == "hold"] == [1]
        release.touch()
        done = app.runs.wait(run.id, timeout="30s")
        assert (done.status, done.result, done.attempt) == ("completed", os.getpid(), 1)
        assert [entry.kind for entry in app.runs.timeline(run.id)] == [
            "run.queued", "attempt.started", "run.completed"]
        assert entered == [os.getpid()]
    finally:
        worker.stop()
        app.close()

