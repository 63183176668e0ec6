"""Limits and defaults of one StackShift installation."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .durations import parse_duration, parse_typed_duration, parse_typed_whole
from .errors import ValidationError
from .jobs import check_name
from .serialization import MiB

#: What a time setting takes: seconds, a duration such as ``"30d"``, or a timedelta.
DurationLike = float | str | timedelta

#: The longest key of any kind (idempotency, correlation, concurrency, state):
#: the HTTP API and the database's indexes hold no longer ones.
LONGEST_KEY = 512


def program_setting(name: str) -> str:
    """How a program raises its limit ``name``."""
    return f"Settings({name}=...)"


def server_setting(name: str) -> str:
    """How a server's limit ``name`` is raised: its clients' and workers' own
    ``Settings`` change nothing there."""
    return f"the server's --setting {name}=..."


def command_line_setting(name: str) -> str:
    """How the limit ``name`` of a ``stackshift`` command on a database is raised."""
    return f"stackshift --setting {name}=..."


#: Whole-number settings and the least and most each takes.
_WHOLE = {
    "max_payload_bytes": (1, None),
    "max_step_result_bytes": (1, None),
    "max_event_payload_bytes": (1, None),
    "max_state_value_bytes": (1, None),
    "max_state_key_length": (1, LONGEST_KEY),
    "max_idempotency_key_length": (1, LONGEST_KEY),
    "default_max_attempts": (1, 1000),
    # A SQL LIMIT: within a 64-bit integer, and far more than a round can delete.
    "retention_batch": (1, 1_000_000),
}
#: Time settings (stored as seconds, more than 0); ``run_retention`` may also be None.
_DURATIONS = ("default_idempotency_ttl", "max_idempotency_ttl", "event_retention",
              "event_dedupe_window", "starvation_limit", "run_retention")


@dataclass(frozen=True)
class Settings:
    """Every field is checked as the settings are made: a bad value raises
    :class:`~stackshift.errors.ValidationError` naming the field."""

    max_payload_bytes: int = MiB
    max_step_result_bytes: int = MiB
    max_event_payload_bytes: int = MiB
    max_state_value_bytes: int = 256 * 1024
    max_state_key_length: int = 512
    max_idempotency_key_length: int = 512
    default_idempotency_ttl: float = 24 * 3600.0
    max_idempotency_ttl: float = 365 * 86400.0
    #: how long events are kept (seconds, or a duration such as "30d")
    event_retention: float = 7 * 86400.0
    #: how long an event's idempotency key holds (seconds, or a duration)
    event_dedupe_window: float = 24 * 3600.0
    default_max_attempts: int = 3
    default_queue: str = "default"
    #: a run ready this long claims ahead of every priority (oldest first)
    starvation_limit: float = 300.0
    #: finished runs are deleted this long after they finished (None: kept forever)
    run_retention: float | None = 30 * 86400.0
    #: rows deleted per clean-up transaction
    retention_batch: int = 500

    if TYPE_CHECKING:  # what __init__ takes: time fields take durations, stored as seconds
        def __init__(
            self,
            max_payload_bytes: int = ...,
            max_step_result_bytes: int = ...,
            max_event_payload_bytes: int = ...,
            max_state_value_bytes: int = ...,
            max_state_key_length: int = ...,
            max_idempotency_key_length: int = ...,
            default_idempotency_ttl: DurationLike = ...,
            max_idempotency_ttl: DurationLike = ...,
            event_retention: DurationLike = ...,
            event_dedupe_window: DurationLike = ...,
            default_max_attempts: int = ...,
            default_queue: str = ...,
            starvation_limit: DurationLike = ...,
            run_retention: DurationLike | None = ...,
            retention_batch: int = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        # Checked here, not where a value is first used: a retention of 0 or less
        # would keep nothing, a size of -1 would refuse everything.
        for name, (least, most) in _WHOLE.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(f"Settings.{name}: expected a whole number, got {value!r}")
            if value < least or (most is not None and value > most):
                upto = "" if most is None else f" and at most {most}"
                raise ValidationError(f"Settings.{name} must be {least} or more{upto}, "
                                      f"got {value!r}")
        for name in _DURATIONS:
            value = getattr(self, name)
            if value is None and name == "run_retention":
                continue
            seconds = parse_duration(value, name=f"Settings.{name}")
            if seconds <= 0:
                raise ValidationError(f"Settings.{name} must be more than 0")
            object.__setattr__(self, name, seconds)
        check_name(self.default_queue, "Settings.default_queue")
        if self.default_idempotency_ttl > self.max_idempotency_ttl:
            raise ValidationError("Settings.default_idempotency_ttl must be at most "
                                  "Settings.max_idempotency_ttl")


def setting_names() -> list[str]:
    """The names of the settings, in their order."""
    return [f.name for f in fields(Settings)]


def parse_setting(assignment: str) -> tuple[str, Any]:
    """``"name=value"`` (a command-line flag) as the name and the value
    :class:`Settings` takes: a whole number, a duration, a name, or ``none`` for
    ``run_retention``. The value is checked when the settings are made."""
    name, sep, text = assignment.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in setting_names():
        raise ValidationError(f"{assignment!r} is not NAME=VALUE with NAME one of "
                              f"{', '.join(setting_names())}")
    text = text.strip()
    if name in _WHOLE:
        try:
            return name, parse_typed_whole(text)
        except ValueError:
            raise ValidationError(
                f"Settings.{name}: expected a whole number, got {text!r}") from None
    if name == "run_retention" and text.lower() == "none":
        return name, None
    if name in _DURATIONS:
        # Seconds in digits, or a duration such as '30d' (not '1_000', '1e3' or '٣').
        return name, parse_typed_duration(text, name=f"Settings.{name}")
    return name, text
