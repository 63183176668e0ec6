"""PostgreSQL restarts in the middle of a load of 300 runs: nothing is lost.

Two worker processes execute runs of five steps while this process keeps
starting runs; half-way through, the server is restarted with
``pg_ctlcluster ... restart``. Clients and workers reconnect by themselves.
Every acknowledged start is a run that completes, and a step is executed again
only when the attempt that ran it was cut short (at least once, never more
often than the run's attempts).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cluster import cluster_processes, postgres_schema

from stackshift import StackShift

pytestmark = pytest.mark.slow

RUNS = 300


def local_cluster() -> tuple[str, str]:
    """Version and name of the local cluster on port 5432 (Debian's pg_ctlcluster)."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        pytest.skip("needs a local PostgreSQL cluster managed by pg_ctlcluster")
    for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        version, name, port = line.split()[:3]
        if port == "5432":
            return version, name
    pytest.skip("no local PostgreSQL cluster on port 5432")


def test_a_restart_in_the_middle_of_300_runs_loses_nothing(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    version, name = local_cluster()
    effects = tmp_path / "effects.txt"
    with postgres_schema(request.config) as url, cluster_processes(tmp_path) as processes:
        app = StackShift(url)
        workers = [processes.spawn("worker", url, str(effects), "--lease", "2s",
                                   "--concurrency", "4", "--step-seconds", "0.005")
                   for _ in range(2)]
        for worker in workers:
            processes.wait_for(worker, "ready")

        started: dict[str, str] = {}
        refused: list[BaseException] = []

        def start_all() -> None:
            # A client's retry: the same idempotency key makes a repeat harmless.
            for i in range(RUNS):
                key = f"load-{i}"
                while key not in started:
                    try:
                        started[key] = app.start("fiveEffects", {"i": i}, idempotency_key=key,
                                                 max_attempts=50).id
                    except psycopg.OperationalError as exc:
                        refused.append(exc)
                        time.sleep(0.1)
                time.sleep(0.01)

        def completed() -> int:
            try:
                return app._service.store.count_runs_by_status().get("completed", 0)
            except psycopg.OperationalError:
                return -1

        starter = threading.Thread(target=start_all)
        starter.start()
        deadline = time.monotonic() + 60
        while completed() < RUNS // 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        restart_at = completed()
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart"],
                       check=True, timeout=60, capture_output=True)
        starter.join(60)
        assert not starter.is_alive()
        deadline = time.monotonic() + 60
        while completed() < RUNS and time.monotonic() < deadline:
            time.sleep(0.1)

        assert 0 < restart_at < RUNS, "the restart did not land in the middle of the load"
        runs = [app.runs.get(run_id) for run_id in started.values()]
        assert len(runs) == RUNS
        stuck = {r.id: r.status for r in runs if r.status != "completed"}
        assert stuck == {}, f"runs not completed after the restart: {stuck}"
        executions = Counter(tuple(line.split()[:2]) for line in effects.read_text().splitlines())
        for run in runs:
            attempts = len(app.runs.attempts(run.id))
            steps = app.runs.steps(run.id)
            assert [s.status for s in steps] == ["completed"] * 5
            for n in range(1, 6):
                count = executions[(run.id, str(n))]
                assert 1 <= count <= attempts, (run.id, n, count, attempts)
        app.close()


class RoleOutage:
    """A schema of its own and a role to reach it by: ``url`` connects as the role,
    ``begin()`` puts the database out of its reach (its sessions ended, new ones
    refused), ``end()`` brings it back."""

    def __init__(self, url: str) -> None:
        self.schema_url = url
        self.role = f"r_{uuid.uuid4().hex[:12]}"
        self.admin = psycopg.connect(url.split("?")[0], autocommit=True)
        self.admin.execute(f"CREATE ROLE {self.role} LOGIN SUPERUSER")
        self.url = url.replace("://postgres@", f"://{self.role}@")

    def _end_sessions(self) -> None:
        self.admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                           "WHERE usename = %s", (self.role,))

    def begin(self) -> None:
        self.admin.execute(f"ALTER ROLE {self.role} NOLOGIN")
        self._end_sessions()

    def end(self) -> float:
        """The database back for the role; returns when (time.monotonic())."""
        self.admin.execute(f"ALTER ROLE {self.role} LOGIN")
        return time.monotonic()

    def close(self) -> None:
        self._end_sessions()
        schema = self.schema_url.split("schema=")[1]
        self.admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self.admin.execute(f"DROP ROLE IF EXISTS {self.role}")
        self.admin.close()


@contextlib.contextmanager
def role_outage(request: pytest.FixtureRequest) -> Iterator[RoleOutage]:
    with postgres_schema(request.config) as url:
        outage = RoleOutage(url)
        try:
            yield outage
        finally:
            outage.close()


def test_after_a_long_outage_the_client_is_back_within_seconds(
        request: pytest.FixtureRequest) -> None:
    """The database is out of reach for this client's role for 16 s (its sessions
    ended, new ones refused), then back. Calls fail meanwhile, with an error; the
    first one after the outage that fails no more comes within a few seconds,
    not when a connection retry delay grown during the outage runs out."""
    with role_outage(request) as outage:
        app = StackShift(outage.url + "&pool_timeout=1")
        try:
            app.state.set("k", 1)
            outage.begin()
            failed = 0
            outage_ends = time.monotonic() + 16
            while time.monotonic() < outage_ends:
                try:
                    app.state.get("k")
                except Exception:
                    failed += 1
                time.sleep(0.2)
            assert failed > 0  # the outage was one for this client
            back = outage.end()
            while True:
                try:
                    assert app.state.get("k") == 1
                    break
                except psycopg.OperationalError:
                    time.sleep(0.1)
            assert time.monotonic() - back < 5
        finally:
            app.close()


def test_a_call_that_waits_for_a_connection_through_an_outage_gets_one_once_it_ends(
        request: pytest.FixtureRequest) -> None:
    """A call made as the database goes away waits for a connection (up to the pool's
    30 s); the outage lasts 8 s, longer than the pool keeps trying a connection at a
    time. Once the database is back the pool connects again within seconds and the
    waiting call gets its answer, as a worker's lease renewal or claim waiting
    there does: not a timeout at 30 s, the attempt's lease lost meanwhile."""
    with role_outage(request) as outage:
        app = StackShift(outage.url)
        answered: dict[str, Any] = {}

        def wait_for_it() -> None:
            try:
                answered["value"] = app.state.get("k")
            except Exception as exc:
                answered["error"] = exc
            answered["at"] = time.monotonic()

        try:
            app.state.set("k", 1)
            outage.begin()
            waiting = threading.Thread(target=wait_for_it)
            waiting.start()
            time.sleep(8)
            assert not answered, answered  # still waiting: the database is away
            back = outage.end()
            waiting.join(40)
            assert answered.get("value") == 1, answered
            assert answered["at"] - back < 5, f"answered {answered['at'] - back:.1f}s after"
        finally:
            app.close()
