"""Parsing of durations and points in time accepted everywhere in the API."""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ValidationError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: The longest duration accepted anywhere: 100 years.
MAX_DURATION = 100 * 365.25 * 86400.0
#: ASCII digits only: ``\d`` would take the digits of any script (Arabic-Indic ones),
#: which the API refuses.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
#: A number typed as seconds: digits, with a fraction and a minus sign if any
#: (Python's ``float`` also reads ``1e3``, ``1_000``, ``٣`` and ``inf``).
TYPED_SECONDS = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_TYPED_WHOLE = re.compile(r"-?[0-9]+")


def parse_typed_whole(text: str) -> int:
    """A whole number typed as text (an option, a setting): ASCII digits with a
    minus sign if any, as the API takes them; ``ValueError`` for anything else
    ``int`` would read (``1_0``, ``٣``, `` 5``)."""
    if _TYPED_WHOLE.fullmatch(text) is None:
        raise ValueError(f"not a whole number in digits: {text!r}")
    return int(text)


def parse_duration(value: Any, *, name: str = "duration") -> float:
    """Return ``value`` as seconds (a non-negative float).

    Accepts ``"30s"``, ``"15m"``, ``"24h"``, ``"30d"``, ``"1h30m"``, ``"250ms"``,
    numbers of seconds and :class:`~datetime.timedelta`. Raises
    :class:`~stackshift.errors.ValidationError` (a ``ValueError``) otherwise.
    """
    if isinstance(value, bool):
        raise ValidationError(f"{name}: expected a duration, got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        # Short strings, the durations written in code, are parsed once: a
        # loop's ctx.step.sleep("5m") parses its duration again on every replay.
        parsed = _parsed_short(value) if len(value) <= 40 else _text_seconds(value)
        if parsed is None:
            if _negated(value):
                raise ValidationError(f"{name}: {value!r} must be a finite, non-negative duration")
            raise ValidationError(
                f"{name}: {value!r} is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"
            )
        seconds = parsed
    else:
        raise ValidationError(f"{name}: expected a duration, got {type(value).__name__}")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValidationError(f"{name}: {value!r} must be a finite, non-negative duration")
    if seconds > MAX_DURATION:
        # Longer would put times past what datetimes (and readers of runs) can hold.
        raise ValidationError(f"{name}: {value!r} is longer than 100 years")
    return seconds


def parse_typed_duration(text: str, *, name: str) -> float:
    """A duration typed as text (a command-line option, a form field) as seconds: a
    bare number is seconds (``10``, ``1.5``), other text one of the forms of
    :func:`parse_duration`. An error quotes the text as typed."""
    try:
        seconds = float(text)
    except ValueError:
        return parse_duration(text, name=name)
    if TYPED_SECONDS.fullmatch(text.strip()) is None and math.isfinite(seconds):
        # A number Python reads but not in digits alone ('1e3', '1_0', '+5', '٣');
        # NaN and infinity are refused below as any such duration is.
        raise ValidationError(
            f"{name}: seconds are written in digits (e.g. '60', '1.5'), got {text!r}")
    try:
        return parse_duration(seconds, name=name)
    except ValidationError as exc:
        # The number as it was typed ('-5', '1e999'), not as read (-5.0, inf).
        raise ValidationError(str(exc).replace(f"{name}: {seconds!r}", f"{name}: {text!r}", 1)
                              ) from None


def _text_seconds(value: str) -> float | None:
    """The seconds ``value`` (``"1h30m"``) names, or None if it names none."""
    text = value.strip().lower()
    pos = 0
    seconds = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return seconds if text and pos == len(text) else None


_parsed_short = functools.lru_cache(maxsize=1024)(_text_seconds)


def _negated(value: str) -> bool:
    """Whether ``value`` is a duration of more than zero with a minus sign before
    it (``"-5m"``): refused as negative rather than as text of no duration."""
    text = value.strip()
    if not re.match(r"-[0-9]", text):
        return False
    seconds = _text_seconds(text[1:])
    return seconds is not None and seconds > 0


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that holds it whole: ``"365d"``, ``"90m"``, ``"1.5s"``."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def span(seconds: float) -> str:
    """A short human duration: ``850ms``, ``12.3s``, ``4m05s``, ``2h10m``, ``3d4h``."""
    seconds = max(0.0, seconds)
    # Each form rounds first, so that 0.9996 s reads 1.0s, not 1000ms.
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f}ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def _plus_read_as_space(text: str) -> str:
    """The end of the error for a time whose offset has a space in place of its
    ``+`` (``2026-05-06T09:00:00 02:00``): how a ``+`` left as it is in a URL's
    query string arrives (``?createdAfter=...+02:00``)."""
    head, space, offset = text.rpartition(" ")
    if space and re.fullmatch(r"\d\d(:?\d\d)?", offset):
        try:
            datetime.fromisoformat(f"{head}+{offset}")
        except ValueError:
            return ""
        return ("; a space stands where its offset's '+' goes: in a URL's query string "
                "'+' reads as a space, so write it %2B (or give the time in UTC with 'Z')")
    return ""


