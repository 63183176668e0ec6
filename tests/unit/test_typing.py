"""A user's app type-checks the way its handlers run: mypy (strict) on a small app.

``ctx: JobContext[Model]`` gives a sync handler ``ctx.payload`` as a ``Model``,
``ctx.step`` and the sync ``ctx.state``; ``ctx: AsyncJobContext[Model]`` gives an
``async def`` handler the awaitable ones. ``ctx.step.run(name, fn, *args)``
returns what ``fn`` returns (awaited, when ``fn`` is async) and checks ``args``
against ``fn``'s parameters. Each line marked ``# E: text`` must get one mypy
error whose message contains ``text``; no other line may get one. The guide's
example of typed handlers is checked in the same run and must get none, as must
the push-mode route built on an ``AsyncStackShift``, which server.md allows, and
the example shop of ``stackshift dev`` (examples/shop.py). The async client's
``job`` decorator keeps the handler's type, ``worker()`` gives a ``Worker``, and
its ``runs``, ``events``, ``queues``, ``schedules`` and ``queue(name)`` have the
sync methods' types, awaitable.
``wait_for_event`` gives an ``Event``, or ``Event | None`` with an ``on_timeout``
that may let the wait end without one.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest
from mypy import api

from docblocks import ROOT, python_blocks
from stackshift import asynctypes, client

APP = textwrap.dedent('''
    from __future__ import annotations

    from datetime import timedelta
    from typing import Any, assert_type

    from pydantic import BaseModel

    import stackshift
    from stackshift import AsyncJobContext, AsyncStackShift, Event, JobContext, StackShift
    from stackshift.models import Page, QueueInfo, Run, SentEvent, TimelineEntry

    app = StackShift()

    # The push-mode route takes a sync or an async remote client (server.md).
    remote = AsyncStackShift(api_key="ssk_...", base_url="http://jobs.internal:8000")
    stackshift.asgi_app(remote, url="https://app.example.com/stackshift/")
    stackshift.wsgi_app(remote, url="https://app.example.com/stackshift/")
    # ... or the client's own methods, as the route's options are the same.
    remote.asgi_app(url="https://app.example.com/stackshift/", concurrency=4)
    app.wsgi_app(secret="whsec_...")


    class Order(BaseModel):
        order_id: str


    def price(order_id: str, quantity: int) -> int:
        return quantity


    # Backoff takes durations as the backoff={...} dict does, and keeps seconds.
    assert_type(stackshift.Backoff(base="2s", cap=timedelta(minutes=5)).base, float)
    stackshift.Backoff(base=[2])  # E: Argument "base" to "Backoff" has incompatible type


    async def fetch(order_id: str, *, retries: int = 0) -> str:
        return order_id


    @app.job("syncHandler")
    def sync_handler(ctx: JobContext[Order]) -> dict[str, Any]:
        assert_type(ctx.payload, Order)
        assert_type(ctx.step.run("a", price, ctx.payload.order_id, 1), int)
        assert_type(ctx.step.run("b", fetch, "o_1", retries=2), str)
        assert_type(ctx.step.sleep("nap", "1s"), None)
        assert_type(ctx.step.wait_for_event("paid", timeout="1h"), Event)
        assert_type(ctx.step.wait_for_event("paid", on_timeout="continue"), Event | None)
        assert_type(ctx.step.wait_for_event("paid", on_timeout="cancel"), Event)
        assert_type(ctx.state.increment("visits"), int)
        ctx.step.run("c", price, "o_1", "one")  # E: No overload variant of "run" of "Steps"
        ctx.step.run("d", price, "o_1")  # E: No overload variant of "run" of "Steps"
        ctx.step.run("e", fetch, "o_1", retry=2)  # E: Unexpected keyword argument "retry"
        ctx.payload.id  # E: "Order" has no attribute "id"
        return {"ok": True}


    @app.job("asyncHandler")
    async def async_handler(ctx: AsyncJobContext[Order]) -> dict[str, Any]:
        assert_type(ctx.payload, Order)
        assert_type(await ctx.step.run("b", fetch, ctx.payload.order_id), str)
        assert_type(await ctx.step.run("a", price, "o_1", 2), int)
        assert_type(await ctx.step.sleep("nap", "1s"), None)
        assert_type(await ctx.step.wait_for_event("paid"), Event)
        assert_type(await ctx.step.wait_for_event("paid", on_timeout="continue"), Event | None)
        assert_type(await ctx.step.wait_for_event("paid", on_timeout="cancel"), Event)
        assert_type(await ctx.state.increment("visits"), int)
        await ctx.step.run("c", fetch, 42)  # E: No overload variant of "run" of "AsyncSteps"
        ctx.step.run("d", price, "o_1", 2).bit_length()  # E: has no attribute "bit_length"
        return {"ok": True}


    @app.job("asyncHandlerSyncContext")
    async def old_annotation(ctx: JobContext[Order]) -> None:
        # JobContext is the sync context: awaiting its step is flagged.
        await ctx.step.run("a", price, "o_1", 2)  # E: Incompatible types in "await"


    # The async client registers typed handlers and makes typed workers, as the sync one.
    @remote.job("onAsyncClient")
    async def on_async_client(ctx: AsyncJobContext[Order]) -> int:
        return len(ctx.payload.order_id)


    pending = on_async_client(42)  # E: Argument 1 to "on_async_client" has incompatible type "int"
    remote.worker().strat()  # E: "Worker" has no attribute "strat"
    app.worker(concurrency=2).stop(grace="1s")


    async def use_the_async_client() -> None:
        # runs, events, queues, schedules and queue(name): the sync methods, awaitable.
        run = await remote.start("onAsyncClient", {"order_id": "o_1"})
        assert_type(await remote.runs.get(run.id), Run)
        assert_type(await remote.runs.list(status="failed"), Page[Run])
        for listed in await remote.runs.list():
            listed.statuss  # E: "Run" has no attribute "statuss"
        assert_type((await remote.events.list()).items, list[Event])
        assert_type(await remote.queue("emails").dead_letters(), Page[Run])
        assert_type(await remote.runs.timeline(run.id), list[TimelineEntry])
        assert_type(await remote.events.send("paid", correlation_key="o_1"), SentEvent)
        assert_type(await remote.queues.list(), list[QueueInfo])
        assert_type(await remote.queue("emails").pause(), QueueInfo)
        assert_type(await remote.schedules.delete("sch_1"), bool)
        await remote.events.sned("paid")  # E: "AsyncEvents" has no attribute "sned"
        await remote.runs.cancel(run.id, reson="stop")  # E: Unexpected keyword argument "reson"
        remote.schedules.list().sort()  # E: has no attribute "sort"
''')

MARK = re.compile(r"#\s*E:\s*(?P<text>.+)$")
ERROR = re.compile(r"^(?:.*[/\\])?(?P<file>\w+\.py):(?P<line>\d+): error: (?P<message>.+)$")


def test_handler_context_types_steps_state_and_payload(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP, encoding="utf-8")
    [example] = [b for b in python_blocks()
                 if b.page == "docs/guide.md" and "AsyncJobContext[" in b.code]
    guide = tmp_path / "guide.py"
    guide.write_text(example.code, encoding="utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\nmypy_path = {ROOT / 'src'}\n", encoding="utf-8")
    expected = {("app.py", number): m.group("text").strip()
                for number, line in enumerate(APP.splitlines(), 1)
                if (m := MARK.search(line))}

    out, err, status = api.run([
        "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
        "--no-error-summary", "--hide-error-context", str(app), str(guide),
        str(ROOT / "examples" / "shop.py"),
    ])

    errors: dict[tuple[str, int], list[str]] = {}
    for line in out.splitlines():
        if ": note: " in line:  # the overloads mypy lists, "maybe you forgot to use await"
            continue
        found = ERROR.match(line)
        assert found, f"unexpected mypy output: {line}\n{out}{err}"
        where = (found.group("file"), int(found.group("line")))
        errors.setdefault(where, []).append(found.group("message"))
    assert sorted(errors) == sorted(expected), out + err
    for where, text in expected.items():
        assert len(errors[where]) == 1 and text in errors[where][0], (where, out)
    assert status == 1, out + err


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")}


@pytest.mark.parametrize(("declared", "sync"), [
    (asynctypes.AsyncRuns, client.Runs), (asynctypes.AsyncEvents, client.Events),
    (asynctypes.AsyncQueue, client.Queue), (asynctypes.AsyncQueues, client.Queues),
    (asynctypes.AsyncSchedules, client.Schedules),
], ids=lambda cls: cls.__name__)
def test_the_async_clients_declared_methods_are_the_sync_ones(declared: type,
                                                              sync: type) -> None:
    """What the type checker is told of ``AsyncStackShift.runs`` and the others
    (stackshift.asynctypes) keeps up with the sync classes whose methods they
    run: the same methods, parameters (names, kinds) and defaults."""
    theirs, ours = _methods(sync), _methods(declared)
    assert sorted(ours) == sorted(theirs)
    for name, signature in theirs.items():
        said = list(ours[name].parameters.values())
        real = list(signature.parameters.values())
        assert [(p.name, p.kind) for p in said] == [(p.name, p.kind) for p in real], name
        assert [p.default for p in said if p.default is not ...] == [
            p.default for p, q in zip(real, said, strict=True) if q.default is not ...], name
