"""Bad input is refused with a clear error before anything is written.

Every case checks the rows of every table a start touches, before and after,
and that a live idempotency key saw no duplicate start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import pickle
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from stackshift import (
    AsyncStackShift,
    PayloadTooLargeError,
    Settings,
    StackShift,
    ValidationError,
)
from stackshift.testing import FakeClock, run_until_idle

TABLES = ("runs", "timeline", "idempotency_keys", "attempts", "steps", "logs")
KEY = "order:123"
PAYLOAD = {"orderId": "123"}


def row_counts(app: StackShift) -> dict[str, int]:
    with app._service.store.db.read() as tx:
        return {t: int(tx.raw(f"SELECT COUNT(*) AS n FROM {t}", {})[0]["n"]) for t in TABLES}


@pytest.fixture
def shop(fake_app: StackShift) -> Iterator[StackShift]:
    """A store with one run bound to ``KEY``, to show bad starts do not touch it."""
    fake_app.start("sendReceipt", PAYLOAD, idempotency_key=KEY)
    yield fake_app


class Unchanged:
    def __init__(self, app: StackShift) -> None:
        self.app = app
        self.before = row_counts(app)
        self.runs = [r.id for r in app.runs.list()]

    def check(self) -> None:
        assert row_counts(self.app) == self.before
        assert [r.id for r in self.app.runs.list()] == self.runs


def refused(app: StackShift, error: type[BaseException], match: str, **start: Any) -> None:
    """``app.start(**start)`` raises ``error`` matching ``match`` and writes nothing."""
    unchanged = Unchanged(app)
    job = start.pop("job", "sendReceipt")
    payload = start.pop("payload", PAYLOAD)
    with pytest.raises(error, match=match):
        app.start(job, payload, **start)
    unchanged.check()


# -- payloads ---------------------------------------------------------------------------


class Opaque:
    pass


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


SELF_REFERENCE: dict[str, Any] = {}
SELF_REFERENCE["me"] = SELF_REFERENCE


class Reading(BaseModel):
    value: float


@dataclasses.dataclass
class Sample:
    value: Any


CIRCLE = Sample(None)
CIRCLE.value = CIRCLE


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (Opaque(), "payload: Opaque is not JSON-serialisable"),
        ({"when": datetime(2026, 1, 1)}, "datetime is not JSON-serialisable"),
        ({"tags": {"a", "b"}}, "set is not JSON-serialisable"),
        ({"amount": Decimal("1.10")}, "Decimal is not JSON-serialisable"),
        ({"raw": b"bytes"}, "bytes is not JSON-serialisable"),
        ({1: "int key"}, "object keys must be strings"),
        ({"x": math.nan}, "NaN and infinity are refused"),
        ({"x": [math.inf]}, "NaN and infinity are refused"),
        (lambda: None, "function is not JSON-serialisable"),
        ({"deep": nested(100)}, "nested more than 100 levels deep"),
        (SELF_REFERENCE, "or a value that contains itself"),
        ({"n": 10**5000}, "an integer of more than 4,300 digits cannot be written as JSON"),
        # Inside a pydantic model or a dataclass, as anywhere else.
        (Reading(value=math.nan), "NaN and infinity are refused"),
        ({"r": [Reading(value=-math.inf)]}, "NaN and infinity are refused"),
        (Sample(math.inf), "NaN and infinity are refused"),
        (Sample(Opaque()), r"Sample \(a dataclass\) is not JSON-serialisable: .*Opaque"),
        (CIRCLE, r"Sample \(a dataclass\) is not JSON-serialisable: Circular reference"),
    ],
)
def test_non_json_payload_is_a_type_error(shop: StackShift, payload: Any, match: str) -> None:
    refused(shop, TypeError, match, payload=payload, idempotency_key="fresh")
    # Nothing was written under the key either: it is still free.
    assert shop.start("sendReceipt", PAYLOAD, idempotency_key="fresh").created


def test_json_nested_a_hundred_levels_deep_is_accepted(shop: StackShift) -> None:
    run = shop.start("sendReceipt", {"deep": nested(99)})
    assert shop.runs.get(run.id).payload == {"deep": nested(99)}


def test_type_error_comes_before_the_idempotency_lookup(shop: StackShift) -> None:
    refused(shop, TypeError, "not JSON", payload={"x": object()}, idempotency_key=KEY)


def test_over_size_payload(shop: StackShift) -> None:
    big = {"blob": "x" * (1024 * 1024)}
    refused(shop, PayloadTooLargeError,
            r"payload is 1048587 bytes as JSON, over the limit of 1048576 bytes",
            payload=big, idempotency_key="big")
    assert issubclass(PayloadTooLargeError, ValueError)
    # Exactly at the limit is fine.
    shop.start("sendReceipt", {"blob": "x" * (1024 * 1024 - 11)})


def test_payload_limit_is_configurable(db_url: str) -> None:
    with StackShift(db_url, settings=Settings(max_payload_bytes=64)) as app:
        refused(app, PayloadTooLargeError, "over the limit of 64 bytes",
                payload={"note": "y" * 100})


def test_dataclass_and_pydantic_payloads_are_accepted_as_json(fake_app: StackShift) -> None:
    @dataclasses.dataclass
    class Order:
        order_id: str
        total: int

    class Customer(BaseModel):
        id: str
        vip: bool = False

    assert fake_app.start("a", Order("o1", 10)).payload == {"order_id": "o1", "total": 10}
    assert fake_app.start("a", Customer(id="c1")).payload == {"id": "c1", "vip": False}

    # Fields pydantic writes as JSON text (times, decimals) are written alike in both.
    @dataclasses.dataclass
    class Placed:
        placed_at: datetime
        amount: Decimal

    class PlacedModel(BaseModel):
        placed_at: datetime
        amount: Decimal

    when = datetime(2026, 1, 1, 9, 30, tzinfo=UTC)
    stored = {"placed_at": "2026-01-01T09:30:00Z", "amount": "12.50"}
    assert fake_app.start("a", Placed(when, Decimal("12.50"))).payload == stored
    assert fake_app.start("a", PlacedModel(placed_at=when, amount=Decimal("12.50"))
                          ).payload == stored
    assert fake_app.start("a", ["list", 1, 2.5, None, True]).payload == [
        "list", 1, 2.5, None, True]
    assert fake_app.start("a").payload is None


# -- durations and times ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("delay", "soon", "delay: 'soon' is not a duration"),
        ("delay", "-5s", "delay: '-5s' must be a finite, non-negative duration"),
        ("delay", -5, "delay: -5 must be a finite, non-negative duration"),
        ("delay", [1], "delay: expected a duration"),
        ("idempotency_ttl", "forever", "idempotency_ttl: 'forever' is not a duration"),
        ("idempotency_ttl", "366d", "idempotency_ttl must be more than 0 and at most 365d"),
        ("idempotency_ttl", 0, "idempotency_ttl must be more than 0"),
    ],
)
def test_bad_duration(shop: StackShift, option: str, value: Any, match: str) -> None:
    refused(shop, ValueError, match, idempotency_key=KEY, **{option: value})
    assert "run.duplicate_start" not in [e.kind for e in shop.runs.timeline(
        shop.runs.list(idempotency_key=KEY).items[0].id)]


def test_ttl_without_a_key_is_refused(shop: StackShift) -> None:
    refused(shop, ValueError, "idempotency_ttl needs an idempotency_key", idempotency_ttl="1d")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (datetime(2026, 5, 6, 9, 0), "has no time zone"),
        ("2026-05-06T09:00:00", "has no time zone"),
        ("next tuesday", "is not an ISO-8601 time"),
        ("2026-02-30T09:00:00Z", "is not an ISO-8601 time"),
        ("", "is not an ISO-8601 time"),
        (1767603600, "expected a datetime or ISO-8601 string"),
        ("9999-12-31T23:59:59-01:00", "is outside the years 1 to 9999 in UTC"),
        # Stored as epoch seconds, these would round up into the year 10000.
        ("9999-12-31T23:59:59.999999Z", "is too close to the end of the year 9999"),
        (datetime(9999, 12, 31, 23, 59, 59, 999990, tzinfo=UTC),
         "is too close to the end of the year 9999"),
    ],
)
def test_bad_scheduled_at(shop: StackShift, value: Any, match: str) -> None:
    refused(shop, ValueError, f"scheduled_at: .*{match}", scheduled_at=value,
            idempotency_key=KEY)


def test_scheduled_at_and_delay_together_are_refused(shop: StackShift) -> None:
    refused(shop, ValueError, "give scheduled_at or delay, not both",
            scheduled_at="2026-05-06T09:00:00Z", delay="1h")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("-5m", "'-5m' must be a finite, non-negative duration"),
        (timedelta(seconds=-5), "must be a finite, non-negative duration"),
        (-1, "must be a finite, non-negative duration"),
        ("36600d", "'36600d' is longer than 100 years"),
        ("100y", "'100y' is not a duration"),
    ],
)
def test_bad_delay(shop: StackShift, value: Any, match: str) -> None:
    refused(shop, ValueError, f"delay: .*{match}", delay=value, idempotency_key=KEY)


def test_a_zero_delay_queues_at_once_and_the_longest_waits(fake_app: StackShift,
                                                           clock: FakeClock) -> None:
    assert fake_app.start("a", delay="0s").status == "queued"
    assert fake_app.start("a", delay=0).status == "queued"
    longest = fake_app.start("a", delay="36500d")
    assert longest.status == "scheduled"
    assert longest.scheduled_at == datetime.fromtimestamp(clock.now() + 36500 * 86400, UTC)


def test_scheduled_at_in_the_past_queues_at_once(fake_app: StackShift) -> None:
    run = fake_app.start("a", scheduled_at="2020-01-01T00:00:00Z")
    assert run.status == "queued"


def test_durations_accept_timedelta_and_numbers(fake_app: StackShift,
                                                clock: FakeClock) -> None:
    assert fake_app.start("a", delay=timedelta(minutes=5)).scheduled_at == datetime.fromtimestamp(
        clock.now() + 300).astimezone()
    assert fake_app.start("a", delay=90).status == "scheduled"


# -- names, keys and numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "has space", "slash/job", "x" * 201, "émoji", "tab\tname", None, 42],
)
def test_bad_job_name(shop: StackShift, name: Any) -> None:
    refused(shop, ValidationError, "job name .* is invalid: use 1-200 ASCII letters", job=name)


def test_bad_job_name_at_registration(fake_app: StackShift) -> None:
    with pytest.raises(ValidationError, match="job name 'bad name' is invalid"):
        fake_app.job("bad name", lambda ctx: None)
    with pytest.raises(ValidationError, match="job name"):

        @fake_app.job("bad/name")
        def handler(ctx):  # type: ignore[no-untyped-def]
            return None

    assert fake_app.jobs == []


def test_a_function_given_as_a_job_name_is_named_as_such(fake_app: StackShift) -> None:
    def send_receipt(ctx):  # type: ignore[no-untyped-def]
        return None

    said = ("job name must be a string, got the function send_receipt: jobs are named by"
            ' strings: @app.job("name") registers a function, app.start("name", payload)'
            " starts a run of it")
    with pytest.raises(ValidationError) as without_parentheses:
        fake_app.job(send_receipt)  # type: ignore[call-overload]
    with pytest.raises(ValidationError) as started:
        fake_app.start(send_receipt)  # type: ignore[arg-type]
    assert str(without_parentheses.value) == str(started.value) == said
    assert fake_app.jobs == [] and fake_app.runs.list().items == []


@pytest.mark.parametrize("handler, shown", [
    (lambda: None, "<lambda>()"),
    (lambda ctx, order: None, "<lambda>(ctx, order)"),
])
def test_a_handler_that_cannot_take_the_context_alone_is_refused_at_registration(
        fake_app: StackShift, handler: Any, shown: str) -> None:
    with pytest.raises(ValidationError) as refused_handler:
        fake_app.job("receipt", handler)
    assert str(refused_handler.value) == (
        "handler for job 'receipt' must take one argument, the run's context"
        f" (def handler(ctx): ...); {__name__}.{shown} cannot be called with it alone")
    assert fake_app.jobs == []
    # Defaults and *args are fine: the context alone is a valid call.
    fake_app.job("withDefaults", lambda ctx, order=None: None)
    fake_app.job("anyArgs", lambda *args, **kwargs: None)
    assert fake_app.jobs == ["anyArgs", "withDefaults"]


def test_bad_queue_name(shop: StackShift) -> None:
    refused(shop, ValidationError, "queue name 'no spaces please' is invalid",
            queue_name="no spaces please")
    refused(shop, ValidationError, "queue name '' is invalid", queue_name="")
    with pytest.raises(ValidationError, match="queue name"):
        shop.queue("bad queue")
    unchanged = Unchanged(shop)
    with pytest.raises(TypeError, match=r"^queue\(name\)\.enqueue\(\) got an unexpected "
                       "keyword argument 'queue_name'; it takes job, payload, idempotency_key"):
        shop.queue("emails").enqueue("sendReceipt", PAYLOAD, queue_name="billing")
    unchanged.check()


def test_longest_names_are_accepted(fake_app: StackShift) -> None:
    name = "a" * 200
    assert fake_app.start(name, queue_name=name).job == name


def test_over_long_idempotency_key(shop: StackShift) -> None:
    refused(shop, ValidationError, "idempotency_key is 513 characters, over the limit of 512",
            idempotency_key="k" * 513)
    assert shop.start("sendReceipt", PAYLOAD, idempotency_key="k" * 512).created


@pytest.mark.parametrize("key", ["", 123, b"bytes"])
def test_bad_idempotency_key(shop: StackShift, key: Any) -> None:
    refused(shop, ValidationError, "idempotency_key must be a non-empty string",
            idempotency_key=key)


@pytest.mark.parametrize("value", [0, -1, 1001, "3", 2.5, True])
def test_bad_max_attempts(shop: StackShift, value: Any) -> None:
    refused(shop, ValidationError, "max_attempts must be an integer from 1 to 1000",
            max_attempts=value, idempotency_key=KEY)


def test_bad_max_attempts_at_registration(fake_app: StackShift) -> None:
    for value in (0, "5", 10_000):
        with pytest.raises(ValidationError, match="max_attempts must be an integer"):
            fake_app.job("j", lambda ctx: None, max_attempts=value)
    with pytest.raises(ValueError, match="timeout: 'a while' is not a duration"):
        fake_app.job("j", lambda ctx: None, timeout="a while")
    for zero in (0, "0s"):
        with pytest.raises(ValidationError, match="timeout must be more than 0"):
            fake_app.job("j", lambda ctx: None, timeout=zero)
    with pytest.raises(ValueError, match="backoff"):
        fake_app.job("j", lambda ctx: None, backoff={"bogus": 1})
    assert fake_app.jobs == []


@pytest.mark.parametrize("value", ["high", 1.5, True, 2**31, -(2**31) - 1])
def test_bad_priority(shop: StackShift, value: Any) -> None:
    refused(shop, ValidationError, "priority must be a 32-bit integer", priority=value)


def test_bad_concurrency_key(shop: StackShift) -> None:
    refused(shop, ValidationError, "concurrency_key", concurrency_key="")


def test_unknown_start_option_is_a_type_error(shop: StackShift) -> None:
    refused(shop, TypeError, "unexpected keyword argument", idempotencykey=KEY)


# -- listing runs -----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["done", "COMPLETED", "", "succeeded"])
def test_unknown_status_filter(shop: StackShift, status: str) -> None:
    unchanged = Unchanged(shop)
    with pytest.raises(ValueError, match=r"unknown status .*expected one of: scheduled, queued"):
        shop.runs.list(status=status)
    unchanged.check()


@pytest.mark.parametrize("limit", [0, -1, 1001, "10", None])
def test_bad_list_limit(shop: StackShift, limit: Any) -> None:
    with pytest.raises(ValueError, match="limit must be an integer from 1 to 1000"):
        shop.runs.list(limit=limit)


def test_bad_created_after(shop: StackShift) -> None:
    with pytest.raises(ValueError, match=r"created_after: .*has no time zone"):
        shop.runs.list(created_after=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="created_after: 'yesterday' is not an ISO-8601"):
        shop.runs.list(created_after="yesterday")


def test_bad_wait_timeout(shop: StackShift) -> None:
    run_id = shop.runs.list().items[0].id
    with pytest.raises(ValueError, match="timeout: 'a bit' is not a duration"):
        shop.runs.wait(run_id, timeout="a bit")


# -- step results -----------------------------------------------------------------------


def test_over_size_step_result_fails_the_step_and_stores_nothing(
    db_url: str, clock: FakeClock
) -> None:
    limit = 4096
    effects: list[str] = []
    with StackShift(db_url, clock=clock,
                    settings=Settings(max_step_result_bytes=limit)) as app:

        @app.job("export", max_attempts=1)
        def export(ctx):  # type: ignore[no-untyped-def]
            ctx.step.run("dump", lambda: "z" * (limit + 1))
            effects.append("after the step")

        run = app.start("export")
        run_until_idle(app)
        (step,) = app.runs.steps(run.id)
        failed = app.runs.get(run.id)
        with app._service.store.db.read() as tx:
            stored = tx.raw("SELECT result FROM steps WHERE run_id = :id", {"id": run.id})
    assert effects == []
    assert step.status == "failed" and step.result is None
    assert [r["result"] for r in stored] == [None]
    assert step.error is not None
    assert step.error.message.startswith(
        f"result of step 'dump' is {limit + 3} bytes as JSON, over the limit of {limit} bytes. ")
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "StepResultTooLargeError"


def test_default_step_result_limit_is_one_mebibyte(fake_app: StackShift) -> None:
    @fake_app.job("export", max_attempts=1)
    def export(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("fits", lambda: "a" * (1024 * 1024 - 2))
        ctx.step.run("too-big", lambda: "a" * (1024 * 1024 - 1))

    run = fake_app.start("export")
    run_until_idle(fake_app)
    assert [(s.key, s.status) for s in fake_app.runs.steps(run.id)] == [
        ("fits", "completed"), ("too-big", "failed")]


# -- the async client refuses the same input -------------------------------------------------


def test_async_client_refuses_bad_input_and_writes_nothing(db_url: str) -> None:
    async def main() -> None:
        async with AsyncStackShift(db_url) as app:
            with pytest.raises(TypeError, match="not JSON-serialisable"):
                await app.start("a", {"x": object()})
            with pytest.raises(ValueError, match="not a duration"):
                await app.start("a", delay="later")
            with pytest.raises(ValueError, match="has no time zone"):
                await app.queue("emails").enqueue("a", scheduled_at="2026-05-06T09:00:00")
            with pytest.raises(ValueError, match="unknown status"):
                await app.runs.list(status="finished")
            assert len(await app.runs.list()) == 0

    asyncio.run(main())
    with StackShift(db_url) as reader:
        assert all(n == 0 for n in row_counts(reader).values())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, 1e20])
def test_a_fake_clock_set_to_no_time_is_refused_and_keeps_its_time(bad: Any) -> None:
    # Taken, such a time failed the next start deep in the store.
    with pytest.raises(ValidationError, match="start"):
        FakeClock(bad)
    clock = FakeClock("2026-01-05T09:00:00Z")
    before = clock.now()
    with pytest.raises(ValidationError, match="when"):
        clock.set(bad)
    assert clock.now() == before
    clock.set(0)  # the epoch is a time
    assert clock.now() == 0.0


@pytest.mark.parametrize("bad", ["garbage", None, "2026-01-05T09:00:00"])
def test_a_fake_clock_names_the_time_it_was_set_to_as_its_parameter(bad: Any) -> None:
    # Taken, a time that was none was called "time:" here and "when:" for a number.
    clock = FakeClock("2026-01-05T09:00:00Z")
    with pytest.raises(ValidationError) as refused:
        clock.set(bad)
    assert str(refused.value).startswith("when"), refused.value
    assert clock.now() == datetime(2026, 1, 5, 9, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("bad", [time.time, FakeClock, "2026-01-05T09:00:00Z"])
def test_a_clock_that_is_none_is_refused_as_the_client_is_made(
        bad: Any, tmp_path: Path) -> None:
    # Taken, it failed the first call with an AttributeError of the engine's.
    with pytest.raises(ValidationError) as refused:
        StackShift(f"sqlite:///{tmp_path / 'jobs.db'}", clock=bad)
    assert str(refused.value).startswith(
        "clock must be an object whose now() gives epoch seconds (an instance:"
        " stackshift.testing.FakeClock()), got "), refused.value
    assert list(tmp_path.iterdir()) == []


def test_a_client_sent_to_a_spawned_process_says_to_make_one_there(tmp_path: Path) -> None:
    # Taken, pickle failed on a weak set inside: "Can't pickle local object
    # 'WeakSet.__init__.<locals>._remove'".
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    app, async_app = StackShift(url), AsyncStackShift(url)
    try:
        for client in (app, async_app):
            with pytest.raises(TypeError) as refused:
                pickle.dumps(client)
            assert str(refused.value) == (
                "a StackShift client cannot be pickled or copied (multiprocessing pickles what"
                " it sends to a spawned process): make a client in that process, from the"
                " database URL or the server's address")
    finally:
        app.close()
        async_app.sync.close()


def test_a_fake_clock_keeps_room_for_the_longest_sleep(db_url: str) -> None:
    # Set near the end of the year 9999, the clock let a long sleep be stored past
    # it, and from then on every listing of runs failed on that run's wake time.
    with pytest.raises(ValidationError, match="100 years"):
        FakeClock("9950-01-01T00:00:00Z")
    clock = FakeClock("9899-01-01T00:00:00Z")
    with pytest.raises(ValidationError, match="advance"):
        clock.advance("365d")
    with pytest.raises(ValidationError, match="when"):
        clock.set("9950-01-01T00:00:00Z")
    assert clock.now() == datetime(9899, 1, 1, tzinfo=UTC).timestamp()
    with StackShift(db_url, clock=clock) as app:
        @app.job("hibernate")
        def hibernate(ctx: Any) -> None:
            ctx.step.sleep("century", "36525d")

        run = app.start("hibernate", {})
        run_until_idle(app)
        [listed] = app.runs.list()
        assert (listed.id, listed.status) == (run.id, "waiting")
        assert listed.waiting_for is not None
        assert listed.waiting_for.until == datetime(9999, 1, 2, tzinfo=UTC)
