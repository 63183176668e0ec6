"""The duration and point-in-time grammar accepted everywhere in the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from stackshift import ValidationError
from stackshift.cli.render import offset
from stackshift.durations import (
    parse_duration,
    parse_instant,
    parse_typed_duration,
    to_datetime,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("24h", 86400.0),
        ("30d", 30 * 86400.0),
        ("1h30m", 5400.0),
        ("2w", 14 * 86400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("1d2h3m4s", 86400.0 + 7200 + 180 + 4),
        ("  10s ", 10.0),
        ("10S", 10.0),
        ("0s", 0.0),
    ],
)
def test_duration_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (45, 45.0),
        (2.5, 2.5),
        (timedelta(minutes=3), 180.0),
        (timedelta(days=1, seconds=1), 86401.0),
    ],
)
def test_durations_as_numbers_and_timedeltas(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "soon",
        "10",  # a bare number as text has no unit
        "1x",
        "s",
        "1h 30m",
        "h1",
        "-0s",  # no sign is part of a duration; minus nothing is not negative
        "- 5s",
        "--5s",
        "-5",
        "5s-",
        "1e3s",
        "30 seconds",
        "1h30",
        "\u0661\u0662s",  # Arabic-Indic digits: a duration's digits are ASCII ones
        "\uff15m",  # a full-width 5
        "1h\u0663m",
    ],
)
def test_bad_duration_strings_are_refused_with_the_grammar(value: str) -> None:
    with pytest.raises(ValueError, match=r"not a duration \(use e\.g\. '30s'"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, float("nan"), float("inf"), timedelta(seconds=-1)],
)
def test_negative_and_non_finite_durations_are_refused(value: object) -> None:
    with pytest.raises(ValidationError, match="finite, non-negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["-5s", "-5m", " -1h30m ", "-0.5s", "-2W", "-" + "9" * 60 + "d"])
def test_negative_duration_strings_are_refused_as_negative(value: str) -> None:
    # As the number -5 is: the text says a duration, only its sign is wrong.
    with pytest.raises(ValidationError) as raised:
        parse_duration(value, name="delay")
    assert str(raised.value) == f"delay: {value!r} must be a finite, non-negative duration"


@pytest.mark.parametrize(("text", "message"), [
    ("-5m", "--delay: '-5m' must be a finite, non-negative duration"),
    ("-5", "--delay: '-5' must be a finite, non-negative duration"),
    ("-5x", "--delay: '-5x' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"),
])
def test_typed_durations_say_a_negative_one_is_negative_however_written(
        text: str, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_typed_duration(text, name="--delay")
    assert str(raised.value) == message


@pytest.mark.parametrize("value", [None, True, False, [1], {"s": 1}, object()])
def test_durations_of_the_wrong_type_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


def test_duration_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^idempotency_ttl: 'forever'"):
        parse_duration("forever", name="idempotency_ttl")


def test_validation_error_is_a_value_error() -> None:
    # Callers catch ValueError without importing StackShift's error types.
    assert issubclass(ValidationError, ValueError)


# -- points in time ------------------------------------------------------------------


def test_instant_from_aware_datetime() -> None:
    moment = datetime(2026, 5, 6, 9, 0, tzinfo=UTC)
    assert parse_instant(moment) == moment.timestamp()


def test_instant_keeps_the_offset_it_was_given() -> None:
    paris = datetime(2026, 5, 6, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    assert parse_instant(paris) == datetime(2026, 5, 6, 9, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "text",
    [
        "2026-05-06T09:00:00Z",
        "2026-05-06T09:00:00z",
        "2026-05-06T09:00:00.000Z",
        "2026-05-06T09:00:00+00:00",
        "2026-05-06T11:00:00+02:00",
        "2026-05-06T04:00:00-05:00",
    ],
)
def test_instant_from_iso_strings(text: str) -> None:
    assert parse_instant(text) == datetime(2026, 5, 6, 9, 0, tzinfo=UTC).timestamp()


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        parse_instant(datetime(2026, 5, 6, 9, 0), name="scheduled_at")


def test_iso_string_without_offset_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^scheduled_at: .* has no time zone"):
        parse_instant("2026-05-06T09:00:00", name="scheduled_at")


@pytest.mark.parametrize("text", ["", "tomorrow", "2026-13-01T00:00:00Z", "06/05/2026 09:00"])
def test_garbage_instant_strings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not an ISO-8601 time"):
        parse_instant(text, name="scheduled_at")


@pytest.mark.parametrize("text", ["2026-05-06T09:00:00 02:00", "2026-05-06 09:00:00.5 0200",
                                  " 2026-05-06T09:00 02 "])
def test_an_offset_whose_plus_reads_as_a_space_is_refused_saying_so(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not an ISO-8601 time .*"
                       r"'\+' reads as a space, so write it %2B"):
        parse_instant(text, name="created_after")


@pytest.mark.parametrize("text", ["2026-05-06T09:00:00 99:00", "2026-05-06T09:00:00 2"])
def test_a_space_before_no_offset_gets_no_hint_about_plus(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not an ISO-8601 time \(e.g. '[^']*'\)$"):
        parse_instant(text, name="created_after")


@pytest.mark.parametrize("value", [None, 1767603600, 1767603600.0, b"2026-05-06T09:00:00Z"])
def test_instants_of_the_wrong_type_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="expected a datetime or ISO-8601 string"):
        parse_instant(value)


def test_to_datetime_is_aware_utc_and_round_trips() -> None:
    moment = to_datetime(1767603600.5)
    assert moment is not None
    assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
    assert parse_instant(moment) == 1767603600.5
    assert to_datetime(None) is None


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "+0.000s"), (1.2345, "+1.234s"), (59.9994, "+59.999s"), (59.9996, "+1m00.0s"),
    (119.96, "+2m00.0s"), (3599.94, "+59m59.9s"), (3599.99996, "+1h00m00s"),
    (7322.6, "+2h02m03s"), (-5.5, "-5.500s"), (47 * 3600 + 59 * 60 + 59.4, "+47h59m59s"),
    (48 * 3600 - 0.4, "+2d00h00m"), (400 * 86400 + 3 * 3600 + 60, "+400d03h01m"),
])
def test_timeline_offsets_round_before_they_carry(seconds: float, shown: str) -> None:
    # A time a hair under a minute or an hour reads as the next one, never ":60".
    assert offset(seconds) == shown
