-- 0001: the initial schema.
-- Times are epoch seconds (REAL). JSON values are stored as canonical JSON text.

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    job              TEXT NOT NULL,
    queue            TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                        ('scheduled', 'queued', 'running', 'waiting', 'retrying',
                         'completed', 'failed', 'cancelled')),
    payload          TEXT NOT NULL,
    result           TEXT,
    error            TEXT,
    -- attempts started so far; the current attempt while running or waiting
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    -- attempts made before the last manual retry (which grants a fresh budget)
    retry_base       INTEGER NOT NULL DEFAULT 0,
    -- 1 when the next claim continues the current attempt (after a wait or sleep)
    resuming         INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    priority         INTEGER NOT NULL DEFAULT 0,
    concurrency_key  TEXT,
    created_at       REAL NOT NULL,
    scheduled_at     REAL,
    -- when the run may next be claimed (queued/scheduled/retrying) or woken (waiting)
    available_at     REAL,
    started_at       REAL,
    finished_at      REAL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    waiting_for      TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    updated_at       REAL NOT NULL,
    -- a run is leased exactly while it is running
    CHECK ((status = 'running') = (lease_owner IS NOT NULL)),
    -- finished runs have a finish time, others do not
    CHECK ((status IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);

-- The claim path: only runs that can become ready are in this index, so finished
-- runs never slow the claim query down.
CREATE INDEX runs_ready ON runs (priority DESC, available_at, id)
    WHERE status IN ('queued', 'scheduled', 'retrying');
-- Timers (sleep wake-ups, wait timeouts) and the lease rescuer.
CREATE INDEX runs_timers ON runs (available_at) WHERE status = 'waiting';
CREATE INDEX runs_leases ON runs (lease_expires_at) WHERE status = 'running';
-- Listing and filtering (ids are time-ordered, so id order is creation order).
CREATE INDEX runs_status ON runs (status, id);
CREATE INDEX runs_job ON runs (job, id);
CREATE INDEX runs_queue ON runs (queue, id);
CREATE INDEX runs_idempotency_key ON runs (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Idempotency keys for run starts (scope 'run') and event sends (scope 'event').
-- The primary key is what makes a start happen once; an expired key is taken
-- over in the same upsert statement.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    target_id    TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

CREATE TABLE steps (
    run_id       TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('run', 'sleep', 'wait')),
    function     TEXT,
    status       TEXT NOT NULL CHECK (status IN ('completed', 'failed', 'waiting')),
    result       TEXT,
    error        TEXT,
    attempt      INTEGER NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE attempts (
    run_id       TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    status       TEXT NOT NULL CHECK (status IN
                    ('running', 'waiting', 'completed', 'failed', 'cancelled')),
    worker_id    TEXT,
    started_at   REAL NOT NULL,
    finished_at  REAL,
    error        TEXT,
    PRIMARY KEY (run_id, number)
);

CREATE TABLE timeline (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    at       REAL NOT NULL,
    kind     TEXT NOT NULL,
    attempt  INTEGER,
    step     TEXT,
    data     TEXT
);
CREATE INDEX timeline_run ON timeline (run_id, id);

CREATE TABLE logs (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt  INTEGER,
    step     TEXT,
    at       REAL NOT NULL,
    level    TEXT NOT NULL,
    logger   TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX logs_run ON logs (run_id, id);

CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    jobs          TEXT NOT NULL,
    queues        TEXT,
    concurrency   INTEGER NOT NULL,
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL
);

-- Events are kept for their retention (7 days by default). A missing correlation
-- key is stored as '' so that "no key" matches "no key" through plain equality.
CREATE TABLE events (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    correlation_key  TEXT NOT NULL,
    payload          TEXT NOT NULL,
    idempotency_key  TEXT,
    received_at      REAL NOT NULL,
    expires_at       REAL NOT NULL
);
CREATE INDEX events_match ON events (name, correlation_key, received_at);
CREATE INDEX events_expiry ON events (expires_at);

-- One open wait per waiting run.
CREATE TABLE waits (
    run_id           TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    step_key         TEXT NOT NULL,
    event_name       TEXT NOT NULL,
    correlation_key  TEXT NOT NULL,
    created_at       REAL NOT NULL,
    timeout_at       REAL NOT NULL,
    on_timeout       TEXT NOT NULL CHECK (on_timeout IN ('fail', 'continue', 'cancel'))
);
CREATE INDEX waits_match ON waits (event_name, correlation_key);

-- Which events each run has taken, so no run takes the same event twice.
CREATE TABLE event_consumptions (
    run_id    TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    event_id  TEXT NOT NULL,
    step_key  TEXT NOT NULL,
    at        REAL NOT NULL,
    PRIMARY KEY (run_id, event_id)
);
CREATE INDEX event_consumptions_event ON event_consumptions (event_id);

CREATE TABLE state (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    expires_at  REAL,
    updated_at  REAL NOT NULL
);
CREATE INDEX state_expiry ON state (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE locks (
    key         TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_at  REAL NOT NULL
);
