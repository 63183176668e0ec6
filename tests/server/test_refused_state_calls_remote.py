"""On a remote worker, whose state calls go to the server, a refused
``ctx.state`` call fails the run at once too, checked before any request, while
the server's refusal of a stored value that is not an integer is retried."""

from __future__ import annotations

import pytest

from stackshift import StackShift
from stackshift.testing import run_until_idle

pytestmark = pytest.mark.slow


def test_a_refused_state_call_fails_at_once_and_a_stored_value_is_retried(
        own_remote: StackShift) -> None:
    @own_remote.job("misuse", max_attempts=3)
    def misuse(ctx):  # type: ignore[no-untyped-def]
        ctx.state.set("greeting", "hi", ttl="soon")

    @own_remote.job("count", max_attempts=2, backoff={"base": 0.01, "jitter": 0})
    def count(ctx):  # type: ignore[no-untyped-def]
        return ctx.state.increment("visits")

    own_remote.state.set("visits", "many")
    refused, stored = own_remote.start("misuse"), own_remote.start("count")
    run_until_idle(own_remote)

    failed, retried = own_remote.runs.get(refused.id), own_remote.runs.get(stored.id)
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.error is not None and failed.error.message == (
        "ttl: 'soon' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')")
    assert "StackShift refused this ctx.state call's arguments" in (
        failed.error.traceback or "")
    assert (retried.status, retried.attempt) == ("failed", 2)
    assert retried.error is not None
    assert retried.error.message == "state key 'visits' does not hold an integer"
