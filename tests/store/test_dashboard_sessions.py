"""Dashboard sessions ended by logging out, on every store: recorded durably, seen
by every process on the database, checked in one statement together with the
session's API key, and deleted by maintenance once their cookies have expired."""

from __future__ import annotations

from stackshift import StackShift
from stackshift.testing import FakeClock

HOUR = 3600.0


def ended_records(app: StackShift) -> list[tuple[str, float]]:
    with app._service.store.db.read() as tx:
        rows = tx.raw("SELECT id, expires_at FROM ended_sessions ORDER BY id", {})
    return [(row["id"], float(row["expires_at"])) for row in rows]


def test_a_logout_ends_that_session_only_and_every_process_sees_it(
    fake_app: StackShift, clock: FakeClock, db_url: str
) -> None:
    service = fake_app._service
    key, _ = service.create_api_key("ops")
    until = clock.now() + 12 * HOUR
    assert service.dashboard_session_open("session-a", key.id)
    assert service.dashboard_session_open("session-b", key.id)

    service.end_dashboard_session("session-a", until)
    service.end_dashboard_session("session-a", until + HOUR)  # again: the first one holds
    assert not service.dashboard_session_open("session-a", key.id)
    assert not service.dashboard_session_open("session-a", None)  # keys checked elsewhere
    assert service.dashboard_session_open("session-b", key.id)  # the same key's other one
    assert service.dashboard_session_open("session-c", None)
    assert ended_records(fake_app) == [("session-a", until)]

    # Another process on the database (another server, or this one restarted).
    other = StackShift(db_url, clock=clock)
    try:
        assert not other._service.dashboard_session_open("session-a", key.id)
        assert other._service.dashboard_session_open("session-b", key.id)
    finally:
        other.close()


def test_the_same_statement_checks_the_sessions_key(fake_app: StackShift) -> None:
    service = fake_app._service
    key, _ = service.create_api_key("ops")
    kept, _ = service.create_api_key("reports")
    service.revoke_api_key(key.id)
    assert not service.dashboard_session_open("session-a", key.id)  # revoked
    assert not service.dashboard_session_open("session-a", "key_never_created")
    assert service.dashboard_session_open("session-a", kept.id)
    assert service.dashboard_session_open("session-a", None)


def test_maintenance_deletes_the_records_once_the_cookies_have_expired(
    fake_app: StackShift, clock: FakeClock
) -> None:
    service = fake_app._service
    now = clock.now()
    service.end_dashboard_session("soon", now + HOUR)
    service.end_dashboard_session("later", now + 12 * HOUR)
    worker = fake_app.worker()

    worker.maintain()
    assert [name for name, _ in ended_records(fake_app)] == ["later", "soon"]
    clock.advance("1h")
    worker.maintain()
    assert [name for name, _ in ended_records(fake_app)] == ["later"]
    assert not service.dashboard_session_open("later", None)
    assert service.store.delete_expired(now + 12 * HOUR, 500)["ended_sessions"] == 1
    assert ended_records(fake_app) == []
