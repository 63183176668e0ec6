"""Recurring schedules: the cron grammar and the ticks it produces (pure, no I/O).

Grammar: five cron fields (minute hour day-of-month month day-of-week), the
descriptors ``@hourly @daily @midnight @weekly @monthly @yearly @annually``, and
``@every <duration>`` (e.g. ``@every 90s``, ``@every 1h30m``). Cron fields are
evaluated in the schedule's time zone (UTC unless given); ``@every`` ticks are
multiples of the interval since the Unix epoch, so ``@every 5m`` fires at
:00, :05, :10 ... whatever the time zone.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

from ..durations import parse_duration
from ..errors import ValidationError

DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: The shortest ``@every`` interval.
MIN_INTERVAL = 1.0

#: The longest cron expression and zone name a new schedule takes, in characters:
#: each tick parses its expression again.
LONGEST_CRON = 200

#: Missed ticks are counted up to this many (a schedule down for years stops there).
MAX_COUNTED = 10_000
#: How many ticks at or before ``after`` :meth:`Cron.next_after` passes over:
#: every minute of a repeated stretch of the clock (an hour at most; two in
#: Antarctica/Troll), with room to spare.
PASSED_TICKS = 24 * 60


@dataclass(frozen=True)
class Cron:
    """A parsed schedule expression: ``next_after(t)`` gives the first tick after ``t``."""

    expression: str
    timezone: str
    #: the five cron fields, or None for ``@every``
    fields: str | None
    #: seconds between ticks for ``@every``
    interval: float | None

    def _multiples_to(self, moment: float) -> int:
        """The largest ``k`` whose tick ``k * interval`` is at or before ``moment``.

        The division alone may round across a tick: ``k * 3.3 / 3.3`` is just below
        ``k`` for some ``k``, and a tick would be its own next tick."""
        assert self.interval is not None
        k = math.floor(moment / self.interval)
        if (k + 1) * self.interval <= moment:
            return k + 1
        return k - 1 if k * self.interval > moment else k

    def next_after(self, after: float) -> float:
        """The first tick strictly after ``after`` (epoch seconds)."""
        if self.interval is not None:
            return (self._multiples_to(after) + 1) * self.interval
        assert self.fields is not None
        zone = ZoneInfo(self.timezone)
        ticks = CronSim(self.fields, datetime.fromtimestamp(math.floor(after), zone))
        try:
            for _ in range(PASSED_TICKS):
                # Ticks go forward in real time, also across daylight-saving changes.
                # From the second pass of a repeated hour, an expression naming its
                # hour gives that hour's remaining minutes first, at their first
                # pass: already gone, they are passed over.
                tick = next(ticks).timestamp()
                if tick > after:
                    return tick
        except StopIteration:  # pragma: no cover - cronsim rejects impossible dates
            pass
        raise ValidationError(f"cron {self.expression!r} never fires after {after}")

    def latest_due(self, tick: float, now: float) -> tuple[float, int]:
        """From a due ``tick`` (``tick <= now``): the most recent tick at or before
        ``now``, and how many earlier due ticks that passes over (counted up to
        :data:`MAX_COUNTED`).

        The ticks are the ones :meth:`next_after` gives, walked forward from
        ``tick``: the same instants a schedule kept up to date fires at, also
        across daylight-saving changes.
        """
        if self.interval is not None:
            latest = max(tick, self._multiples_to(now) * self.interval)
            return latest, min(round((latest - tick) / self.interval), MAX_COUNTED)
        daily = self._daily_ticks()
        if daily is not None:
            latest = max(tick, _daily_at_or_before(daily, now))
            passed = _daily_count(daily, latest) - _daily_count(daily, tick)
            return latest, min(passed, MAX_COUNTED)
        latest, skipped = tick, 0
        while skipped < MAX_COUNTED:
            following = self.next_after(latest)
            if following > now:
                return latest, skipped
            latest, skipped = following, skipped + 1
        return self._at_or_before(now, latest), skipped

    def _daily_ticks(self) -> list[int] | None:
        """For an expression in UTC that fires every day at the same times (its
        day-of-month, month and day-of-week fields ``*``): those times, in
        seconds since midnight, sorted. Its ticks are then counted by
        arithmetic rather than one by one. None for any other expression."""
        if self.fields is None or self.timezone not in UTC_NAMES:
            return None
        parts = self.fields.split(" ")
        if parts[2:] != ["*", "*", "*"]:
            return None
        sim = CronSim(self.fields, datetime.fromtimestamp(0, ZoneInfo(self.timezone)))
        return sorted(h * 3600 + m * 60 for h in sim.hours for m in sim.minutes)

    def _at_or_before(self, now: float, since: float) -> float:
        """The last tick at or before ``now``, given a tick ``since`` at or before it."""
        assert self.fields is not None
        span = 3600.0
        while True:
            # Forward from ever earlier points (an hour back, two, four ...) until
            # one reaches a tick at or before now.
            start = max(since, now - span)
            moment = start if start == since else self.next_after(start)
            if moment <= now:
                while (following := self.next_after(moment)) <= now:
                    moment = following
                return moment
            span *= 2


#: Zone names without daylight-saving changes whose cron ticks are counted by
#: arithmetic (see Cron._daily_ticks).
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal",
                       "Etc/Zulu", "Zulu", "GMT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0",
                       "Etc/GMT-0", "Etc/Greenwich", "Greenwich", "GMT0", "GMT+0", "GMT-0"})


def _daily_count(daily: list[int], moment: float) -> int:
    """How many ticks at the ``daily`` times there are from the epoch to ``moment``."""
    day = math.floor(moment / 86400)
    return day * len(daily) + bisect_right(daily, moment - day * 86400)


def _daily_at_or_before(daily: list[int], moment: float) -> float:
    """The last tick at the ``daily`` times at or before ``moment``."""
    day = math.floor(moment / 86400)
    index = bisect_right(daily, moment - day * 86400)
    if index:
        return float(day * 86400 + daily[index - 1])
    return float((day - 1) * 86400 + daily[-1])


#: The five fields in order, with the values each takes.
FIELDS = {
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31 or L, on a day the months given have",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT, 0 and 7 being Sunday",
}


def _field_problem(fields: str, exc: Exception) -> str:
    """cronsim's ``Bad minute`` as ``the minute field '61' is not valid (minute: 0-59)``."""
    name = str(exc).removeprefix("Bad ").strip()
    if name not in FIELDS:
        return str(exc)
    value = fields.split(" ")[list(FIELDS).index(name)]
    return f"the {name} field {value!r} is not valid ({name}: {FIELDS[name]})"


