"""The public calls keep their signatures for type checkers and IDEs while an
unknown keyword to them is explained (see ``stackshift.keywords``; the errors
themselves are tested through both clients in tests/server)."""

from __future__ import annotations

import inspect

from stackshift import AsyncStackShift, StackShift
from stackshift.client import Runs
from stackshift.state import AsyncState, State


def test_public_calls_keep_their_signatures_and_kinds() -> None:
    start = inspect.signature(StackShift.start)
    assert list(start.parameters)[:4] == ["self", "job", "payload", "queue_name"]
    assert not any(p.kind is p.VAR_KEYWORD for p in start.parameters.values())
    assert inspect.signature(AsyncStackShift.start).parameters.keys() == start.parameters.keys()
    assert list(inspect.signature(StackShift).parameters) == [
        "database_url", "api_key", "base_url", "clock", "settings", "migrate"]
    assert inspect.signature(AsyncStackShift).parameters == inspect.signature(
        StackShift).parameters
    assert "status" in inspect.signature(Runs.list).parameters
    assert "ttl" in inspect.signature(State.set).parameters
    assert StackShift.start.__doc__ and StackShift.start.__name__ == "start"
    assert inspect.iscoroutinefunction(AsyncStackShift.start)
    assert inspect.iscoroutinefunction(AsyncState.set)
    assert not inspect.iscoroutinefunction(StackShift.start)
