"""``runs.list`` filters on every store: the creation-time window (``created_after``
keeps the instant it names, ``created_before`` leaves it out) and ``search`` (a
run id or an idempotency key, matched exactly), combined with the other filters
and with paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stackshift import StackShift, ValidationError
from stackshift.testing import FakeClock


def _ids(page: object) -> list[str]:
    return [run.id for run in page]  # type: ignore[attr-defined]


def test_runs_are_listed_by_creation_time_window(fake_app: StackShift, clock: FakeClock) -> None:
    monday = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    runs = []
    for day in range(4):  # one run a day, Monday 09:00 to Thursday 09:00
        clock.set(monday + timedelta(days=day))
        runs.append(fake_app.start("report", {"day": day}))
    tuesday, thursday = monday + timedelta(days=1), monday + timedelta(days=3)

    window = fake_app.runs.list(job="report", created_after=tuesday, created_before=thursday)
    assert _ids(window) == [runs[2].id, runs[1].id]  # Tuesday's run is in, Thursday's out
    assert _ids(fake_app.runs.list(created_before=tuesday)) == [runs[0].id]
    assert _ids(fake_app.runs.list(created_before="2026-01-06T09:00:00.000001Z")) == [
        runs[1].id, runs[0].id]
    # An offset other than UTC names the same instant.
    assert _ids(fake_app.runs.list(created_before="2026-01-06T10:00:00+01:00")) == [runs[0].id]
    assert _ids(fake_app.runs.list(created_after=thursday, created_before=tuesday)) == []

    first = fake_app.runs.list(created_before=thursday, limit=2)
    assert _ids(first) == [runs[2].id, runs[1].id]
    assert first.next_cursor is not None
    rest = fake_app.runs.list(created_before=thursday, limit=2, cursor=first.next_cursor)
    assert (_ids(rest), rest.next_cursor) == ([runs[0].id], None)


def test_search_finds_a_run_by_id_or_idempotency_key(
    fake_app: StackShift, clock: FakeClock
) -> None:
    keyed = fake_app.start("charge", {"order": "o_1"}, idempotency_key="charge:o_1")
    other = fake_app.start("charge", {"order": "o_2"}, idempotency_key="charge:o_2")
    plain = fake_app.start("refund", {"order": "o_1"})

    assert _ids(fake_app.runs.list(search=plain.id)) == [plain.id]
    assert _ids(fake_app.runs.list(search="charge:o_1")) == [keyed.id]
    assert _ids(fake_app.runs.list(search="charge:")) == []  # exact, not a prefix
    assert _ids(fake_app.runs.list(search=keyed.id.upper())) == []
    assert _ids(fake_app.runs.list(search=other.id, job="refund")) == []
    assert _ids(fake_app.runs.list(search=other.id, status="queued")) == [other.id]
    later = datetime.fromtimestamp(clock.now(), UTC) + timedelta(seconds=1)
    assert _ids(fake_app.runs.list(search="charge:o_2", created_before=later)) == [other.id]
    assert _ids(fake_app.runs.list(search="charge:o_2", created_after=later)) == []


def test_only_the_empty_key_is_refused_a_key_of_spaces_is_looked_for(
    fake_app: StackShift
) -> None:
    """A run can be started with a key of spaces, so it is listed by it; an empty key,
    which no run can have, is refused rather than answered with an empty list."""
    keyed = fake_app.start("charge", idempotency_key="  ")
    fake_app.start("charge")
    assert _ids(fake_app.runs.list(idempotency_key="  ")) == [keyed.id]
    assert _ids(fake_app.runs.list(search="  ")) == [keyed.id]
    for options in ({"idempotency_key": ""}, {"search": ""}):
        with pytest.raises(ValidationError, match="must be a non-empty string, got ''"):
            fake_app.runs.list(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"created_before": "next week"}, "created_before: 'next week' is not an ISO-8601 time"),
        ({"created_before": datetime(2026, 1, 1)},
         "created_before: datetime.datetime(2026, 1, 1, 0, 0) has no time zone"),
        ({"created_before": 1767600000}, "created_before: expected a datetime or ISO-8601"),
        ({"search": 5}, "search must be a string, got 5"),
        ({"search": "run_\x00"}, "search must not contain the NUL character (U+0000)"),
        ({"search": "k\ud800"}, "search: "),
    ],
)
def test_bad_filters_are_refused(fake_app: StackShift, options: dict[str, object],
                                 message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        fake_app.runs.list(**options)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)


def test_a_time_read_from_a_run_keeps_it_on_the_side_it_shows(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """Times are stored as epoch seconds and read back to the microsecond: a run
    created a fraction of a microsecond before the time it shows is still listed
    from that time on, and not before it (it was left out or in by chance)."""
    runs = []
    for second, fraction in enumerate((0.1, 0.3, 0.5, 0.7, 0.9)):  # of a microsecond
        clock.set(1767603600.123456 + second + fraction * 1e-6)
        runs.append(fake_app.runs.cancel(fake_app.start("window", {"n": second}).id))
    for run in runs:
        shown = run.created_at
        assert _ids(fake_app.runs.list(created_after=shown, search=run.id)) == [run.id]
        assert _ids(fake_app.runs.list(created_before=shown, search=run.id)) == []
        assert _ids(fake_app.runs.list(created_after=shown.isoformat(), search=run.id)) == [
            run.id]
        just_after = shown + timedelta(microseconds=1)
        assert _ids(fake_app.runs.list(created_before=just_after, search=run.id)) == [run.id]
        assert _ids(fake_app.runs.list(created_after=just_after, search=run.id)) == []
    # A bulk retry selects by the same rule.
    middle = runs[2].created_at
    retried = fake_app.runs.retry_many(status="cancelled", created_after=middle,
                                       created_before=runs[3].created_at)
    assert retried == [runs[2].id]


def test_a_time_with_a_space_for_its_offsets_plus_is_refused_saying_so(
        fake_app: StackShift) -> None:
    """The form a ``+`` left unescaped in a URL arrives in: refused with the reason,
    not read as some other time."""
    run = fake_app.start("report")
    with pytest.raises(ValidationError, match=r"'\+' reads as a space, so write it %2B"):
        fake_app.runs.list(created_after="2026-01-05T11:00:00 02:00")
    assert _ids(fake_app.runs.list(created_after="2026-01-05T11:00:00+02:00")) == [run.id]


def test_pages_neither_repeat_nor_skip_runs_while_runs_start_and_change_status(
        fake_app: StackShift) -> None:
    """The paging rules the guide gives: runs sharing one ``created_at`` are paged
    by id, a run started after the first page is not on later ones, and a run that
    leaves the filter is simply not listed again."""
    runs = [fake_app.start("paged", {"i": i}).id for i in range(7)]  # one created_at
    first = fake_app.runs.list(status="queued", limit=3)
    assert _ids(first) == [runs[6], runs[5], runs[4]]
    newer = fake_app.start("paged").id
    fake_app.runs.cancel(runs[5])  # listed already
    fake_app.runs.cancel(runs[2])  # not listed yet: it no longer matches
    rest, cursor = [], first.next_cursor
    while cursor is not None:
        page = fake_app.runs.list(status="queued", limit=2, cursor=cursor)
        rest += _ids(page)
        cursor = page.next_cursor
    assert rest == [runs[3], runs[1], runs[0]]
    assert _ids(fake_app.runs.list(status="queued", limit=1)) == [newer]
