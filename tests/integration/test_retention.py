"""Retention on both stores: what expired is deleted, with everything recorded about
it, in batches, from worker maintenance; nothing else is touched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stackshift import StackShift
from stackshift.settings import Settings
from stackshift.testing import FakeClock, run_until_idle

CHILD_TABLES = ("steps", "attempts", "timeline", "logs", "waits", "event_consumptions")


def rows_of(app: StackShift, run_id: str) -> dict[str, int]:
    """Rows each table holds about ``run_id`` (the run itself under ``runs``)."""
    counts = {}
    with app._service.store.db.read() as tx:
        for table in ("runs", *CHILD_TABLES):
            column = "id" if table == "runs" else "run_id"
            [row] = tx.raw(f"SELECT COUNT(*) AS n FROM {table} WHERE {column} = :id",
                           {"id": run_id})
            counts[table] = int(row["n"])
    return counts


def count(app: StackShift, table: str) -> int:
    with app._service.store.db.read() as tx:
        return int(tx.raw(f"SELECT COUNT(*) AS n FROM {table}", {})[0]["n"])


@pytest.fixture
def kept(db_url: str, clock: FakeClock) -> Iterator[StackShift]:
    """A client keeping finished runs 7 days and deleting 3 rows per batch."""
    app = StackShift(db_url, clock=clock,
                     settings=Settings(run_retention=7 * 86400.0, retention_batch=3))

    @app.job("work")
    def work(ctx: Any) -> str:
        ctx.log.info("working on %s", ctx.payload)
        ctx.step.run("one", lambda: 1)
        if ctx.payload == "wait":
            ctx.step.wait_for_event("go", correlation_key="k", timeout="30d")
        if ctx.payload == "fail":
            raise RuntimeError("boom")
        return "done"

    yield app
    app.close()


def maintain_until_done(app: StackShift) -> None:
    worker = app.worker()
    for _ in range(20):
        worker.maintain()


def test_finished_runs_past_retention_go_with_everything_recorded_about_them(
        kept: StackShift, clock: FakeClock) -> None:
    old_done = kept.start("work", "old").id
    old_failed = kept.start("work", "fail", max_attempts=1).id
    old_cancelled = kept.start("work", "never", delay="1h").id
    kept.runs.cancel(old_cancelled)
    waiting = kept.start("work", "wait").id
    scheduled = kept.start("work", "later", delay="60d").id
    queued_for_nobody = kept.start("unknownJob").id
    run_until_idle(kept)
    kept.events.send("go", correlation_key="other")  # consumed by no run
    assert rows_of(kept, old_done)["steps"] == 1
    assert rows_of(kept, old_done)["logs"] >= 1
    assert rows_of(kept, waiting)["waits"] == 1
    clock.advance("6d")
    recent = kept.start("work", "recent").id
    run_until_idle(kept)
    clock.advance("1d1s")  # the old ones finished 7 days and a second ago
    maintain_until_done(kept)
    for run_id in (old_done, old_failed, old_cancelled):
        assert rows_of(kept, run_id) == dict.fromkeys(("runs", *CHILD_TABLES), 0), run_id
    assert rows_of(kept, recent)["runs"] == 1 and rows_of(kept, recent)["steps"] == 1
    # Unfinished runs are never touched, however old.
    assert [kept.runs.get(i).status for i in (waiting, scheduled, queued_for_nobody)] == [
        "waiting", "scheduled", "queued"]
    assert rows_of(kept, waiting)["waits"] == 1
    assert rows_of(kept, waiting)["timeline"] >= 3
    # ... and once it finishes, it ages like any other run.
    kept.events.send("go", correlation_key="k")
    run_until_idle(kept)
    assert kept.runs.get(waiting).status == "completed"
    clock.advance("7d1s")
    maintain_until_done(kept)
    assert rows_of(kept, waiting)["runs"] == 0
    assert kept.runs.get(scheduled).status in ("scheduled", "queued")


def test_clean_up_runs_in_batches_from_maintenance(kept: StackShift, clock: FakeClock) -> None:
    ids = [kept.start("work", n).id for n in range(8)]
    run_until_idle(kept)
    clock.advance("8d")
    worker = kept.worker()
    left = []
    for _ in range(4):
        worker.maintain()
        left.append(sum(rows_of(kept, i)["runs"] for i in ids))
    assert left == [5, 2, 0, 0]  # three per batch, again at once while batches are full


def test_a_run_whose_idempotency_key_is_live_is_kept_until_the_key_expires(
        kept: StackShift, clock: FakeClock) -> None:
    run = kept.start("work", "keyed", idempotency_key="order-1", idempotency_ttl="30d")
    run_until_idle(kept)
    clock.advance("10d")
    maintain_until_done(kept)
    again = kept.start("work", "keyed", idempotency_key="order-1")
    assert (again.id, again.created) == (run.id, False)  # still the same run
    clock.advance("21d")
    maintain_until_done(kept)
    assert rows_of(kept, run.id)["runs"] == 0
    fresh = kept.start("work", "keyed", idempotency_key="order-1")
    assert fresh.created and fresh.id != run.id


def test_expired_events_keys_and_state_go_and_live_ones_stay(
        db_url: str, clock: FakeClock) -> None:
    app = StackShift(db_url, clock=clock, settings=Settings(event_retention=86400.0,
                                                            retention_batch=2))
    try:
        for n in range(3):
            app.events.send("old", {"n": n}, idempotency_key=f"evt-{n}")
        app.state.set("short", 1, ttl="1h")
        app.state.set("forever", 2)
        app.state.increment("counter")
        app.start("unknownJob", idempotency_key="short-key", idempotency_ttl="2h")
        with app.state.lock("held", ttl="10m"):
            pass
        clock.advance("12h")
        fresh = app.events.send("fresh")
        app.state.set("long", 3, ttl="30d")
        lock = app.state.lock("still-held", ttl="1d")
        lock.__enter__()
        app.start("unknownJob", {"b": 1}, idempotency_key="long-key", idempotency_ttl="30d")
        clock.advance("13h")
        maintain_until_done(app)
        assert count(app, "events") == 1 and app.events.get(fresh.id).name == "fresh"
        with app._service.store.db.read() as tx:
            keys = sorted(r["key"] for r in tx.raw("SELECT key FROM idempotency_keys", {}))
            state = sorted(r["key"] for r in tx.raw("SELECT key FROM state", {}))
            locks = sorted(r["key"] for r in tx.raw("SELECT key FROM locks", {}))
        assert keys == ["long-key"]  # events' keys (24h) and the 2h run key went
        assert state == ["counter", "forever", "long"]
        assert locks == ["still-held"]
        assert app.state.get("forever") == 2 and app.state.get("short") is None
        # The run of an expired key stays (it is not finished); its key is free again.
        assert len(app.runs.list(idempotency_key="short-key").items) == 1
        assert app.start("unknownJob", {"x": 2}, idempotency_key="short-key").created
    finally:
        app.close()


def test_retention_can_be_turned_off(db_url: str, clock: FakeClock) -> None:
    app = StackShift(db_url, clock=clock, settings=Settings(run_retention=None))
    try:
        app.job("work", lambda ctx: "done")
        run = app.start("work")
        run_until_idle(app)
        clock.advance("400d")
        maintain_until_done(app)
        assert app.runs.get(run.id).status == "completed"
    finally:
        app.close()


def test_default_retention_is_thirty_days(fake_app: StackShift, clock: FakeClock) -> None:
    fake_app.job("work", lambda ctx: "done")
    run = fake_app.start("work")
    run_until_idle(fake_app)
    clock.advance("29d")
    maintain_until_done(fake_app)
    assert fake_app.runs.get(run.id).status == "completed"
    clock.advance("1d1s")
    maintain_until_done(fake_app)
    assert fake_app.runs.list(job="work").items == []
