"""The SDK's behaviour, through an embedded client and through a remote one.

Every test here runs twice (``client`` is parametrised): once on the database,
once through a real ``stackshift server`` process. Same calls, same results,
same errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from serverproc import raise_with

from locking import taken_by_another
from stackshift import (
    AsyncStackShift,
    EventNotFoundError,
    IdempotencyConflictError,
    InvalidTransitionError,
    LockNotAcquiredError,
    Page,
    PayloadTooLargeError,
    QueueNotFoundError,
    Run,
    RunNotFoundError,
    ScheduleNotFoundError,
    StackShift,
    ValidationError,
)

Names = Callable[[str], str]


# -- starting work -------------------------------------------------------------------------


def test_start_returns_the_stored_run(client: StackShift, unique: Names) -> None:
    job = unique("sendReceipt")
    run = client.start(job, {"orderId": "o_1", "amount": 12.5, "tags": ["a", None]},
                       queue_name="emails", max_attempts=5, priority=3,
                       concurrency_key="customer:1")
    assert run.created is True
    assert (run.job, run.queue, run.status) == (job, "emails", "queued")
    assert run.payload == {"orderId": "o_1", "amount": 12.5, "tags": ["a", None]}
    assert (run.max_attempts, run.priority, run.concurrency_key) == (5, 3, "customer:1")
    assert run.created_at.tzinfo is UTC
    assert client.runs.get(run.id) == run


def test_a_run_given_where_its_id_goes_is_refused_naming_the_id(
        client: StackShift, unique: Names) -> None:
    run = client.start(unique("sendReceipt"))
    said = f"a run's id was expected, got the run itself: pass run.id ({run.id!r})"
    for call in (client.runs.get, client.runs.wait, client.runs.cancel, client.runs.retry,
                 client.runs.start_again, client.runs.timeline, client.runs.logs,
                 client.runs.attempts, client.runs.steps):
        with pytest.raises(TypeError) as refused:
            call(run)  # type: ignore[operator]
        assert str(refused.value) == said, call

    async def wait_on_the_async_client() -> None:
        async with AsyncStackShift(**_async_options(client)) as app:
            await app.runs.wait(run)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match=r"pass run\.id"):
        asyncio.run(wait_on_the_async_client())
    assert client.runs.get(run.id).status == "queued"  # nothing was cancelled or retried


def test_enqueue_on_a_queue_and_scheduling(client: StackShift, unique: Names) -> None:
    job = unique("syncInvoice")
    when = datetime.now(UTC) + timedelta(days=2)
    scheduled = client.queue("billing").enqueue(job, {"invoiceId": "in_1"},
                                                scheduled_at=when.isoformat())
    assert (scheduled.queue, scheduled.status) == ("billing", "scheduled")
    assert scheduled.scheduled_at is not None
    assert abs((scheduled.scheduled_at - when).total_seconds()) < 0.001
    delayed = client.start(job, None, delay=timedelta(hours=1))
    assert delayed.status == "scheduled"
    assert delayed.scheduled_at is not None
    assert delayed.scheduled_at > datetime.now(UTC) + timedelta(minutes=59)


def test_registered_job_options_are_the_defaults(client: StackShift, unique: Names) -> None:
    job = unique("resizeAvatar")
    client.job(job, lambda ctx: None, queue="media", max_attempts=7)
    run = client.start(job, {"imageId": "img_1"})
    assert (run.queue, run.max_attempts) == ("media", 7)


def test_idempotent_start_returns_the_first_run(client: StackShift, unique: Names) -> None:
    job, key = unique("verifyEmail"), unique("verify:user_1")
    first = client.start(job, {"userId": "u1"}, idempotency_key=key, idempotency_ttl="30d")
    again = client.start(job, {"userId": "u1"}, idempotency_key=key, idempotency_ttl="30d")
    assert first.created is True
    assert again.created is False
    assert again.id == first.id
    assert [r.id for r in client.runs.list(job=job)] == [first.id]
    kinds = [entry.kind for entry in client.runs.timeline(first.id)]
    assert "run.duplicate_start" in kinds


def test_idempotency_conflict_names_the_existing_run(client: StackShift, unique: Names) -> None:
    job, key = unique("charge"), unique("charge:o_1")
    first = client.start(job, {"amount": 10}, idempotency_key=key)
    with pytest.raises(IdempotencyConflictError) as caught:
        client.start(job, {"amount": 11}, idempotency_key=key)
    assert caught.value.existing_run_id == first.id
    with pytest.raises(IdempotencyConflictError):
        client.start(unique("other"), {"amount": 10}, idempotency_key=key)
    assert [r.id for r in client.runs.list(job=job)] == [first.id]


@pytest.mark.parametrize(
    ("job", "options", "error"),
    [
        ("bad name!", {}, ValidationError),
        ("trailingNewline\n", {}, ValidationError),
        ("ok", {"delay": "10000000w"}, ValidationError),  # past what a datetime holds
        ("ok", {"max_attempts": 0}, ValidationError),
        ("ok", {"max_attempts": "5"}, ValidationError),
        ("ok", {"priority": 1.5}, ValidationError),
        ("ok", {"delay": "soon"}, ValidationError),
        ("ok", {"scheduled_at": "next tuesday"}, ValidationError),
        ("ok", {"scheduled_at": datetime(2030, 1, 1)}, ValidationError),  # naive
        ("ok", {"idempotency_ttl": "1h"}, ValidationError),  # no key
        ("ok", {"idempotency_key": "k", "idempotency_ttl": "400d"}, ValidationError),
        ("ok", {"delay": "1h", "scheduled_at": "2030-01-01T00:00:00Z"}, ValidationError),
        ("ok", {"payload": object()}, TypeError),
        ("ok", {"payload": float("nan")}, TypeError),
    ],
)
def test_bad_start_input_raises_and_writes_nothing(
    client: StackShift, unique: Names, job: str, options: dict[str, Any],
    error: type[Exception],
) -> None:
    name = job if job != "ok" else unique("ok")
    options = dict(options)
    payload = options.pop("payload", {"x": 1})
    with pytest.raises(error):
        client.start(name, payload, **options)
    if job == "ok":
        assert len(client.runs.list(job=name)) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.start("bad name!"),
         "job name 'bad name!' is invalid: use 1-200 ASCII letters"),
        (lambda c: c.start("ok", queue_name=""),
         "queue name '' is invalid: use 1-200 ASCII letters"),
        (lambda c: c.start("ok", max_attempts=0),
         "max_attempts must be an integer from 1 to 1000, got 0"),
        (lambda c: c.start("ok", delay="5 parsecs"),
         "delay: '5 parsecs' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"),
        (lambda c: c.start("ok", delay=-5), "delay: -5 must be a finite, non-negative duration"),
        (lambda c: c.start("ok", idempotency_key="k", idempotency_ttl="zz"),
         "idempotency_ttl: 'zz' is not a duration"),
        (lambda c: c.start("ok", scheduled_at=datetime(2030, 1, 1)),
         "scheduled_at: datetime.datetime(2030, 1, 1, 0, 0) has no time zone"),
        (lambda c: c.runs.list(created_after="yesterday"),
         "created_after: 'yesterday' is not an ISO-8601 time"),
        (lambda c: c.events.send("", {}), "event name '' is invalid: use 1-200 ASCII letters"),
        (lambda c: c.state.set("k", 1, ttl="forever"), "ttl: 'forever' is not a duration"),
        (lambda c: c.state.increment("n", 1.5), "by must be a 64-bit integer, got 1.5"),
        (lambda c: c.queue("billing", concurrency=-1),
         "concurrency must be an integer from 1 to 100000, got -1"),
        (lambda c: c.queue("billing").configure(max_attempts=0),
         "max_attempts must be an integer from 1 to 1000, got 0"),
        (lambda c: c.start("ok", priority=True), "priority must be a 32-bit integer, got True"),
        (lambda c: c.start("ok", idempotency_key=""),
         "idempotency_key must be a non-empty string, got ''"),
        (lambda c: c.start("ok", concurrency_key="k" * 513),
         "concurrency_key is 513 characters, over the limit of 512"),
        (lambda c: c.start("ok", idempotency_key="k", idempotency_ttl="0s"),
         "idempotency_ttl must be more than 0 and at most 365d"),
        (lambda c: c.events.send("ok", {}, correlation_key=""),
         "correlation_key must be a non-empty string, got ''"),
        (lambda c: c.runs.list(search="r" * 513),
         "search is 513 characters, longer than any key or id can be (512 at most)"),
        (lambda c: c.state.get("k" * 513), "state key is 513 characters, over the limit of 512"),
        (lambda c: c.state.set("k", 1, ttl=0), "ttl must be more than 0"),
        (lambda c: c.schedules.create("bad name!", cron="@daily"),
         "job name 'bad name!' is invalid: use 1-200 ASCII letters"),
        (lambda c: c.queue("billing").dead_letters(limit=0),
         "limit must be an integer from 1 to 1000, got 0"),
        (lambda c: c.runs.retry_many(limit=0), "limit must be a positive integer, got 0"),
        (lambda c: c.runs.retry_many(created_after=datetime(2020, 1, 1)),
         "created_after: datetime.datetime(2020, 1, 1, 0, 0) has no time zone"),
        (lambda c: c.runs.list(cursor=5), "cursor 5 is not one a list returned (a run_... id)"),
        (lambda c: c.events.list(cursor=5), "cursor 5 is not one a list returned (an evt_... id)"),
        (lambda c: c.queue("billing").dead_letters(cursor=5),
         "cursor 5 is not one a list of dead letters returned (a failure time and a run_... id)"),
        (lambda c: c.queue("billing").dead_letters(job="bad name!"),
         "job name 'bad name!' is invalid: use 1-200 ASCII letters"),
        (lambda c: c.queue("billing").info(-5), "window: -5 must be a finite, non-negative"),
        (lambda c: c.queue("billing").info([1]), "window: expected a duration, got list"),
        (lambda c: c.queues.list("0s"), "window: must be from 1s to 90d"),
        (lambda c: c.queues.get("a/b"), "queue name 'a/b' is invalid: use 1-200 ASCII letters"),
        (lambda c: c.queues.get(""), "queue name '' is invalid: use 1-200 ASCII letters"),
        (lambda c: c.state.set("", object()), "state key must be a non-empty string, got ''"),
        (lambda c: c.state.increment("", by=1.5), "by must be a 64-bit integer, got 1.5"),
        (lambda c: c.state.set("k", 1, ttl="x", expires_at="2030-01-01T00:00:00Z"),
         "give ttl or expires_at, not both"),
        (lambda c: c.start("ok", delay="x", scheduled_at="y"),
         "give scheduled_at or delay, not both"),
        (lambda c: c.start("ok", idempotency_ttl="x"), "idempotency_ttl needs an idempotency_key"),
        (lambda c: c.start("ok", delay="x", idempotency_key=""), "delay: 'x' is not a duration"),
        (lambda c: c.runs.list(status="x", limit=0), "unknown status 'x'"),
        (lambda c: c.events.list(name=5, limit=0), "name must be a string, got 5"),
        (lambda c: c.schedules.create("ok", cron=5),  # type: ignore[arg-type]
         "cron expression must be a non-empty string, got 5"),
        (lambda c: c.schedules.create("ok", cron="@daily", timezone=5),  # type: ignore[arg-type]
         "timezone must be an IANA zone name such as 'UTC', got 5"),
        (lambda c: c.schedules.create("ok", cron="@daily", timezone="Europe"),
         "unknown timezone 'Europe': use an IANA name such as 'UTC' or 'Europe/Paris'"),
        (lambda c: c.schedules.create("ok", cron="@daily", timezone="k" * 200),
         "unknown timezone 'kkk"),
        (lambda c: c.schedules.create("ok", cron="@daily", timezone="k" * 300),
         "timezone is 300 characters long; at most 200 are taken"),
        # The host's own zone (a file beside the IANA zones on some hosts): not a zone name.
        (lambda c: c.schedules.create("ok", cron="@daily", timezone="localtime"),
         "unknown timezone 'localtime': use an IANA name such as 'UTC' or 'Europe/Paris'"),
        # Digits of another script are not a duration's (ASCII) digits.
        (lambda c: c.start("ok", delay="\u0661\u0662s"),
         "delay: '\u0661\u0662s' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"),
        (lambda c: c.state.set("k", 1, ttl="\uff11s"), "ttl: '\uff11s' is not a duration"),
        (lambda c: c.start_many("ok", {"n": 1}),
         "payloads must be a list of payloads, one per run, got a dict"),
        (lambda c: c.start_many("ok", [1, 2], idempotency_keys=["a"]),
         "idempotency_keys has 1 key for 2 payloads: give one per payload"),
        (lambda c: c.start_many("ok", [1] * 1001),
         "start_many starts at most 1,000 runs a call, got 1,001 payloads"),
        (lambda c: c.start_many("ok", [1, 2], idempotency_keys=[None, ""]),
         "idempotency_keys[1] must be a non-empty string, got ''"),
        (lambda c: c.start_many("ok", [1, 2], concurrency_keys=[None, "k" * 513]),
         "concurrency_keys[1] is 513 characters, over the limit of 512"),
        (lambda c: c.start_many("ok", [1], max_attempts=0),
         "max_attempts must be an integer from 1 to 1000, got 0"),
        (lambda c: c.start_many("ok", [1], idempotency_ttl="1h"),
         "idempotency_ttl needs idempotency_keys with at least one key"),
        (lambda c: c.start_many("ok", [1], idempotency_keys=[None], idempotency_ttl="1h"),
         "idempotency_ttl needs idempotency_keys with at least one key"),
        (lambda c: c.start_many("bad name!", [1]),
         "job name 'bad name!' is invalid: use 1-200 ASCII letters"),
        # An empty list starts nothing, and its options are checked all the same.
        (lambda c: c.start_many("bad name!", []), "job name 'bad name!' is invalid"),
        (lambda c: c.start_many("ok", [], scheduled_at="AAA"), "scheduled_at: 'AAA' is not"),
        (lambda c: c.start_many("ok", [], queue_name="a b"), "queue name 'a b' is invalid"),
        (lambda c: c.start_many("ok", [], priority=2**40), "priority must be"),
        (lambda c: c.start_many("ok", [], idempotency_ttl="1h"),
         "idempotency_ttl needs idempotency_keys with at least one key"),
        (lambda c: c.start_many("ok", [], idempotency_keys=[], idempotency_ttl="soon"),
         "idempotency_ttl: 'soon' is not a duration"),
        (lambda c: c.schedules.get(5), "schedule id must be a non-empty string, got 5"),
        (lambda c: c.schedules.pause(""), "schedule id must be a non-empty string, got ''"),
        (lambda c: c.schedules.delete(5), "schedule id must be a non-empty string, got 5"),
    ],
)
def test_bad_input_is_reported_in_the_same_words(
    client: StackShift, call: Callable[[StackShift], Any], message: str
) -> None:
    """A remote client says what the embedded one says (not the server's schema)."""
    with pytest.raises(ValidationError) as raised:
        call(client)
    assert str(raised.value).startswith(message)


def test_start_many_through_either_client(client: StackShift, unique: Names) -> None:
    """Embedded or through a server: a run per payload in their order, a key
    naming one run within the call and across calls, and a conflict (with an
    earlier call's run) that starts none of the call's runs."""
    job = unique("many")
    runs = client.start_many(job, [{"n": 1}, {"n": 2}, {"n": 1}],
                             idempotency_keys=[f"{job}:1", None, f"{job}:1"])
    assert [(r.payload, r.created) for r in runs] == [
        ({"n": 1}, True), ({"n": 2}, True), ({"n": 1}, False)]
    assert runs[0].id == runs[2].id and runs[0].id != runs[1].id
    with pytest.raises(IdempotencyConflictError) as refused:
        client.start_many(job, [{"n": 3}, {"n": 4}], idempotency_keys=[None, f"{job}:1"])
    assert refused.value.existing_run_id == runs[0].id
    assert sorted(r.id for r in client.runs.list(job=job).items) == sorted(
        {r.id for r in runs})
    assert client.start_many(job, []) == []


def test_a_payload_that_is_not_json_is_found_before_other_options(client: StackShift) -> None:
    """The first thing wrong is reported first, as the embedded client checks."""
    with pytest.raises(TypeError, match="payload: object is not JSON-serialisable"):
        client.start("ok", object(), max_attempts=0)


UNKNOWN_KEYWORDS: list[tuple[Callable[[StackShift, str], Any], str]] = [
    (lambda c, n: c.start(n, {}, queue="emails"),  # type: ignore[call-arg]
     "start() got an unexpected keyword argument 'queue'; did you mean 'queue_name'?"),
    (lambda c, n: c.start(n, {}, idempotencykey="k"),  # type: ignore[call-arg]
     "start() got an unexpected keyword argument 'idempotencykey'; "
     "did you mean 'idempotency_key'?"),
    (lambda c, n: c.queue(n).enqueue(n, delay_seconds=5),  # type: ignore[call-arg]
     "queue(name).enqueue() got an unexpected keyword argument 'delay_seconds'; "
     "did you mean 'delay'?"),
    (lambda c, n: c.runs.list(state="failed"),  # type: ignore[call-arg]
     "runs.list() got an unexpected keyword argument 'state'; did you mean 'status'?"),
    (lambda c, n: c.runs.cancel("run_00000000000000000000000000",
                                why="x"),  # type: ignore[call-arg]
     "runs.cancel() got an unexpected keyword argument 'why'; it takes run_id, reason"),
    (lambda c, n: c.events.send(n, correlation="k"),  # type: ignore[call-arg]
     "events.send() got an unexpected keyword argument 'correlation'; "
     "did you mean 'correlation_key'?"),
    (lambda c, n: c.state.set(n, 1, ttl_seconds=5),  # type: ignore[call-arg]
     "state.set() got an unexpected keyword argument 'ttl_seconds'; did you mean 'ttl'?"),
    (lambda c, n: c.state.increment(n, step=2),  # type: ignore[call-arg]
     "state.increment() got an unexpected keyword argument 'step'; it takes key, by"),
    (lambda c, n: c.queue(n, concurency=2),  # type: ignore[call-arg]
     "queue() got an unexpected keyword argument 'concurency'; did you mean 'concurrency'?"),
    (lambda c, n: c.schedules.create(n, cron="@daily", tz="UTC"),  # type: ignore[call-arg]
     "schedules.create() got an unexpected keyword argument 'tz'; "
     "it takes job, cron, payload, timezone, queue_name, schedule_id, overlap"),
    (lambda c, n: c.job(n, lambda ctx: None, retries=3),  # type: ignore[call-overload]
     "job() got an unexpected keyword argument 'retries'; it takes queue, max_attempts, "
     "backoff, timeout, key_concurrency, on_failure, cron, timezone, overlap"),
    (lambda c, n: c.job(n, max_attemps=3),  # type: ignore[call-overload]
     "job() got an unexpected keyword argument 'max_attemps'; did you mean 'max_attempts'?"),
    (lambda c, n: c.worker(concurency=2),  # type: ignore[call-arg]
     "worker() got an unexpected keyword argument 'concurency'; did you mean 'concurrency'?"),
    # Positional arguments the call does not take: Python's words about the call as
    # written, counting what the program passed (not the internal class and self).
    (lambda c, n: c.start(),  # type: ignore[call-arg]
     "start() missing 1 required positional argument: 'job'"),
    (lambda c, n: c.runs.get(),  # type: ignore[call-arg]
     "runs.get() missing 1 required positional argument: 'run_id'"),
    (lambda c, n: c.runs.get("run_00000000000000000000000000", "x"),  # type: ignore[call-arg]
     "runs.get() takes 1 positional argument but 2 were given"),
    (lambda c, n: c.runs.cancel("run_00000000000000000000000000", "why",
                                "x"),  # type: ignore[call-arg]
     "runs.cancel() takes from 1 to 2 positional arguments but 3 were given"),
    (lambda c, n: c.state.set(n),  # type: ignore[call-arg]
     "state.set() missing 1 required positional argument: 'value'"),
]


@pytest.mark.parametrize(("call", "message"), UNKNOWN_KEYWORDS)
def test_arguments_a_call_does_not_take_are_named_with_the_call_and_write_nothing(
    client: StackShift, engine: StackShift, unique: Names,
    call: Callable[[StackShift, str], Any], message: str,
) -> None:
    name = unique("misspelt")
    with pytest.raises(TypeError) as raised:
        call(client, name)
    assert type(raised.value) is TypeError
    assert str(raised.value) == message
    assert raised.value.__cause__ is None  # no internal function named on the way
    assert engine.runs.list(job=name).items == []
    assert engine.state.get(name, "unset") == "unset"
    with pytest.raises(QueueNotFoundError):  # no run and no setting under the name
        engine.queue(name).info()
    assert engine.events.list(name=name).items == []
    assert [s for s in engine.schedules.list() if s.job == name] == []
    assert client.jobs == []


def test_the_async_client_names_unknown_keywords_in_the_same_words(
        client: StackShift, unique: Names) -> None:
    name = unique("misspelt")

    async def refusals() -> list[str]:
        messages = []
        async with AsyncStackShift(**_async_options(client)) as app:
            for call in (lambda: app.start(name, {}, queue="emails"),
                         lambda: app.runs.list(state="failed"),
                         lambda: app.runs.wait("run_00000000000000000000000000", timout=1),
                         lambda: app.events.send(name, correlation="k"),
                         lambda: app.state.set(name, 1, ttl_seconds=5),
                         lambda: app.queue(name).enqueue(name, priorty=1)):
                with pytest.raises(TypeError) as raised:
                    await call()  # type: ignore[call-arg]
                messages.append(str(raised.value))
            with pytest.raises(TypeError) as raised:
                app.worker(concurency=2)  # type: ignore[call-arg]
            messages.append(str(raised.value))
            assert await app.runs.list(job=name) == Page([], None)
            assert await app.state.get(name, "unset") == "unset"
        return messages

    assert asyncio.run(refusals()) == [
        "start() got an unexpected keyword argument 'queue'; did you mean 'queue_name'?",
        "runs.list() got an unexpected keyword argument 'state'; did you mean 'status'?",
        "runs.wait() got an unexpected keyword argument 'timout'; did you mean 'timeout'?",
        "events.send() got an unexpected keyword argument 'correlation'; "
        "did you mean 'correlation_key'?",
        "state.set() got an unexpected keyword argument 'ttl_seconds'; did you mean 'ttl'?",
        "queue(name).enqueue() got an unexpected keyword argument 'priorty'; "
        "did you mean 'priority'?",
        "worker() got an unexpected keyword argument 'concurency'; did you mean 'concurrency'?",
    ]


def test_a_client_made_with_an_unknown_keyword_names_its_class(client: StackShift) -> None:
    options = _async_options(client)
    for make in (StackShift, AsyncStackShift):
        with pytest.raises(TypeError) as raised:
            make(**options, setings=None)  # type: ignore[operator]
        assert str(raised.value) == (f"{make.__name__}() got an unexpected keyword argument "
                                     "'setings'; did you mean 'settings'?")
    with pytest.raises(TypeError) as raised:
        asyncio.run(AsyncStackShift.connect(**options, setings=None))  # type: ignore[call-arg]
    assert str(raised.value) == ("AsyncStackShift.connect() got an unexpected keyword "
                                 "argument 'setings'; did you mean 'settings'?")


def test_the_async_client_connects_without_blocking_the_event_loop(
        client: StackShift, unique: Names) -> None:
    """``await AsyncStackShift.connect(...)`` makes the client in a thread (opening
    the store and migrating it): the loop's other tasks run meanwhile."""
    options = _async_options(client)
    job = unique("connected")

    async def scenario() -> tuple[int, Run, Run]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        before = ticks
        app = await AsyncStackShift.connect(**options)
        during = ticks - before
        ticker.cancel()
        async with app:
            run = await app.start(job, {"a": 1})
            return during, run, await app.runs.get(run.id)

    during, run, got = asyncio.run(scenario())
    assert during > 0
    assert (got.id, got.job, got.payload) == (run.id, job, {"a": 1})
    with pytest.raises(ValidationError, match="needs an api_key"):
        asyncio.run(AsyncStackShift.connect(base_url="http://127.0.0.1:9"))


@pytest.mark.parametrize("name", [".", ".."])
def test_queues_named_dots_are_managed_like_any_other(client: StackShift, name: str) -> None:
    """``.`` and ``..`` are valid queue names: a remote client reaches them too (they
    are not read as steps of the request's path)."""
    queue = client.queue(name)
    assert queue.configure(concurrency=3).concurrency == 3
    assert (queue.pause().paused, client.queues.get(name).paused) == (True, True)
    assert queue.resume().paused is False
    assert queue.dead_letters().items == []
    assert name in [q.name for q in client.queues.list()]
    assert queue.configure(concurrency=None).concurrency is None
    # No runs and no setting left: no longer listed.
    assert name not in [q.name for q in client.queues.list()]


@pytest.mark.parametrize(("window", "seconds"), [
    (timedelta(days=30), 2592000.0), (7776000, 7776000.0), (100000.5, 100000.5), ("1h", 3600.0)])
def test_a_queue_stats_window_is_the_one_given(client: StackShift, unique: Names, window: Any,
                                               seconds: float) -> None:
    """Any window from 1s to 90d, as a number or a timedelta: the numbers are over it."""
    name = unique("windowed")
    client.queue(name, concurrency=5)
    assert client.queues.get(name, window).window == seconds
    assert client.queue(name).info(window).window == seconds
    assert {q.window for q in client.queues.list(window)} == {seconds}


def test_oversize_payload_is_refused(client: StackShift, unique: Names) -> None:
    job = unique("big")
    with pytest.raises(PayloadTooLargeError):
        client.start(job, {"blob": "x" * (1024 * 1024 + 10)})
    assert len(client.runs.list(job=job)) == 0


def test_text_utf8_cannot_hold_is_refused_in_the_same_words(
    client: StackShift, unique: Names
) -> None:
    """A lone surrogate in a payload or value is a ValidationError naming the value,
    on every shape (not a UnicodeEncodeError from wherever it was encoded)."""
    name = unique("surrogate")
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: client.start(name, {"k": "a\ud800"}), "payload"),
        (lambda: client.events.send(name, ["\udfff"]), "event payload"),
        (lambda: client.schedules.create(name, cron="@daily", payload="\ud800"), "payload"),
        (lambda: client.state.set(name, {"v": "\ud800"}), f"state value for {name!r}"),
        # A UTF-16 pair left as two code points: two surrogates, each alone; the first named.
        (lambda: client.start(name, {"k": "\ud83d\ude00"}), "payload"),
    ]
    for call, what in calls:
        with pytest.raises(ValidationError) as raised:
            call()
        assert str(raised.value).startswith(f"{what}: ")
        assert str(raised.value).endswith("' is a lone surrogate, which UTF-8 text cannot hold")
        assert str(raised.value).count("\\u") == 1, str(raised.value)
    assert len(client.runs.list(job=name)) == 0
    assert client.events.list(name=name).items == []
    assert [s for s in client.schedules.list() if s.job == name] == []
    assert client.state.get(name, default="missing") == "missing"


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda c, n: c.start(n, idempotency_key="k\ud800"), "idempotency_key"),
        (lambda c, n: c.start(n, concurrency_key="k\udc00"), "concurrency_key"),
        (lambda c, n: c.events.send(n, correlation_key="k\ud800"), "correlation_key"),
        (lambda c, n: c.events.send(n, idempotency_key="k\ud800"), "idempotency_key"),
        (lambda c, n: c.state.set(n + "\ud800", 1), "state key"),
        (lambda c, n: c.state.get(n + "\ud800"), "state key"),
        (lambda c, n: c.runs.list(job=n + "\ud800"), "job"),
    ],
)
def test_a_lone_surrogate_in_a_key_is_refused_in_the_same_words(
    client: StackShift, unique: Names, call: Callable[[StackShift, str], Any], what: str
) -> None:
    """Keys, names and filters are text that UTF-8 can hold, on every shape: a lone
    surrogate is a ValidationError naming the argument, and nothing is written."""
    name = unique("surrogate-key")
    with pytest.raises(ValidationError) as raised:
        call(client, name)
    assert str(raised.value).startswith(f"{what}: ")
    assert str(raised.value).endswith("is a lone surrogate, which UTF-8 text cannot hold")
    assert len(client.runs.list(job=name)) == 0
    assert client.events.list(name=name).items == []


