"""Bad input to events, waits and state: a clear error, and nothing written."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from stackshift import (
    AsyncStackShift,
    PayloadTooLargeError,
    Settings,
    StackShift,
    ValidationError,
)
from stackshift.testing import FakeClock, run_until_idle

TABLES = ("runs", "events", "waits", "steps", "state", "locks", "idempotency_keys",
          "event_consumptions")

LONG_KEY = "k" * 513


def counts(app: StackShift) -> dict[str, int]:
    with app._service.store.db.read() as tx:
        return {t: int(tx.raw(f"SELECT COUNT(*) AS n FROM {t}", {})[0]["n"]) for t in TABLES}


@pytest.fixture
def seeded(fake_app: StackShift, clock: FakeClock) -> Iterator[StackShift]:
    """A store with one waiting run, one event and one state value."""

    @fake_app.job("waiter")
    def waiter(ctx: Any) -> Any:
        event = ctx.step.wait_for_event("email.verified", correlation_key="user:1")
        return event.payload

    fake_app.start("waiter", {})
    run_until_idle(fake_app)
    fake_app.events.send("email.verified", {"n": 1}, correlation_key="user:2")
    fake_app.state.set("existing", {"v": 1})
    yield fake_app


# -- waits inside handlers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_timeout": "retry"}, "on_timeout must be one of"),
        ({"on_timeout": None}, "on_timeout must be one of"),
        ({"timeout": "soon"}, "'soon' is not a duration"),
        ({"timeout": -5}, "non-negative"),
        ({"timeout": 0}, "timeout must be more than 0"),
        ({"timeout": "0s"}, "timeout must be more than 0"),
        ({"timeout": None}, "timeout: None is not a duration; every wait has a timeout"),
        ({"timeout": 101 * 366 * 86400}, "longer than 100 years"),
        ({"timeout": True}, "expected a duration"),
        ({"correlation_key": LONG_KEY}, "over the limit of 512"),
        ({"correlation_key": ""}, "non-empty"),
    ],
)
def test_a_bad_wait_fails_the_run_clearly_and_writes_no_wait(
    seeded: StackShift, options: dict[str, Any], message: str
) -> None:
    app = seeded
    effects: list[str] = []

    @app.job("badWait", max_attempts=1)
    def bad_wait(ctx: Any) -> None:
        effects.append("before")
        ctx.step.wait_for_event("email.verified", **options)
        effects.append("after")

    run = app.start("badWait", {})
    before = counts(app)
    run_until_idle(app)
    failed = app.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.type == "ValidationError"
    assert message in failed.error.message
    assert effects == ["before"]
    after = counts(app)
    assert {k: after[k] for k in ("events", "waits", "steps", "event_consumptions")} == {
        k: before[k] for k in ("events", "waits", "steps", "event_consumptions")}
    assert app.runs.steps(run.id) == []


@pytest.mark.parametrize("name", ["event_retention", "event_dedupe_window"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be more than 0"),
        ("0s", "must be more than 0"),
        (-60, "non-negative"),
        (None, "expected a duration"),
        (float("nan"), "non-negative"),
        ("a week", "is not a duration"),
    ],
)
def test_an_event_retention_that_keeps_nothing_is_refused_when_settings_are_made(
    name: str, value: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=f"Settings.{name}.*{message}"):
        Settings(**{name: value})


def test_event_retention_settings_take_durations() -> None:
    settings = Settings(event_retention="30d", event_dedupe_window=timedelta(hours=2))
    assert (settings.event_retention, settings.event_dedupe_window) == (30 * 86400.0, 7200.0)


# -- sending events ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("email.verified", {}), {"correlation_key": LONG_KEY}, ValidationError,
         "correlation_key is 513 characters, over the limit of 512"),
        (("email.verified", {}), {"correlation_key": 42}, ValidationError,
         "correlation_key must be a non-empty string"),
        (("email.verified", {}), {"idempotency_key": LONG_KEY}, ValidationError,
         "over the limit of 512"),
        (("email verified!", {}), {}, ValidationError, "event name"),
        (("", {}), {}, ValidationError, "event name"),
        (("email.verified", {"blob": "x" * (1024 * 1024)}), {"correlation_key": "user:1"},
         PayloadTooLargeError, "over the limit of 1048576 bytes"),
        (("email.verified", {"when": datetime(2026, 1, 1)}), {"correlation_key": "user:1"},
         TypeError, "not JSON-serialisable"),
    ],
)
def test_a_bad_event_is_refused_before_anything_is_written(
    seeded: StackShift, args: tuple[Any, ...], kwargs: dict[str, Any],
    error: type[Exception], message: str,
) -> None:
    app = seeded
    before = counts(app)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        app.events.send(*args, **kwargs)
    assert counts(app) == before
    assert [r.status for r in app.runs.list(job="waiter")] == ["waiting"]


def test_an_event_payload_of_exactly_the_limit_is_accepted(fake_app: StackShift) -> None:
    limit = fake_app._service.settings.max_event_payload_bytes
    payload = "x" * (limit - 2)  # two quote marks make the JSON text exactly the limit
    sent = fake_app.events.send("big.event", payload)
    assert fake_app.events.get(sent.id).payload == payload
    with pytest.raises(PayloadTooLargeError):
        fake_app.events.send("big.event", payload + "x")


def test_the_async_client_refuses_a_bad_event_too(db_url: str) -> None:
    async def main() -> None:
        async with AsyncStackShift(db_url) as client:
            with pytest.raises(ValidationError, match="over the limit of 512"):
                await client.events.send("a.b", {}, correlation_key=LONG_KEY)
            assert counts(client.sync)["events"] == 0

    asyncio.run(main())


# -- state --------------------------------------------------------------------------------------


def _state_calls(app: StackShift) -> dict[str, Any]:
    return {
        "get": lambda: app.state.get(LONG_KEY),
        "set": lambda: app.state.set(LONG_KEY, 1),
        "delete": lambda: app.state.delete(LONG_KEY),
        "increment": lambda: app.state.increment(LONG_KEY),
        "lock": lambda: app.state.lock(LONG_KEY).__enter__(),
    }


@pytest.mark.parametrize("call", ["get", "set", "delete", "increment", "lock"])
def test_a_state_key_over_512_characters_is_refused(seeded: StackShift, call: str) -> None:
    before = counts(seeded)
    with pytest.raises(ValidationError, match="state key is 513 characters, over the limit of 512"):
        _state_calls(seeded)[call]()
    assert counts(seeded) == before
    seeded.state.set("k" * 512, "fits")  # the limit itself is allowed
    assert seeded.state.get("k" * 512) == "fits"


def test_a_state_value_over_256_kib_is_refused_and_the_old_value_kept(seeded: StackShift) -> None:
    app = seeded
    before = counts(app)
    with pytest.raises(PayloadTooLargeError, match="over the limit of 262144 bytes"):
        app.state.set("existing", "x" * (256 * 1024))
    with pytest.raises(PayloadTooLargeError):
        app.state.set("fresh", ["y" * 1000] * 300)
    assert counts(app) == before
    assert app.state.get("existing") == {"v": 1}
    assert app.state.get("fresh") is None
    app.state.set("fresh", "x" * (256 * 1024 - 2))  # exactly the limit as JSON
    assert len(app.state.get("fresh")) == 256 * 1024 - 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "ttl must be more than 0"),
        ({"ttl": "forever"}, "not a duration"),
        ({"ttl": "1h", "expires_at": "2026-02-01T00:00:00Z"}, "not both"),
        ({"expires_at": "2026-02-01T00:00:00"}, "no time zone"),
        ({"expires_at": datetime(2026, 2, 1)}, "no time zone"),
        ({"expires_at": "next week"}, "not an ISO-8601 time"),
    ],
)
def test_bad_expiry_options_are_refused(
    seeded: StackShift, kwargs: dict[str, Any], message: str
) -> None:
    before = counts(seeded)
    with pytest.raises(ValidationError, match=message):
        seeded.state.set("existing", {"v": 2}, **kwargs)
    assert counts(seeded) == before
    assert seeded.state.get("existing") == {"v": 1}


def test_increment_refuses_a_non_integer_value_or_step(seeded: StackShift) -> None:
    app = seeded
    before = counts(app)
    with pytest.raises(ValidationError, match="does not hold an integer"):
        app.state.increment("existing")
    with pytest.raises(ValidationError, match="by must be a"):
        app.state.increment("counter", by=1.5)  # type: ignore[arg-type]
    assert counts(app) == before
    assert app.state.get("existing") == {"v": 1}


@pytest.mark.parametrize(("value", "by"), [
    (True, 1), ("5", 1), (2.0, 1), (2**63 - 1, 1), (-(2**63), -1), (2**70, 1),
])
def test_increment_refuses_what_is_not_a_64_bit_integer_and_keeps_the_value(
    seeded: StackShift, value: Any, by: int
) -> None:
    app = seeded
    app.state.set("counter", value)
    before = counts(app)
    with pytest.raises(ValidationError, match=r"state key 'counter' does not hold an integer"
                       r"|leaves the 64-bit integer range"):
        app.state.increment("counter", by)
    assert counts(app) == before
    got = app.state.get("counter")
    assert got == value and type(got) is type(value)


def test_a_state_value_that_is_not_json_is_refused(seeded: StackShift) -> None:
    before = counts(seeded)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        seeded.state.set("odd", {1, 2})
    assert counts(seeded) == before


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ttl": 0}, "lock ttl must be more than 0"),
    ({"ttl": "a while"}, "not a duration"),
    ({"wait": "later"}, "not a duration"),
])
def test_bad_lock_options_are_refused(
    seeded: StackShift, kwargs: dict[str, Any], message: str
) -> None:
    before = counts(seeded)
    with pytest.raises(ValidationError, match=message):
        seeded.state.lock("jobs:one", **kwargs)
    assert counts(seeded) == before
