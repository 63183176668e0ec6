"""Helpers of the dashboard's browser tests: serving the dashboard, waiting, screenshots."""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from playwright.sync_api import Page

from stackshift import StackShift
from stackshift.dashboard import create_dashboard

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1440, "height": 900}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Dashboard:
    app: StackShift
    url: str
    store_kind: str

    def at(self, path: str) -> str:
        return self.url + path

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Poll ``predicate`` (engine state, not the page) until it returns a truthy value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            time.sleep(0.02)

    def wait_status(self, run_id: str, *statuses: str, timeout: float = 15.0) -> Any:
        return self.wait_for(
            lambda: (run := self.app.runs.get(run_id)).status in statuses and run,
            timeout)


@contextmanager
def serve_asgi(asgi: Any) -> Iterator[str]:
    """Serve an ASGI app on a free 127.0.0.1 port with uvicorn, in a thread."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve(app: StackShift, **options: Any) -> Iterator[str]:
    """Serve the dashboard of ``app`` (``create_dashboard`` options) until the block ends."""
    with serve_asgi(create_dashboard(app._service, poll_interval=0.3, **options)) as url:
        yield url


def screenshot(page: Page, name: str, store_kind: str, *, full_page: bool = True) -> None:
    """Save a full-page screenshot for the docs (from the SQLite run only)."""
    if store_kind != "sqlite":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def pixel(page: Page, x: float, y: float) -> tuple[int, int, int]:
    """The colour the browser painted at ``(x, y)`` of the viewport (a 1x1 screenshot)."""
    png = page.screenshot(clip={"x": x, "y": y, "width": 1, "height": 1})
    chunks, at = b"", 8
    while at < len(png):
        size, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind == b"IDAT":
            chunks += png[at + 8:at + 8 + size]
        at += 12 + size
    # One pixel in one row: every PNG filter leaves the bytes as they are.
    row = zlib.decompress(chunks)
    return row[1], row[2], row[3]
