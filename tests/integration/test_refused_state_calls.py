"""A ``ctx.state`` call whose arguments the engine refuses (a bad duration, key,
value or limit, arguments the method does not take, a lock's ``extend()``
outside its block) fails the run at once, as a refused ``ctx.step`` call does:
every attempt would make the same call. A lock held by another owner and a
stored value that is not an integer can change before the next attempt, and are
retried; ``app.state`` outside a handler raises as it always did."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from refusals import (
    add_job,
    failed_at_once,
    group_failed_at_once_mixed_retried,
    not_retried,
    together,
)
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


def extend_with_extra_argument(flavour: str) -> Callable[[Any], Any]:
    """A body that holds a lock and extends it with one argument too many."""
    if flavour == "sync":
        def extend(state: Any) -> None:
            with state.lock("report") as lock:
                lock.extend("1m", "2m")
        return extend

    async def extend_async(state: Any) -> None:
        async with state.lock("report") as lock:
            await lock.extend_async("1m", "2m")
    return extend_async


def enter(flavour: str, lock: Any) -> Any:
    """Enter ``lock``'s block as a handler of ``flavour`` does (the async one awaits it)."""
    return lock.__enter__() if flavour == "sync" else lock.__aenter__()


def extend_after_the_block(flavour: str) -> Callable[[Any], Any]:
    """A body that extends a lock once its block has ended."""
    if flavour == "sync":
        def extend(state: Any) -> None:
            with state.lock("report") as lock:
                pass
            lock.extend()
        return extend

    async def extend_async(state: Any) -> None:
        async with state.lock("report") as lock:
            pass
        await lock.extend_async()
    return extend_async


#: A refused call of ctx.state (given the flavour), and the error it fails the run with
#: ({extend}: the method of the flavour).
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
    "key over the limit to lock": (
        lambda flavour: lambda state: enter(flavour, state.lock("report:" + "x" * 506)),
        "ValidationError", "state key is 513 characters, over the limit of 512"),
    "NUL character in the key of a lock": (
        lambda flavour: lambda state: enter(flavour, state.lock("report\x00")),
        "ValidationError", "state key must not contain the NUL character (U+0000)"),
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
    "get without a key": (
        lambda flavour: lambda state: state.get(),
        "TypeError", "state.get() missing 1 required positional argument: 'key'"),
    "set without a value": (
        lambda flavour: lambda state: state.set("greeting"),
        "TypeError", "state.set() missing 1 required positional argument: 'value'"),
    "ttl to lock as a positional argument": (
        lambda flavour: lambda state: state.lock("report", "5s"),
        "TypeError", "state.lock() takes 1 positional argument but 2 were given"),
    "extra argument to extend": (
        extend_with_extra_argument, "TypeError",
        "state.lock(key).{extend}() takes from 0 to 1 positional arguments but 2 were given"),
    "extend after the lock's block": (
        extend_after_the_block, "RuntimeError",
        "lock 'report' is not held: extend() works only inside its with or async with block"),
}

#: How Python's errors name the state classes and methods, by flavour.
NAMES = {"sync": {"extend": "extend"}, "async": {"extend": "extend_async"}}


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_state_call_fails_the_run_on_its_first_attempt(
        fake_app: StackShift, flavour: str, case: str) -> None:
    body, error_type, message = REFUSED[case]
    add_job(fake_app, "misuse", flavour, "state", body(flavour))
    run = fake_app.start("misuse")
    run_until_idle(fake_app)

    failed_at_once(fake_app, run.id, "state", error_type, message.format(**NAMES[flavour]))
    assert fake_app.state.keys() == []  # nothing was written


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_refused_state_calls_raised_together_fail_the_run_at_once(
        fake_app: StackShift, flavour: str) -> None:
    """An ``ExceptionGroup`` of refusals only fails the run at once; with a lock
    another owner holds among them, the run is retried."""
    def no_key(state: Any) -> Any:
        return state.get()

    def bad_ttl(state: Any) -> Any:
        return state.set("greeting", "hi", ttl="soon")

    def held(state: Any) -> Any:
        lock = state.lock("report")
        return lock.__enter__() if flavour == "sync" else lock.__aenter__()

    add_job(fake_app, "refusalsOnly", flavour, "state", together(flavour, no_key, bad_ttl))
    add_job(fake_app, "withHeldLock", flavour, "state", together(flavour, bad_ttl, held))
    with fake_app.state.lock("report", ttl="1h"):
        refused = fake_app.start("refusalsOnly")
        mixed = fake_app.start("withHeldLock")
        run_until_idle(fake_app)

    group_failed_at_once_mixed_retried(
        fake_app, "state", refused.id, mixed.id,
        "TypeError: state.get() missing 1 required positional argument: 'key'",
        "ValidationError: ttl: 'soon' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')")
    assert fake_app.state.keys() == []


def test_a_refused_state_call_in_a_task_group_fails_the_run_at_once(
        fake_app: StackShift) -> None:
    @fake_app.job("fanOut", max_attempts=3)
    async def fan_out(ctx):  # type: ignore[no-untyped-def]
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.state.increment("visits", by="2"))
            group.create_task(ctx.state.get("greeting"))

    run = fake_app.start("fanOut")
    run_until_idle(fake_app)
    failed_at_once(fake_app, run.id, "state", "ExceptionGroup",
                   "unhandled errors in a TaskGroup (1 sub-exception): ValidationError: by"
                   " must be a 64-bit integer, got '2'")


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
    with pytest.raises(TypeError, match="missing 1 required positional argument") as no_key:
        fake_app.state.get()  # type: ignore[call-arg]
    with fake_app.state.lock("report") as lock:
        pass
    with pytest.raises(RuntimeError, match="is not held") as not_held:
        lock.extend()
    for raised in (bad_ttl, unknown, bad_by, no_key, not_held):
        assert getattr(raised.value, "__notes__", []) == []
    assert str(bad_ttl.value) == NOT_A_DURATION
