"""Text the stores cannot hold the same way: the NUL character.

PostgreSQL text cannot contain U+0000, SQLite's can. Keys (idempotency,
correlation, concurrency, state keys, lock owners) are refused with a
``ValidationError`` on every store, before anything is written; payloads and
results are JSON, where NUL is escaped, so they round-trip; a log message with
NUL is kept with the character replaced, instead of failing the step that
logged it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stackshift import StackShift, ValidationError
from stackshift.testing import run_until_idle

REFUSED: dict[str, Callable[[StackShift], Any]] = {
    "idempotency key": lambda app: app.start("job", {}, idempotency_key="order\x00 1"),
    "concurrency key": lambda app: app.start("job", {}, concurrency_key="customer\x00"),
    "correlation key": lambda app: app.events.send("paid", {}, correlation_key="\x00"),
    "event idempotency key": lambda app: app.events.send("paid", {}, idempotency_key="a\x00"),
    "state key": lambda app: app.state.set("k\x00", 1),
    "state increment key": lambda app: app.state.increment("k\x00"),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_keys_with_a_nul_character_are_refused_on_every_store(
        fake_app: StackShift, what: str) -> None:
    with pytest.raises(ValidationError, match="NUL"):
        REFUSED[what](fake_app)
    assert fake_app.runs.list().items == []
    assert fake_app.events.list().items == []


def test_nul_in_payloads_results_and_logs_survives(fake_app: StackShift) -> None:
    @fake_app.job("echo")
    def echo(ctx: Any) -> Any:
        ctx.log.warning("odd input: %s", ctx.payload["text"])
        return ctx.step.run("copy", lambda: ctx.payload["text"] + "\x00!")

    run = fake_app.start("echo", {"text": "a\x00b"})
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert done.payload == {"text": "a\x00b"}
    assert done.result == "a\x00b\x00!"
    messages = [entry.message for entry in fake_app.runs.logs(run.id)]
    assert "odd input: a\ufffdb" in messages
