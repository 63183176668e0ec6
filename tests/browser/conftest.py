"""Browser tests of the dashboard: real uvicorn on 127.0.0.1, a real worker running
jobs on the store under test, and Debian's chromium driven by Playwright.

Each test gets a fresh database, app, worker and server; the browser is shared
by the session. Screenshots of the pages go to ``docs/screenshots/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from dashboard_harness import VIEWPORT, Dashboard, serve
from dashboard_jobs import register_jobs
from playwright.sync_api import Browser, Page, expect, sync_playwright

from stackshift import StackShift

CHROMIUM = "/usr/bin/chromium"
# The machine is shared: give live updates time under load rather than flake.
expect.set_options(timeout=15_000)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# Module scope: the sync API keeps an event loop running in this thread while it is
# open, which would break asyncio.run() in every test collected after the browser ones.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup (it installs Debian's chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def stack(db_url: str, store_kind: str) -> Iterator[Dashboard]:
    """An app with the test jobs, a worker running them, and the open dashboard."""
    app = StackShift(db_url)
    register_jobs(app)
    worker = app.worker(concurrency=8, poll_interval=0.05, maintenance_interval=0.05)
    worker.start()
    try:
        with serve(app, auth="open") as url:
            yield Dashboard(app, url, store_kind)
    finally:
        worker.stop(grace=2)
        app.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"
