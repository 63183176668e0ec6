-- 0003: flow control (queue limits and pauses, rate limits, priority ageing),
-- recurring schedules, failure handlers and retention.
-- Operators: on a large runs table this rebuilds the claim index once and adds
-- partial indexes; finished runs are not in any of the new claim-path indexes.

-- Queue configuration, read by every worker and server. A queue still comes into
-- being implicitly when a run is started on it; a row exists once it is configured.
CREATE TABLE queues (
    name          TEXT PRIMARY KEY,
    -- most runs of the queue running at once, across all workers
    concurrency   INTEGER CHECK (concurrency IS NULL OR concurrency >= 1),
    -- as configured (e.g. '100/m'), and as a count per period in seconds
    rate_limit    TEXT,
    rate_count    INTEGER CHECK (rate_count IS NULL OR rate_count >= 1),
    rate_period   REAL CHECK (rate_period IS NULL OR rate_period > 0),
    -- the default between a job's max_attempts and the installation's (3)
    max_attempts  INTEGER CHECK (max_attempts IS NULL OR max_attempts BETWEEN 1 AND 1000),
    paused        INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    CHECK ((rate_count IS NULL) = (rate_period IS NULL))
);

-- Claims started on rate-limited queues within the last period: the sliding
-- window a claim counts (pruned by the claims themselves and by maintenance).
CREATE TABLE queue_starts (
    queue  TEXT NOT NULL,
    at     REAL NOT NULL
);
CREATE INDEX queue_starts_window ON queue_starts (queue, at);

-- The priority claims order by: the run's priority, raised above every priority
-- (2^31) once the run has been ready longer than the starvation limit, so old
-- work is never starved by a stream of higher-priority work.
ALTER TABLE runs ADD COLUMN claim_priority INTEGER NOT NULL DEFAULT 0;
-- The job (and its queue) to start when this run fails for good, as JSON; set
-- when a worker that knows the job's on_failure option claims the run.
ALTER TABLE runs ADD COLUMN on_failure TEXT;
-- Every unfinished run claims at its own priority, running and waiting ones too:
-- they become ready again (a sleep ends, a retry) without a claim in between.
UPDATE runs SET claim_priority = priority
WHERE status IN ('queued', 'scheduled', 'retrying', 'running', 'waiting') AND priority <> 0;

DROP INDEX runs_ready;
CREATE INDEX runs_ready ON runs (claim_priority DESC, available_at, id)
    WHERE status IN ('queued', 'scheduled', 'retrying');
-- Claims from one limited queue, and its oldest ready run.
CREATE INDEX runs_ready_queue ON runs (queue, claim_priority DESC, available_at, id)
    WHERE status IN ('queued', 'scheduled', 'retrying');
-- Ageing: ready runs not aged yet, by how long they have been ready. (Its
-- predicate keeps it out of the claim query's plans, which must read runs_ready
-- in claim order and stop after a few rows.)
CREATE INDEX runs_ageing ON runs (available_at)
    WHERE status IN ('queued', 'scheduled', 'retrying') AND claim_priority < 2147483648;
-- Counting running runs per queue and per concurrency key (waiting runs do not count).
CREATE INDEX runs_running ON runs (queue) WHERE status = 'running';
CREATE INDEX runs_running_key ON runs (job, concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
-- Retention and throughput: finished runs by finish time.
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

-- Recurring schedules. A tick starts one run whose idempotency key is
-- 'schedule:<id>:<tick>', so a tick fires once however many workers maintain.
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    job           TEXT NOT NULL,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    payload       TEXT NOT NULL,
    queue         TEXT,
    -- 'code': from @job(cron=...), kept in sync by the workers that serve the job
    source        TEXT NOT NULL CHECK (source IN ('code', 'api')),
    paused        INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    next_run_at   REAL,
    last_tick_at  REAL,
    last_run_id   TEXT,
    -- why the last tick could not start a run (JSON type and message)
    last_error    TEXT,
    -- ticks passed over because everything was down when they were due
    missed_ticks  INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE paused = 0;
CREATE INDEX schedules_job ON schedules (job);
