"""``userOnboarding`` end to end: one event among a thousand waiting runs.

The async handler of SPEC 3 creates a user, sends a verification email and
waits up to a day for ``email.verified`` with the user's correlation key. A
thousand other users wait at the same time; an event for ``user:42`` must
resume exactly that run, and an event nobody waits for must resume nothing and
stay stored.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from stackshift import StackShift
from stackshift.testing import FakeClock, run_until_idle

OTHERS = 1000


def _pending(app: StackShift, status: str) -> set[str]:
    """Ids of every run in ``status``, across pages."""
    ids: set[str] = set()
    cursor = None
    while True:
        page = app.runs.list(status=status, job="userOnboarding", limit=1000, cursor=cursor)
        ids.update(r.id for r in page)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def test_user_onboarding_resumes_exactly_the_run_the_event_is_for(
    fake_app: StackShift, clock: FakeClock
) -> None:
    began = time.perf_counter()
    invocations: Counter[str] = Counter()
    effects: dict[str, Counter[str]] = {
        "create-user": Counter(), "send-verification-email": Counter(),
        "unlock-account": Counter(),
    }

    def create_user(user_id: str, email: str) -> dict[str, Any]:
        effects["create-user"][user_id] += 1
        return {"id": user_id, "email": email}

    def send_verification_email(email: str) -> dict[str, Any]:
        effects["send-verification-email"][email] += 1
        return {"queued": True}

    async def unlock_account(user_id: str) -> dict[str, Any]:
        effects["unlock-account"][user_id] += 1
        return {"unlocked": user_id}

    @fake_app.job("userOnboarding")
    async def user_onboarding(ctx: Any) -> dict[str, Any]:
        user_id = ctx.payload["userId"]
        invocations[user_id] += 1
        user = await ctx.step.run("create-user", create_user, user_id, ctx.payload["email"])
        await ctx.step.run("send-verification-email", send_verification_email, user["email"])
        event = await ctx.step.wait_for_event(
            "email.verified", correlation_key=f"user:{user_id}", timeout="24h",
            on_timeout="fail",
        )
        await ctx.step.run("unlock-account", unlock_account, event.payload["userId"])
        return {"onboarded": True, "event_id": event.id}

    others = [
        fake_app.start("userOnboarding", {"userId": f"u{i}", "email": f"u{i}@example.com"})
        for i in range(OTHERS)
    ]
    target = fake_app.start("userOnboarding", {"userId": "42", "email": "ada@example.com"})
    assert run_until_idle(fake_app, concurrency=200) == OTHERS + 1
    waiting = _pending(fake_app, "waiting")
    assert waiting == {r.id for r in others} | {target.id}
    shown = fake_app.runs.get(target.id).waiting_for
    assert shown is not None
    assert (shown.event_name, shown.correlation_key) == ("email.verified", "user:42")

    clock.advance("3h")
    sent = fake_app.events.send("email.verified", {"userId": "42"}, correlation_key="user:42")
    assert sent.duplicate is False
    assert sent.resumed_run_ids == [target.id]
    assert run_until_idle(fake_app, concurrency=200) == 1

    done = fake_app.runs.get(target.id)
    assert done.status == "completed"
    assert done.result == {"onboarded": True, "event_id": sent.id}
    assert invocations["42"] == 2  # before the wait, and after it
    assert effects["create-user"]["42"] == 1
    assert effects["send-verification-email"]["ada@example.com"] == 1
    assert effects["unlock-account"] == Counter({"42": 1})
    assert _pending(fake_app, "waiting") == {r.id for r in others}
    assert all(invocations[f"u{i}"] == 1 for i in range(OTHERS))

    stray = fake_app.events.send("email.verified", {"userId": "nobody"},
                                 correlation_key="user:nobody")
    assert stray.resumed_run_ids == []
    assert run_until_idle(fake_app, concurrency=200) == 0
    kept = fake_app.events.get(stray.id)
    assert (kept.name, kept.correlation_key, kept.payload) == (
        "email.verified", "user:nobody", {"userId": "nobody"})
    assert _pending(fake_app, "waiting") == {r.id for r in others}
    assert fake_app.runs.get(target.id).status == "completed"

    elapsed = time.perf_counter() - began
    print(f"userOnboarding with {OTHERS} waiting runs: {elapsed:.2f}s")
