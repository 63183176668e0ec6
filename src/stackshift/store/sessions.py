"""Dashboard sessions ended by logging out.

A dashboard session is a signed cookie, not a row: while it lasts the server
keeps nothing about it. Logging out records the session's id here until the
cookie would have expired anyway, so that a copy of the cookie is refused by
every process on the database, before and after a restart. Retention deletes
the records once their cookies have expired.
"""

from __future__ import annotations

from .database import Database


class SessionStore:
    db: Database

    def end_dashboard_session(self, session_id: str, expires_at: float) -> None:
        """Record the session ``session_id`` as ended until ``expires_at`` (epoch
        seconds); ending it again changes nothing."""
        with self.db.write_one() as tx:
            tx.run("end_dashboard_session", id=session_id, expires_at=expires_at)

    def dashboard_session_open(self, session_id: str, key_id: str | None) -> bool:
        """Whether the session ``session_id`` was not ended and, given ``key_id``,
        the API key with that id exists and is not revoked: one indexed lookup each,
        in one statement."""
        with self.db.read() as tx:
            row = tx.one("dashboard_session_open", id=session_id, key_id=key_id)
        return row is not None and bool(row["open"])
