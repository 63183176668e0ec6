"""A job definition or a handler that makes a mistake gets a clear, recorded
outcome: not a crash of its worker, not a silent loss, not a misleading record.

Each test runs on SQLite and PostgreSQL (the module's server and database), and
where a worker executes the runs, through an embedded worker on the database and
through a remote worker (in this process) of a real ``stackshift server`` on
127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from stackshift import Backoff, Run, StackShift, ValidationError
from stackshift.testing import run_until_idle

Names = Callable[[str], str]


class Executor:
    """Starts a run and executes it until it ends or waits for a retry: with an
    embedded worker on the database, or a remote worker through the server."""

    def __init__(self, app: StackShift, kind: str) -> None:
        self.app = app
        self.kind = kind

    def run(self, job: str, payload: Any = None, timeout: float = 30.0) -> Run:
        if self.kind == "embedded":
            run = self.app.start(job, payload)
            run_until_idle(self.app)
            return self.app.runs.get(run.id)
        with self.app.worker(concurrency=1):
            run = self.app.start(job, payload)
            deadline = time.monotonic() + timeout
            while True:
                current = self.app.runs.get(run.id)
                if current.status in ("retrying", "failed", "completed", "cancelled"):
                    return current
                assert time.monotonic() < deadline, f"run not ended after {timeout}s: {current}"
                time.sleep(0.05)


@pytest.fixture(params=["embedded", "remote"])
def executor(request: pytest.FixtureRequest, engine: StackShift) -> Executor:
    if request.param == "embedded":
        return Executor(engine, "embedded")
    return Executor(request.getfixturevalue("remote"), "remote")


# -- 1. backoff jitter is a bool --------------------------------------------------------------


NOT_A_BOOL = ["no", "false", "", None, 2, -1, 0.5, 1.0, [True]]


@pytest.mark.parametrize("jitter", NOT_A_BOOL, ids=repr)
def test_a_backoff_jitter_that_is_not_a_bool_is_refused_when_the_job_is_defined(
        client: StackShift, unique: Names, jitter: Any) -> None:
    """``bool("no")`` is true: a jitter that is not a bool would silently mean
    jitter. It is refused where the job is defined, however the backoff is given,
    naming the field and the value; the job is not registered."""
    def handler(ctx: Any) -> None:
        return None

    given: list[Callable[[str], Any]] = [
        lambda name: client.job(name, handler, backoff={"jitter": jitter}),
        lambda name: client.job(name, backoff={"base": "2s", "jitter": jitter})(handler),
        lambda name: client.job(name, handler, backoff=Backoff(jitter=jitter)),
        lambda name: Backoff.parse({"jitter": jitter}),
    ]
    for n, define in enumerate(given):
        name = unique(f"jittery{n}")
        with pytest.raises(ValidationError) as caught:
            define(name)
        assert str(caught.value) == f"backoff.jitter: expected True or False, got {jitter!r}"
        assert client._registry.get(name) is None


@pytest.mark.parametrize(("jitter", "means"), [(True, True), (False, False), (1, True),
                                               (0, False)])
def test_a_backoff_jitter_of_a_bool_or_0_or_1_is_taken(
        client: StackShift, unique: Names, jitter: Any, means: bool) -> None:
    name = unique("jitterOk")
    client.job(name, lambda ctx: None, backoff={"base": "10s", "jitter": jitter})
    job = client._registry.get(name)
    assert job is not None and job.backoff.jitter is means
    assert Backoff(jitter=jitter).jitter is means
    if not means:
        assert [job.backoff.delay(n) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]


@pytest.mark.parametrize(("backoff", "message"), [
    ({"factor": 0.5}, "backoff.factor: expected a number >= 1, got 0.5"),
    ({"jiter": False}, "backoff: unknown option(s) ['jiter']"),
    ("fast", "backoff: expected a Backoff or a dict, got 'fast'"),
])
def test_every_refused_backoff_is_a_validation_error(
        client: StackShift, unique: Names, backoff: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        client.job(unique("badBackoff"), lambda ctx: None, backoff=backoff)
    assert str(caught.value) == message
