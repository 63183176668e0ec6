"""Retry rules: backoff bounds and cap, and how an attempt's ending is decided."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from stackshift import (
    Backoff,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StackShiftError,
)
from stackshift.engine import outcomes

NOW = 1_767_603_600.0


# -- backoff -------------------------------------------------------------------------


def test_default_backoff_is_base_1s_factor_2_cap_10_minutes() -> None:
    b = Backoff()
    assert (b.base, b.factor, b.cap, b.jitter) == (1.0, 2.0, 600.0, True)


@pytest.mark.parametrize("failures", range(1, 16))
def test_jittered_delay_stays_within_half_to_full_exponential_step(failures: int) -> None:
    rng = random.Random(failures)
    b = Backoff()
    ceiling = min(600.0, 2.0 ** (failures - 1))
    delays = [b.delay(failures, rng) for _ in range(300)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    # Jitter really spreads the delays (thundering herds are what it is for).
    assert max(delays) - min(delays) > ceiling / 4


def test_delays_grow_exponentially_without_jitter() -> None:
    b = Backoff(jitter=False)
    assert [b.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 32, 64]


def test_delay_is_capped_at_ten_minutes() -> None:
    b = Backoff(jitter=False)
    assert b.delay(10) == 512
    assert b.delay(11) == 600
    assert b.delay(40) == 600
    assert b.delay(1000) == 600  # no overflow for absurd attempt counts
    rng = random.Random(7)
    assert all(300 <= Backoff().delay(1000, rng) <= 600 for _ in range(100))


def test_huge_attempt_numbers_with_a_steep_factor_stay_at_the_cap() -> None:
    # 3 ** 999 does not fit in a float; the delay is the cap, not an OverflowError.
    assert Backoff(factor=3, jitter=False).delay(1000) == 600
    assert Backoff.parse({"factor": 10, "jitter": False}).delay(500) == 600


def test_custom_backoff_from_job_options() -> None:
    b = Backoff.parse({"base": "2s", "factor": 3, "cap": "1m", "jitter": False})
    assert b == Backoff(base=2.0, factor=3.0, cap=60.0, jitter=False)
    assert [b.delay(n) for n in range(1, 6)] == [2, 6, 18, 54, 60]


def test_a_backoff_object_takes_durations_and_refuses_what_the_options_refuse() -> None:
    assert Backoff(base="2s", cap="1m") == Backoff(base=2.0, cap=60.0)
    assert Backoff(base=timedelta(minutes=1)).base == 60.0
    for bad in ({"base": "soon"}, {"base": None}, {"cap": -1}, {"factor": 0.5},
                {"factor": True}):
        with pytest.raises(ValueError, match="backoff"):
            Backoff(**bad)  # type: ignore[arg-type]


def test_backoff_parse_defaults_and_passthrough() -> None:
    assert Backoff.parse(None) == Backoff()
    custom = Backoff(base=5)
    assert Backoff.parse(custom) is custom
    assert Backoff.parse({"cap": 30}) == Backoff(cap=30.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"bse": 1}, "unknown option"),
        ({"base": "soon"}, "backoff.base"),
        ({"cap": -1}, "backoff.cap"),
        ({"factor": "x"}, "backoff.factor"),
        ({"factor": 0.5}, "backoff.factor"),
        ({"factor": -2}, "backoff.factor"),
        ("exponential", "expected a Backoff or a dict"),
        (5, "expected a Backoff or a dict"),
    ],
)
def test_bad_backoff_options_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff.parse(value)


# -- RetryAfterError -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [("30s", 30.0), ("1h30m", 5400.0), (12, 12.0), (timedelta(minutes=2), 120.0)],
)
def test_retry_after_error_takes_any_duration(delay: object, seconds: float) -> None:
    err = RetryAfterError(delay)
    assert err.delay == seconds
    assert isinstance(err, StackShiftError)
    assert str(err) == f"retry after {seconds:g}s"


def test_retry_after_error_keeps_a_custom_message() -> None:
    assert str(RetryAfterError("5m", "rate limited by the mail provider")) == (
        "rate limited by the mail provider"
    )


def test_retry_after_error_refuses_a_bad_duration_naming_its_delay() -> None:
    with pytest.raises(ValueError, match=r"^RetryAfterError delay: 'later' is not a duration"):
        RetryAfterError("later")
    with pytest.raises(ValueError, match=r"^RetryAfterError delay: -1 must be a finite"):
        RetryAfterError(-1)


# -- deciding how an attempt ends ------------------------------------------------------


def _failure(exc: BaseException, used: int, max_attempts: int = 5,
             backoff: Backoff | None = None):  # type: ignore[no-untyped-def]
    return outcomes.failure(exc, attempts_used=used, max_attempts=max_attempts,
                            backoff=backoff or Backoff(), now=NOW)


def test_ordinary_error_with_attempts_left_retries_after_backoff() -> None:
    for used in range(1, 5):
        outcome = _failure(RuntimeError("smtp down"), used)
        assert outcome.status == "retrying"
        ceiling = 2.0 ** (used - 1)
        assert outcome.retry_at is not None
        assert NOW + ceiling / 2 <= outcome.retry_at <= NOW + ceiling
        assert outcome.error is not None
        assert outcome.error["type"] == "RuntimeError"
        assert outcome.error["message"] == "smtp down"


def test_last_attempt_fails_the_run() -> None:
    outcome = _failure(RuntimeError("smtp down"), used=5)
    assert outcome.status == "failed"
    assert outcome.retry_at is None


def test_non_retriable_error_fails_at_once() -> None:
    outcome = _failure(NonRetriableError("card declined"), used=1, max_attempts=10)
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["type"] == "NonRetriableError"


def test_subclass_of_non_retriable_error_fails_at_once() -> None:
    class CardDeclined(NonRetriableError):
        pass

    assert _failure(CardDeclined("no"), used=1).status == "failed"


def test_non_determinism_error_fails_at_once() -> None:
    assert _failure(NonDeterminismError("step moved"), used=1).status == "failed"


def test_retry_after_error_sets_the_next_delay_exactly() -> None:
    outcome = _failure(RetryAfterError("90s"), used=1, backoff=Backoff(jitter=False))
    assert outcome.status == "retrying"
    assert outcome.retry_at == NOW + 90
    # Longer than the cap is allowed: the error knows best.
    assert _failure(RetryAfterError("2h"), used=1).retry_at == NOW + 7200


def test_retry_after_error_on_the_last_attempt_still_fails() -> None:
    assert _failure(RetryAfterError("1s"), used=5).status == "failed"


def test_job_backoff_is_used_for_the_delay() -> None:
    slow = Backoff(base=60, factor=1, jitter=False)
    assert _failure(RuntimeError("x"), used=3, backoff=slow).retry_at == NOW + 60


def test_failure_records_the_traceback() -> None:
    try:
        raise ValueError("bad row 7")
    except ValueError as exc:
        outcome = _failure(exc, used=1)
    assert outcome.error is not None
    tb = outcome.error["traceback"]
    assert tb is not None and "Traceback" in tb and "ValueError: bad row 7" in tb


def test_lost_worker_is_recorded_as_worker_lost_and_retried_without_backoff() -> None:
    # The worker vanished, the job did not fail: the next attempt is due at once,
    # whatever the job's backoff, but the lost attempt still counts.
    slow = Backoff(base=60, factor=1, jitter=False)
    outcome = outcomes.lost_worker(attempts_used=1, max_attempts=3, now=NOW)
    assert outcome.status == "retrying"
    assert outcome.error is not None and outcome.error["type"] == "WorkerLost"
    assert outcome.retry_at == NOW
    assert _failure(RuntimeError("x"), used=1, backoff=slow).retry_at == NOW + 60
    last = outcomes.lost_worker(attempts_used=3, max_attempts=3, now=NOW)
    assert last.status == "failed"
    assert last.error is not None and last.error["type"] == "WorkerLost"