@pytest.mark.parametrize("holder", ["   ", "\n\t"])
def test_a_blank_lock_holder_is_refused_in_the_same_words(
    client: StackShift, unique: Names, holder: str
) -> None:
    """As a blank cancel reason is: a holder that says nothing is refused, and the
    lock is not taken."""
    key = unique("blank-holder")
    with pytest.raises(ValidationError) as raised:
        client._api.lock_acquire(key, "a-token", "1m", holder)
    assert str(raised.value) == (f"holder must not be blank, got {holder!r}: "
                                 "leave it out when the owner does not say")
    assert client.state.locks(prefix=key) == []
    assert client._api.lock_acquire(key, "b-token", "1m", "worker 2") is True
    assert [lock["holder"] for lock in client.state.locks(prefix=key)] == ["worker 2"]


@pytest.mark.parametrize(
    ("call", "message", "setting"),
    [
        (lambda c, n: c.start(n, "x" * 2**20),
         "payload is 1048578 bytes as JSON, over the limit of 1048576 bytes",
         "max_payload_bytes"),
        (lambda c, n: c.events.send(n, "é" * 2**19),
         "event payload is 1048578 bytes as JSON, over the limit of 1048576 bytes",
         "max_event_payload_bytes"),
        (lambda c, n: c.schedules.create(n, cron="@daily", payload=["x" * 2**20]),
         "payload is 1048580 bytes as JSON, over the limit of 1048576 bytes",
         "max_payload_bytes"),
        (lambda c, n: c.state.set(n, "x" * 2**20),
         "state value for '{name}' is 1048578 bytes as JSON, over the limit of 262144 bytes",
         "max_state_value_bytes"),
    ],
)
def test_oversize_values_are_refused_in_the_same_words(
    client: StackShift, unique: Names, call: Callable[[StackShift, str], Any], message: str,
    setting: str,
) -> None:
    """A remote client names the oversize value as the embedded one does, not the
    request that would carry it, and nothing is written. Each names the setting
    that raises the limit where the limit is held."""
    name = unique("big")
    with pytest.raises(PayloadTooLargeError) as raised:
        call(client, name)
    assert str(raised.value) == message.format(name=name) + raise_with(client, setting)
    assert len(client.runs.list(job=name)) == 0
    assert client.events.list(name=name).items == []
    assert [s for s in client.schedules.list() if s.job == name] == []
    assert client.state.get(name, default="missing") == "missing"