def parse_instant(value: Any, *, name: str = "time") -> float:
    """Return ``value`` (an aware ``datetime`` or an ISO-8601 string) as epoch seconds.

    Naive datetimes and strings without an offset are refused: the engine runs
    across machines and time zones, so the caller must say which instant it means.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"{name}: {value!r} is not an ISO-8601 time (e.g. '2026-05-06T09:00:00Z')"
                + _plus_read_as_space(text)) from None
    else:
        raise ValidationError(f"{name}: expected a datetime or ISO-8601 string, got {value!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError(f"{name}: {value!r} has no time zone; give an offset or 'Z'")
    try:
        # Every reader shows times in UTC: refuse an instant it cannot show (an
        # offset can carry 9999-12-31 into the year 10000).
        moment.astimezone(UTC)
    except OverflowError:
        raise ValidationError(f"{name}: {value!r} is outside the years 1 to 9999 in UTC"
                              ) from None
    seconds = moment.timestamp()
    if _read_back(seconds) is None:
        # Stored as epoch seconds, the last microseconds of 9999 round up into 10000.
        raise ValidationError(f"{name}: {value!r} is too close to the end of the year 9999"
                              " in UTC to be stored")
    return seconds


def parse_epoch(value: float, *, name: str = "time") -> float:
    """``value``, epoch seconds, as a time the engine can store and show."""
    if isinstance(value, bool):
        raise ValidationError(f"{name} must be a time (epoch seconds, a datetime or an"
                              f" ISO-8601 string), got {value!r}")
    seconds = float(value)
    if _read_back(seconds) is None:  # NaN, infinity, outside the years 1 to 9999
        raise ValidationError(f"{name}: {value!r} is not a time in epoch seconds within the"
                              " years 1 to 9999")
    return seconds


def to_datetime(epoch: float | None) -> datetime | None:
    """Epoch seconds to an aware UTC datetime (``None`` stays ``None``)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC)


def _read_back(epoch: float) -> datetime | None:
    """``epoch`` as it reads back (:func:`to_datetime`); ``None`` before the year 1."""
    try:
        return datetime.fromtimestamp(epoch, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def time_bound(value: Any, *, name: str) -> float:
    """The bound of a time filter (``created_after``, ``created_before``) on stored times.

    Times are stored as epoch seconds and read back as datetimes rounded to the
    microsecond, so a run that shows ``created_at`` ``T`` may be stored a fraction
    of a microsecond before ``T``. This is the earliest stored time that reads back
    at or after the instant ``value`` names: a stored time ``>=`` it shows a time at
    or after that instant, one ``<`` it a time before, so that filtering on a time
    read from a run keeps that run on the side its time shows.
    """
    seconds = parse_instant(value, name=name)
    target = _read_back(seconds)
    if target is None:  # at the edge of the years a datetime holds: nothing reads back there
        return seconds
    micros = (target - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    bound = (micros - 0.5) / 1e6  # within a step or two of floats of the answer
    while (shown := _read_back(bound)) is None or shown < target:
        bound = math.nextafter(bound, math.inf)
    while (shown := _read_back(lower := math.nextafter(bound, -math.inf))) is not None \
            and shown >= target:
        bound = lower
    return bound
