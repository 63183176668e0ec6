"""One program, two shapes: the same scenario through an embedded client and
through a remote one (a real ``stackshift server``) must end the same way.

The scenario is written once. It records every call's outcome (its result, or
its exception class and message, and what the refused call left behind), with
ids replaced by their order of appearance and names by a placeholder, so the
two transcripts compare whole: values, fields, their types, errors, and which
run an error names.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from stackshift import LockNotAcquiredError, NonRetriableError, Page, StackShift
from stackshift.testing import run_until_idle

Names = Callable[[str], str]
_IDS = re.compile(r"\b(run|evt|sch|wkr)_[0-9a-z]{26}\b")


class Transcript:
    """Outcomes of a scenario's calls, in a form two clients' runs can compare."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.ids: dict[str, str] = {}
        self.lines: list[tuple[str, Any]] = []

    def _text(self, text: str) -> str:
        def number(match: re.Match[str]) -> str:
            return self.ids.setdefault(match.group(0), f"<{match.group(1)} {len(self.ids) + 1}>")

        return _IDS.sub(number, text).replace(self.tag, "<tag>")

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, datetime):
            return ("datetime", value.tzinfo)
        if isinstance(value, float):
            return "float"  # durations, rates and epoch times differ by when they ran
        if isinstance(value, Page):
            return ("page", self.value(value.items), value.next_cursor is not None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: self.value(getattr(value, f.name))
                      for f in dataclasses.fields(value)}
            if isinstance(fields.get("id"), int):
                fields["id"] = "sequence"  # log and timeline entries: the database's count
            return (type(value).__name__, fields)
        if isinstance(value, dict):
            return {self._text(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def call(self, label: str, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except Exception as exc:  # the outcome is what is compared
            extra = getattr(exc, "existing_run_id", None) or getattr(
                exc, "existing_event_id", None)
            self.lines.append((label, ("raised", type(exc).__name__, self._text(str(exc)),
                                       None if extra is None else self._text(extra))))
            return None
        self.lines.append((label, self.value(result)))
        return result


def scenario(app: StackShift, engine: StackShift, tag: str) -> list[tuple[str, Any]]:
    """What a program sees, calling ``app``; ``engine`` (embedded) runs the jobs."""
    t = Transcript(tag)
    job, waiter, queue = f"charge-{tag}", f"onboard-{tag}", f"billing-{tag}"

    def register(name: str, handler: Callable[[Any], Any], **options: Any) -> None:
        engine.job(name, handler, **options)
        if app is not engine:
            app.job(name, handler, **options)  # its defaults apply to the remote start

    def charge(ctx: Any) -> Any:
        ctx.log.info("charging %s", ctx.payload["order"])
        total = ctx.step.run("total", lambda: ctx.payload["amount"] * 2)
        if ctx.payload.get("declined"):
            raise NonRetriableError("card declined")
        return {"charged": total}

    def onboard(ctx: Any) -> Any:
        got = ctx.step.wait_for_event(f"verified-{tag}", correlation_key="user:1",
                                      timeout="1h")
        return got.payload

    register(job, charge, queue=queue, max_attempts=2)
    register(waiter, onboard)

    # -- starting work, idempotency ---------------------------------------------------
    first = t.call("start", lambda: app.start(job, {"order": "o1", "amount": 5},
                                              idempotency_key=f"k-{tag}", priority=2))
    t.call("start again", lambda: app.start(job, {"order": "o1", "amount": 5},
                                            idempotency_key=f"k-{tag}"))
    t.call("start conflicting", lambda: app.start(job, {"order": "o1", "amount": 6},
                                                  idempotency_key=f"k-{tag}"))
    later = t.call("scheduled", lambda: app.start(job, {"order": "o2", "amount": 1},
                                                  scheduled_at="2099-01-01T01:00:00+01:00"))
    assert later is not None

    # -- refusals: the error a program sees first, and nothing written ------------------
    refusals: list[tuple[str, Callable[[], Any]]] = [
        ("bad payload and attempts", lambda: app.start(job, object(), max_attempts=0)),
        ("bad payload and key", lambda: app.start(job, {1: 2}, idempotency_key="")),
        ("delay and time, both bad", lambda: app.start(job, delay="x", scheduled_at="y")),
        ("bad delay and key", lambda: app.start(job, delay="soon", idempotency_key="")),
        ("ttl without key, bad", lambda: app.start(job, idempotency_ttl="x")),
        ("explicit empty queue", lambda: app.start(job, queue_name="")),
        ("state: bad key and value", lambda: app.state.set("", object())),
        ("state: ttl and expiry", lambda: app.state.set(f"s-{tag}", 1, ttl="x",
                                                         expires_at="2099-01-01T00:00:00Z")),
        ("state: oversize value, bad ttl", lambda: app.state.set(f"s-{tag}", "x" * 300_000,
                                                                 ttl=0)),
        ("state: value not JSON, bad ttl", lambda: app.state.set(f"s-{tag}", {1, 2},
                                                                 ttl="abc")),
        ("increment: bad key and by", lambda: app.state.increment("", 1.5)),
        ("state: expiry in the past", lambda: app.state.set(f"s-{tag}", 1,
                                                            expires_at="2020-01-01T01:00:00+01:00")),
        ("list: bad status and limit", lambda: app.runs.list(status="x", limit=0)),
        ("list: bad time and cursor", lambda: app.runs.list(created_before="x", cursor=5)),
        ("events: bad name and limit", lambda: app.events.list(name=5, limit=0)),  # type: ignore[arg-type]
        ("queue name with a slash", lambda: app.queues.get("a/b")),
        ("empty queue name", lambda: app.queue("").info()),
        ("cancel of an unknown run", lambda: app.runs.cancel("run_00000000000000000000000000")),
        ("cancel with an empty reason", lambda: app.runs.cancel(later.id, reason="")),
        ("cancel with a blank reason", lambda: app.runs.cancel(later.id, reason=" \n ")),
        # unknown keywords: the public call, the keyword, the one meant
        ("start: queue=", lambda: app.start(job, {}, queue=queue)),  # type: ignore[call-arg]
        ("enqueue: queue_name=", lambda: app.queue(queue).enqueue(
            job, queue_name=queue)),  # type: ignore[call-arg]
        ("list: state=", lambda: app.runs.list(state="failed")),  # type: ignore[call-arg]
        ("send: correlation=", lambda: app.events.send(
            f"verified-{tag}", correlation="user:1")),  # type: ignore[call-arg]
        ("state: ttl_seconds=", lambda: app.state.set(
            f"s-{tag}", 1, ttl_seconds=5)),  # type: ignore[call-arg]
        ("schedule: tz=", lambda: app.schedules.create(
            job, cron="@daily", tz="UTC")),  # type: ignore[call-arg]
        ("worker: concurency=", lambda: app.worker(concurency=2)),
        # filters no run or event can have: refused, not answered with an empty list
        ("list: empty job and key", lambda: app.runs.list(job="", idempotency_key="")),
        ("list: blank queue", lambda: app.runs.list(queue=" ", status="queued")),
        ("list: empty key", lambda: app.runs.list(idempotency_key="", search="")),
        ("list: empty correlation key", lambda: app.runs.list(correlation_key="")),
        ("list: empty search", lambda: app.runs.list(job=job, search="")),
        ("events: empty name", lambda: app.events.list(name="", correlation_key="")),
        ("events: empty correlation key", lambda: app.events.list(correlation_key="")),
        ("dead letters: empty job", lambda: app.queue(queue).dead_letters(job="")),
    ]
    for label, call in refusals:
        t.call(label, call)
    t.call("nothing written", lambda: (len(app.runs.list(job=job)),
                                       app.state.get(f"s-{tag}", "unset"),
                                       app.runs.get(later.id).status))

    # -- queues, the names "." and ".." included --------------------------------------
    for name in (queue, ".", ".."):
        label = "queue" if name == queue else f"queue {name!r}"
        t.call(f"{label}: configure", lambda n=name: app.queue(n).configure(  # type: ignore[misc]
            concurrency=4, rate_limit="100/m"))
        t.call(f"{label}: pause", lambda n=name: app.queue(n).pause().paused)  # type: ignore[misc]
        t.call(f"{label}: resume", lambda n=name: app.queue(n).resume().paused)  # type: ignore[misc]
        t.call(f"{label}: dead letters", lambda n=name: app.queue(n).dead_letters())  # type: ignore[misc]
        t.call(f"{label}: reset", lambda n=name: app.queue(n).configure(  # type: ignore[misc]
            concurrency=None, rate_limit=None).concurrency)

    # -- runs execute; their records read back ------------------------------------------
    declined = t.call("start declined", lambda: app.start(
        job, {"order": "o3", "amount": 1, "declined": True}))
    waiting = t.call("start waiter", lambda: app.start(waiter, None))
    run_until_idle(engine)
    assert first is not None and declined is not None and waiting is not None
    for run_id, label in ((first.id, "completed"), (declined.id, "failed"),
                          (waiting.id, "waiting")):
        t.call(f"{label}: get", lambda r=run_id: app.runs.get(r))  # type: ignore[misc]
        t.call(f"{label}: steps", lambda r=run_id: app.runs.steps(r))  # type: ignore[misc]
        t.call(f"{label}: attempts", lambda r=run_id: app.runs.attempts(r))  # type: ignore[misc]
        t.call(f"{label}: logs", lambda r=run_id: app.runs.logs(r))  # type: ignore[misc]
        t.call(f"{label}: timeline", lambda r=run_id: app.runs.timeline(r))  # type: ignore[misc]
    last_log = app.runs.logs(first.id)[-1].id
    t.call("logs after 0", lambda: app.runs.logs(first.id, after=0))
    t.call("logs after the last", lambda: app.runs.logs(first.id, after=last_log))
    for bad in (-1, True, "3"):
        t.call(f"logs after {bad!r}", lambda b=bad: app.runs.logs(first.id, after=b))
    t.call("logs limit 1", lambda: app.runs.logs(first.id, limit=1))
    t.call("logs after the first, limit 1", lambda: app.runs.logs(
        first.id, after=app.runs.logs(first.id)[0].id, limit=1))
    for bad in (0, 10_001, True, "3", 1.0):
        t.call(f"logs limit {bad!r}", lambda b=bad: app.runs.logs(first.id, limit=b))
    t.call("logs of a missing run, limit 1", lambda: app.runs.logs("run_missing", limit=1))
    t.call("logs last 2", lambda: app.runs.logs(first.id, last=2))
    t.call("logs last 2 after 0", lambda: app.runs.logs(first.id, last=2, after=0))
    t.call("logs last 2, limit 2", lambda: app.runs.logs(first.id, last=2, limit=2))
    for bad in (0, 10_001, True, "3", 1.0):
        t.call(f"logs last {bad!r}", lambda b=bad: app.runs.logs(first.id, last=b))
    t.call("cancel a completed run", lambda: app.runs.cancel(first.id))
    t.call("retry a completed run", lambda: app.runs.retry(first.id))
    t.call("cancel a failed run", lambda: app.runs.cancel(declined.id))
    t.call("queue info", lambda: app.queue(queue).info())
    t.call("dead letters", lambda: app.queue(queue).dead_letters())
    t.call("retry many: blank job", lambda: app.runs.retry_many(queue=queue, job=" "))
    t.call("retry dead letters: empty job", lambda: app.queue(queue).retry_dead_letters(job=""))
    t.call("not retried", lambda: app.runs.get(declined.id).status)
    t.call("retry dead letters", lambda: app.queue(queue).retry_dead_letters())
    t.call("retried", lambda: app.runs.get(declined.id))
    t.call("cancel retried", lambda: app.runs.cancel(declined.id, reason="refunded"))
    t.call("list", lambda: app.runs.list(job=job))

    # -- events resume a run --------------------------------------------------------------
    t.call("send", lambda: app.events.send(f"verified-{tag}", {"user": 1},
                                           correlation_key="user:1", idempotency_key=tag))
    t.call("send again", lambda: app.events.send(f"verified-{tag}", {"user": 1},
                                                 correlation_key="user:1", idempotency_key=tag))
    t.call("send conflicting", lambda: app.events.send(f"verified-{tag}", {"user": 2},
                                                       correlation_key="user:1",
                                                       idempotency_key=tag))
    run_until_idle(engine)
    t.call("resumed", lambda: app.runs.wait(waiting.id, timeout="5s"))
    t.call("events", lambda: app.events.list(name=f"verified-{tag}"))
    t.call("by correlation", lambda: app.runs.list(correlation_key="user:1", job=waiter))

    # -- listing by creation time and search ----------------------------------------------
    created = first.created_at
    t.call("created before", lambda: app.runs.list(job=job, created_before=created))
    t.call("created from", lambda: app.runs.list(
        job=job, created_after=created, created_before=created + timedelta(microseconds=1)))
    t.call("search key", lambda: app.runs.list(search=f"k-{tag}"))
    t.call("search id", lambda: app.runs.list(search=declined.id, status="cancelled"))

    # -- state and locks ------------------------------------------------------------------
    t.call("set", lambda: app.state.set(f"s-{tag}:a", {"n": [1, 2.5]}, ttl="1h"))
    t.call("increment", lambda: [app.state.increment(f"s-{tag}:n", 2) for _ in range(2)])
    t.call("keys", lambda: app.state.keys(prefix=f"s-{tag}:"))
    t.call("increment text", lambda: app.state.increment(f"s-{tag}:a"))
    t.call("delete", lambda: [app.state.delete(f"s-{tag}:a") for _ in range(2)])

    def lock_twice() -> Any:
        with app.state.lock(f"lock-{tag}"), app.state.lock(f"lock-{tag}", wait=0):
            return "both held"

    t.call("lock held", lock_twice)

    def lock_within_itself() -> Any:
        held = app.state.lock(f"lock-{tag}:again")
        with held, held:
            return "entered twice"

    t.call("lock entered in its own block", lock_within_itself)
    t.call("lock free", lambda: app.state.lock(f"lock-{tag}", wait=0).__enter__().key)

    def lock_overrun() -> Any:
        with app.state.lock(f"lock-{tag}:slow", ttl=0.05) as held:
            time.sleep(0.1)
        with app.state.lock(f"lock-{tag}:slow", ttl="1m") as kept:
            pass
        return held.lost, kept.lost

    t.call("lock overrun", lock_overrun)

    def taken_by_another(key: str) -> bool:
        try:
            with app.state.lock(key, wait=0):
                return True
        except LockNotAcquiredError:
            return False

    def lock_extended() -> Any:
        with app.state.lock(f"lock-{tag}:long", ttl=0.5) as held:
            extended = held.extend("1m")
            time.sleep(0.6)  # past the first TTL
            taken = taken_by_another(f"lock-{tag}:long")
        return extended, taken, held.lost

    def lock_extended_late() -> Any:
        with app.state.lock(f"lock-{tag}:late", ttl=0.05) as held:
            time.sleep(0.1)
            extended = held.extend()
            taken = taken_by_another(f"lock-{tag}:late")
        return extended, taken, held.lost

    def lock_extended_by(ttl: Any) -> Any:
        with app.state.lock(f"lock-{tag}:bad", ttl="1m") as held:
            return held.extend(ttl)

    t.call("lock extended", lock_extended)
    t.call("lock extended late", lock_extended_late)
    t.call("lock extended by 0", lambda: lock_extended_by(0))
    t.call("lock extended by 'soon'", lambda: lock_extended_by("soon"))
    t.call("lock extended outside its block",
           lambda: app.state.lock(f"lock-{tag}:bad").extend())

    def locks_seen_and_broken() -> Any:
        # "lock-<tag>" is still held by the "lock free" call, which never exited.
        with app.state.lock(f"lock-{tag}:stuck", ttl="1m") as stuck:
            listed = [{**e, "holder": e["holder"] == stuck.holder}
                      for e in app.state.locks(f"lock-{tag}")]
            broken = [app.state.break_lock(f"lock-{tag}:stuck") for _ in range(2)]
            extended = stuck.extend()
        return {"listed": listed, "broken": broken, "extended": extended, "lost": stuck.lost,
                "left": [e["key"] for e in app.state.locks(f"lock-{tag}")]}

    t.call("locks seen and broken", locks_seen_and_broken)
    t.call("locks: limit 0", lambda: app.state.locks(limit=0))
    t.call("break lock: empty key", lambda: app.state.break_lock(""))
    t.call("lock: key over the limit", lambda: app.state.lock("k" * 513))
    t.call("lock: NUL in the key", lambda: app.state.lock("k\x00"))

    # -- schedules ------------------------------------------------------------------------
    schedule = t.call("schedule", lambda: app.schedules.create(
        job, cron="0 9 * * 1", payload={"order": "weekly", "amount": 1},
        timezone="Europe/Paris", queue_name=queue))
    assert schedule is not None
    t.call("schedule paused", lambda: app.schedules.pause(schedule.id))
    t.call("schedule resumed", lambda: app.schedules.resume(schedule.id))
    t.call("schedules listed", lambda: [s for s in app.schedules.list() if s.job == job])
    t.call("schedule deleted", lambda: [app.schedules.delete(schedule.id) for _ in range(2)])
    t.call("schedule gone", lambda: app.schedules.get(schedule.id))
    return t.lines


def test_the_same_program_ends_the_same_embedded_and_remote(
    engine: StackShift, remote: StackShift, unique: Names
) -> None:
    embedded = scenario(engine, engine, unique("e"))
    through_server = scenario(remote, engine, unique("r"))
    labels = [label for label, _ in embedded]
    assert [label for label, _ in through_server] == labels
    assert len(set(labels)) == len(labels)
    for (label, mine), (_, theirs) in zip(through_server, embedded, strict=True):
        assert mine == theirs, label
    # The transcript holds what it claims to (so that the comparison can fail).
    outcomes = dict(embedded)
    assert outcomes["start conflicting"] == (
        "raised", "IdempotencyConflictError",
        "idempotency key 'k-<tag>' belongs to run <run 1> with a different job or payload",
        "<run 1>")
    assert outcomes["bad payload and attempts"][:2] == ("raised", "TypeError")
    assert outcomes["queue '..': pause"] is True
    assert outcomes["resumed"][1]["result"] == {"user": 1}
    assert outcomes["search key"][1][0][1]["id"] == "<run 1>"
    assert [run[1]["id"] for run in outcomes["created from"][1]] == ["<run 1>"]
    assert outcomes["created before"][1] == []
    assert outcomes["nothing written"] == [2, "unset", "scheduled"]
    assert outcomes["cancel with a blank reason"] == (
        "raised", "ValidationError",
        "reason must not be blank, got ' \\n ': leave it out for no reason", None)
    assert outcomes["start: queue="] == (
        "raised", "TypeError",
        "start() got an unexpected keyword argument 'queue'; did you mean 'queue_name'?", None)
    assert outcomes["state: ttl_seconds="][2] == (
        "state.set() got an unexpected keyword argument 'ttl_seconds'; did you mean 'ttl'?")
    unknown = [outcome for label, outcome in embedded if label.endswith("=")]
    assert len(unknown) == 7 and all(
        outcome[:2] == ("raised", "TypeError") and " got an unexpected keyword argument " in
        outcome[2] for outcome in unknown)
    name_hint = "is invalid: use 1-200 ASCII letters, digits, '.', '_', ':' or '-'"
    filters_refused = {
        "list: empty job and key": f"job name '' {name_hint}",
        "list: blank queue": f"queue name ' ' {name_hint}",
        "list: empty key": "idempotency_key must be a non-empty string, got ''",
        "list: empty correlation key": "correlation_key must be a non-empty string, got ''",
        "list: empty search": "search must be a non-empty string, got ''",
        "events: empty name": f"event name '' {name_hint}",
        "events: empty correlation key": "correlation_key must be a non-empty string, got ''",
        "dead letters: empty job": f"job name '' {name_hint}",
        "retry many: blank job": f"job name ' ' {name_hint}",
        "retry dead letters: empty job": f"job name '' {name_hint}",
    }
    for label, message in filters_refused.items():
        assert outcomes[label] == ("raised", "ValidationError", message, None), label
    assert [entry[1]["message"] for entry in outcomes["logs after 0"]] == ["charging o1"]
    assert outcomes["logs after the last"] == []
    for bad in ("-1", "True", "'3'"):
        assert outcomes[f"logs after {bad}"] == (
            "raised", "ValidationError", "after must be the id of a log record (a whole number"
            f" of 0 or more), got {bad}", None)
    assert outcomes["lock extended"] == [True, False, False]
    assert outcomes["lock extended late"] == [False, True, True]
    assert outcomes["lock extended by 0"] == (
        "raised", "ValidationError", "lock ttl must be more than 0", None)
    assert outcomes["lock extended outside its block"] == (
        "raised", "RuntimeError",
        "lock 'lock-<tag>:bad' is not held: extend() works only inside its with or async with "
        "block", None)
    assert outcomes["locks seen and broken"] == {
        "listed": [{"key": "lock-<tag>", "holder": True, "expires_at": "float"},
                   {"key": "lock-<tag>:stuck", "holder": True, "expires_at": "float"}],
        "broken": [True, False], "extended": False, "lost": True, "left": ["lock-<tag>"]}
    assert outcomes["lock: key over the limit"] == (
        "raised", "ValidationError", "state key is 513 characters, over the limit of 512", None)
    assert outcomes["lock: NUL in the key"] == (
        "raised", "ValidationError", "state key must not contain the NUL character (U+0000)",
        None)
    assert outcomes["locks: limit 0"] == (
        "raised", "ValidationError", "limit must be an integer from 1 to 1000, got 0", None)
    assert outcomes["not retried"] == "failed"
    assert outcomes["retried"][1]["status"] == "queued"  # by the retry without a filter
    assert datetime.now(UTC).year < 2099  # the scheduled run is still in the future