# -- runs --------------------------------------------------------------------------------


def test_a_run_executes_and_its_record_reads_back(
    client: StackShift, engine: StackShift, run_all: Callable[[], int], unique: Names
) -> None:
    job = unique("sendReceipt")

    @client.job(job)
    def send_receipt(ctx: Any) -> dict[str, Any]:
        order = ctx.step.run("load-order", lambda: {"id": ctx.payload["orderId"]})
        ctx.log.info("loaded %s", order["id"])
        ctx.step.run("send-email", lambda: "sent")
        return {"sent": True, "order": order["id"]}

    run = client.start(job, {"orderId": "o_9"})
    assert run_all() >= 1
    done = client.runs.wait(run.id, timeout="5s")
    assert (done.status, done.result, done.attempt) == ("completed", {"sent": True,
                                                                      "order": "o_9"}, 1)
    assert done.finished_at is not None and done.started_at is not None
    steps = client.runs.steps(run.id)
    assert [(s.key, s.status, s.result) for s in steps] == [
        ("load-order", "completed", {"id": "o_9"}), ("send-email", "completed", "sent")]
    attempts = client.runs.attempts(run.id)
    assert [(a.number, a.status) for a in attempts] == [(1, "completed")]
    assert attempts[0].duration is not None
    assert any("loaded o_9" in entry.message for entry in client.runs.logs(run.id))
    kinds = [entry.kind for entry in client.runs.timeline(run.id)]
    assert kinds[0] == "run.queued" and kinds[-1] == "run.completed"
    # The remote client returns exactly what the database holds.
    assert client.runs.get(run.id) == engine.runs.get(run.id)
    assert client.runs.steps(run.id) == engine.runs.steps(run.id)
    assert client.runs.attempts(run.id) == engine.runs.attempts(run.id)
    assert client.runs.timeline(run.id) == engine.runs.timeline(run.id)
    assert client.runs.logs(run.id) == engine.runs.logs(run.id)


