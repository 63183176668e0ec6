"""Retry decisions: how long to wait before the next attempt, and whether to retry."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from ..durations import parse_duration
from ..errors import ValidationError


def _factor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1:
        raise ValidationError(f"backoff.factor: expected a number >= 1, got {value!r}")
    return float(value)


def _jitter(value: object) -> bool:
    """``True`` or ``False`` (``1`` and ``0`` read as them); anything else is refused:
    ``bool("no")`` is ``True``, so a string or ``None`` would silently mean jitter."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise ValidationError(f"backoff.jitter: expected True or False, got {value!r}")


@dataclass(frozen=True, init=False)
class Backoff:
    """Exponential backoff with full jitter over the upper half of each step.

    The delay before attempt ``n + 1`` (after ``n`` failures) is drawn from
    ``[d/2, d]`` where ``d = min(cap, base * factor ** (n - 1))``.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 600.0
    jitter: bool = True

    def __init__(self, base: float | str | timedelta = 1.0, factor: float = 2.0,
                 cap: float | str | timedelta = 600.0, jitter: bool = True) -> None:
        """Check the fields as :meth:`parse` checks a dict's (``base`` and ``cap``
        may be durations such as ``"30s"``, kept as seconds): a bad one is refused
        when the job is registered, not when an attempt fails."""
        object.__setattr__(self, "base", parse_duration(base, name="backoff.base"))
        object.__setattr__(self, "factor", _factor(factor))
        object.__setattr__(self, "cap", parse_duration(cap, name="backoff.cap"))
        object.__setattr__(self, "jitter", _jitter(jitter))

    @classmethod
    def parse(cls, value: object) -> Backoff:
        """Accept a ``Backoff``, a dict of its fields, or ``None`` for the default.

        Anything else, an unknown field or a bad value raises
        :class:`~stackshift.errors.ValidationError` naming the field."""
        if value is None:
            return cls()
        if isinstance(value, Backoff):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"base", "factor", "cap", "jitter"}
            if unknown:
                raise ValidationError(f"backoff: unknown option(s) {sorted(unknown)}")
            return cls(**value)
        raise ValidationError(f"backoff: expected a Backoff or a dict, got {value!r}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based)."""
        try:
            raw = min(self.cap, self.base * float(self.factor) ** max(0, failures - 1))
        except OverflowError:  # far past the cap (e.g. factor 3, attempt 700)
            raw = self.cap
        if not self.jitter:
            return raw
        return (rng or random).uniform(raw / 2, raw)
