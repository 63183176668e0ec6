-- 0001: the initial schema, the same tables and rules as SQLite's 0001.
-- Times are epoch seconds (double precision). JSON values are stored as
-- canonical JSON text. Identifiers and keys use COLLATE "C" (byte order, as in
-- SQLite) so that id order is creation order and key-prefix ranges are exact
-- whatever the database's locale.
-- Applied by `stackshift migrate` (or on first use) inside one transaction,
-- under an advisory lock, so processes starting together cannot collide.

CREATE TABLE runs (
    id               text COLLATE "C" PRIMARY KEY,
    job              text COLLATE "C" NOT NULL,
    queue            text COLLATE "C" NOT NULL,
    status           text NOT NULL CHECK (status IN
                        ('scheduled', 'queued', 'running', 'waiting', 'retrying',
                         'completed', 'failed', 'cancelled')),
    payload          text NOT NULL,
    result           text,
    error            text,
    -- attempts started so far; the current attempt while running or waiting
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    -- attempts made before the last manual retry (which grants a fresh budget)
    retry_base       integer NOT NULL DEFAULT 0,
    -- 1 when the next claim continues the current attempt (after a wait or sleep)
    resuming         integer NOT NULL DEFAULT 0,
    idempotency_key  text COLLATE "C",
    priority         integer NOT NULL DEFAULT 0,
    concurrency_key  text COLLATE "C",
    created_at       double precision NOT NULL,
    scheduled_at     double precision,
    -- when the run may next be claimed (queued/scheduled/retrying) or woken (waiting)
    available_at     double precision,
    started_at       double precision,
    finished_at      double precision,
    lease_owner      text COLLATE "C",
    lease_expires_at double precision,
    waiting_for      text,
    cancel_requested integer NOT NULL DEFAULT 0,
    updated_at       double precision NOT NULL,
    -- a run is leased exactly while it is running
    CHECK ((status = 'running') = (lease_owner IS NOT NULL)),
    -- finished runs have a finish time, others do not
    CHECK ((status IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);

-- The claim path: only runs that can become ready are in this index, so finished
-- runs never slow the claim query down (claims lock with FOR NO KEY UPDATE SKIP
-- LOCKED, see sql/postgres.sql).
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

-- Wake-ups: a run that becomes ready to claim (started, resumed by an event or a
-- timer, released, retried by hand) notifies channel 'stackshift' with the
-- schema's name, and idle workers listening there claim it at once. The WHEN
-- clause keeps every other update (lease renewals, checkpoints) free of it;
-- notifications repeated in one transaction are delivered once.
CREATE FUNCTION notify_run_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stackshift', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_notify_ready AFTER INSERT OR UPDATE OF status ON runs
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION notify_run_ready();

-- Idempotency keys for run starts (scope 'run') and event sends (scope 'event').
-- The primary key is what makes a start happen once; an expired key is taken
-- over in the same upsert statement.
CREATE TABLE idempotency_keys (
    scope        text COLLATE "C" NOT NULL,
    key          text COLLATE "C" NOT NULL,
    target_id    text COLLATE "C" NOT NULL,
    fingerprint  text COLLATE "C" NOT NULL,
    created_at   double precision NOT NULL,
    expires_at   double precision NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

CREATE TABLE steps (
    run_id       text COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key          text COLLATE "C" NOT NULL,
    name         text COLLATE "C" NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('run', 'sleep', 'wait')),
    function     text,
    status       text NOT NULL CHECK (status IN ('completed', 'failed', 'waiting')),
    result       text,
    error        text,
    attempt      integer NOT NULL,
    started_at   double precision,
    finished_at  double precision,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE attempts (
    run_id       text COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    number       integer NOT NULL,
    status       text NOT NULL CHECK (status IN
                    ('running', 'waiting', 'completed', 'failed', 'cancelled')),
    worker_id    text COLLATE "C",
    started_at   double precision NOT NULL,
    finished_at  double precision,
    error        text,
    PRIMARY KEY (run_id, number)
);

CREATE TABLE timeline (
    id       bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    run_id   text COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    at       double precision NOT NULL,
    kind     text NOT NULL,
    attempt  integer,
    step     text COLLATE "C",
    data     text
);
CREATE INDEX timeline_run ON timeline (run_id, id);

CREATE TABLE logs (
    id       bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    run_id   text COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt  integer,
    step     text COLLATE "C",
    at       double precision NOT NULL,
    level    text NOT NULL,
    logger   text NOT NULL,
    message  text NOT NULL
);
CREATE INDEX logs_run ON logs (run_id, id);

CREATE TABLE workers (
    id            text COLLATE "C" PRIMARY KEY,
    hostname      text NOT NULL,
    pid           integer NOT NULL,
    jobs          text NOT NULL,
    queues        text,
    concurrency   integer NOT NULL,
    started_at    double precision NOT NULL,
    heartbeat_at  double precision NOT NULL
);

-- Events are kept for their retention (7 days by default). A missing correlation
-- key is stored as '' so that "no key" matches "no key" through plain equality.
CREATE TABLE events (
    id               text COLLATE "C" PRIMARY KEY,
    name             text COLLATE "C" NOT NULL,
    correlation_key  text COLLATE "C" NOT NULL,
    payload          text NOT NULL,
    idempotency_key  text COLLATE "C",
    received_at      double precision NOT NULL,
    expires_at       double precision NOT NULL
);
CREATE INDEX events_match ON events (name, correlation_key, received_at);
CREATE INDEX events_expiry ON events (expires_at);

-- One open wait per waiting run.
CREATE TABLE waits (
    run_id           text COLLATE "C" PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    step_key         text COLLATE "C" NOT NULL,
    event_name       text COLLATE "C" NOT NULL,
    correlation_key  text COLLATE "C" NOT NULL,
    created_at       double precision NOT NULL,
    timeout_at       double precision NOT NULL,
    on_timeout       text NOT NULL CHECK (on_timeout IN ('fail', 'continue', 'cancel'))
);
CREATE INDEX waits_match ON waits (event_name, correlation_key);

-- Which events each run has taken, so no run takes the same event twice.
CREATE TABLE event_consumptions (
    run_id    text COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    event_id  text COLLATE "C" NOT NULL,
    step_key  text COLLATE "C" NOT NULL,
    at        double precision NOT NULL,
    PRIMARY KEY (run_id, event_id)
);
CREATE INDEX event_consumptions_event ON event_consumptions (event_id);

CREATE TABLE state (
    key         text COLLATE "C" PRIMARY KEY,
    value       text NOT NULL,
    expires_at  double precision,
    updated_at  double precision NOT NULL
);
CREATE INDEX state_expiry ON state (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE locks (
    key         text COLLATE "C" PRIMARY KEY,
    owner       text COLLATE "C" NOT NULL,
    expires_at  double precision NOT NULL
);
