"""Flow-control values: rate limits and concurrency limits (pure, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..durations import parse_duration
from ..errors import ValidationError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*([0-9]+)\s*/\s*(\S+)\s*$")  # ASCII digits, as the API's
#: Largest count in a rate limit (a bigger one is no limit in practice).
MAX_RATE_COUNT = 1_000_000
#: Longest rate-limit period.
MAX_RATE_PERIOD = 7 * 86400.0
#: Largest concurrency limit: a queue's ``concurrency``, a job's ``key_concurrency``
#: (SDK, worker API and push API alike) and a worker's slots.
MAX_CONCURRENCY = 100_000


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` attempts started in any window of ``period`` seconds."""

    count: int
    period: float

    @property
    def text(self) -> str:
        for unit, seconds in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
            if self.period == seconds:
                return f"{self.count}/{unit}"
        return f"{self.count}/{self.period:g}s"


def parse_rate_limit(value: object) -> RateLimit:
    """``"100/m"``, ``"10/s"``, ``"1000/h"``, ``"5/d"`` or ``"20/30s"`` (any duration)."""
    if not isinstance(value, str):
        raise ValidationError(f"rate_limit must be a string such as '100/m', got {value!r}")
    match = _RATE.match(value)
    if match is None:
        raise ValidationError(
            f"rate_limit {value!r} is invalid: use COUNT/PERIOD such as '100/m', '10/s', "
            "'1000/h' or '20/30s'"
        )
    count = int(match.group(1))
    unit = match.group(2).lower()
    period = _UNITS.get(unit)
    if period is None:
        try:
            period = parse_duration(unit, name="rate_limit period")
        except ValidationError:
            raise ValidationError(
                f"rate_limit {value!r} is invalid: the period must be s, m, h, d or a "
                "duration such as 30s"
            ) from None
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValidationError(f"rate_limit {value!r}: the count must be 1 to {MAX_RATE_COUNT}")
    if not 0.001 <= period <= MAX_RATE_PERIOD:
        raise ValidationError(f"rate_limit {value!r}: the period must be 1ms to 7d")
    return RateLimit(count, period)


def check_concurrency(value: object, what: str = "concurrency") -> int:
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= MAX_CONCURRENCY:
        raise ValidationError(
            f"{what} must be an integer from 1 to {MAX_CONCURRENCY}, got {value!r}")
    return value
