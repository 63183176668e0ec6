"""What the tests of refused ``ctx.step`` and ``ctx.state`` calls share: a job whose
handler makes one call (or several, their errors raised together), and the run a
refusal leaves."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from stackshift import StackShift
from stackshift.models import Run


def not_retried(api: str) -> str:
    """The note a refused call's error carries in its traceback."""
    return (f"StackShift refused this {api} call's arguments: unless the handler catches"
            " this error, the run fails now without retrying")


def add_job(app: StackShift, name: str, flavour: str, api: str,
            body: Callable[[Any], Any]) -> None:
    """A job of three attempts whose handler (``flavour``: sync or async) calls
    ``body`` with ``ctx.step`` or ``ctx.state`` (``api``: "step" or "state")."""
    if flavour == "sync":
        @app.job(name, max_attempts=3)
        def handler(ctx):  # type: ignore[no-untyped-def]
            return body(getattr(ctx, api))
    else:
        @app.job(name, max_attempts=3)
        async def handler_async(ctx):  # type: ignore[no-untyped-def]
            value = body(getattr(ctx, api))
            return await value if inspect.isawaitable(value) else value


def failed_at_once(app: StackShift, run_id: str, api: str, error_type: str,
                   message: str) -> Run:
    """Assert the run failed on its first attempt with this error and the refusal's
    note, its timeline ending attempt.failed then run.failed; return it."""
    failed = app.runs.get(run_id)
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == (error_type, message)
    assert not_retried(f"ctx.{api}") in (failed.error.traceback or "")
    assert [e.kind for e in app.runs.timeline(run_id)][-2:] == ["attempt.failed", "run.failed"]
    return failed


def together(flavour: str, *calls: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A body making each call in turn and raising the errors of all of them
    together, in an ``ExceptionGroup``, as a handler gathering the errors of
    several calls does (awaiting each call when ``flavour`` is async)."""
    if flavour == "sync":
        def gather(api: Any) -> None:
            errors: list[Exception] = []
            for call in calls:
                try:
                    call(api)
                except Exception as exc:
                    errors.append(exc)
            raise ExceptionGroup("checks failed", errors)
        return gather

    async def gather_async(api: Any) -> None:
        errors: list[Exception] = []
        for call in calls:
            try:
                value = call(api)
                if inspect.isawaitable(value):
                    await value
            except Exception as exc:
                errors.append(exc)
        raise ExceptionGroup("checks failed", errors)
    return gather_async


def group_failed_at_once_mixed_retried(app: StackShift, api: str, refused_id: str,
                                       mixed_id: str, *refusals: str) -> Run:
    """Assert that the run whose group held refusals only (``refusals``: each as
    ``Type: message``) failed at once, its message naming them, and the run whose
    group also held another error is retrying; return the latter."""
    failed_at_once(app, refused_id, api, "ExceptionGroup",
                   "checks failed (2 sub-exceptions): " + "; ".join(refusals))
    retrying = app.runs.get(mixed_id)
    assert (retrying.status, retrying.attempt) == ("retrying", 1)
    return retrying
