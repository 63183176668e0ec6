"""Starting and stopping a real ``stackshift server`` process for tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from stackshift.clock import SystemClock
from stackshift.jobs import JobRegistry
from stackshift.service import Service
from stackshift.settings import Settings
from stackshift.store import open_store


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


def start_server(database_url: str, log: Path, *extra: str, port: int | None = None) -> Server:
    """``python -m stackshift.server`` (the ``stackshift server`` command) on ``port``,
    else on a free one."""
    service = admin_service(database_url)
    try:
        _, key = service.create_api_key("tests")
    finally:
        service.close()
    if port is None:
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
