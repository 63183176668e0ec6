"""A job's and a worker's options are typed: mypy (strict) flags a misspelt or
ill-typed one where the program writes it, not only when the program runs.

``job(name, handler, ...)`` and ``@job(name, ...)``, on the sync and the async
client, take the options of :func:`stackshift.jobs.make_job`; ``worker(...)``
takes those of :class:`stackshift.worker.Worker`. Each line marked ``# E:
text`` must get a mypy error whose message contains ``text`` (a misspelt
option gets several: "did you mean", no overload matches, an untyped
decorator); no other line may get one, so the usages the docs show pass. At
runtime the options are checked against the function that takes them: a
misspelt one is refused with the one it was meant to be.
"""

from __future__ import annotations

import inspect
import re
import textwrap
import typing
from pathlib import Path

import pytest
from mypy import api

from docblocks import ROOT
from stackshift import AsyncStackShift, StackShift
from stackshift.client import JobOptions, WorkerOptions
from stackshift.jobs import make_job
from stackshift.worker import Worker

APP = textwrap.dedent('''
    from __future__ import annotations

    from datetime import timedelta
    from typing import Any, assert_type

    import stackshift
    from stackshift import (AsyncStackShift, AsyncState, AsyncSteps, Backoff, JobContext,
                            JobOptions, Lock, State, StackShift, Steps, Worker, WorkerOptions)
    from stackshift.push import AsgiRoute, WsgiRoute

    app = StackShift()
    remote = AsyncStackShift(api_key="ssk_...", base_url="http://jobs.internal:8000")


    def receipt(ctx: JobContext[Any]) -> int:
        return 1


    # As the guide and the examples write them.
    @app.job("sendReceipt", queue="emails", max_attempts=5, backoff={"base": "2s"},
             timeout="5m")
    def send_receipt(ctx: JobContext[Any]) -> dict[str, Any]:
        return {"sent": True}


    def handlers_keep_their_types(ctx: JobContext[Any]) -> None:
        assert_type(send_receipt(ctx), dict[str, Any])
        assert_type(app.job("receipt", receipt, queue="emails")(ctx), int)
        assert_type(app.job("later", queue="emails")(receipt)(ctx), int)


    app.job("nightly", receipt, cron="0 3 * * *", timezone="Europe/Paris", overlap="skip")
    zone: str | None = None
    app.job("nightly-here", receipt, cron="0 3 * * *", timezone=zone, overlap=None)
    app.job("every5m", receipt, cron="@every 5m", overlap="allow")
    app.job("charge", receipt, key_concurrency=1, on_failure="chargeFailed",
            backoff=Backoff(base="1s", cap=timedelta(minutes=5)), timeout=timedelta(seconds=30))
    app.job("poll", receipt, backoff={"base": 1, "factor": 3, "cap": "10m", "jitter": False},
            timeout=2.5, max_attempts=None, queue=None)
    remote.job("onRemote", receipt, queue="emails", max_attempts=3)
    defaults: JobOptions = {"queue": "emails", "max_attempts": 5}
    app.job("fromDict", receipt, **defaults)
    sized: WorkerOptions = {"concurrency": 4, "queues": ["emails"]}
    assert_type(app.worker(**sized), Worker)
    assert_type(app.worker(), Worker)
    app.worker(concurrency=10, lease="30s", poll_interval="1s", shutdown_grace="30s")
    app.worker(queues=["emails"], maintenance_interval=0.5, lease=timedelta(minutes=1))
    app.worker(queues=("emails", "default"), shutdown_grace=10)
    assert_type(remote.worker(concurrency=4, queues={"emails"}), Worker)
    assert_type(stackshift.asgi_app(remote, concurrency=5), AsgiRoute)
    assert_type(stackshift.wsgi_app(app, url=None, secret="whsec_..."), WsgiRoute)


    # The types the guide names, for helpers a handler calls.
    def charge_all(step: Steps, state: State) -> None:
        with state.lock("ledger") as held:
            assert_type(held, Lock)
        assert_type(step.run("total", sum, [1, 2]), int)


    async def charge_all_async(step: AsyncSteps, state: AsyncState) -> None: ...


    # The mistakes.
    @app.job("x", queu="q")  # E: Unexpected keyword argument "queu" for overloaded function "job"
    def misspelt(ctx: JobContext[Any]) -> None: ...


    @app.job("y", max_attempts="five")  # E: No overload variant of "job" of "StackShift"
    def ill_typed(ctx: JobContext[Any]) -> None: ...


    app.worker(concurency=2)  # E: Unexpected keyword argument "concurency" for "worker"
    app.job("z", receipt, queu="q")  # E: "job" of "StackShift"; did you mean "queue"?
    app.job("z", receipt, timeout=[5])  # E: No overload variant of "job" of "StackShift"
    app.job("z", receipt, backoff={"bse": 1})  # E: No overload variant of "job"
    app.job("z", receipt, overlap="sometimes")  # E: No overload variant of "job"
    app.worker(queues="emails")  # E: Argument "queues" to "worker" of "StackShift"
    app.worker(concurrency="2")  # E: Argument "concurrency" to "worker" of "StackShift"
    app.worker(lease=None)  # E: Argument "lease" to "worker" of "StackShift"
    remote.job("z", receipt, queu="q")  # E: for overloaded function "job" of "AsyncStackShift"


    @remote.job("w", max_attempts="five")  # E: No overload variant of "job" of "AsyncStackShift"
    def ill_typed_on_remote(ctx: JobContext[Any]) -> None: ...


    remote.worker(concurency=2)  # E: Unexpected keyword argument "concurency" for "worker"
    stackshift.asgi_app(remote, concurency=5)  # E: Unexpected keyword argument "concurency"
    wrong: JobOptions = {"queu": "q"}  # E: Extra key "queu" for TypedDict "JobOptions"
''')

