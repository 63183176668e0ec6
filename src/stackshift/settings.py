"""Limits and defaults of one StackShift installation."""

from __future__ import annotations

from dataclasses import dataclass

from .durations import parse_duration
from .errors import ValidationError
from .serialization import MiB


@dataclass(frozen=True)
class Settings:
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

    def __post_init__(self) -> None:
        # Checked here, not on the first send: a retention of 0 or less would keep
        # no event at all.
        for name in ("event_retention", "event_dedupe_window"):
            seconds = parse_duration(getattr(self, name), name=f"Settings.{name}")
            if seconds <= 0:
                raise ValidationError(f"Settings.{name} must be more than 0")
            object.__setattr__(self, name, seconds)