def test_failures_retry_and_manual_retry(
    client: StackShift, run_all: Callable[[], int], unique: Names
) -> None:
    job = unique("flaky")

    @client.job(job, max_attempts=1)
    def flaky(ctx: Any) -> None:
        raise RuntimeError("payment provider down")

    run = client.start(job)
    run_all()
    failed = client.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("RuntimeError", "payment provider down")
    assert failed.error.traceback and "payment provider down" in failed.error.traceback
    again = client.runs.retry(run.id)
    assert again.status == "queued"
    with pytest.raises(InvalidTransitionError):
        client.runs.retry(client.start(unique("fresh")).id)


def test_a_manual_retry_shows_the_budget_it_starts_and_drops_the_old_error(
    client: StackShift, engine: StackShift, run_all: Callable[[], int], unique: Names
) -> None:
    job = unique("syncLedger")
    seen: list[Run] = []

    @client.job(job, max_attempts=2, backoff={"base": "0.01s"})
    def sync_ledger(ctx: Any) -> str:
        seen.append(client.runs.get(ctx.run.id))  # the run as the client sees it, running
        if ctx.run.attempt <= 2:
            raise ConnectionError("ledger down")
        return "synced"

    run = client.start(job)
    deadline = time.monotonic() + 20
    while client.runs.get(run.id).status != "failed" and time.monotonic() < deadline:
        run_all()
    failed = client.runs.get(run.id)
    assert (failed.status, failed.attempt, failed.retry_base, failed.budget_attempt) == (
        "failed", 2, 0, 2)
    assert failed.error is not None and failed.error.message == "ledger down"

    queued = client.runs.retry(run.id)
    assert (queued.status, queued.error, queued.retry_base, queued.budget_attempt) == (
        "queued", None, 2, 0)
    run_all()
    running = seen[-1]
    assert (running.status, running.error, running.attempt, running.budget_attempt) == (
        "running", None, 3, 1)
    done = client.runs.get(run.id)
    assert (done.status, done.error, done.retry_base, done.budget_attempt) == (
        "completed", None, 2, 1)
    # Embedded and remote clients read the same run.
    assert done == engine.runs.get(run.id)
    assert [a.error.message for a in client.runs.attempts(run.id) if a.error] == [
        "ledger down", "ledger down"]


