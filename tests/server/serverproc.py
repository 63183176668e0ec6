"""Starting and stopping a real ``stackshift server`` process for tests."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

import httpx

from stackshift.clock import SystemClock
from stackshift.jobs import JobRegistry
from stackshift.service import Service
from stackshift.settings import Settings
from stackshift.store import open_store

_SCRIPT = Path(sys.executable).with_name("stackshift")
#: The ``stackshift`` command, as the user runs it.
STACKSHIFT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "stackshift.cli.main"]


def admin_service(database_url: str) -> Service:
    """A service straight on the database (what ``stackshift keys`` uses)."""
    return Service(open_store(database_url), SystemClock(), Settings(), JobRegistry())


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def database_rows(database_url: str, skip: Collection[str] = ()) -> dict[str, list[str]]:
    """Every row of every table but those in ``skip``, as text, by table, read
    through the database itself (rows in the order the database gives them)."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'") if r[0] not in skip]
            return {t: [repr(row) for row in conn.execute(f'SELECT * FROM "{t}"')]
                    for t in tables}
        finally:
            conn.close()
    import psycopg

    base, schema = database_url.split("?schema=")
    with psycopg.connect(base) as pg:
        tables = [r[0] for r in pg.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,)) if r[0] not in skip]
        return {t: [str(row[0]) for row in pg.execute(
            f'SELECT row_to_json(t)::text FROM "{schema}"."{t}" t')] for t in tables}


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


def start_server(database_url: str, log: Path, *extra: str, port: int | None = None,
                 asgi: str | None = None, env: dict[str, str] | None = None) -> Server:
    """``python -m stackshift.server`` (the ``stackshift server`` command) on ``port``,
    else on a free one; or, given ``asgi`` (``module:app`` in this directory), that
    app served by uvicorn, with the database in ``STACKSHIFT_DATABASE_URL``. ``env``
    adds to the process's environment."""
    service = admin_service(database_url)
    try:
        _, key = service.create_api_key("tests")
    finally:
        service.close()
    if port is None:
        port = free_port()
    address = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    environment = {**os.environ, **(env or {})}
    if asgi is None:
        command = ["stackshift.server", "--database-url", database_url, *address]
    else:
        command = ["uvicorn", asgi, "--app-dir", str(Path(__file__).parent), *address]
        environment["STACKSHIFT_DATABASE_URL"] = database_url
    out = log.open("wb")
    process = subprocess.Popen([sys.executable, "-m", *command, *extra],
                               stdout=out, stderr=subprocess.STDOUT, env=environment)
    out.close()
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, process, log.read_text)
    return Server(url, key, database_url, process, log)


def wait_until_serving(url: str, process: subprocess.Popen[Any],
                       output: Callable[[], str]) -> None:
    """Wait until the server ``process`` at ``url`` answers /healthz with 200; one
    that exits or takes over 30 s is killed, and its ``output()`` shown."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start:\n{output()}")
        time.sleep(0.02)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextmanager
def running_server(database_url: str, log: Path) -> Iterator[Server]:
    """A server on ``database_url`` (migrated first) until the block ends."""
    store = open_store(database_url)
    store.migrate()
    store.close()
    running = start_server(database_url, log)
    try:
        yield running
    finally:
        stop_server(running)


class QuietHandler(WSGIRequestHandler):
    """A ``wsgiref`` request handler that logs no line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def raise_with(client: Any, setting: str) -> str:
    """The end of a refusal over the limit ``setting``: how to raise it, where the
    limit is held (the server's, for a remote client; else the program's)."""
    from stackshift.remote import RemoteService

    where = (f"the server's --setting {setting}=..." if isinstance(client._api, RemoteService)
             else f"Settings({setting}=...)")
    return f"; raise the limit with {where}"
