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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverproc import Server, running_server, start_server, stop_server

from stackshift import StackShift
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


@pytest.fixture(scope="module")
def server(served_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running ``stackshift server`` on the module's database, with an API key."""
    running = start_server(served_db, tmp_path_factory.mktemp("log") / "server.log")
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client of the module's server, with its API key."""
    with server.http() as client:
        yield client


@pytest.fixture
def engine(served_db: str) -> Iterator[StackShift]:
    """An embedded client on the module's database: its worker executes the runs."""
    app = StackShift(served_db)
    yield app
    app.close()


@pytest.fixture
def remote(server: Server) -> Iterator[StackShift]:
    """A remote client, through the server (a module may give its own ``server``)."""
    app = StackShift(api_key=server.api_key, base_url=server.url)
    yield app
    app.close()


@pytest.fixture
def own_remote(db_url: str, tmp_path: Path) -> Iterator[StackShift]:
    """A remote client through a server of its own, on a new database: the test's
    runs alone, for a remote worker that runs everything due (``run_until_idle``)."""
    with running_server(db_url, tmp_path / "server.log") as server:
        app = StackShift(api_key=server.api_key, base_url=server.url)
        yield app
        app.close()


@pytest.fixture(params=["database", "server"])
def cli_env(request: pytest.FixtureRequest, db_url: str,
            tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a CLI on ``db_url``: straight on the database, or through
    a server on it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    if request.param == "database":
        env["STACKSHIFT_DATABASE_URL"] = db_url
        yield env
        return
    with running_server(db_url, tmp_path / "server.log") as server:
        env.update(STACKSHIFT_URL=server.url, STACKSHIFT_API_KEY=server.api_key)
        yield env


@pytest.fixture(params=["embedded", "remote"])
def client(request: pytest.FixtureRequest, engine: StackShift) -> StackShift:
    """The client under test: embedded (on the database) or remote (through the server)."""
    if request.param == "embedded":
        return engine
    return request.getfixturevalue("remote")


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
