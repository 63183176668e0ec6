"""``ctx.step.idempotency_key()``: which key is made where, the same on every attempt.

Inside a step's function the key names that step (and its occurrence); in the
handler outside any step it names the handler's place among its steps (how
many it has taken), which is not the key the next step's function makes. The
keys are stored by other systems, so their values are pinned here.
"""

from __future__ import annotations

import hashlib
from typing import Any

from stackshift import JobContext, StackShift
from stackshift.testing import FakeClock, run_until_idle


def expected(run_id: str, place: str) -> str:
    digest = hashlib.sha256(f"{run_id}:{place}".encode()).hexdigest()[:16]
    return f"{run_id}-{digest}"


def test_keys_name_the_step_inside_it_and_the_place_among_steps_outside(
        fake_app: StackShift, clock: FakeClock) -> None:
    attempts: list[dict[str, Any]] = []

    @fake_app.job("charge", max_attempts=2, backoff={"base": "1s", "jitter": False})
    def charge(ctx: JobContext[Any]) -> None:
        keys: dict[str, Any] = {"start": ctx.step.idempotency_key()}
        attempts.append(keys)
        ctx.step.run("load", lambda: None)
        keys["before"] = ctx.step.idempotency_key()
        keys["before again"] = ctx.step.idempotency_key()
        keys["before, suffixed"] = ctx.step.idempotency_key("refund")

        def pay() -> None:
            keys["inside"] = ctx.step.idempotency_key()
            if len(attempts) == 1:  # the step fails: the next attempt runs it again
                raise RuntimeError("try again")

        ctx.step.run("charge", pay)
        keys["inside, suffixed"] = ctx.step.run(
            "charge", lambda: ctx.step.idempotency_key("refund"))
        keys["after"] = ctx.step.idempotency_key()

    run = fake_app.start("charge")
    run_until_idle(fake_app)
    clock.advance("1s")
    run_until_idle(fake_app)

    assert fake_app.runs.get(run.id).status == "completed"
    first, second = attempts
    assert second == {
        "start": expected(run.id, "after:0"),
        "before": expected(run.id, "after:1"),
        "before again": expected(run.id, "after:1"),
        "before, suffixed": expected(run.id, "after:1:refund"),
        "inside": expected(run.id, "charge"),
        "inside, suffixed": expected(run.id, "charge#2:refund"),
        "after": expected(run.id, "after:3"),
    }
    # Made just before the step "charge", the key is not the one made inside it.
    assert second["before"] != second["inside"]
    # The first attempt ended in the step "charge", whose function the second
    # attempt ran again: it made the same keys up to there.
    assert first == {k: v for k, v in second.items() if k in first}
    assert list(first) == ["start", "before", "before again", "before, suffixed", "inside"]