def test_start_again_starts_the_same_work_as_a_new_run_and_each_names_the_other(
    client: StackShift, engine: StackShift, run_all: Callable[[], int], unique: Names
) -> None:
    job = unique("importOrders")

    @client.job(job)
    def import_orders(ctx: Any) -> int:
        if ctx.payload["count"] < 0:
            raise ValueError("a count cannot be negative")
        return int(ctx.payload["count"]) * 2

    key = unique("import:1")
    run = client.start(job, {"count": 21}, queue_name="imports", max_attempts=4, priority=2,
                       concurrency_key="shop:1", idempotency_key=key)
    run_all()
    done = client.runs.get(run.id)
    assert (done.status, done.result) == ("completed", 42)

    again = client.runs.start_again(run.id)
    assert again.id != run.id and again.created
    assert (again.job, again.payload, again.queue, again.max_attempts, again.priority,
            again.concurrency_key) == (job, {"count": 21}, "imports", 4, 2, "shop:1")
    assert (again.idempotency_key, again.status, again.attempt, again.result) == (
        None, "queued", 0, None)
    assert client.runs.get(again.id) == again
    [created] = client.runs.timeline(again.id)
    assert (created.kind, created.data) == ("run.queued", {"again_of": run.id})
    noted = client.runs.timeline(run.id)[-1]
    assert (noted.kind, noted.data, noted.at) == (
        "run.started_again", {"new_run_id": again.id}, created.at)
    assert client.runs.get(run.id) == done  # the first run is as it was
    assert engine.runs.timeline(again.id) == [created]  # either client reads the same
    # Not the key: it names the first run, so a start with it still finds that one.
    assert client.start(job, {"count": 21}, queue_name="imports",
                        idempotency_key=key).id == run.id
    run_all()
    assert client.runs.get(again.id).result == 42

    # Whatever the run's status: a failed one too, and one that has not run yet.
    failing = client.start(job, {"count": -1}, max_attempts=1)
    run_all()
    assert client.runs.get(failing.id).status == "failed"
    assert client.runs.start_again(failing.id).payload == {"count": -1}
    later = client.start(job, {"count": 1}, delay="1h")
    assert (client.runs.start_again(later.id).status, client.runs.get(later.id).status) == (
        "queued", "scheduled")


def test_cancel(client: StackShift, unique: Names) -> None:
    run = client.start(unique("later"), delay="1h")
    cancelled = client.runs.cancel(run.id, reason="no longer needed")
    assert cancelled.status == "cancelled"
    assert cancelled.error is not None and cancelled.error.message == "no longer needed"
    assert client.runs.cancel(run.id).status == "cancelled"  # cancelling twice is fine


def test_a_cancel_reason_is_text(client: StackShift, unique: Names) -> None:
    run = client.start(unique("later"), delay="1h")
    with pytest.raises(ValidationError, match="reason must be a string, got 5"):
        client.runs.cancel(run.id, reason=5)  # type: ignore[arg-type]
    # A reason of megabytes is refused alike by both shapes (a server would refuse
    # its request body, an embedded client used to store it as the run's error).
    for reason in ("x" * 10_001, "é" * 2 * 1024 * 1024):
        with pytest.raises(ValidationError, match=r"reason is \d+ characters, over the limit "
                                                  "of 10000"):
            client.runs.cancel(run.id, reason=reason)
    assert client.runs.get(run.id).status == "scheduled"
    longest = client.runs.cancel(run.id, reason="x" * 10_000)
    assert longest.error is not None and longest.error.message == "x" * 10_000


def test_a_running_run_asked_to_cancel_says_so_until_it_ends(
    client: StackShift, engine: StackShift, unique: Names
) -> None:
    job = unique("longStep")
    run = client.start(job)
    other = client.start(job)
    # A worker holds the run, inside a long step: the cancel is only requested.
    store = engine._service.store
    claimed = store.claim_runs("busy-worker", [job], 1, 60, time.time())
    [lease] = [c.lease for c in claimed]
    held = lease.run_id
    assert not client.runs.get(held).cancel_requested
    requested = client.runs.cancel(held, reason="stop the import")
    assert (requested.status, requested.cancel_requested) == ("running", True)
    assert client.runs.get(held).cancel_requested
    assert [r.cancel_requested for r in client.runs.list(job=job).items
            if r.id == held] == [True]
    # A run cancelled at once, and one never asked, say nothing of the kind.
    waiting = other.id if held == run.id else run.id
    assert client.runs.get(waiting).cancel_requested is False
    assert client.runs.cancel(waiting).cancel_requested is False
    assert store.release_run(lease, time.time())  # the worker stops: the run ends
    ended = client.runs.get(held)
    assert (ended.status, ended.error and ended.error.message) == ("cancelled",
                                                                   "stop the import")
    assert ended.cancel_requested is False


def test_cancel_of_a_finished_run_is_refused(
    client: StackShift, run_all: Callable[[], int], unique: Names
) -> None:
    job = unique("quick")
    client.job(job, lambda ctx: 1)
    run = client.start(job)
    run_all()
    with pytest.raises(InvalidTransitionError):
        client.runs.cancel(run.id)


