"""A real ``stackshift server`` process per test module and store, and the
``client`` fixture that runs one test through an embedded and a remote client.

The server is a subprocess (uvicorn on 127.0.0.1, a free port) over a database
shared by the module's tests, so tests keep to their own names: ``unique(...)``
gives a job, queue or key name no other test uses. Runs are executed by an
embedded worker (``run_all()``) on the same database, as a ``stackshift worker``
would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stackshift import StackShift
from stackshift.clock import SystemClock
from stackshift.jobs import JobRegistry
from stackshift.service import Service
from stackshift.settings import Settings
from stackshift.store import open_store
from stackshift.testing import run_until_idle

POSTGRES_URL = os.environ.get(
    "STACKSHIFT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One server per module and store: the store is a module-scoped parameter.
    if "served_store" in metafunc.fixturenames:
        kinds = [k.strip() for k in metafunc.config.getoption("--stores").split(",") if k.strip()]
        metafunc.parametrize("served_store", kinds, scope="module")


def _postgres_admin() -> Any:
    import psycopg

    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is unreachable at {POSTGRES_URL}: {exc}")
        pytest.skip(f"PostgreSQL is unreachable at {POSTGRES_URL}: {exc}")


@pytest.fixture(scope="module")
def served_db(served_store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the module's server, on the store under test."""
    if served_store == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('served')}/stackshift.db"
        admin = None
    elif served_store == "postgres":
        admin = _postgres_admin()
        url = f"{POSTGRES_URL}?schema=s_{uuid.uuid4().hex[:12]}"
    else:
        raise ValueError(f"unknown store {served_store!r}")
    store = open_store(url)
    store.migrate()
    store.close()
    try:
        yield url
    finally:
        if admin is not None:
            schema = url.rsplit("schema=", 1)[1]
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.close()


def admin_service(database_url: str) -> Service:
    """A service straight on the database (what ``stackshift keys`` uses)."""
    return Service(open_store(database_url), SystemClock(), Settings(), JobRegistry())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    api_key: str
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def http(self, api_key: str | None = None, **options: Any) -> httpx.Client:
        """An HTTP client; with the server's key unless another (or ``""``: none) is given."""
        key = self.api_key if api_key is None else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **options)


def start_server(database_url: str, log: Path, *extra: str) -> Server:
    """``python -m stackshift.server`` (the ``stackshift server`` command) on a free port."""
    service = admin_service(database_url)
    try:
        _, key = service.create_api_key("tests")
    finally:
        service.close()
    port = free_port()
    out = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "stackshift.server", "--database-url", database_url,
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra],
        stdout=out, stderr=subprocess.STDOUT,
    )
    out.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.02)
    return Server(url, key, database_url, process, log)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def server(served_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running ``stackshift server`` on the module's database, with an API key."""
    running = start_server(served_db, tmp_path_factory.mktemp("log") / "server.log")
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def engine(served_db: str) -> Iterator[StackShift]:
    """An embedded client on the module's database: its worker executes the runs."""
    app = StackShift(served_db)
    yield app
    app.close()


@pytest.fixture(params=["embedded", "remote"])
def client(request: pytest.FixtureRequest, engine: StackShift) -> Iterator[StackShift]:
    """The client under test: embedded (on the database) or remote (through the server)."""
    if request.param == "embedded":
        yield engine
        return
    srv: Server = request.getfixturevalue("server")
    remote = StackShift(api_key=srv.api_key, base_url=srv.url)
    yield remote
    remote.close()


@pytest.fixture
def run_all(client: StackShift, engine: StackShift) -> Callable[[], int]:
    """Execute every due run of the client's jobs, as a ``stackshift worker`` would."""

    def run() -> int:
        for job in client._registry:
            engine._registry.add(job)
        return run_until_idle(engine)

    return run


@pytest.fixture
def unique() -> Callable[[str], str]:
    """``unique("sendReceipt")``: a name no other test on the shared database uses."""
    tag = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{tag}"
