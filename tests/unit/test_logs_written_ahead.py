"""A database worker's pending log records: written ahead in batches, in order, and
never lost to a write that fails (the database unreachable for a moment)."""

from __future__ import annotations

import time

import pytest

from stackshift.store.base import LogWrite
from stackshift.worker.invocation import LogsWrittenAhead


def record(n: int) -> LogWrite:
    return LogWrite(float(n), "INFO", "app", f"record {n}", "s", 1)


class Database:
    """Where written records land; ``down`` makes each write fail."""

    def __init__(self) -> None:
        self.rows: list[LogWrite] = []
        self.down = False
        self.tries = 0

    def write(self, records: list[LogWrite]) -> None:
        self.tries += 1
        if self.down:
            raise OSError("connection refused")
        self.rows.extend(records)


def test_every_thousand_records_are_written_by_the_thread_that_logs() -> None:
    db = Database()
    logs = LogsWrittenAhead(db.write)
    for n in range(2_500):
        logs.add(record(n))
        assert len(logs) < LogsWrittenAhead.FLUSH_RECORDS
    assert db.rows == [record(n) for n in range(2_000)]
    assert logs.take() == [record(n) for n in range(2_000, 2_500)]


def test_long_messages_are_written_before_a_thousand_pile_up() -> None:
    db = Database()
    logs = LogsWrittenAhead(db.write)
    big = LogWrite(0.0, "INFO", "app", "x" * 65_536, None, 1)
    for _ in range(4):
        logs.add(big)
    assert db.rows == [big] * 4 and len(logs) == 0


def test_a_failed_write_keeps_the_records_in_order_and_pauses_before_trying_again() -> None:
    class Quick(LogsWrittenAhead):
        PAUSE_AFTER_FAILURE = 0.2

    db = Database()
    logs = Quick(db.write)
    db.down = True
    for n in range(1_500):
        logs.add(record(n))
    # One try at the thousandth record; then the thread that logs leaves them be.
    assert db.tries == 1 and db.rows == [] and len(logs) == 1_500
    db.down = False
    time.sleep(0.25)  # the pause is over
    logs.add(record(1_500))
    assert db.tries == 2 and db.rows == [record(n) for n in range(1_501)]


def test_records_taken_for_a_renewal_that_fails_are_put_back_first() -> None:
    logs = LogsWrittenAhead(Database().write)
    logs.add(record(0))
    with pytest.raises(OSError), logs.ahead() as taken:
        assert taken == [record(0)]
        logs.add(record(1))  # logged while the renewal is in flight
        raise OSError("connection refused")
    assert logs.take() == [record(0), record(1)]


def test_a_second_renewal_takes_nothing_while_one_is_in_flight() -> None:
    logs = LogsWrittenAhead(Database().write)
    logs.add(record(0))
    with logs.ahead() as first:
        logs.add(record(1))
        with logs.ahead() as second:
            assert second == []
    assert first == [record(0)] and logs.take() == [record(1)]
