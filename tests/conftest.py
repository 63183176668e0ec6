"""Shared fixtures. Every storage-touching test runs on each store named by
``--stores`` (default: ``sqlite,postgres``); a PostgreSQL test gets a schema of
its own, dropped afterwards.

Under ``CI=true`` an unreachable PostgreSQL fails the run; elsewhere its tests
are skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from stackshift import StackShift
from stackshift.testing import FakeClock

POSTGRES_URL = os.environ.get(
    "STACKSHIFT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stores",
        default="sqlite,postgres",
        help="comma-separated stores to run storage tests on: sqlite, postgres",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        kinds = [k.strip() for k in metafunc.config.getoption("--stores").split(",") if k.strip()]
        metafunc.parametrize("store_kind", kinds)


def _postgres_admin():  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is unreachable at {POSTGRES_URL}: {exc}")
        pytest.skip(f"PostgreSQL is unreachable at {POSTGRES_URL}: {exc}")


@pytest.fixture
def db_url(store_kind: str, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh, empty database URL on the store under test."""
    if store_kind == "sqlite":
        yield f"sqlite:///{tmp_path}/stackshift.db"
        return
    if store_kind != "postgres":
        raise ValueError(f"unknown store {store_kind!r}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = _postgres_admin()
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock("2026-01-05T09:00:00Z")


@pytest.fixture
def app(db_url: str) -> Iterator[StackShift]:
    """A client on the real wall clock."""
    client = StackShift(db_url)
    yield client
    client.close()


@pytest.fixture
def fake_app(db_url: str, clock: FakeClock) -> Iterator[StackShift]:
    """A client on a fake clock: drive it with ``clock.advance`` and ``run_until_idle``."""
    client = StackShift(db_url, clock=clock)
    yield client
    client.close()
