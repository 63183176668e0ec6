"""The ticks of a schedule, computed without a clock: across daylight-saving
changes, after an outage, and for ``@every``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stackshift.engine.cron import MAX_COUNTED, parse_cron


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def ticks(cron: str, timezone: str, start: str, end: str) -> list[str]:
    """Every tick after ``start`` up to ``end``, one after the other."""
    parsed = parse_cron(cron, timezone)
    found = []
    moment = parsed.next_after(epoch(start))
    while moment <= epoch(end):
        found.append(iso(moment))
        moment = parsed.next_after(moment)
    return found


@pytest.mark.parametrize(("cron", "timezone", "start", "end", "expected"), [
    # Berlin springs forward on 2026-03-29 at 02:00 CET: 02:30 does not exist and
    # fires once, at 03:00 CEST (the first minute that exists).
    ("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00:00Z", "2026-03-30T12:00:00Z",
     ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]),
    # Berlin falls back on 2026-10-25 at 03:00 CEST: 02:30 happens twice and fires
    # once, at its first pass (CEST).
    ("30 2 * * *", "Europe/Berlin", "2026-10-24T00:00:00Z", "2026-10-26T12:00:00Z",
     ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]),
    # New York: 02:30 is skipped on 2026-03-08, 01:30 happens twice on 2026-11-01.
    ("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z",
     ["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]),
    ("30 1 * * *", "America/New_York", "2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z",
     ["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]),
    # A wildcard hour follows the clock: every real hour, in both passes.
    ("0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", "2026-10-25T02:30:00Z",
     ["2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"]),
])
def test_a_daily_time_fires_once_a_day_across_daylight_saving_changes(
        cron: str, timezone: str, start: str, end: str, expected: list[str]) -> None:
    assert ticks(cron, timezone, start, end) == expected


@pytest.mark.parametrize(("cron", "timezone", "due", "now", "latest", "missed"), [
    # Down from before Saturday's 01:30 until 01:13 EST in the second pass of
    # Sunday's repeated hour: Sunday's 01:30 EDT (05:30Z) has passed.
    ("30 1 * * *", "America/New_York", "2026-10-31T05:30:00Z", "2026-11-01T06:13:00Z",
     "2026-11-01T05:30:00Z", 1),
    ("59 1 * * *", "America/New_York", "2026-10-31T05:59:00Z", "2026-11-01T06:50:00Z",
     "2026-11-01T05:59:00Z", 1),
    ("15 1-3 * * *", "America/New_York", "2026-10-31T05:15:00Z", "2026-11-01T06:13:00Z",
     "2026-11-01T05:15:00Z", 3),
    ("30 2 * * *", "Europe/Berlin", "2026-10-24T00:30:00Z", "2026-10-25T01:10:00Z",
     "2026-10-25T00:30:00Z", 1),
    # Spring forward: the shifted 03:00 CEST tick is the latest.
    ("30 2 * * *", "Europe/Berlin", "2026-03-27T01:30:00Z", "2026-03-29T01:45:00Z",
     "2026-03-29T01:00:00Z", 2),
])
def test_an_outage_across_a_clock_change_runs_the_latest_tick_that_passed(
        cron: str, timezone: str, due: str, now: str, latest: str, missed: int) -> None:
    tick, skipped = parse_cron(cron, timezone).latest_due(epoch(due), epoch(now))
    assert (iso(tick), skipped) == (latest, missed)


def test_latest_due_agrees_with_the_ticks_walked_one_by_one() -> None:
    """Whenever maintenance comes back, the tick it runs is one the schedule would
    have fired at, and the count is of the ticks in between."""
    for cron, timezone, day in [("30 1 * * *", "America/New_York", "2026-11-01"),
                                ("15 1-3 * * *", "America/New_York", "2026-11-01"),
                                ("*/20 * * * *", "Europe/Berlin", "2026-10-25"),
                                ("30 2 * * *", "Europe/Berlin", "2026-03-29")]:
        parsed = parse_cron(cron, timezone)
        start = epoch(f"{day}T00:00:00Z") - 86400
        walked = [parsed.next_after(start)]
        while walked[-1] < start + 3 * 86400:
            walked.append(parsed.next_after(walked[-1]))
        now = walked[0]
        while now < walked[-1]:
            passed = [t for t in walked if t <= now]
            assert parsed.latest_due(walked[0], now) == (passed[-1], len(passed) - 1), (
                cron, timezone, iso(now))
            now += 7 * 60 + 13


@pytest.mark.parametrize("cron", ["* * * * *", "*/7 */3 * * *", "5,55 9-17 * * *",
                                  "@hourly", "@daily", "59 23 * * *"])
def test_latest_due_in_utc_agrees_with_the_ticks_walked_one_by_one(cron: str) -> None:
    """Every-day UTC expressions, whose missed ticks are counted without walking
    them: the same tick and count as walking, from any due tick to any moment."""
    parsed = parse_cron(cron)
    start = epoch("2026-12-30T22:00:00Z")
    walked = [parsed.next_after(start)]
    while walked[-1] < start + 2 * 86400:
        walked.append(parsed.next_after(walked[-1]))
    for first in walked[:: max(1, len(walked) // 40)]:
        now = first
        while now < walked[-1]:
            passed = [t for t in walked if first <= t <= now]
            assert parsed.latest_due(first, now) == (passed[-1], len(passed) - 1), (
                cron, iso(first), iso(now))
            now += 17 * 60 + 29


@pytest.mark.parametrize("cron", ["@every 1m", "* * * * *"])
def test_missed_ticks_are_counted_up_to_the_cap_for_every_grammar(cron: str) -> None:
    parsed = parse_cron(cron)
    due = epoch("2026-01-05T09:01:00Z")
    tick, missed = parsed.latest_due(due, epoch("2026-02-04T09:00:30Z"))
    assert (iso(tick), missed) == ("2026-02-04T09:00:00Z", MAX_COUNTED)
    tick, missed = parsed.latest_due(due, epoch("2026-01-05T10:00:30Z"))
    assert (iso(tick), missed) == ("2026-01-05T10:00:00Z", 59)


def test_every_is_anchored_to_the_epoch_not_to_when_it_is_asked() -> None:
    """``@every 90m`` ticks at multiples of 90 minutes since 1970 (00:00, 01:30,
    03:00 ... UTC), wherever ``after`` falls: a late maintenance round does not
    shift later ticks."""
    parsed = parse_cron("@every 90m", "Asia/Kolkata")
    assert iso(parsed.next_after(epoch("2026-01-05T09:00:00Z"))) == "2026-01-05T10:30:00Z"
    assert iso(parsed.next_after(epoch("2026-01-05T10:29:59Z"))) == "2026-01-05T10:30:00Z"
    assert iso(parsed.next_after(epoch("2026-01-05T10:47:13Z"))) == "2026-01-05T12:00:00Z"


def test_every_of_a_fraction_of_a_second_moves_past_each_of_its_ticks() -> None:
    """``@every 3.3s``: each tick's next tick is the one after it, and a tick is due
    at its own instant, where dividing the tick by 3.3 rounds below a whole
    number (one tick in five of these)."""
    parsed = parse_cron("@every 3.3s")
    for k in range(515_171_500, 515_172_500):
        tick = k * 3.3
        assert parsed.next_after(tick) == (k + 1) * 3.3, k
        assert parsed.next_after(tick - 0.001) == tick, k
        assert parsed.latest_due((k - 2) * 3.3, tick) == (tick, 2), k


@pytest.mark.parametrize(("cron", "timezone", "after", "expected"), [
    # 01:02 EST, in the second pass of New York's repeated hour: the eleven
    # minutes named after 01:02 fired in the first pass (EDT), so the next tick
    # is the next day's 01:00.
    (",".join(str(m) for m in range(0, 60, 5)) + " 1 * * *", "America/New_York",
     "2026-11-01T06:02:00Z", "2026-11-02T06:00:00Z"),
    ("0-59 1 * * *", "America/New_York", "2026-11-01T06:02:00Z", "2026-11-02T06:00:00Z"),
    ("0-59 2 * * *", "Europe/Paris", "2026-10-25T01:00:30Z", "2026-10-26T01:00:00Z"),
])
def test_the_next_tick_from_the_second_pass_of_a_repeated_hour(
        cron: str, timezone: str, after: str, expected: str) -> None:
    assert iso(parse_cron(cron, timezone).next_after(epoch(after))) == expected
