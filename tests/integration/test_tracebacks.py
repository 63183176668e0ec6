"""Stored tracebacks show the user's frames: StackShift's own are left out."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

import stackshift
from stackshift import StackShift
from stackshift.durations import parse_duration
from stackshift.testing import run_until_idle
from stackshift.tracebacks import format_exception

#: Where StackShift's own files lie: no stored frame may name one of them.
PACKAGE = os.path.dirname(os.path.abspath(stackshift.__file__)) + os.sep


def frames(text: str) -> list[tuple[str, str]]:
    """The (file, function) of each frame a formatted traceback names, in order."""
    return re.findall(r'File "([^"]+)", line \d+, in (\S+)', text)


def functions(text: str) -> list[str]:
    found = frames(text)
    assert found and not [f for f, _ in found if f.startswith(PACKAGE)], text
    return [name for _, name in found]


def parse(text: str) -> int:
    return int(text)


async def parse_later(text: str) -> int:
    await asyncio.sleep(0)
    return int(text)


def test_a_failed_step_and_its_run_show_the_handler_and_the_function(
        fake_app: StackShift) -> None:
    @fake_app.job("importRow", max_attempts=1)
    def import_row(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("parse", parse, ctx.payload["qty"])

    run = fake_app.start("importRow", {"qty": "seven"})
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.traceback is not None
    # The handler's line calling the step, then the function's line that raised.
    assert functions(failed.error.traceback) == ["import_row", "parse"]
    assert failed.error.traceback.startswith("Traceback (most recent call last):\n")
    assert failed.error.traceback.endswith(
        "ValueError: invalid literal for int() with base 10: 'seven'\n")
    (step,) = fake_app.runs.steps(run.id)
    assert step.error is not None and step.error.traceback is not None
    assert functions(step.error.traceback) == ["parse"]


def test_chains_groups_and_logged_errors_leave_the_engine_out_of_each_part(
        fake_app: StackShift) -> None:
    @fake_app.job("wrapped", max_attempts=1)
    async def wrapped(ctx):  # type: ignore[no-untyped-def]
        try:
            await ctx.step.run("parse", parse_later, "x")
        except ValueError:
            ctx.log.exception("parse failed")
        try:
            await ctx.step.run("parse-again", int, "y")
        except ValueError as error:
            raise RuntimeError("row rejected") from error

    @fake_app.job("grouped", max_attempts=1)
    async def grouped(ctx):  # type: ignore[no-untyped-def]
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.step.run("a", parse_later, "a"))

    first = fake_app.start("wrapped")
    second = fake_app.start("grouped")
    run_until_idle(fake_app)

    (record,) = fake_app.runs.logs(first.id)
    assert record.message.startswith("parse failed\nTraceback (most recent call last):\n")
    assert functions(record.message) == ["wrapped", "parse_later"]
    error = fake_app.runs.get(first.id).error
    assert error is not None and error.traceback is not None
    cause, effect = error.traceback.split("The above exception was the direct cause")
    # int() has no frame of its own: the cause ends on the handler's call of the step.
    assert functions(cause) == ["wrapped"]
    assert "ValueError: invalid literal for int() with base 10: 'y'" in cause
    assert functions(effect) == ["wrapped"] and "RuntimeError: row rejected" in effect

    group = fake_app.runs.get(second.id).error
    assert group is not None and group.traceback is not None
    assert group.type == "ExceptionGroup"
    # The group's own frames (the handler, asyncio's TaskGroup), then the error it holds.
    assert functions(group.traceback) == ["grouped", "__aexit__", "parse_later"]


def test_a_refused_call_ends_on_the_users_line(fake_app: StackShift) -> None:
    @fake_app.job("napping", max_attempts=1)
    def napping(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap")

    run = fake_app.start("napping")
    run_until_idle(fake_app)
    error = fake_app.runs.get(run.id).error
    assert error is not None and error.traceback is not None
    assert functions(error.traceback) == ["napping"]
    assert 'ctx.step.sleep("nap")' in error.traceback
    assert "StackShift refused this ctx.step call's arguments" in error.traceback


def test_stackshift_tracebacks_full_keeps_every_frame(
        fake_app: StackShift, monkeypatch: pytest.MonkeyPatch) -> None:
    @fake_app.job("importRow", max_attempts=1)
    def import_row(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("parse", parse, "seven")

    monkeypatch.setenv("STACKSHIFT_TRACEBACKS", "full")
    run = fake_app.start("importRow")
    run_until_idle(fake_app)
    error = fake_app.runs.get(run.id).error
    assert error is not None and error.traceback is not None
    found = frames(error.traceback)
    # The executor calls the handler, ctx.step.run calls the function.
    assert [name for _, name in found if name in ("import_row", "parse")] == [
        "import_row", "parse"]
    ours = [f for f, _ in found if f.startswith(PACKAGE)]
    assert os.path.join(PACKAGE, "context.py") in ours and len(ours) >= 2


def test_an_error_raised_wholly_inside_stackshift_keeps_every_frame() -> None:
    try:
        parse_duration("soon", name="delay")
    except ValueError as error:
        raised = error
    # Without the test's own frame, every frame left is StackShift's: the
    # traceback is the one to report, so it is kept whole.
    assert raised.__traceback__ is not None
    raised.__traceback__ = raised.__traceback__.tb_next
    text = format_exception(raised)
    ours = frames(text)
    assert ours and all(f.startswith(PACKAGE) for f, _ in ours)
    assert ours[0] == (os.path.join(PACKAGE, "durations.py"), "parse_duration")
