"""Every setting is checked as the Settings are made, with an error naming it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from stackshift import Settings, ValidationError

WHOLE = ["max_payload_bytes", "max_step_result_bytes", "max_event_payload_bytes",
         "max_state_value_bytes", "max_state_key_length", "max_idempotency_key_length",
         "default_max_attempts", "retention_batch"]
TIMES = ["default_idempotency_ttl", "max_idempotency_ttl", "event_retention",
         "event_dedupe_window", "starvation_limit", "run_retention"]


@pytest.mark.parametrize("name", WHOLE)
@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "must be 1 or more"), (-1, "must be 1 or more"), ("64", "expected a whole number"),
     (1.5, "expected a whole number"), (True, "expected a whole number"),
     (None, "expected a whole number")],
)
def test_a_bad_size_or_count_is_refused(name: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=f"^Settings.{name}:? .*{message}"):
        Settings(**{name: value})


@pytest.mark.parametrize("name", TIMES)
@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "must be more than 0"), ("0s", "must be more than 0"), (-1, "non-negative"),
     (float("nan"), "non-negative"), ("soon", "is not a duration"), ([], "expected a duration")],
)
def test_a_bad_time_is_refused(name: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=f"^Settings.{name}:? .*{message}"):
        Settings(**{name: value})


@pytest.mark.parametrize("name", TIMES)
def test_times_take_durations_and_are_kept_as_seconds(name: str) -> None:
    within = {"default_idempotency_ttl": 1}  # the default TTL is at most the longest
    assert getattr(Settings(**{**within, name: "15m"}), name) == 900.0
    assert getattr(Settings(**{**within, name: timedelta(hours=1)}), name) == 3600.0
    assert getattr(Settings(**{**within, name: 30}), name) == 30.0


def test_other_settings_are_checked_too() -> None:
    with pytest.raises(ValidationError, match=r"^Settings\.default_max_attempts must be 1 or "
                                               r"more and at most 1000, got 1001"):
        Settings(default_max_attempts=1001)
    with pytest.raises(ValidationError, match=r"^Settings\.default_queue 'a b' is invalid"):
        Settings(default_queue="a b")
    with pytest.raises(ValidationError, match="default_idempotency_ttl must be at most"):
        Settings(default_idempotency_ttl="2d", max_idempotency_ttl="1d")
    assert Settings(run_retention=None).run_retention is None
    for name in ("max_state_key_length", "max_idempotency_key_length"):
        with pytest.raises(ValidationError, match=f"^Settings.{name} must be 1 or more and "
                                                  "at most 512, got 513"):
            Settings(**{name: 513})
        assert getattr(Settings(**{name: 64}), name) == 64



@pytest.mark.parametrize("settings", [{"max_payload_bytes": 10}, "", 0])
def test_a_client_refuses_settings_that_are_not_settings(settings: Any, tmp_path: Any) -> None:
    # A dict was taken, and the first start failed with an AttributeError; an empty
    # one meant the defaults.
    from stackshift import StackShift

    with pytest.raises(ValidationError, match=r"^settings must be a stackshift\.Settings"):
        StackShift(f"sqlite:///{tmp_path / 'jobs.db'}", settings=settings)
    assert not (tmp_path / "jobs.db").exists()


def test_a_retention_batch_stays_within_what_a_database_limit_takes() -> None:
    assert Settings(retention_batch=1_000_000).retention_batch == 1_000_000
    with pytest.raises(ValidationError, match=r"^Settings\.retention_batch must be 1 or more "
                                               r"and at most 1000000, got 9223372036854775808"):
        Settings(retention_batch=2**63)
