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


# -- a remote worker's: sent ahead, and within a budget while they cannot be sent ----------


def test_a_remote_workers_records_are_sent_in_batches_of_a_quarter_of_its_budget() -> None:
    from stackshift.remote_worker import LOG_BUDGET, LogsSentAhead, sent_size

    server = Database()
    logs = LogsSentAhead(server.write)
    wide = [LogWrite(float(n), "INFO", "app", f"{n:04d} " + "x" * 1_000, "s", 1)
            for n in range(1_000)]
    for item in wide:
        logs.add(item)
    assert server.tries > 1
    assert logs.take() == wide[len(server.rows):] and server.rows == wide[:len(server.rows)]
    assert sum(map(sent_size, server.rows)) / server.tries <= LOG_BUDGET // 4 + 1_100


def test_while_a_remote_workers_records_cannot_be_sent_it_holds_them_within_its_budget() -> None:
    """The server unreachable: records put back after each failed send, and those
    logged meanwhile, are held as :class:`BoundedLogs` holds them; sent whole, with
    one warning for those dropped, once the server answers again."""
    from stackshift.remote_worker import LogsSentAhead, sent_size

    class Quick(LogsSentAhead):
        PAUSE_AFTER_FAILURE = 0.0

    server = Database()
    server.down = True
    logs = Quick(server.write, budget=16 * 1024)
    records = [record(n) for n in range(600)]
    for item in records:
        logs.add(item)
        assert logs._held.held_bytes <= 16 * 1024
    assert server.tries > 10 and server.rows == []
    server.down = False
    with logs.ahead() as taken:
        server.write(taken)
    warnings = [n for n, r in enumerate(server.rows) if r.level == "WARNING"]
    assert len(warnings) == 1
    at = warnings[0]
    head, tail = server.rows[:at], server.rows[at + 1:]
    assert head == records[:len(head)] and tail == records[-len(tail):]
    assert len(head) > 50 and len(tail) > 50
    assert server.rows[at].message.startswith(
        f"[... {600 - len(head) - len(tail)} log records (")
    assert sum(map(sent_size, server.rows)) <= 16 * 1024
    assert len(logs) == 0


def test_a_remote_workers_renewal_carries_runs_records_in_batches_within_a_request() -> None:
    from stackshift.remote_worker import LOG_BUDGET, _log_batches, sent_size

    wide = {f"run_{k}": [LogWrite(float(n), "INFO", "app", "x" * 10_000, "s", 1)
                         for n in range(20)] for k in range(60)}
    batches = _log_batches({**wide, "run_quiet": []})
    assert [run for batch in batches for run in batch] == list(wide)
    for batch in batches:
        assert sum(sent_size(r) for run in batch for r in wide[run]) <= LOG_BUDGET
    # A run's records are some 200 KB: two runs' fit one request, three do not.
    assert [len(batch) for batch in batches] == [2] * 30
