"""A ``ctx.state`` call whose arguments the engine refuses (a bad duration, key,
value or limit, a keyword the method does not take) fails the run at once, as a
refused ``ctx.step`` call does: every attempt would make the same call. A lock
held by another owner and a stored value that is not an integer can change
before the next attempt, and are retried; ``app.state`` outside a handler
raises as it always did."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from refusals import add_job, failed_at_once, not_retried
from stackshift import StackShift
from stackshift.errors import LockNotAcquiredError, ValidationError
from stackshift.testing import run_until_idle

NOT_RETRIED = not_retried("ctx.state")

NOT_A_DURATION = "ttl: 'soon' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"


def extend_by_nothing(flavour: str) -> Callable[[Any], Any]:
    """A body that holds a lock and extends it by a TTL of 0."""
    if flavour == "sync":
        def extend(state: Any) -> None:
            with state.lock("report") as lock:
                lock.extend(ttl="0s")
        return extend

    async def extend_async(state: Any) -> None:
        async with state.lock("report") as lock:
            await lock.extend_async(ttl="0s")
    return extend_async


#: A refused call of ctx.state (given the flavour), and the error it fails the run with.
REFUSED: dict[str, tuple[Callable[[str], Callable[[Any], Any]], str, str]] = {
    "bad ttl to set": (
        lambda flavour: lambda state: state.set("greeting", "hi", ttl="soon"),
        "ValidationError", NOT_A_DURATION),
    "bad by to increment": (
        lambda flavour: lambda state: state.increment("visits", by="2"),
        "ValidationError", "by must be a 64-bit integer, got '2'"),
    "unknown keyword to lock": (
        lambda flavour: lambda state: state.lock("report", timeout="5s"),
        "TypeError",
        "state.lock() got an unexpected keyword argument 'timeout'; it takes key, ttl, wait"),
    "bad ttl to lock": (
        lambda flavour: lambda state: state.lock("report", ttl="soon"),
        "ValidationError", NOT_A_DURATION),
    "bad ttl to extend": (extend_by_nothing, "ValidationError", "lock ttl must be more than 0"),
    "empty key to get": (
        lambda flavour: lambda state: state.get(""),
        "ValidationError", "state key must be a non-empty string, got ''"),
    "bad limit to keys": (
        lambda flavour: lambda state: state.keys(limit=0),
        "ValidationError", "limit must be an integer from 1 to 1000, got 0"),
    "value that is not JSON": (
        lambda flavour: lambda state: state.set("tags", {"a"}),
        "TypeError",
        "state value for 'tags': set is not JSON-serialisable (use dict, list, str, int,"
        " float, bool, None, a pydantic model or a dataclass)"),
}


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_state_call_fails_the_run_on_its_first_attempt(
        fake_app: StackShift, flavour: str, case: str) -> None:
    body, error_type, message = REFUSED[case]
    add_job(fake_app, "misuse", flavour, "state", body(flavour))
    run = fake_app.start("misuse")
    run_until_idle(fake_app)

    failed_at_once(fake_app, run.id, "state", error_type, message)
    assert fake_app.state.keys() == []  # nothing was written


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_held_lock_and_a_stored_value_that_is_not_an_integer_are_still_retried(
        fake_app: StackShift, flavour: str) -> None:
    fake_app.state.set("visits", "many")
    add_job(fake_app, "count", flavour, "state", lambda state: state.increment("visits"))
    add_job(fake_app, "report", flavour, "state", lambda state: (
        state.lock("report").__enter__() if flavour == "sync"
        else state.lock("report").__aenter__()))
    with fake_app.state.lock("report", ttl="1h"):
        runs = [fake_app.start(job) for job in ("count", "report")]
        run_until_idle(fake_app)

    done = [fake_app.runs.get(r.id) for r in runs]
    assert [(d.status, d.attempt) for d in done] == [("retrying", 1)] * 2
    assert [d.error and d.error.type for d in done] == ["ValidationError",
                                                      "LockNotAcquiredError"]
    assert done[0].error is not None
    assert done[0].error.message == "state key 'visits' does not hold an integer"
    assert not any(NOT_RETRIED in (d.error.traceback or "") for d in done if d.error)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_handler_may_catch_a_refused_state_call_and_go_on(
        fake_app: StackShift, flavour: str) -> None:
    def body(state: Any) -> Any:
        try:
            state.lock("report", ttl="soon")
        except ValueError as exc:
            return f"no lock: {exc}"

    add_job(fake_app, "fallback", flavour, "state", body)
    run = fake_app.start("fallback")
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result) == ("completed", f"no lock: {NOT_A_DURATION}")


def test_app_state_outside_a_handler_raises_as_before(fake_app: StackShift) -> None:
    """No run is involved: the errors carry no note about runs."""
    with pytest.raises(ValidationError) as bad_ttl:
        fake_app.state.set("greeting", "hi", ttl="soon")
    with pytest.raises(TypeError) as unknown:
        fake_app.state.lock("report", timeout="5s")
    with pytest.raises(ValidationError) as bad_by:
        fake_app.state.increment("visits", by="2")
    fake_app.state.set("visits", "many")
    with pytest.raises(ValidationError, match="does not hold an integer"):
        fake_app.state.increment("visits")
    with fake_app.state.lock("report"), pytest.raises(LockNotAcquiredError):
        fake_app.state.lock("report").__enter__()
    for raised in (bad_ttl, unknown, bad_by):
        assert getattr(raised.value, "__notes__", []) == []
    assert str(bad_ttl.value) == NOT_A_DURATION
