"""On a remote worker, whose endings go to the server, a group of errors is
judged as on an embedded one: a ``NonRetriableError`` in it fails the run at
once, and ``RetryAfterError``s in it set the next attempt's time."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from stackshift import NonRetriableError, RetryAfterError, StackShift
from stackshift.testing import run_until_idle

pytestmark = pytest.mark.slow


def charge(amount: int) -> int:
    return amount


def refuse_card(amount: int) -> None:
    raise NonRetriableError(f"card declined for good ({amount})")


def test_error_groups_on_a_remote_worker(own_remote: StackShift) -> None:
    @own_remote.job("charge", max_attempts=3)
    async def charge_all(ctx):  # type: ignore[no-untyped-def]
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.step.run("declined", refuse_card, 5))
            group.create_task(ctx.step.run("charged", charge, 6))

    @own_remote.job("limited", max_attempts=3)
    async def limited(ctx):  # type: ignore[no-untyped-def]
        raise ExceptionGroup("rate limits", [RetryAfterError("1h"), RetryAfterError("3h")])

    declined, throttled = own_remote.start("charge"), own_remote.start("limited")
    run_until_idle(own_remote)

    failed = own_remote.runs.get(declined.id)
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == (
        "ExceptionGroup", "unhandled errors in a TaskGroup (1 sub-exception):"
        " NonRetriableError: card declined for good (5)")
    assert "in refuse_card" in (failed.error.traceback or "")

    retrying = own_remote.runs.get(throttled.id)
    assert (retrying.status, retrying.attempt) == ("retrying", 1)
    assert retrying.error is not None and retrying.error.message == (
        "rate limits (2 sub-exceptions): RetryAfterError: retry after 3600s;"
        " RetryAfterError: retry after 10800s")
    [attempt] = own_remote.runs.attempts(throttled.id)
    assert attempt.finished_at is not None and retrying.next_attempt_at is not None
    # The worker sets the time, the server records the attempt's end: seconds apart.
    waited = retrying.next_attempt_at - attempt.finished_at
    assert abs(waited - timedelta(hours=3)) < timedelta(minutes=1)