MARK = re.compile(r"#\s*E:\s*(?P<text>.+)$")
ERROR = re.compile(r"^(?:.*[/\\])?(?P<file>\w+\.py):(?P<line>\d+): error: (?P<message>.+)$")


def test_misspelt_and_ill_typed_options_are_flagged_and_the_documented_ones_pass(
        tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP, encoding="utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\nmypy_path = {ROOT / 'src'}\n", encoding="utf-8")
    expected = {number: m.group("text").strip()
                for number, line in enumerate(APP.splitlines(), 1)
                if (m := MARK.search(line))}

    out, err, status = api.run([
        "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
        "--no-error-summary", "--hide-error-context", str(app),
    ])

    errors: dict[int, list[str]] = {}
    for line in out.splitlines():
        if ": note: " in line:  # the overloads mypy lists
            continue
        found = ERROR.match(line)
        assert found, f"unexpected mypy output: {line}\n{out}{err}"
        errors.setdefault(int(found.group("line")), []).append(found.group("message"))
    assert sorted(errors) == sorted(expected), out + err
    for number, text in expected.items():
        assert any(text in message for message in errors[number]), (number, out)
    assert status == 1, out + err


def _parameters(function: object, skip: int) -> list[str]:
    return list(inspect.signature(function).parameters)[skip:]  # type: ignore[arg-type]


def test_the_typed_options_are_those_make_job_and_worker_take() -> None:
    """The options the type checker is told of keep up with the functions that
    take them: the same names, in the same order."""
    assert list(JobOptions.__annotations__) == _parameters(make_job, skip=2)  # name, handler
    assert list(WorkerOptions.__annotations__) == _parameters(Worker, skip=1)  # app
    for client in (StackShift, AsyncStackShift):
        for overload in typing.get_overloads(client.job):
            assert str(inspect.signature(overload).parameters["options"]) \
                == "**options: 'Unpack[JobOptions]'"
        assert str(inspect.signature(client.worker).parameters["options"]) \
            == "**options: 'Unpack[WorkerOptions]'"


def test_misspelt_options_are_refused_at_runtime_with_the_one_meant(tmp_path: Path) -> None:
    app = StackShift(f"sqlite:///{tmp_path}/app.db")
    try:
        calls = [
            lambda: app.job("x", queu="q"),  # type: ignore[call-overload]
            lambda: app.job("x", lambda ctx: None, retries=3),  # type: ignore[call-overload]
            lambda: app.worker(concurency=2),  # type: ignore[call-arg]
        ]
        messages = []
        for call in calls:
            with pytest.raises(TypeError) as raised:
                call()
            messages.append(str(raised.value))
        assert messages == [
            "job() got an unexpected keyword argument 'queu'; did you mean 'queue'?",
            "job() got an unexpected keyword argument 'retries'; it takes queue, max_attempts,"
            " backoff, timeout, key_concurrency, on_failure, cron, timezone, overlap",
            "worker() got an unexpected keyword argument 'concurency'; did you mean"
            " 'concurrency'?",
        ]
        with pytest.raises(ValueError, match="max_attempts must be an integer from 1 to 1000"):
            app.job("y", max_attempts="five")(lambda ctx: None)  # type: ignore[call-overload]
        assert app.jobs == []
    finally:
        app.close()


MOUNTED = textwrap.dedent('''
    from fastapi import FastAPI
    from starlette.applications import Starlette

    import stackshift

    client = stackshift.StackShift(api_key="ssk_...", base_url="http://jobs.internal:8000")
    app = FastAPI()
    app.mount("/stackshift", client.asgi_app(url="https://shop.example.com/stackshift"))
    Starlette().mount("/jobs", stackshift.asgi_app(client, secret="whsec_..."))
''')


def test_a_handler_route_mounts_in_a_starlette_app_as_the_docs_show(tmp_path: Path) -> None:
    """The push route is an ASGI application to a type checker too: docs/server.md
    mounts it in a FastAPI app."""
    app = tmp_path / "mounted.py"
    app.write_text(MOUNTED, encoding="utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\nmypy_path = {ROOT / 'src'}\n", encoding="utf-8")
    out, err, status = api.run(["--config-file", str(config), "--cache-dir",
                                str(tmp_path / "cache"), str(app)])
    assert status == 0, out + err
