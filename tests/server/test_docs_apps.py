"""The web apps the docs show (```` ```python app ```` blocks) serve as written.

Each block is taken from its page, written to a module as it stands (blank
lines before it, so a traceback names the page's own line numbers) and served
by uvicorn on 127.0.0.1 in a subprocess, on a real SQLite file or PostgreSQL
schema. The only change is the address the page leaves as a placeholder (the
route's public URL, the database URL), replaced by the real one; a placeholder
that is no longer in the block fails the test, so the two cannot drift apart.

- server.md's push-mode route, mounted in FastAPI with ``stackshift.asgi_app()``,
  talks to a real ``stackshift server`` with an API key, and the server
  invokes it: a run started through the server completes through the route.
- dashboard.md's mounting example serves the API and the dashboard on one
  address: the dashboard asks for a key, then lists the database's runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from serverproc import admin_service, free_port, running_server

from docblocks import Block, python_blocks
from processes import stop_processes
from stackshift import StackShift
from stackshift.testing import run_until_idle

pytestmark = pytest.mark.slow

PUSH_MODE = ("docs/server.md", "Push mode: the server invokes your route")
MOUNTING = ("docs/dashboard.md", "Mounting")


def app_block(page: str, heading: str) -> Block:
    found = [b for b in python_blocks() if b.is_app and (b.page, b.heading) == (page, heading)]
    assert len(found) == 1, f"{page} should have one ```python app block under {heading!r}"
    return found[0]


def test_every_app_block_in_the_docs_is_served_here() -> None:
    assert {(b.page, b.heading) for b in python_blocks() if b.is_app} == {PUSH_MODE, MOUNTING}


@contextmanager
def served(block: Block, tmp_path: Path, port: int, placeholders: dict[str, str],
           env: dict[str, str]) -> Iterator[str]:
    """``uvicorn`` serving the block's ``app`` on ``port``, its placeholders
    replaced, with ``env`` (and no other ``STACKSHIFT_`` variable); yields its URL."""
    code = block.code
    for placeholder, value in placeholders.items():
        assert code.count(placeholder) == 1, f"{block.where}: no longer shows {placeholder}"
        code = code.replace(placeholder, value)
    (tmp_path / "docs_app.py").write_text("\n" * (block.line - 1) + code, encoding="utf-8")
    url = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "docs_app:app", "--app-dir", str(tmp_path),
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env={**clean, **env}, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)  # any answer: it is serving
                break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{block.where} did not serve:\n{log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        stop_processes([proc], grace=10)


def test_the_push_mode_route_completes_a_run_the_server_posts_to_it(
        db_url: str, tmp_path: Path) -> None:
    port = free_port()
    route = f"http://127.0.0.1:{port}/stackshift/"
    with running_server(db_url, tmp_path / "server.log") as server, server.http() as http, \
            served(app_block(*PUSH_MODE), tmp_path, port,
                   {"https://app.example.com/stackshift/": route},
                   {"STACKSHIFT_URL": server.url, "STACKSHIFT_API_KEY": server.api_key}):
        # The route registered itself, with its job, as the app started.
        [endpoint] = http.get("/v1/endpoints").json()["items"]
        assert (endpoint["url"], endpoint["jobs"]) == (route, ["userOnboarding"])
        started = http.post("/v1/runs", json={"job": "userOnboarding",
                                              "payload": {"userId": "42"}})
        assert started.status_code == 201, started.text
        run_id = started.json()["id"]
        run = http.get(f"/v1/runs/{run_id}/wait", params={"timeout": 30}).json()
        # No worker runs: only the server's post to the route can have run it.
        assert (run["status"], run["attempt"], run["result"]) == ("completed", 1, None), run


def test_the_mounted_dashboard_asks_for_a_key_then_lists_the_runs(
        db_url: str, tmp_path: Path) -> None:
    with StackShift(db_url) as engine:
        engine.job("sendReceipt", lambda ctx: {"sent": ctx.payload["orderId"]}, queue="emails")
        done = engine.start("sendReceipt", {"orderId": "o_1"})
        run_until_idle(engine)
        waiting = engine.start("sendReceipt", {"orderId": "o_2"}, delay="1h")
    service = admin_service(db_url)
    try:
        _, key = service.create_api_key("docs")
    finally:
        service.close()
    with served(app_block(*MOUNTING), tmp_path, free_port(),
                {'"postgresql://..."': repr(db_url)}, {}) as url, \
            httpx.Client(base_url=url, timeout=30) as browser:
        # The API beside it, with its own Bearer check.
        assert browser.get("/healthz").status_code == 200
        assert browser.get("/v1/runs").status_code == 401
        listed = browser.get("/v1/runs", headers={"Authorization": f"Bearer {key}"})
        assert {r["id"] for r in listed.json()["items"]} == {done.id, waiting.id}
        # The dashboard at /, behind its login page (auth="api_key").
        first = browser.get("/")
        assert first.status_code == 303 and "/login" in first.headers["location"]
        login = browser.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert csrf, login.text
        assert browser.post("/login", data={"csrf": csrf.group(1), "api_key": key}
                            ).status_code == 303
        page = browser.get("/")
        assert page.status_code == 200
        assert {done.id, waiting.id} <= set(re.findall(r'data-run-id="([^"]+)"', page.text))
        shown = browser.get(f"/runs/{done.id}")
        assert shown.status_code == 200 and "sendReceipt" in shown.text