def test_wait_times_out_on_an_unfinished_run(client: StackShift, unique: Names) -> None:
    run = client.start(unique("nobodyRunsThis"))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.runs.wait(run.id, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 5


@pytest.mark.parametrize("call", ["get", "wait", "cancel", "retry", "start_again", "timeline",
                                  "logs", "attempts", "steps"])
def test_unknown_run_ids(client: StackShift, call: str) -> None:
    for run_id in ("run_00000000000000000000000000", "nope", "", "a/b", "..", 5, None,
                   "run_\x00"):
        with pytest.raises(RunNotFoundError) as raised:
            getattr(client.runs, call)(run_id)
        assert str(raised.value) == f"no run with id {run_id!r}"


def test_unknown_schedule_ids(client: StackShift) -> None:
    for schedule_id in ("sch_00000000000000000000000000", "nope", "a/b", "..", "sch_\x00"):
        for call in ("get", "pause", "resume"):
            with pytest.raises(ScheduleNotFoundError) as raised:
                getattr(client.schedules, call)(schedule_id)
            assert str(raised.value) == f"no schedule with id {schedule_id!r}"
        assert client.schedules.delete(schedule_id) is False


def test_unknown_event_ids(client: StackShift) -> None:
    for event_id in ("evt_00000000000000000000000000", "nope", "a/b", 5, None, "evt_\x00"):
        with pytest.raises(EventNotFoundError) as raised:
            client.events.get(event_id)  # type: ignore[arg-type]
        assert str(raised.value) == f"no event with id {event_id!r}"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.runs.list(job=5), "job must be a string, got 5"),
        (lambda c: c.runs.list(queue=["a"]), "queue must be a string, got ['a']"),
        (lambda c: c.runs.list(idempotency_key=1), "idempotency_key must be a string, got 1"),
        (lambda c: c.runs.list(correlation_key="a\x00"),
         "correlation_key must not contain the NUL character (U+0000)"),
        (lambda c: c.runs.list(job="a\x00"), "job must not contain the NUL character"),
        (lambda c: c.events.list(name=5), "name must be a string, got 5"),
        (lambda c: c.events.list(correlation_key="\x00"),
         "correlation_key must not contain the NUL character"),
        (lambda c: c.state.keys(prefix="a\x00"), "prefix must not contain the NUL character"),
    ],
)
def test_list_filters_are_text(client: StackShift, call: Callable[[StackShift], Any],
                               message: str) -> None:
    """A filter that is not text is refused alike on every store and shape (PostgreSQL
    would otherwise fail with a database error, SQLite find nothing)."""
    with pytest.raises(ValidationError) as raised:
        call(client)
    assert str(raised.value).startswith(message)


NAME_HINT = "is invalid: use 1-200 ASCII letters, digits, '.', '_', ':' or '-'"
EMPTY = "must be a non-empty string, got ''"

#: Filters no run or event can have, each with the error every list and bulk retry
#: gives it: the error a job, queue or event name or a key gets when it is given.
NOTHING_FILTERS: list[tuple[Callable[[StackShift], Any], str]] = [
    (lambda c: c.runs.list(job=""), f"job name '' {NAME_HINT}"),
    (lambda c: c.runs.list(job="  "), f"job name '  ' {NAME_HINT}"),
    (lambda c: c.runs.list(job="send receipt"), f"job name 'send receipt' {NAME_HINT}"),
    (lambda c: c.runs.list(queue=""), f"queue name '' {NAME_HINT}"),
    (lambda c: c.runs.list(queue="\t", status="failed"), f"queue name '\\t' {NAME_HINT}"),
    (lambda c: c.runs.list(idempotency_key=""), f"idempotency_key {EMPTY}"),
    (lambda c: c.runs.list(correlation_key=""), f"correlation_key {EMPTY}"),
    (lambda c: c.runs.list(search=""), f"search {EMPTY}"),
    (lambda c: c.events.list(name=""), f"event name '' {NAME_HINT}"),
    (lambda c: c.events.list(name="email verified"), f"event name 'email verified' {NAME_HINT}"),
    (lambda c: c.events.list(correlation_key=""), f"correlation_key {EMPTY}"),
    (lambda c: c.queue("billing").dead_letters(job=""), f"job name '' {NAME_HINT}"),
]


@pytest.mark.parametrize(("call", "message"), NOTHING_FILTERS)
def test_a_filter_no_run_or_event_can_have_is_refused(
        client: StackShift, unique: Names, call: Callable[[StackShift], Any],
        message: str) -> None:
    """Rather than answered with an empty list while runs and events exist."""
    client.start(unique("listed"), queue_name="billing")
    client.events.send(unique("sent"))
    with pytest.raises(ValidationError) as raised:
        call(client)
    assert str(raised.value) == message


def test_a_bulk_retry_by_a_filter_nothing_can_have_retries_nothing(
        client: StackShift, unique: Names) -> None:
    queue = unique("q")
    cancelled = client.runs.cancel(client.start(unique("job"), queue_name=queue, delay="1h").id)
    for retry in (lambda: client.runs.retry_many(queue=queue, job="", status="cancelled"),
                  lambda: client.runs.retry_many(queue=" ", status="cancelled"),
                  lambda: client.queue(queue).retry_dead_letters(job=" ")):
        with pytest.raises(ValidationError, match=NAME_HINT):
            retry()
    assert client.runs.get(cancelled.id).status == "cancelled"
    assert client.runs.retry_many(queue=queue, status="cancelled") == [cancelled.id]


def test_the_async_client_refuses_a_filter_nothing_can_have(client: StackShift) -> None:
    async def scenario() -> list[str]:
        async with AsyncStackShift(**_async_options(client)) as app:
            refused = []
            for call in (lambda: app.runs.list(job=""), lambda: app.events.list(name=""),
                         lambda: app.runs.retry_many(job="")):
                with pytest.raises(ValidationError) as raised:
                    await call()
                refused.append(str(raised.value))
            return refused

    assert asyncio.run(scenario()) == [f"job name '' {NAME_HINT}", f"event name '' {NAME_HINT}",
                                       f"job name '' {NAME_HINT}"]


def test_list_filters_and_pages(client: StackShift, unique: Names) -> None:
    job = unique("listed")
    runs = [client.start(job, {"i": i}, queue_name=unique("q") if i == 0 else None)
            for i in range(5)]
    # Newest first, by id; ids made within the same millisecond have no order.
    newest_first = sorted((r.id for r in runs), reverse=True)
    assert [r.id for r in client.runs.list(job=job)] == newest_first
    assert [r.id for r in client.runs.list(job=job, queue=unique("q"))] == [runs[0].id]
    assert len(client.runs.list(job=job, status="completed")) == 0
    seen: list[str] = []
    cursor = None
    while True:
        page = client.runs.list(job=job, limit=2, cursor=cursor)
        seen += [r.id for r in page]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == newest_first
    keyed = client.start(job, idempotency_key=unique("key"))
    assert [r.id for r in client.runs.list(idempotency_key=unique("key"))] == [keyed.id]
    assert [r.id for r in client.runs.list(search=unique("key"))] == [keyed.id]
    assert [r.id for r in client.runs.list(search=runs[1].id)] == [runs[1].id]
    assert keyed.id not in [r.id for r in client.runs.list(job=job,
                                                           created_before=keyed.created_at)]
    assert [r.id for r in client.runs.list(job=job, created_after=keyed.created_at)] == [keyed.id]
    future = datetime.now(UTC) + timedelta(days=1)
    assert len(client.runs.list(job=job, created_after=future)) == 0
    with pytest.raises(ValidationError):
        client.runs.list(limit=0)
    with pytest.raises(ValidationError, match="unknown status 'bogus'"):
        client.runs.list(status="bogus")
    with pytest.raises(ValidationError, match="unknown status 'bogus'"):
        client.runs.retry_many(status="bogus")


# -- events --------------------------------------------------------------------------------


