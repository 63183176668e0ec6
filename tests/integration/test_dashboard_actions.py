"""What the dashboard says after an action, and what its runs list says of a run,
where the page read before the action, or the run's own status, tells the story."""

from __future__ import annotations

import asyncio
import html
import re

import httpx

from stackshift import StackShift
from stackshift.dashboard import create_dashboard
from stackshift.dashboard.pages import run_row
from stackshift.testing import FakeClock, run_until_idle


class Operator:
    """A browser on the open dashboard of ``app``: its session cookie kept from page
    to page, each form sent with the CSRF token of the page it is on."""

    def __init__(self, app: StackShift) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(create_dashboard(app._service, auth="open")),
            base_url="http://127.0.0.1", follow_redirects=True)

    async def act(self, page: str, action: str, **form: str) -> str:
        """Send the form of ``action`` from ``page``: the message shown after it."""
        found = re.search(r'name="csrf" value="([^"]+)"', (await self.http.get(page)).text)
        assert found is not None
        answer = await self.http.post(action, data={"csrf": found[1], **form})
        assert answer.status_code == 200, answer.text
        flash = re.search(r'<div class="flash flash-(\w+)" role="status">(.*?)</div>',
                          answer.text, re.S)
        assert flash is not None, answer.text
        return f"{flash[1]}: {html.unescape(flash[2])}"

    async def start(self, job: str, **fields: str) -> str:
        form = {"job": job, "payload": "", "idempotency_key": "", "queue": "", "delay": "",
                "priority": "", **fields}
        return await self.act("/jobs", "/jobs/start", **form)


def test_a_run_of_a_job_no_worker_has_registered_starts_with_the_clis_warning(
    fake_app: StackShift
) -> None:
    fake_app.job("send-email")(lambda ctx: None)
    run_until_idle(fake_app)  # a worker registers send-email
    operator = Operator(fake_app)

    async def scenario() -> list[str]:
        return [await operator.start("nosuchJob"),
                await operator.start("send-emails", delay="15m"),
                await operator.start("send-email")]

    assert asyncio.run(scenario()) == [
        "warning: Run started, but no worker has registered job 'nosuchJob'; the run waits "
        "queued until one does.",
        "warning: Run started, but no worker has registered job 'send-emails' (did you mean "
        "'send-email'?); the run waits until one does.",
        "ok: Run started."]
    assert [r.job for r in fake_app.runs.list().items] == [
        "send-email", "send-emails", "nosuchJob"]


def test_cancelling_a_run_cancelled_meanwhile_says_it_was_already_cancelled(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """The page was read before the run was cancelled elsewhere: the click changes
    nothing, and says so, rather than take the cancel for its own."""
    cancelled = fake_app.start("nosuchJob")
    other = fake_app.start("nosuchJob")
    operator = Operator(fake_app)

    async def cancel(run_id: str) -> str:
        return await operator.act(f"/runs/{run_id}", f"/runs/{run_id}/cancel")

    fake_app.runs.cancel(cancelled.id, reason="cancelled from the command line")
    clock.advance("5m")
    assert asyncio.run(cancel(cancelled.id)) == (
        "info: This run was already cancelled at 09:00:00 UTC: nothing was changed.")
    error = fake_app.runs.get(cancelled.id).error
    assert error is not None and error.message == "cancelled from the command line"
    assert asyncio.run(cancel(other.id)) == "ok: Run cancelled."


def test_a_delayed_start_that_maintenance_queued_reads_start_due_since(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """Its queue paused, no worker takes the run; maintenance moves it to queued once
    its time has come, and it is due since then."""
    fake_app.job("resize-image", queue="media")(lambda ctx: None)
    fake_app.queue("media").pause()
    delayed = fake_app.start("resize-image", delay="1m")
    plain = fake_app.start("resize-image")
    later = fake_app.start("resize-image", delay="2d")  # another day: with its date
    assert run_row(fake_app.runs.get(delayed.id), clock.now())["note"] == (
        "starts at 09:01:00 UTC")
    assert run_row(fake_app.runs.get(later.id), clock.now())["note"] == (
        "starts at 2026-01-07 09:00:00 UTC")
    clock.advance("3m")
    run_until_idle(fake_app)
    queued = fake_app.runs.get(delayed.id)
    assert queued.status == "queued"
    assert run_row(queued, clock.now())["note"] == "start due since 09:01:00 UTC"
    assert run_row(fake_app.runs.get(plain.id), clock.now())["note"] == ""


def test_keys_that_would_read_as_others_are_quoted_wherever_the_dashboard_shows_them(
    fake_app: StackShift
) -> None:
    """A search term or a key prefix repeated back, and a lock's key, read as what
    they are: a trailing space or a line break would otherwise not show, or show as
    a plain space."""
    @fake_app.job("greet")
    async def greet(ctx):  # type: ignore[no-untyped-def]
        await ctx.step.wait_for_event("verified", correlation_key="user:bob ")

    fake_app.start("greet")
    run_until_idle(fake_app)
    held = fake_app.state.lock("resource:1\nline2")
    held.__enter__()
    operator = Operator(fake_app)

    async def read(*paths: str) -> list[str]:
        pages = [(await operator.http.get(path)).text for path in paths]
        return [html.unescape(re.sub(r"<[^>]+>", "", page)) for page in pages]

    try:
        found, missing, state, prefixed = asyncio.run(read(
            "/?q=user:bob%20", "/?q=%20spacey%20", "/state", "/state?prefix=a%0Ab"))
    finally:
        held.__exit__(None, None, None)
    assert 'Runs whose correlation key is "user:bob ".' in found
    assert 'No run has the id, idempotency key or correlation key " spacey ".' in missing
    assert '"resource:1\\nline2"' in state and "resource:1 line2" not in state
    assert 'No live key starts with "a\\nb".' in prefixed
