-- 0004: push mode. An endpoint is an application's handler route that the
-- server invokes to execute runs of the jobs it serves.
-- `secret` signs each request (HMAC-SHA256). Unlike an API key it cannot be
-- stored as a hash: the server needs the secret itself to sign.
-- `rules` is the endpoint's claim rules as JSON (per-job key limits and
-- failure handlers, sent by the application when it registers).
-- A delivery is one signed request; the route accepts each delivery once
-- (`accepted_at`), which is what makes a replayed request useless.

CREATE TABLE endpoints (
    id           TEXT PRIMARY KEY,
    url          TEXT NOT NULL UNIQUE,
    secret       TEXT NOT NULL,
    jobs         TEXT NOT NULL,
    rules        TEXT NOT NULL,
    concurrency  INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);

CREATE TABLE push_deliveries (
    id           TEXT PRIMARY KEY,
    endpoint_id  TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    accepted_at  REAL
);
CREATE INDEX push_deliveries_created ON push_deliveries (created_at);