def test_an_event_resumes_a_waiting_run(
    client: StackShift, run_all: Callable[[], int], unique: Names
) -> None:
    job, event = unique("userOnboarding"), unique("email.verified")

    @client.job(job)
    def onboarding(ctx: Any) -> Any:
        got = ctx.step.wait_for_event(event, correlation_key=f"user:{ctx.payload['userId']}",
                                      timeout="1h")
        return {"verified": got.payload["userId"]}

    run = client.start(job, {"userId": "42"})
    run_all()
    waiting = client.runs.get(run.id)
    assert waiting.status == "waiting"
    assert waiting.waiting_for is not None
    assert (waiting.waiting_for.kind, waiting.waiting_for.event_name,
            waiting.waiting_for.correlation_key) == ("event", event, "user:42")
    assert [r.id for r in client.runs.list(correlation_key="user:42", job=job)] == [run.id]
    sent = client.events.send(event, {"userId": "42"}, correlation_key="user:42",
                              idempotency_key=unique("ev"))
    assert (sent.duplicate, sent.resumed_run_ids) == (False, [run.id])
    dup = client.events.send(event, {"userId": "42"}, correlation_key="user:42",
                             idempotency_key=unique("ev"))
    assert (dup.id, dup.duplicate, dup.resumed_run_ids) == (sent.id, True, [run.id])
    run_all()
    assert client.runs.wait(run.id, timeout="5s").result == {"verified": "42"}


def test_a_repeated_send_answers_with_the_runs_the_first_send_resumed(
    client: StackShift, run_all: Callable[[], int], unique: Names, http: Any
) -> None:
    """A sender whose first answer was lost sends again and learns what its event
    resumed, through either client and over plain HTTP; a run that took the event
    later, as an early event, is not counted."""
    job, event = unique("approval"), unique("request.approved")

    @client.job(job)
    def approval(ctx: Any) -> Any:
        got = ctx.step.wait_for_event(event, correlation_key=ctx.payload["key"], timeout="1h")
        return {"event": got.id}

    waiting = [client.start(job, {"key": "req:1"}) for _ in range(2)]
    run_all()
    assert [client.runs.get(r.id).status for r in waiting] == ["waiting", "waiting"]
    late = client.start(job, {"key": "req:1"})  # not executed yet: it waits after the send
    body = {"name": event, "payload": {"by": "ada"}, "correlationKey": "req:1",
            "idempotencyKey": unique("approved:1")}
    first = client.events.send(event, {"by": "ada"}, correlation_key="req:1",
                               idempotency_key=body["idempotencyKey"])
    resumed = sorted(r.id for r in waiting)
    assert (first.duplicate, first.resumed_run_ids) == (False, resumed)
    run_all()
    assert client.runs.wait(late.id, timeout="5s").result == {"event": first.id}

    again = client.events.send(event, {"by": "ada"}, correlation_key="req:1",
                               idempotency_key=body["idempotencyKey"])
    assert (again.id, again.duplicate, again.resumed_run_ids) == (first.id, True, resumed)
    over_http = http.post("/v1/events", json=body)
    assert over_http.status_code == 200
    assert over_http.json() == {"id": first.id, "duplicate": True, "resumedRunIds": resumed}
    assert run_all() == 0

    # A send that resumed nothing is repeated as such, though a run took its event since.
    alone = {**body, "correlationKey": "req:2", "idempotencyKey": unique("approved:2")}
    taker = client.start(job, {"key": "req:2"})
    sent = http.post("/v1/events", json=alone)
    assert (sent.status_code, sent.json()["resumedRunIds"]) == (201, [])
    run_all()
    assert client.runs.wait(taker.id, timeout="5s").result == {"event": sent.json()["id"]}
    repeat = client.events.send(event, {"by": "ada"}, correlation_key="req:2",
                                idempotency_key=alone["idempotencyKey"])
    assert (repeat.id, repeat.duplicate, repeat.resumed_run_ids) == (sent.json()["id"], True, [])


def test_events_read_back(client: StackShift, unique: Names) -> None:
    name = unique("order.paid")
    sent = [client.events.send(name, {"n": i}, correlation_key="order:1" if i else None)
            for i in range(3)]
    event = client.events.get(sent[0].id)
    assert (event.name, event.payload, event.correlation_key) == (name, {"n": 0}, None)
    assert event.received_at.tzinfo is UTC
    newest_first = sorted((s.id for s in sent), reverse=True)
    assert [e.id for e in client.events.list(name=name)] == newest_first
    keyed = client.events.list(name=name, correlation_key="order:1", limit=1)
    assert keyed.next_cursor is not None
    rest = client.events.list(name=name, correlation_key="order:1", cursor=keyed.next_cursor)
    assert sorted(e.id for e in [*keyed, *rest]) == sorted(s.id for s in sent[1:])
    with pytest.raises(EventNotFoundError):
        client.events.get("evt_00000000000000000000000000")
    with pytest.raises(ValidationError):
        client.events.send("bad name!", {})
    with pytest.raises(TypeError):
        client.events.send(name, {"when": datetime.now(UTC)})


# -- state ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["plain", "a/b/c", "dots..and.", "spaces and ?#%&=",
                                    "ünïcödé:☃"])
def test_state_values(client: StackShift, unique: Names, suffix: str) -> None:
    key = unique("imports:42:") + suffix
    assert client.state.get(key) is None
    assert client.state.get(key, default={"none": True}) == {"none": True}
    client.state.set(key, {"done": 3, "of": [1, 2.5, None]})
    assert client.state.get(key) == {"done": 3, "of": [1, 2.5, None]}
    client.state.set(key, None)
    assert client.state.get(key, default="missing") is None  # a stored null is a value
    assert client.state.delete(key) is True
    assert client.state.delete(key) is False
    assert client.state.get(key, default="missing") == "missing"