#: What a schedule does with a tick while the run of its previous tick has not
#: finished: start one anyway, or skip the tick (store/schedules.py).
OVERLAP_POLICIES = ("allow", "skip")


def check_overlap(value: object) -> str:
    if not isinstance(value, str) or value not in OVERLAP_POLICIES:
        raise ValidationError(f"overlap must be 'allow' or 'skip', got {value!r}")
    return value


#: Names some hosts' zone directories hold that are not IANA zones: ``localtime``
#: is the host's own setting (a link to /etc/localtime) and ``posixrules`` the
#: rules a host applies to POSIX TZ strings (often a link to America/New_York), so
#: a schedule in either would tick at other times, or not at all, on another host
#: (the tzdata package has neither).
_HOST_ZONES = frozenset({"localtime", "posixrules"})

#: Copies of the zones some hosts' zone directories hold besides them: not every
#: host has them (the tzdata package has neither), and ``right/`` zones count leap
#: seconds, which zoneinfo misreads (``right/Europe/Paris`` as UTC+2 in December).
_HOST_COPIES = ("posix/", "right/")


def check_timezone(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValidationError(f"timezone must be an IANA zone name such as 'UTC', got {name!r}")
    if name.startswith(_HOST_COPIES):
        zone = name.split("/", 1)[1]
        raise ValidationError(
            f"unknown timezone {name!r}: zones under {name.split('/', 1)[0]}/ are copies only"
            f" some hosts hold; use {zone!r}")
    try:
        if name in _HOST_ZONES:
            raise ZoneInfoNotFoundError(name)
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name the tzdata package reads as a path that is not a zone
        # file, such as a region ("Europe": a directory) or one too long for a
        # file name.
        like = _zones_like(name)
        advice = (f"did you mean {' or '.join(map(repr, like))}?" if like
                  else "use an IANA name such as 'UTC' or 'Europe/Paris'")
        raise ValidationError(f"unknown timezone {name!r}: {advice}") from None
    return name


def _zones_like(name: str) -> list[str]:
    """Zones ``name`` may stand for: the same name in other case, or a city's
    (``Paris``, ``new york``) in its region, at most three."""
    wanted = name.strip().replace(" ", "_").casefold()
    if not wanted:
        return []
    zones = [zone for zone in available_timezones()
             if not zone.startswith(_HOST_COPIES) and zone not in _HOST_ZONES]
    same = [zone for zone in zones if zone.casefold() == wanted]
    return same or sorted(zone for zone in zones
                          if zone.rsplit("/", 1)[-1].casefold() == wanted)[:3]


def parse_cron(expression: object, timezone: str = "UTC", *, stored: bool = False) -> Cron:
    """Parse ``expression``; :class:`ValidationError` says what is wrong with a bad one.

    ``stored``: a schedule's, read back, which :data:`LONGEST_CRON` (newer than
    some schedules) does not bound."""
    if not stored:
        for what, text in (("cron expression", expression), ("timezone", timezone)):
            if isinstance(text, str) and len(text) > LONGEST_CRON:
                raise ValidationError(f"{what} is {len(text):,} characters long; at most"
                                      f" {LONGEST_CRON} are taken")
    tz = check_timezone(timezone)
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError(f"cron expression must be a non-empty string, got {expression!r}")
    text = " ".join(expression.split())
    lowered = text.lower()
    if lowered.startswith("@every"):
        rest = text[len("@every"):].strip()
        if not rest:
            raise ValidationError("cron '@every' needs a duration, e.g. '@every 5m'")
        try:
            interval = parse_duration(rest, name="@every")
        except ValidationError as exc:
            raise ValidationError(f"invalid cron expression {text!r}: {exc}") from None
        if interval < MIN_INTERVAL:
            raise ValidationError(f"invalid cron expression {text!r}: @every needs at least 1s")
        return Cron(text, tz, None, interval)
    if text.startswith("@"):
        fields = DESCRIPTORS.get(lowered)
        if fields is None:
            known = " ".join(sorted(DESCRIPTORS))
            raise ValidationError(
                f"invalid cron expression {text!r}: unknown descriptor (use {known} or @every)"
            )
    else:
        count = len(text.split(" "))
        if count != 5:
            raise ValidationError(
                f"invalid cron expression {text!r}: expected 5 fields "
                f"(minute hour day-of-month month day-of-week), got {count}"
            )
        fields = text
    try:
        CronSim(fields, datetime.fromtimestamp(0, ZoneInfo(tz)))
    except (CronSimError, ValueError, IndexError) as exc:
        raise ValidationError(f"invalid cron expression {text!r}: {_field_problem(fields, exc)}"
                              ) from None
    cron = Cron(text, tz, fields, None)
    try:
        cron.next_after(0.0)
    except (CronSimError, ValueError) as exc:
        raise ValidationError(f"invalid cron expression {text!r}: {exc}") from None
    return cron
