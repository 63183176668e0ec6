"""Recurring schedules on both stores: one run per tick however many workers
maintain, pause and resume, last and next run and errors, the missed-tick
policy, the cron grammar, ``@job(cron=...)``, and the CLI and HTTP API."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from flow_app import worker_processes
from test_flow_control import server  # noqa: F401  (a fixture)

from stackshift import StackShift, ValidationError
from stackshift.cli.main import cli
from stackshift.errors import ScheduleNotFoundError
from stackshift.testing import FakeClock, run_until_idle

START = "2026-01-05T09:00:00Z"  # the fake clock's start (a Monday)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ticks_of(app: StackShift, schedule_id: str) -> list[str]:
    """The tick of every run the schedule started, from the runs' idempotency keys."""
    keys = [r.idempotency_key or "" for r in app.runs.list(limit=1000).items]
    prefix = f"schedule:{schedule_id}:"
    return sorted(k.removeprefix(prefix) for k in keys if k.startswith(prefix))


def maintain_together(workers: list[Any]) -> None:
    """One round of maintenance on every worker, all released at the same instant."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def maintain(worker: Any) -> None:
        try:
            barrier.wait()
            worker.maintain()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=maintain, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_each_tick_starts_one_run_with_three_workers_maintaining(
        db_url: str, clock: FakeClock) -> None:
    apps = [StackShift(db_url, clock=clock) for _ in range(3)]
    try:
        seen: list[Any] = []
        for app in apps:
            app.job("report", lambda ctx: seen.append(ctx.payload))
        schedule = apps[0].schedules.create("report", cron="*/5 * * * *", payload={"n": 1})
        assert schedule.next_run_at == at("2026-01-05T09:05:00Z")
        workers = [app.worker() for app in apps]
        for _ in range(4):
            clock.advance("5m")
            maintain_together(workers)
            run_until_idle(apps[1])
        assert ticks_of(apps[0], schedule.id) == [
            "2026-01-05T09:05:00Z", "2026-01-05T09:10:00Z", "2026-01-05T09:15:00Z",
            "2026-01-05T09:20:00Z"]
        assert seen == [{"n": 1}] * 4
        now = apps[2].schedules.get(schedule.id)
        assert now.last_run_at == at("2026-01-05T09:20:00Z")
        assert now.next_run_at == at("2026-01-05T09:25:00Z")
        assert now.last_run_status == "completed" and now.last_error is None
        assert apps[2].runs.get(now.last_run_id or "").payload == {"n": 1}
        assert now.missed_ticks == 0
    finally:
        for app in apps:
            app.close()


def test_one_run_per_tick_with_three_worker_processes(db_url: str, tmp_path: Path) -> None:
    """On the wall clock: '@every 1s' while three worker processes are up."""
    app = StackShift(db_url)
    try:
        with worker_processes(db_url, tmp_path / "spans.txt", 3, tmp_path):
            schedule = app.schedules.create("quick", cron="@every 1s")
            time.sleep(4.2)
            app.schedules.pause(schedule.id)
        ticks = ticks_of(app, schedule.id)
        assert len(ticks) == len(set(ticks)) >= 3
        seconds = [at(t).timestamp() for t in ticks]
        after = app.schedules.get(schedule.id)
        assert seconds[0] == int(after.created_at.timestamp()) + 1
        # Every tick either started its one run or, had maintenance fallen more
        # than a tick behind, was counted as missed.
        assert len(seconds) + after.missed_ticks == seconds[-1] - seconds[0] + 1
    finally:
        app.close()


def test_one_run_per_tick_with_two_worker_processes_and_a_server_maintaining(
        db_url: str, tmp_path: Path, server: tuple[str, str]) -> None:  # noqa: F811
    """On the wall clock: two worker processes and a ``stackshift server`` (which
    maintains too) are up while '@every 1s' ticks; each tick runs its job once."""
    url, key = server
    remote = StackShift(api_key=key, base_url=url)
    app = StackShift(db_url)
    record = tmp_path / "spans.txt"
    try:
        with worker_processes(db_url, record, 2, tmp_path):
            schedule = remote.schedules.create("quick", cron="@every 1s")
            time.sleep(5.2)
            app.schedules.pause(schedule.id)
            deadline = time.monotonic() + 20
            while app.runs.list(job="quick", status="queued").items or app.runs.list(
                    job="quick", status="running").items:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        ticks = ticks_of(app, schedule.id)
        assert len(ticks) == len(set(ticks)) >= 4
        seconds = [at(t).timestamp() for t in ticks]
        after = app.schedules.get(schedule.id)
        assert len(seconds) + after.missed_ticks == seconds[-1] - seconds[0] + 1
        # The handlers' side: one execution per tick's run.
        executed = [line.split()[2] for line in record.read_text().splitlines()]
        assert sorted(executed) == sorted(
            r.id for r in app.runs.list(job="quick", limit=1000).items)
        assert len(executed) == len(ticks)
    finally:
        app.close()
        remote.close()


def test_a_worker_starting_after_missed_ticks_runs_one_not_a_backlog(
        db_url: str, tmp_path: Path) -> None:
    """On the wall clock: '@every 1s' ticks for about 3 s with no worker up; the
    worker that then starts runs the latest tick once, counts the others as
    missed, and goes on with the next ticks."""
    app = StackShift(db_url)
    try:
        schedule = app.schedules.create("quick", cron="@every 1s")
        first = schedule.next_run_at
        assert first is not None
        time.sleep(3.5)
        with worker_processes(db_url, tmp_path / "spans.txt", 1, tmp_path):
            started = time.time()
            while not ticks_of(app, schedule.id):
                assert time.time() - started < 20
                time.sleep(0.05)
            time.sleep(1.6)
            app.schedules.pause(schedule.id)
        ticks = [at(t).timestamp() for t in ticks_of(app, schedule.id)]
        # The first run is for the latest tick before the worker came, not the first.
        assert ticks[0] >= first.timestamp() + 2
        assert len(ticks) >= 2 and ticks == sorted(set(ticks))
        # Every tick from the first either started its one run or was counted missed.
        missed = app.schedules.get(schedule.id).missed_ticks
        assert missed >= 2 and len(ticks) + missed == ticks[-1] - first.timestamp() + 1
    finally:
        app.close()


def test_a_schedule_kept_up_to_date_fires_on_time_while_others_catch_up(
        fake_app: StackShift, clock: FakeClock) -> None:
    """Schedules forty days behind (their missed ticks counted one by one, each a
    good part of the maintenance round's budget) do not hold up one that came due
    just now: it fires in the round it is due, with no tick missed."""
    fake_app.job("tick", lambda ctx: None)
    behind = [fake_app.schedules.create("tick", cron="* * * * 1-5", timezone="Europe/Paris")
              for _ in range(10)]
    clock.advance("40d")
    fresh = fake_app.schedules.create("tick", cron="@every 5s")
    clock.advance("5s")
    started = fake_app._service.fire_schedules(clock.now())  # one maintenance round
    assert started and ticks_of(fake_app, fresh.id) == ["2026-02-14T09:00:05Z"]
    assert fake_app.schedules.get(fresh.id).missed_ticks == 0
    run_until_idle(fake_app)  # the others catch up over the next rounds
    for schedule in behind:
        caught_up = fake_app.schedules.get(schedule.id)
        assert len(ticks_of(fake_app, schedule.id)) == 1
        assert caught_up.missed_ticks == 10_000  # the most counted


def test_a_paused_schedule_starts_nothing_and_resumes_from_now(
        fake_app: StackShift, clock: FakeClock) -> None:
    fake_app.job("tick", lambda ctx: None)
    schedule = fake_app.schedules.create("tick", cron="@hourly")
    paused = fake_app.schedules.pause(schedule.id)
    assert paused.paused and paused.next_run_at is None
    clock.advance("3h")
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id) == []
    resumed = fake_app.schedules.resume(schedule.id)
    assert resumed.next_run_at == at("2026-01-05T13:00:00Z")  # not the ticks passed
    clock.advance("1h")
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id) == ["2026-01-05T13:00:00Z"]
    assert fake_app.schedules.get(schedule.id).missed_ticks == 0


def test_deleting_a_schedule_keeps_the_run_its_tick_already_queued(
        fake_app: StackShift, clock: FakeClock) -> None:
    ran: list[Any] = []
    fake_app.job("tick", lambda ctx: ran.append(ctx.payload))
    schedule = fake_app.schedules.create("tick", cron="@hourly", payload={"n": 7})
    clock.advance("1h")
    fake_app.worker().maintain()  # the tick fires; nothing executes yet
    [queued] = fake_app.runs.list(job="tick").items
    assert queued.status == "queued"
    assert fake_app.schedules.delete(schedule.id) is True
    run_until_idle(fake_app)
    assert fake_app.runs.get(queued.id).status == "completed" and ran == [{"n": 7}]
    clock.advance("1h")
    run_until_idle(fake_app)
    assert ran == [{"n": 7}]  # no tick after the delete


def test_ticks_missed_while_everything_was_down_run_once(fake_app: StackShift,
                                                         clock: FakeClock) -> None:
    """The documented policy: the most recent missed tick runs once, the rest are skipped."""
    fake_app.job("hourly", lambda ctx: None)
    schedule = fake_app.schedules.create("hourly", cron="0 * * * *")
    clock.advance("5h30m")  # nothing maintains meanwhile: 10:00 ... 14:00 pass
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id) == ["2026-01-05T14:00:00Z"]
    after = fake_app.schedules.get(schedule.id)
    assert after.missed_ticks == 4
    assert after.last_run_at == at("2026-01-05T14:00:00Z")
    assert after.next_run_at == at("2026-01-05T15:00:00Z")
    clock.advance("30m")
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id)[-1] == "2026-01-05T15:00:00Z"


@pytest.mark.parametrize(("gap", "missed", "latest", "next_at"), [
    # 2 days of a minutely schedule: 09:01 on the 5th ... 08:59 on the 7th skipped.
    ("2d30s", 2879, "2026-01-07T09:00:00Z", "2026-01-07T09:01:00Z"),
    # 30 days: far more ticks than are counted; the count stops at the cap.
    ("30d30s", 10_000, "2026-02-04T09:00:00Z", "2026-02-04T09:01:00Z"),
])
def test_a_minutely_schedule_catches_up_a_long_outage_with_one_run(
        fake_app: StackShift, clock: FakeClock, gap: str, missed: int, latest: str,
        next_at: str) -> None:
    """After days with nothing maintaining, a minutely schedule starts one run, for
    the latest due minute; the minutes before are counted as missed (up to 10,000)
    and the next tick is the next minute."""
    fake_app.job("minutely", lambda ctx: None)
    schedule = fake_app.schedules.create("minutely", cron="* * * * *")
    assert schedule.next_run_at == at("2026-01-05T09:01:00Z")
    clock.advance(gap)
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id) == [latest]
    after = fake_app.schedules.get(schedule.id)
    assert after.missed_ticks == missed
    assert after.last_run_at == at(latest)
    assert after.next_run_at == at(next_at)
    assert after.last_run_status == "completed" and after.last_error is None
    clock.advance("1m")
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id) == [latest, next_at]
    assert fake_app.schedules.get(schedule.id).missed_ticks == missed


def test_last_run_and_errors_are_visible(fake_app: StackShift, clock: FakeClock) -> None:
    from stackshift import NonRetriableError

    @fake_app.job("brittle")
    def brittle(ctx: Any) -> None:
        raise NonRetriableError("disk full")

    schedule = fake_app.schedules.create("brittle", cron="@daily", payload=[1, 2])
    clock.advance("1d")
    run_until_idle(fake_app)
    seen = fake_app.schedules.get(schedule.id)
    assert seen.last_run_status == "failed"
    assert seen.last_error is not None and seen.last_error.message == "disk full"
    # A tick that cannot start its run says why, and the schedule moves on.
    next_key = f"schedule:{schedule.id}:2026-01-07T00:00:00Z"
    fake_app.start("brittle", ["not", "the", "payload"], idempotency_key=next_key,
                   idempotency_ttl="3d")
    clock.advance("1d")
    run_until_idle(fake_app)
    seen = fake_app.schedules.get(schedule.id)
    assert seen.last_error is not None
    assert seen.last_error.type == "IdempotencyConflictError"
    assert seen.next_run_at == at("2026-01-08T00:00:00Z")
    [listed] = [s for s in fake_app.schedules.list() if s.id == schedule.id]
    assert listed.last_error == seen.last_error


@pytest.mark.parametrize(("cron", "timezone", "first"), [
    ("@hourly", "UTC", "2026-01-05T10:00:00Z"),
    ("@daily", "UTC", "2026-01-06T00:00:00Z"),
    ("@midnight", "UTC", "2026-01-06T00:00:00Z"),
    ("@weekly", "UTC", "2026-01-11T00:00:00Z"),
    ("@monthly", "UTC", "2026-02-01T00:00:00Z"),
    ("@yearly", "UTC", "2027-01-01T00:00:00Z"),
    ("@every 90s", "UTC", "2026-01-05T09:01:30Z"),
    ("@every 1h30m", "UTC", "2026-01-05T10:30:00Z"),
    ("30 8 * * 1-5", "UTC", "2026-01-06T08:30:00Z"),
    ("0 9 * * *", "Europe/Paris", "2026-01-06T08:00:00Z"),
    ("0 9 * * *", "America/New_York", "2026-01-05T14:00:00Z"),
])
def test_cron_grammar(fake_app: StackShift, cron: str, timezone: str, first: str) -> None:
    schedule = fake_app.schedules.create("anything", cron=cron, timezone=timezone)
    assert schedule.next_run_at == at(first)


def test_daylight_saving_changes_follow_debian_cron(fake_app: StackShift,
                                                   clock: FakeClock) -> None:
    """New York, 2026: 02:30 does not exist on March 8 and 01:00-02:00 happens twice
    on November 1. A fixed time of day fires once each day; an expression whose
    minute or hour is a wildcard follows the clock through both passes."""
    fake_app.job("tick", lambda ctx: None)

    def fired(cron: str, start: str, end: str) -> list[str]:
        clock.set(start)
        schedule = fake_app.schedules.create("tick", cron=cron, timezone="America/New_York")
        while clock.now() < at(end).timestamp():
            clock.advance("5m")
            run_until_idle(fake_app)
        fake_app.schedules.delete(schedule.id)
        return ticks_of(fake_app, schedule.id)

    # Spring forward: the missing 02:30 fires at 03:00 EDT, the first minute that exists.
    assert fired("30 2 * * *", "2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z") == [
        "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
    # Fall back: 01:30 happens twice and fires once, at its first pass (EDT).
    assert fired("30 1 * * *", "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z") == [
        "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
    # Wildcard hour: every 30 minutes of real time, in both passes of 01:00-02:00.
    assert fired("*/30 * * * *", "2026-11-01T04:45:00Z", "2026-11-01T07:15:00Z") == [
        "2026-11-01T05:00:00Z", "2026-11-01T05:30:00Z", "2026-11-01T06:00:00Z",
        "2026-11-01T06:30:00Z", "2026-11-01T07:00:00Z"]


def test_an_outage_ending_in_the_repeated_hour_runs_that_days_tick(
        fake_app: StackShift, clock: FakeClock) -> None:
    """Nothing maintains from Saturday until 01:13 EST on Sunday 1 November 2026,
    in the second pass of New York's repeated hour: Sunday's 01:30 (its first
    pass, EDT) has passed, so that tick runs, once, and Saturday's is counted as
    missed."""
    fake_app.job("tick", lambda ctx: None)
    clock.set("2026-10-31T00:00:00Z")
    schedule = fake_app.schedules.create("tick", cron="30 1 * * *",
                                         timezone="America/New_York")
    assert schedule.next_run_at == at("2026-10-31T05:30:00Z")
    clock.set("2026-11-01T06:13:00Z")
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id) == ["2026-11-01T05:30:00Z"]
    after = fake_app.schedules.get(schedule.id)
    assert after.last_run_at == at("2026-11-01T05:30:00Z")
    assert after.missed_ticks == 1
    assert after.next_run_at == at("2026-11-02T06:30:00Z")
    clock.set("2026-11-01T07:00:00Z")  # 02:00 EST: past the second 01:30, no run
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id) == ["2026-11-01T05:30:00Z"]


def test_minutes_of_a_repeated_hour_are_created_and_caught_up_in_its_second_pass(
        fake_app: StackShift, clock: FakeClock) -> None:
    """Every five minutes of 01:00 in New York, which happens twice on Sunday 1
    November 2026: the minutes fire in the first pass (EDT). Created in the
    second pass (EST), the schedule's next run is the next day's 01:00; a
    schedule that nothing maintained through the first pass runs its last
    minute, 01:55 EDT, once, and goes on to the next day, not to an error."""
    fake_app.job("tick", lambda ctx: None)
    cron = ",".join(str(m) for m in range(0, 60, 5)) + " 1 * * *"
    clock.set("2026-10-31T12:00:00Z")
    waiting = fake_app.schedules.create("tick", cron=cron, timezone="America/New_York")
    assert waiting.next_run_at == at("2026-11-01T05:00:00Z")
    clock.set("2026-11-01T06:02:00Z")  # 01:02 EST
    made = fake_app.schedules.create("tick", cron=cron, timezone="America/New_York")
    assert made.next_run_at == at("2026-11-02T06:00:00Z")
    run_until_idle(fake_app)
    caught_up = fake_app.schedules.get(waiting.id)
    assert caught_up.last_error is None
    assert ticks_of(fake_app, waiting.id) == ["2026-11-01T05:55:00Z"]
    assert (caught_up.missed_ticks, caught_up.next_run_at) == (11, at("2026-11-02T06:00:00Z"))
    clock.set("2026-11-02T06:00:30Z")
    run_until_idle(fake_app)
    assert ticks_of(fake_app, waiting.id)[-1] == "2026-11-02T06:00:00Z"
    assert ticks_of(fake_app, made.id) == ["2026-11-02T06:00:00Z"]


def test_a_schedule_whose_zone_this_host_lacks_says_why_and_is_tried_again(
        fake_app: StackShift, clock: FakeClock) -> None:
    """A zone another host's time zone database has and this one's does not: the
    tick records why it could not start a run, and the schedule is tried again a
    minute later rather than stopping for good."""
    fake_app.job("tick", lambda ctx: None)
    schedule = fake_app.schedules.create("tick", cron="@hourly", timezone="Europe/Paris")
    with fake_app._service.store.db.write() as tx:
        tx.raw("UPDATE schedules SET timezone = 'Mars/Olympus' WHERE id = :id RETURNING id",
               {"id": schedule.id})
    clock.advance("1h")
    run_until_idle(fake_app)
    unread = fake_app.schedules.get(schedule.id)
    assert unread.last_error is not None
    assert "unknown timezone 'Mars/Olympus'" in unread.last_error.message
    assert not unread.paused and unread.next_run_at is not None
    assert unread.next_run_at.timestamp() == clock.now() + 60
    assert ticks_of(fake_app, schedule.id) == []
    clock.advance("1m")  # tried again, still unread: no tick fired, none is said to have
    run_until_idle(fake_app)
    again = fake_app.schedules.get(schedule.id)
    assert again.last_error is not None and again.next_run_at.timestamp() == clock.now() + 60
    assert (again.last_run_at, again.last_run_id) == (None, None)
    with fake_app._service.store.db.write() as tx:  # the host's database brought up to date
        tx.raw("UPDATE schedules SET timezone = 'Europe/Paris' WHERE id = :id RETURNING id",
               {"id": schedule.id})
    clock.advance("1m")
    run_until_idle(fake_app)
    # Read at last, it goes on from its next tick: the one it could not read
    # started nothing.
    read = fake_app.schedules.get(schedule.id)
    assert (read.last_error, read.next_run_at) == (None, at("2026-01-05T11:00:00Z"))
    assert ticks_of(fake_app, schedule.id) == []
    clock.advance("59m")
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id) == ["2026-01-05T11:00:00Z"]
    assert fake_app.schedules.get(schedule.id).missed_ticks == 0


@pytest.mark.parametrize(("cron", "message"), [
    ("* * * *", "expected 5 fields"),
    ("0 0 * * * *", "expected 5 fields"),
    ("61 * * * *", "the minute field '61' is not valid"),
    ("0 25 * * *", "the hour field '25' is not valid"),
    ("0 0 31 2 *", "the day-of-month field '31' is not valid"),
    ("@fortnightly", "unknown descriptor"),
    ("@every", "needs a duration"),
    ("@every soon", "not a duration"),
    ("@every 0s", "at least 1s"),
    ("", "non-empty"),
])
def test_bad_cron_expressions_are_refused_with_a_clear_error(
        fake_app: StackShift, cron: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        fake_app.schedules.create("anything", cron=cron)
    with pytest.raises(ValidationError, match=message):
        fake_app.job(f"bad-{abs(hash(cron))}", lambda ctx: None, cron=cron)
    assert fake_app.schedules.list() == []


BAD_SCHEDULES = [
    ({"cron": "61 * * * *"}, "the minute field '61' is not valid (minute: 0-59)"),
    ({"cron": "0 0 30 2 *"}, "the day-of-month field '30' is not valid"),
    ({"cron": "* * *"}, "expected 5 fields (minute hour day-of-month month day-of-week), got 3"),
    ({"cron": "0 * * * * *"}, "expected 5 fields (minute hour day-of-month month day-of-week), "
                              "got 6"),
    ({"cron": "@every 0s"}, "@every needs at least 1s"),
    ({"cron": "@every -5m"}, "'-5m' must be a finite, non-negative duration"),
    ({"cron": "@every 100y"}, "'100y' is not a duration"),
    ({"cron": "@every 36600d"}, "'36600d' is longer than 100 years"),
    ({"cron": "@daily", "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
    # The host's own setting, which some hosts keep beside the zones: not an IANA name.
    ({"cron": "@daily", "timezone": "localtime"},
     "unknown timezone 'localtime': use an IANA name such as 'UTC' or 'Europe/Paris'"),
    # Each tick parses the expression again: a long one would cost every tick.
    ({"cron": "0 9 * * " + ",".join(["1-5"] * 50)},
     "cron expression is 207 characters long; at most 200 are taken"),
    ({"cron": "@daily", "timezone": "Europe/" + "x" * 300},
     "timezone is 307 characters long; at most 200 are taken"),
]


def test_bad_schedules_are_refused_alike_by_the_sdk_the_cli_and_the_http_api(
        db_url: str, server: tuple[str, str]) -> None:  # noqa: F811
    """Each says what is wrong in the same words (a ValidationError, exit code 2,
    HTTP 422), and no schedule is written."""
    url, key = server
    app = StackShift(db_url)
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    runner = CliRunner()
    try:
        for options, message in BAD_SCHEDULES:
            with pytest.raises(ValidationError) as refused:
                app.schedules.create("report", **options)
            assert message in str(refused.value), (options, str(refused.value))
            args = ["schedules", "create", "report", "--cron", options["cron"]]
            if "timezone" in options:
                args += ["--timezone", options["timezone"]]
            result = runner.invoke(cli, args, env={"STACKSHIFT_DATABASE_URL": db_url})
            assert result.exit_code == 2 and message in result.output, (args, result.output)
            response = http.post("/v1/schedules", json={"job": "report", **options})
            assert response.status_code == 422, response.text
            assert message in response.json()["error"]["message"], response.text
        assert app.schedules.list() == []
    finally:
        http.close()
        app.close()


def test_bad_timezone_is_refused(fake_app: StackShift) -> None:
    with pytest.raises(ValidationError, match="unknown timezone"):
        fake_app.schedules.create("anything", cron="@daily", timezone="Mars/Olympus")
    for options in ({"cron": "@daily"}, {}):  # without a cron too: not only once one is added
        with pytest.raises(ValidationError, match="unknown timezone 'Mars/Olympus'"):
            fake_app.job("anything", lambda ctx: None, timezone="Mars/Olympus", **options)
    assert fake_app.jobs == [] and fake_app.schedules.list() == []


@pytest.mark.parametrize(("zone", "said"), [
    ("Paris", "did you mean 'Europe/Paris'?"),
    ("new york", "did you mean 'America/New_York'?"),
    ("europe/paris", "did you mean 'Europe/Paris'?"),
    ("utc", "did you mean 'UTC'?"),
    ("Buenos Aires", "did you mean 'America/Argentina/Buenos_Aires' or 'America/Buenos_Aires'?"),
    ("Mars", "use an IANA name such as 'UTC' or 'Europe/Paris'"),
    ("localtime", "use an IANA name such as 'UTC' or 'Europe/Paris'"),
    # A host's file (a link to America/New_York here) that the tzdata package lacks.
    ("posixrules", "use an IANA name such as 'UTC' or 'Europe/Paris'"),
    # Copies some hosts keep beside the zones (right/ ones misread by an hour here).
    ("right/Europe/Paris", "zones under right/ are copies only some hosts hold; use"
                           " 'Europe/Paris'"),
    ("posix/UTC", "zones under posix/ are copies only some hosts hold; use 'UTC'"),
])
def test_a_city_or_a_zone_in_other_case_is_refused_naming_the_zone(
        fake_app: StackShift, zone: str, said: str) -> None:
    with pytest.raises(ValidationError) as refused:
        fake_app.schedules.create("report", cron="@daily", timezone=zone)
    assert str(refused.value) == f"unknown timezone {zone!r}: {said}"
    assert fake_app.schedules.list() == []


WITHOUT_SYSTEM_ZONES = """
import json, sys
from stackshift import StackShift
app = StackShift(sys.argv[1])
try:
    app.job("cleanup", lambda ctx: None, cron="0 3 * * *")
    made = app.schedules.create("report", cron="30 2 * * *", timezone="Europe/Paris")
    app.worker().run_until_idle()
    print(json.dumps({"created": made.created_at.timestamp(), "next": made.next_run_at.timestamp(),
                      "ids": sorted(s.id for s in app.schedules.list())}))
finally:
    app.close()
"""


def test_schedules_work_on_a_machine_without_a_system_time_zone_database(db_url: str) -> None:
    """Where the system has no IANA time zone database (Windows, a slim container:
    here PYTHONTZPATH is emptied), zones come from the tzdata package StackShift
    depends on: a schedule in Europe/Paris and a job's cron (UTC) are created and
    fire as they do with the system's database."""
    import os
    import subprocess
    import sys

    from stackshift.engine.cron import parse_cron

    done = subprocess.run([sys.executable, "-c", WITHOUT_SYSTEM_ZONES, db_url],
                          env={**os.environ, "PYTHONTZPATH": ""}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    paris = parse_cron("30 2 * * *", "Europe/Paris")
    assert seen["next"] == paris.next_after(seen["created"])
    assert seen["ids"][0] == "job:cleanup" and len(seen["ids"]) == 2


def test_job_cron_schedules_are_kept_in_sync_by_workers(db_url: str, clock: FakeClock) -> None:
    first = StackShift(db_url, clock=clock)
    ran: list[str] = []
    try:
        first.job("cleanup", lambda ctx: ran.append("v1"), cron="0 3 * * *", queue="maint")
        run_until_idle(first)
        [schedule] = first.schedules.list()
        assert (schedule.id, schedule.source, schedule.cron, schedule.queue) == (
            "job:cleanup", "code", "0 3 * * *", "maint")
        first.schedules.pause("job:cleanup")
        clock.advance("1d")
        run_until_idle(first)
        assert ran == []
        first.schedules.resume("job:cleanup")
        clock.advance("1d")
        run_until_idle(first)
        assert ran == ["v1"]
        assert first.runs.get(first.schedules.get("job:cleanup").last_run_id or "").queue == \
            "maint"
    finally:
        first.close()
    # A new deployment changes the expression; then another drops it.
    second = StackShift(db_url, clock=clock)
    try:
        second.job("cleanup", lambda ctx: ran.append("v2"), cron="0 4 * * *", timezone="UTC")
        second.worker().run_until_idle()
        changed = second.schedules.get("job:cleanup")
        assert changed.cron == "0 4 * * *" and changed.last_run_at is not None
        assert changed.next_run_at == at("2026-01-08T04:00:00Z")
    finally:
        second.close()
    third = StackShift(db_url, clock=clock)
    try:
        third.job("cleanup", lambda ctx: None)
        run_until_idle(third)
        assert third.schedules.list() == []
        with pytest.raises(ScheduleNotFoundError):
            third.schedules.get("job:cleanup")
    finally:
        third.close()


def test_a_new_time_zone_in_code_moves_the_next_run(db_url: str, clock: FakeClock) -> None:
    """A deployment that only changes ``timezone=`` of ``@job(cron=...)`` moves the
    next run to that zone's time; the same definition again leaves it alone."""
    for timezone, expected in [("UTC", "2026-01-06T09:00:00Z"),
                               ("America/New_York", "2026-01-05T14:00:00Z"),
                               ("America/New_York", "2026-01-05T14:00:00Z")]:
        app = StackShift(db_url, clock=clock)
        try:
            app.job("report", lambda ctx: None, cron="0 9 * * *", timezone=timezone)
            app.worker().run_until_idle()
            [schedule] = app.schedules.list()
            assert (schedule.timezone, schedule.next_run_at) == (timezone, at(expected))
        finally:
            app.close()
        clock.advance("1m")


def test_a_schedule_created_again_under_its_id_is_changed_not_doubled(
        fake_app: StackShift, clock: FakeClock) -> None:
    ran: list[Any] = []
    fake_app.job("report", lambda ctx: ran.append(ctx.payload))

    def put(**changes: Any) -> Any:
        definition = {"cron": "0 9 * * *", "payload": {"v": 1}, **changes}
        return fake_app.schedules.create("report", schedule_id="daily-report", **definition)

    first = put()
    assert (first.id, first.source, first.next_run_at, first.created) == (
        "daily-report", "api", at("2026-01-06T09:00:00Z"), True)
    clock.advance("1h")
    again = put()  # the same definition again: nothing changes
    assert (again.created, replace(again, created=True)) == (False, first)
    # A new payload applies from the next tick, which stays where it was.
    assert put(payload={"v": 2}).next_run_at == at("2026-01-06T09:00:00Z")
    clock.set("2026-01-06T09:00:30Z")
    run_until_idle(fake_app)
    assert ran == [{"v": 2}]
    # A new time zone or expression moves the next run.
    moved = put(payload={"v": 2}, timezone="America/New_York")
    assert moved.next_run_at == at("2026-01-06T14:00:00Z")
    assert moved.last_run_at == at("2026-01-06T09:00:00Z")
    moved = put(payload={"v": 2}, timezone="America/New_York", cron="30 10 * * *")
    assert moved.next_run_at == at("2026-01-06T15:30:00Z")
    fake_app.schedules.pause("daily-report")
    assert put(cron="@hourly").paused  # a pause is kept
    assert [s.id for s in fake_app.schedules.list()] == ["daily-report"]
    for bad, message in [("job:report", "ids starting with 'job:'"),
                         ("daily report", "schedule id 'daily report' is invalid")]:
        with pytest.raises(ValidationError, match=message):
            fake_app.schedules.create("report", cron="@daily", schedule_id=bad)
    assert [s.id for s in fake_app.schedules.list()] == ["daily-report"]


@contextlib.contextmanager
def another_writer(db_url: str) -> Iterator[Callable[[str], None]]:
    """A transaction of another connection (a maintainer firing a tick, say): the
    block runs statements in it; it commits when the block ends."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield lambda sql: conn.execute(sql)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    import psycopg

    from stackshift.store.postgres import parse_postgres_url

    conninfo, options = parse_postgres_url(db_url)
    with psycopg.connect(conninfo) as pg:
        pg.execute(f'SET search_path TO "{options["schema"]}"')
        yield lambda sql: pg.execute(sql)  # type: ignore[arg-type]
        pg.commit()


def test_a_change_to_a_schedule_waits_for_a_tick_being_fired_and_keeps_its_move(
        db_url: str, clock: FakeClock) -> None:
    """Creating a schedule again under its id, or resuming it, while a maintainer
    is moving it past a tick: the change applies after, and the next run stays
    where the maintainer put it (not put back on the tick just fired)."""
    app = StackShift(db_url, clock=clock)
    try:
        made = app.schedules.create("report", cron="@hourly", schedule_id="hourly")
        assert made.next_run_at == at("2026-01-05T10:00:00Z")
        for change in (lambda: app.schedules.create("report", cron="@hourly",
                                                    payload={"v": 2}, schedule_id="hourly"),
                       lambda: app.schedules.resume("hourly")):
            errors: list[BaseException] = []

            def run(change: Callable[[], Any] = change,
                    errors: list[BaseException] = errors) -> None:
                try:
                    change()
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=run)
            with another_writer(db_url) as execute:
                execute("UPDATE schedules SET next_run_at = next_run_at + 3600 "
                        "WHERE id = 'hourly'")
                thread.start()
                time.sleep(0.5)  # the change reads the schedule meanwhile
            thread.join(30)
            assert errors == []
        after = app.schedules.get("hourly")
        assert after.next_run_at == at("2026-01-05T12:00:00Z")
        assert after.payload == {"v": 2}
    finally:
        app.close()


def test_a_schedule_id_over_http_the_remote_client_and_the_cli(
        db_url: str, server: tuple[str, str]) -> None:  # noqa: F811
    url, key = server
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    remote = StackShift(api_key=key, base_url=url)
    runner = CliRunner()
    try:
        made = remote.schedules.create("sync", cron="@hourly", schedule_id="sync-hourly")
        again = remote.schedules.create("sync", cron="@every 10m", schedule_id="sync-hourly")
        assert (made.id, again.id, again.cron) == ("sync-hourly", "sync-hourly", "@every 10m")
        assert (made.created, again.created) == (True, False)  # as the answers' 201 and 200
        body = http.post("/v1/schedules", json={"job": "sync", "cron": "@every 10m",
                                                "scheduleId": "sync-hourly"})
        assert body.status_code == 200 and body.json()["id"] == "sync-hourly"  # a change
        refused = http.post("/v1/schedules", json={"job": "sync", "cron": "@daily",
                                                   "scheduleId": "job:sync"})
        assert refused.status_code == 422 and "job:" in refused.json()["error"]["message"]
        with pytest.raises(ValidationError, match="ids starting with 'job:'"):
            remote.schedules.create("sync", cron="@daily", schedule_id="job:sync")
        for cron, created in (("@daily", True), ("@weekly", False)):
            result = runner.invoke(cli, ["schedules", "create", "sync", "--cron", cron,
                                         "--id", "sync-cli", "--json"],
                                   env={"STACKSHIFT_DATABASE_URL": db_url})
            assert result.exit_code == 0, result.output
            shown = json.loads(result.stdout)  # stderr: no worker knows 'sync'
            assert (shown["cron"], shown["created"]) == (cron, created)
            assert "no worker has registered job 'sync'" in result.stderr
            changed = "Schedule sync-cli existed: it now has this definition."
            assert (changed in result.stderr) is not created
        assert sorted(s.id for s in remote.schedules.list()) == ["sync-cli", "sync-hourly"]
    finally:
        http.close()
        remote.close()


def test_schedules_command(db_url: str) -> None:
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, list(args), env={"STACKSHIFT_DATABASE_URL": db_url})
        assert result.exit_code == code, (result.exit_code, result.output)
        return result.stdout  # warnings go to stderr

    created = json.loads(invoke("schedules", "create", "nightly", "--cron", "0 2 * * *",
                                "--payload", '{"full": true}', "--timezone", "Europe/Paris",
                                "--json"))
    assert (created["cron"], created["timezone"], created["payload"]) == (
        "0 2 * * *", "Europe/Paris", {"full": True})
    sid = created["id"]
    assert sid in invoke("schedules")
    assert "0 2 * * *" in invoke("schedules", "list")
    assert json.loads(invoke("schedules", "pause", sid, "--json"))["paused"] is True
    assert json.loads(invoke("schedules", "resume", sid, "--json"))["paused"] is False
    assert "Europe/Paris" in invoke("schedules", "show", sid)
    invoke("schedules", "create", "nightly", "--cron", "0 2 * *", code=2)
    invoke("schedules", "create", "nightly", "--cron", "@daily", "--payload", "{bad", code=2)
    invoke("schedules", "show", "sch_missing", code=3)
    invoke("schedules", "delete", sid)
    invoke("schedules", "delete", sid, code=3)
    assert "No schedules" in invoke("schedules")


def test_deleting_a_schedule_of_the_code_says_it_comes_back_and_how_to_stop_it(
        db_url: str) -> None:
    """`stackshift schedules delete job:NAME` deletes it, and says that a worker
    serving the job creates it again while the job has `cron=`: pause it, or
    remove `cron=`. Deleting a schedule made with the API says no more."""
    app = StackShift(db_url)
    try:
        app.job("cleanup", lambda ctx: None, cron="0 3 * * *")
        app.worker().run_until_idle()
        made = app.schedules.create("report", cron="@daily")
    finally:
        app.close()
    runner = CliRunner(env={"COLUMNS": "200"})
    env = {"STACKSHIFT_DATABASE_URL": db_url}
    said = runner.invoke(cli, ["schedules", "delete", "job:cleanup"], env=env)
    assert said.exit_code == 0, said.output
    expected = ("Deleted schedule job:cleanup. It was defined in code: while job cleanup has "
                "@job(cron=...), a worker serving it creates the schedule again when it "
                "starts. To stop it for good, remove cron= from the job; to stop it until "
                "resumed, pause it (stackshift schedules pause job:cleanup) rather than "
                "delete it.")
    assert " ".join(said.output.split()) == expected
    plain = runner.invoke(cli, ["schedules", "delete", made.id], env=env)
    assert plain.exit_code == 0 and plain.output == f"Deleted schedule {made.id}.\n"
    again = runner.invoke(cli, ["schedules", "delete", "job:cleanup", "--json"], env=env)
    assert again.exit_code == 3  # gone until a worker starts


def test_schedules_over_http_and_the_remote_client(server: tuple[str, str]) -> None:  # noqa: F811
    url, key = server
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    remote = StackShift(api_key=key, base_url=url)
    try:
        made = http.post("/v1/schedules", json={"job": "sync", "cron": "@every 10m",
                                                "payload": {"a": 1}, "queueName": "io"})
        assert made.status_code == 201, made.text
        body = made.json()
        assert (body["queueName"], body["source"], body["paused"]) == ("io", "api", False)
        sid = body["id"]
        bad = http.post("/v1/schedules", json={"job": "sync", "cron": "every day"})
        assert bad.status_code == 422 and "cron" in bad.json()["error"]["message"]
        assert http.post(f"/v1/schedules/{sid}/pause").json()["paused"] is True
        assert remote.schedules.get(sid).paused
        assert not remote.schedules.resume(sid).paused
        assert [s.id for s in remote.schedules.list()] == [sid]
        mine = remote.schedules.create("sync", cron="@hourly", timezone="Asia/Tokyo")
        assert mine.timezone == "Asia/Tokyo"
        assert http.get("/v1/schedules/sch_nope").status_code == 404
        with pytest.raises(ScheduleNotFoundError):
            remote.schedules.pause("sch_nope")
        assert remote.schedules.delete(mine.id) is True
        assert remote.schedules.delete(mine.id) is False
        assert http.delete(f"/v1/schedules/{sid}").json() == {"id": sid, "deleted": True}
        assert http.get("/v1/schedules").json() == {"items": []}
    finally:
        http.close()
        remote.close()


def test_tick_keys_name_the_tick_in_utc() -> None:
    from stackshift.store.schedules import tick_key

    moment = datetime(2026, 3, 29, 1, 30, tzinfo=UTC).timestamp()
    assert tick_key("sch_1", moment) == "schedule:sch_1:2026-03-29T01:30:00Z"


def test_queues_and_schedules_without_a_subcommand_list_what_the_list_commands_do(
        server: tuple[str, str], tmp_path: Path) -> None:  # noqa: F811
    """`stackshift queues` and `stackshift schedules` are their `list`: the same
    client (here the server from STACKSHIFT_URL, not a new stackshift.db in the
    working directory) and the same options."""
    import os
    import subprocess
    import sys

    url, key = server
    remote = StackShift(api_key=key, base_url=url)
    try:
        remote.queue("mail").enqueue("send")
        made = remote.schedules.create("send", cron="@daily")
    finally:
        remote.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    env.update(STACKSHIFT_URL=url, STACKSHIFT_API_KEY=key)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    def run(*args: str, code: int = 0) -> str:
        done = subprocess.run([sys.executable, "-m", "stackshift.cli.main", *args],
                              capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=60)
        assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
        return done.stdout

    assert "mail" in run("queues")
    assert made.id in run("schedules")
    assert [q["name"] for q in json.loads(run("queues", "--json"))] == ["mail"]
    assert [q["name"] for q in json.loads(run("queues", "--window", "5m", "--json"))] == [
        "mail"]
    assert [s["id"] for s in json.loads(run("schedules", "--json"))] == [made.id]
    assert not (cwd / "stackshift.db").exists()
    # An option before a subcommand would be ignored by it: refused instead.
    run("queues", "--json", "show", "mail", code=2)
    run("schedules", "--json", "show", made.id, code=2)


def read_value(db_url: str, sql: str) -> Any:
    """One value read by a connection of its own (not the client's)."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=30)
        try:
            return conn.execute(sql).fetchone()[0]
        finally:
            conn.close()
    import psycopg

    from stackshift.store.postgres import parse_postgres_url

    conninfo, options = parse_postgres_url(db_url)
    with psycopg.connect(conninfo, autocommit=True) as pg:
        pg.execute(f'SET search_path TO "{options["schema"]}"')
        row = pg.execute(sql).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]


def hold_a_long_run(app: StackShift) -> tuple[threading.Event, list[int]]:
    """Job ``long``, which runs until the event returned is set; the list holds
    the attempt number of every execution."""
    release = threading.Event()
    attempts: list[int] = []

    @app.job("long", max_attempts=3)
    def long(ctx: Any) -> str:
        attempts.append(ctx.run.attempt)
        release.wait(60)
        return "done"

    return release, attempts


def lease_lapsed(db_url: str, run_id: str) -> bool:
    """Whether the run's lease is gone or past, read by a connection of its own."""
    expires = read_value(db_url, f"SELECT lease_expires_at FROM runs WHERE id = '{run_id}'")
    return expires is None or float(expires) < time.time()


def test_a_catch_up_of_many_overdue_schedules_does_not_hold_up_lease_renewals(
        db_url: str) -> None:
    """A worker starting after a long outage finds 120 minutely schedules ~2,000
    ticks behind (their missed ticks are counted one by one in Europe/Paris, a
    good part of a second per ten schedules) while it runs a job on a 2 s lease:
    the lease keeps being renewed throughout the catch-up, the attempt is not
    lost, and each schedule still starts one run and counts the ticks it missed."""
    app = StackShift(db_url)
    try:
        release, attempts = hold_a_long_run(app)
        app.job("tick", lambda ctx: None)
        ids = [app.schedules.create("tick", cron="* * * * *", timezone="Europe/Paris").id
               for _ in range(120)]
        behind = (int(time.time() // 60) - 2000) * 60
        with another_writer(db_url) as execute:
            execute(f"UPDATE schedules SET next_run_at = {behind}")
        run = app.start("long")
        worker = app.worker(lease="2s", concurrency=2).start()
        try:
            started = time.time()
            while not attempts:
                assert time.time() - started < 30
                time.sleep(0.01)
            lapses: list[float] = []
            while any(app.schedules.get(i).last_run_at is None for i in ids):
                assert time.time() - started < 120, "the catch-up did not finish"
                if lease_lapsed(db_url, run.id):
                    lapses.append(time.time() - started)
                time.sleep(0.05)
            release.set()
            finished = app.runs.wait(run.id, timeout=30)
        finally:
            release.set()
            worker.stop()
        assert lapses == []  # never past its lease while the schedules were caught up
        assert finished.status == "completed" and finished.attempt == 1 and attempts == [1]
        for schedule_id in ids:
            after = app.schedules.get(schedule_id)
            assert after.last_run_at is not None and after.last_error is None
            # One catch-up run; a minute that began while the catch-up went on
            # started a run of its own, a minute later each.
            ticks = [datetime.fromisoformat(t.replace("Z", "+00:00"))
                     for t in ticks_of(app, schedule_id)]
            assert ticks == [ticks[0] + timedelta(minutes=n) for n in range(len(ticks))]
            assert ticks[-1] == after.last_run_at
            # Every minute from the first overdue one to the catch-up ran once or
            # was counted missed.
            passed = round((ticks[0].timestamp() - behind) / 60)
            assert passed >= 2000 and after.missed_ticks == passed
    finally:
        app.close()


def test_overlap_skip_starts_no_run_while_the_previous_tick_s_run_is_unfinished(
        fake_app: StackShift, clock: FakeClock) -> None:
    """``overlap="skip"``: a tick while the run of an earlier tick still waits starts
    nothing, counted in ``skipped_ticks``; once that run has finished, the next
    tick starts one. The default (``"allow"``) starts a run at every tick."""
    def export(ctx: Any) -> None:
        ctx.step.wait_for_event("export.done")

    fake_app.job("export", export)
    skip = fake_app.schedules.create("export", cron="@hourly", overlap="skip")
    allow = fake_app.schedules.create("export", cron="@hourly")
    assert (skip.overlap, allow.overlap, skip.skipped_ticks) == ("skip", "allow", 0)
    for _ in range(3):  # 10:00, 11:00, 12:00
        clock.advance("1h")
        run_until_idle(fake_app)
    assert ticks_of(fake_app, skip.id) == ["2026-01-05T10:00:00Z"]
    assert ticks_of(fake_app, allow.id) == [
        "2026-01-05T10:00:00Z", "2026-01-05T11:00:00Z", "2026-01-05T12:00:00Z"]
    skipping = fake_app.schedules.get(skip.id)
    first = skipping.last_run_id or ""
    assert fake_app.runs.get(first).status == "waiting"
    assert (skipping.skipped_ticks, skipping.last_run_at, skipping.next_run_at,
            skipping.last_error, skipping.missed_ticks) == (
        2, at("2026-01-05T10:00:00Z"), at("2026-01-05T13:00:00Z"), None, 0)
    assert fake_app.schedules.get(allow.id).skipped_ticks == 0
    held_back = [(e.data["schedule_id"], e.data["tick_at"])
                 for e in fake_app.runs.timeline(first) if e.kind == "schedule.tick_skipped"]
    assert held_back == [(skip.id, at("2026-01-05T11:00:00Z").timestamp()),
                         (skip.id, at("2026-01-05T12:00:00Z").timestamp())]
    fake_app.events.send("export.done")
    run_until_idle(fake_app)
    assert fake_app.runs.get(first).status == "completed"
    clock.advance("1h")  # 13:00: the run of 10:00 has finished
    run_until_idle(fake_app)
    assert ticks_of(fake_app, skip.id) == ["2026-01-05T10:00:00Z", "2026-01-05T13:00:00Z"]
    after = fake_app.schedules.get(skip.id)
    assert after.last_run_id != first and after.skipped_ticks == 2


def test_overlap_skip_counts_a_retrying_run_as_unfinished_and_a_failed_one_as_finished(
        fake_app: StackShift, clock: FakeClock) -> None:
    def flaky(ctx: Any) -> None:
        raise RuntimeError("upstream down")

    fake_app.job("sync", flaky, max_attempts=2, backoff={"base": "90m", "jitter": False})
    schedule = fake_app.schedules.create("sync", cron="@hourly", overlap="skip")
    clock.advance("1h")  # 10:00: the run fails once and waits 90 minutes to retry
    run_until_idle(fake_app)
    run_id = fake_app.schedules.get(schedule.id).last_run_id or ""
    assert fake_app.runs.get(run_id).status == "retrying"
    clock.advance("1h")  # 11:00: still retrying, skipped; at 11:30 it fails for good
    run_until_idle(fake_app)
    assert fake_app.schedules.get(schedule.id).skipped_ticks == 1
    clock.advance("30m")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run_id).status == "failed"
    clock.advance("30m")  # 12:00 starts a run again
    run_until_idle(fake_app)
    assert ticks_of(fake_app, schedule.id) == ["2026-01-05T10:00:00Z", "2026-01-05T12:00:00Z"]


def test_overlap_in_code_is_kept_in_sync_and_checked(db_url: str, clock: FakeClock) -> None:
    """``@job(cron=..., overlap="skip")``: the code schedule takes the policy; a later
    deployment that changes only the policy keeps the next run where it was. A
    bad policy, or one without ``cron``, is refused when the job is defined."""
    for overlap in ("skip", "allow"):
        app = StackShift(db_url, clock=clock)
        try:
            app.job("cleanup", lambda ctx: None, cron="0 3 * * *", overlap=overlap)
            app.worker().run_until_idle()
            [schedule] = app.schedules.list()
            assert (schedule.overlap, schedule.next_run_at) == (
                overlap, at("2026-01-06T03:00:00Z"))
        finally:
            app.close()
        clock.advance("1m")
    app = StackShift(db_url, clock=clock)
    try:
        with pytest.raises(ValidationError, match="overlap must be 'allow' or 'skip'"):
            app.job("a", lambda ctx: None, cron="@daily", overlap="queue")
        with pytest.raises(ValidationError, match="needs cron"):
            app.job("b", lambda ctx: None, overlap="skip")
        with pytest.raises(ValidationError,
                           match="timezone='Europe/Paris' needs cron: it applies to a job's"):
            app.job("b", lambda ctx: None, timezone="Europe/Paris")
        # Their default values too: the schedule they were meant for is missing.
        for option, value in (("timezone", "UTC"), ("overlap", "allow")):
            with pytest.raises(ValidationError, match=f"{option}='{value}' needs cron"):
                app.job("b", lambda ctx: None, **{option: value})
        assert app.jobs == []
        with pytest.raises(ValidationError, match="overlap must be 'allow' or 'skip'"):
            app.schedules.create("a", cron="@daily", overlap="Skip")  # type: ignore[arg-type]
        assert [s.id for s in app.schedules.list()] == ["job:cleanup"]
    finally:
        app.close()


def test_overlap_over_http_the_remote_client_a_remote_worker_and_the_cli(
        db_url: str, server: tuple[str, str]) -> None:  # noqa: F811
    url, key = server
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    remote = StackShift(api_key=key, base_url=url)
    runner = CliRunner(env={"COLUMNS": "200"})
    env = {"STACKSHIFT_DATABASE_URL": db_url}
    try:
        made = http.post("/v1/schedules", json={"job": "sync", "cron": "@hourly",
                                                "overlap": "skip"})
        assert made.status_code == 201, made.text
        assert (made.json()["overlap"], made.json()["skippedTicks"]) == ("skip", 0)
        plain = http.post("/v1/schedules", json={"job": "sync", "cron": "@hourly"})
        assert plain.json()["overlap"] == "allow"
        bad = http.post("/v1/schedules", json={"job": "sync", "cron": "@hourly",
                                               "overlap": "never"})
        assert bad.status_code == 422 and "overlap" in bad.json()["error"]["message"]
        changed = remote.schedules.create("sync", cron="@hourly", overlap="skip",
                                          schedule_id=plain.json()["id"])
        assert changed.overlap == "skip"
        assert remote.schedules.get(made.json()["id"]).overlap == "skip"
        with pytest.raises(ValidationError, match="overlap must be 'allow' or 'skip'"):
            remote.schedules.create("sync", cron="@hourly", overlap="no")  # type: ignore[arg-type]
        remote.job("nightly", lambda ctx: None, cron="@daily", overlap="skip")
        remote.worker().run_until_idle()
        assert remote.schedules.get("job:nightly").overlap == "skip"
        created = runner.invoke(cli, ["schedules", "create", "sync", "--cron", "@daily",
                                      "--overlap", "skip", "--json"], env=env)
        assert created.exit_code == 0, created.output
        sid = json.loads(created.stdout)["id"]
        assert json.loads(created.stdout)["overlap"] == "skip"
        shown = runner.invoke(cli, ["schedules", "show", sid], env=env)
        assert "skip: no run while the last one is unfinished (0 ticks skipped)" in \
            " ".join(shown.output.split())
        refused = runner.invoke(cli, ["schedules", "create", "sync", "--cron", "@daily",
                                      "--overlap", "maybe"], env=env)
        assert refused.exit_code == 2 and "maybe" in refused.output
        assert len(remote.schedules.list()) == 4  # the refusals made nothing
    finally:
        http.close()
        remote.close()