def test_state_counters_expiry_and_listing(client: StackShift, unique: Names) -> None:
    counter = unique("counter")
    assert client.state.increment(counter) == 1
    assert client.state.increment(counter, by=41) == 42
    assert client.state.get(counter) == 42
    text = unique("text")
    client.state.set(text, "hello")
    with pytest.raises(ValidationError):
        client.state.increment(text)
    with pytest.raises(ValidationError):
        client.state.increment(counter, by="2")  # type: ignore[arg-type]
    gone = unique("gone")
    with pytest.raises(ValidationError, match="expires_at must be in the future"):
        client.state.set(gone, 1, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    client.state.set(gone, 1, expires_at=datetime.now(UTC) + timedelta(seconds=0.3))
    assert client.state.get(gone) == 1
    time.sleep(0.4)
    assert client.state.get(gone, default="expired") == "expired"
    assert client.state.keys(prefix=gone) == []
    prefix = unique("listing") + ":"
    for i in range(3):
        client.state.set(f"{prefix}{i}", i, ttl="1h")
    listed = client.state.keys(prefix=prefix)
    assert [(e["key"], e["value"]) for e in listed] == [(f"{prefix}{i}", i) for i in range(3)]
    assert all(e["expires_at"] > time.time() + 3500 for e in listed)
    # The last key of a page, as ``after``, gives the next page.
    first = client.state.keys(prefix=prefix, limit=2)
    rest = client.state.keys(prefix=prefix, limit=2, after=first[-1]["key"])
    assert [e["key"] for e in first + rest] == [f"{prefix}{i}" for i in range(3)]
    with pytest.raises(ValidationError):
        client.state.set(unique("x"), 1, ttl="1h", expires_at="2030-01-01T00:00:00Z")
    with pytest.raises(ValidationError):
        client.state.set("", 1)
    with pytest.raises(TypeError):
        client.state.set(unique("x"), {1, 2})
    with pytest.raises(PayloadTooLargeError):
        client.state.set(unique("x"), "x" * (256 * 1024 + 1))


def test_state_listing_checks_its_arguments(client: StackShift) -> None:
    with pytest.raises(ValidationError, match="prefix must be a string, got 5"):
        client.state.keys(prefix=5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="limit must be an integer from 1 to 1000, got 0"):
        client.state.keys(limit=0)


def test_locks(client: StackShift, engine: StackShift, unique: Names) -> None:
    key = unique("lock:customer:1")
    with client.state.lock(key, ttl="30s"):
        # held: nobody else gets it, through either shape
        with pytest.raises(LockNotAcquiredError), engine.state.lock(key, wait=0):
            pass
        with pytest.raises(LockNotAcquiredError), client.state.lock(key, wait=0.05):
            pass
    with engine.state.lock(key, wait=0):
        pass  # released on exit


def test_locks_are_listed_and_broken_through_the_server(
        client: StackShift, engine: StackShift, unique: Names,
        caplog: pytest.LogCaptureFixture) -> None:
    base = unique("lock:stuck")
    with client.state.lock(f"{base}/a.b", ttl="1m") as stuck, \
            engine.state.lock(f"{base}/c", ttl="1m") as other:
        listed = client.state.locks(base)
        embedded = engine.state.locks(base)
        # The same locks; times cross the wire to the microsecond.
        assert [(e["key"], e["holder"]) for e in listed] == [
            (e["key"], e["holder"]) for e in embedded]
        assert all(abs(mine["expires_at"] - theirs["expires_at"]) < 1e-5
                   for mine, theirs in zip(listed, embedded, strict=True))
        assert [(e["key"], e["holder"]) for e in listed] == [
            (f"{base}/a.b", stuck.holder), (f"{base}/c", other.holder)]
        assert stuck.owner not in str(listed) and other.owner not in str(listed)
        assert 50 < listed[0]["expires_at"] - time.time() <= 60
        assert [e["key"] for e in client.state.locks(base, 1, after=f"{base}/a.b")] == [
            f"{base}/c"]
        assert client.state.break_lock(f"{base}/a.b") is True  # a "/" and a "." in the key
        assert client.state.break_lock(f"{base}/a.b") is False
        assert stuck.extend() is False
        assert [e["key"] for e in engine.state.locks(base)] == [f"{base}/c"]
        with pytest.raises(ValidationError, match="state key must be a non-empty string"):
            client.state.break_lock("")
        with pytest.raises(ValidationError, match="after must not contain the NUL"):
            client.state.locks(after="a\x00")
        assert other.extend() is True  # the refused calls broke nothing
    assert stuck.lost is True and other.lost is False
    # Broken, and taken by nobody since: the owner is told it was broken.
    assert caplog.messages == [
        f"lock {base + '/a.b'!r} was broken (released by someone else: state.break_lock,"
        " `stackshift state unlock` or the dashboard) while its block held it, before its"
        " ttl of 60s ran out: another owner may have held it meanwhile"]

    async def operator() -> tuple[list[str], bool, list[dict[str, Any]]]:
        async with AsyncStackShift(**_async_options(client)) as app, \
                app.state.lock(f"{base}/async", ttl="1m"):
            listed = [e["key"] for e in await app.state.locks(base)]
            broken = await app.state.break_lock(f"{base}/async")
            return listed, broken, await app.state.locks(base)

    assert asyncio.run(operator()) == ([f"{base}/async"], True, [])


def test_a_lock_that_outlasts_its_ttl_tells_its_owner_on_exit(
        client: StackShift, engine: StackShift, unique: Names,
        caplog: pytest.LogCaptureFixture) -> None:
    key = unique("lock:slow")
    with client.state.lock(key, ttl="5s") as kept:
        pass
    assert kept.lost is False
    with client.state.lock(key, ttl=0.2) as slow:
        time.sleep(0.3)  # the owner overran its TTL: the next owner takes the lock
        with engine.state.lock(key, ttl="30s", wait=0) as next_owner:
            pass
    assert slow.lost is True and next_owner.lost is False
    # Taken by another owner since: an overrun and a break cannot be told apart.
    assert caplog.messages[-1].startswith(
        f"lock {key!r} ran past its ttl of 0.2s before its block ended, or was broken")
    with client.state.lock(key, ttl=0.2) as overran:
        time.sleep(0.3)  # overran, though nobody took the lock meanwhile
    assert overran.lost is True
    assert caplog.messages[-1].startswith(
        f"lock {key!r} ran past its ttl of 0.2s before its block ended; no other owner"
        " took it meanwhile")



def test_an_extended_lock_stays_held_past_its_first_ttl(
        client: StackShift, engine: StackShift, unique: Names) -> None:
    key = unique("lock:long")
    with client.state.lock(key, ttl=0.5) as held:
        assert held.extend("5s") is True
        time.sleep(0.6)  # past the first TTL
        assert taken_by_another(engine, key) is False
        assert taken_by_another(client, key) is False
        for ttl in (0, -1, "0s", "soon"):
            with pytest.raises(ValidationError, match="ttl"):
                held.extend(ttl)
        assert taken_by_another(engine, key) is False  # still held, for its 5s
    assert held.lost is False
    assert taken_by_another(engine, key) is True  # released on exit
    with pytest.raises(RuntimeError, match="is not held"):
        held.extend()


def test_an_extend_after_the_ttl_ran_out_does_not_take_the_lock_back(
        client: StackShift, engine: StackShift, unique: Names,
        caplog: pytest.LogCaptureFixture) -> None:
    key = unique("lock:late")
    with client.state.lock(key, ttl=0.2) as slow:
        time.sleep(0.3)  # the owner overran its TTL: the next owner takes the lock
        with engine.state.lock(key, ttl="30s", wait=0) as next_owner:
            assert slow.extend("30s") is False
            assert taken_by_another(client, key) is False  # still the next owner's
    assert slow.lost is True and next_owner.lost is False
    assert f"lock {key!r} ran past its ttl of 0.2s" in caplog.text

    async def async_owner() -> tuple[bool, bool, bool | None]:
        async with AsyncStackShift(**_async_options(client)) as app, \
                app.state.lock(key, ttl=0.2) as late:
            await asyncio.sleep(0.3)
            extended = await late.extend_async()
            taken = taken_by_another(engine, key)  # expired: free to another owner
        return extended, taken, late.lost

    assert asyncio.run(async_owner()) == (False, True, True)


# -- the async client ------------------------------------------------------------------------


def _async_options(client: StackShift) -> dict[str, Any]:
    """The arguments of an ``AsyncStackShift`` of the same shape as ``client``."""
    return (
        {"database_url": client.database_url} if client.database_url
        else {"api_key": client._api._http.headers["Authorization"].split()[1],  # type: ignore[union-attr]
              "base_url": client.base_url}
    )


def test_async_client(client: StackShift, unique: Names) -> None:
    options = _async_options(client)

    async def scenario() -> tuple[Run, Run, Any, int]:
        async with AsyncStackShift(**options) as app:
            run = await app.start(unique("asyncJob"), {"a": 1})
            got = await app.runs.get(run.id)
            await app.state.set(unique("k"), [1, 2])
            value = await app.state.get(unique("k"))
            count = await app.state.increment(unique("n"), 5)
            with pytest.raises(RunNotFoundError):
                await app.runs.get("run_missing")
            # the sync client's other members too
            assert await app.migrate() == client.migrate()
            assert abs(app.clock.now() - client.clock.now()) < 60
            return run, got, value, count

    run, got, value, count = asyncio.run(scenario())
    assert dataclasses.replace(run) == got
    assert (value, count) == ([1, 2], 5)


def test_async_waits_hold_no_thread(client: StackShift, unique: Names) -> None:
    """Many runs awaited at once leave the async client free for other calls."""
    job = unique("awaited")

    async def scenario() -> tuple[float, list[Any]]:
        async with AsyncStackShift(**_async_options(client)) as app:
            runs = [await app.start(job, {"i": i}) for i in range(40)]
            waits = [asyncio.create_task(app.runs.wait(r.id, timeout=2)) for r in runs]
            await asyncio.sleep(0.3)  # every wait has begun
            began = time.monotonic()
            await app.runs.get(runs[0].id)
            took = time.monotonic() - began
            await app.runs.cancel(runs[0].id)
            ended = await asyncio.gather(*waits, return_exceptions=True)
            return took, ended

    took, ended = asyncio.run(scenario())
    assert took < 1.0
    assert isinstance(ended[0], Run) and ended[0].status == "cancelled"
    assert all(isinstance(e, TimeoutError) and str(e).endswith("is still queued after 2s")
               for e in ended[1:])
