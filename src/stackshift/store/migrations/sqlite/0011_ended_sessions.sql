-- 0011: dashboard sessions ended by logging out (the same table as PostgreSQL's
-- 0011). A session is a signed cookie, so it is not stored while it lasts: its
-- id is recorded here when its user logs out, and a cookie whose session id is
-- listed is refused by every dashboard on this database, however it was kept.
-- `expires_at` is when the cookie expires anyway: retention deletes the row then.
-- Adds an empty table: nothing waits while it is applied.

CREATE TABLE ended_sessions (
    id          TEXT PRIMARY KEY,
    expires_at  REAL NOT NULL
);
CREATE INDEX ended_sessions_expires_at ON ended_sessions (expires_at);
