"""A server whose database is taken from under it: its tables dropped, or its
SQLite file deleted. Health checks say so (503) instead of "ok", requests get
503 rather than 500 or a write nobody will read, and the server's log says it
in one line, not a traceback a round."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverproc import Server, assert_error, start_server, stop_server

from stackshift import StackShift
from stackshift.store import open_store
from stackshift.testing import run_until_idle

SCHEMA_MISSING = "the database has no StackShift tables; run `stackshift migrate` on it"


@pytest.fixture
def own_db(db_url: str) -> str:
    """A migrated database of this test's own (it is emptied under the server)."""
    store = open_store(db_url)
    store.migrate()
    store.close()
    return db_url


@pytest.fixture
def served(own_db: str, tmp_path: Path) -> Iterator[Server]:
    running = start_server(own_db, tmp_path / "server.log")
    try:
        yield running
    finally:
        stop_server(running)


@contextmanager
def _connected(database_url: str) -> Iterator[Any]:
    """A connection of the test's own to its database, beside the server's (on
    PostgreSQL, to the test's schema)."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()
        return
    import psycopg

    base, schema = database_url.split("?schema=")
    with psycopg.connect(base, autocommit=True) as pg:
        pg.execute(f'SET search_path TO "{schema}"')
        yield pg


def _drop_every_table(database_url: str) -> None:
    with _connected(database_url) as conn:
        if database_url.startswith("sqlite"):
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%'")]
            for table in tables:
                conn.execute(f'DROP TABLE "{table}"')
        else:
            schema = database_url.split("?schema=")[1]
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            conn.execute(f'CREATE SCHEMA "{schema}"')


def _said_in_one_line(log: Path, what: str) -> list[str]:
    """The server's lines saying ``what``: each with its time and level, and no
    traceback anywhere in the log."""
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if what in line]
    for line in lines:
        assert re.match(r"\d\d:\d\d:\d\d  WARNING ", line), line
    return lines


def test_a_server_whose_tables_are_dropped_answers_503_and_says_so_in_a_line(
        served: Server, own_db: str) -> None:
    _drop_every_table(own_db)
    with served.http() as http:
        error = assert_error(http.get("/healthz"), 503, "database_unavailable")
        assert error["message"] == SCHEMA_MISSING
        assert http.head("/healthz").status_code == 503
        error = assert_error(http.get("/v1/runs"), 503, "database_unavailable")
        assert error["message"] == SCHEMA_MISSING
        time.sleep(1.5)  # maintenance rounds, four a second, fail meanwhile
        said = _said_in_one_line(served.log, "maintenance round failed")
        assert len(said) == 1, said  # then no more than once every 30 s
        assert f"failed, {SCHEMA_MISSING} (" in said[0], said

        # Migrated again, the database serves (a new installation: no key yet).
        store = open_store(own_db)
        store.migrate()
        store.close()
        assert http.get("/healthz").json()["status"] == "ok"
        assert_error(http.get("/v1/runs"), 401, "unauthorized")


def test_a_server_whose_sqlite_file_is_deleted_refuses_writes_and_fails_its_health_check(
        tmp_path: Path) -> None:
    db = tmp_path / "deleted.db"
    store = open_store(f"sqlite:///{db}")
    store.migrate()
    store.close()
    served = start_server(f"sqlite:///{db}", tmp_path / "server.log")
    try:
        _deleted_under(served, db)
    finally:
        stop_server(served)


def _deleted_under(served: Server, db: Path) -> None:
    with served.http() as http:
        assert http.post("/v1/runs", json={"job": "before"}).status_code == 201
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        error = assert_error(http.get("/healthz"), 503, "database_unavailable")
        assert error["message"] == (f"the server's database file {db} was deleted; start it"
                                    " again on the database in use")
        assert http.head("/healthz").status_code == 503
        # Each request from a new connection or the one it had: nothing written.
        with httpx.Client(base_url=served.url, headers=http.headers, timeout=30) as more:
            answers = [c.post("/v1/runs", json={"job": "after"}) for c in (http, more) * 4]
        for answer in answers:
            assert_error(answer, 503, "database_unavailable")
        assert not db.exists()  # no new, empty database where the old one was
        assert _said_in_one_line(served.log, "the database is unavailable")
    stop_server(served)  # what it could not do as it stopped is said in a line too
    _said_in_one_line(served.log, "could not")


def _roll_back_to_12(database_url: str) -> None:
    """The database made as a backup of schema version 12 would be (restored under
    the server): no ``logs.fields`` column, and version 13 not recorded."""
    with _connected(database_url) as conn:
        conn.execute("ALTER TABLE logs DROP COLUMN fields")
        conn.execute("DELETE FROM schema_migrations WHERE version = 13")


def test_a_request_failing_on_a_schema_behind_the_server_answers_503_saying_so(
        served: Server, own_db: str) -> None:
    """A backup of an older schema restored under a running server: a request that
    fails where a column is missing gets the 503 /healthz gives, naming both
    versions and `stackshift migrate`, not a 500 that says nothing."""
    app = StackShift(own_db)

    @app.job("report")
    def report(ctx: Any) -> None:
        ctx.log.info("reported")

    try:
        run_id = app.start("report").id
        run_until_idle(app)
    finally:
        app.close()
    with served.http() as http:
        assert [r["message"] for r in http.get(f"/v1/runs/{run_id}/logs").json()["items"]
                ] == ["reported"]
        _roll_back_to_12(own_db)
        behind = ("the database's schema is at version 12, this server needs 13; run"
                  " `stackshift migrate` on it")
        assert assert_error(http.get("/healthz"), 503, "database_unavailable")[
            "message"] == behind
        error = assert_error(http.get(f"/v1/runs/{run_id}/logs"), 503, "database_unavailable")
        assert error["message"] == behind
