-- Queries that differ on SQLite. Claims run inside BEGIN IMMEDIATE, which holds
-- the database's single write lock, so a plain SELECT then UPDATE is race-free.

-- name: claim_candidates
-- The plain claim query. "controlled" counts the queues that are paused or
-- limited: when there are none (the common case) this query is the whole
-- claim; otherwise store/flow.py claims with the queries below.
-- INDEXED BY: without statistics SQLite prefers runs_status and then sorts
-- every ready run on each claim; runs_ready is already in claim order, so the
-- claim reads a few index entries and stops.
SELECT id, job, queue, status, resuming, attempt, available_at, claim_priority,
       concurrency_key,
       (SELECT COUNT(*) FROM queues c WHERE c.paused <> 0 OR c.concurrency IS NOT NULL
            OR c.rate_count IS NOT NULL) AS controlled
FROM runs INDEXED BY runs_ready
WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :now
  AND job IN (SELECT value FROM json_each(:jobs))
  AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
ORDER BY claim_priority DESC, available_at, id
LIMIT :limit;

-- name: claim_candidates_open
-- Runs outside the queues in :blocked (paused, or limited: claimed one queue at
-- a time), leaving out "job<US>key" pairs in :saturated (at their key_concurrency).
SELECT id, job, queue, status, resuming, attempt, available_at, claim_priority,
       concurrency_key FROM runs INDEXED BY runs_ready
WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :now
  AND job IN (SELECT value FROM json_each(:jobs))
  AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
  AND (:blocked IS NULL OR queue NOT IN (SELECT value FROM json_each(:blocked)))
  AND (:saturated IS NULL OR concurrency_key IS NULL
       OR job || char(31) || concurrency_key NOT IN (SELECT value FROM json_each(:saturated)))
ORDER BY claim_priority DESC, available_at, id
LIMIT :limit;

-- name: state_increment
-- SQLite runs this inside BEGIN IMMEDIATE after checking the old value is an integer.
INSERT INTO state (key, value, expires_at, updated_at) VALUES (:key, CAST(:by AS TEXT), NULL, :now)
ON CONFLICT (key) DO UPDATE
    SET value = CASE WHEN state.expires_at IS NOT NULL AND state.expires_at <= :now
                     THEN CAST(:by AS TEXT)
                     ELSE CAST(CAST(state.value AS INTEGER) + :by AS TEXT) END,
        expires_at = CASE WHEN state.expires_at IS NOT NULL AND state.expires_at <= :now
                          THEN NULL ELSE state.expires_at END,
        updated_at = :now
RETURNING value;

-- Flow control (store/flow.py). The claim's write transaction holds SQLite's
-- only write lock, so counting and claiming cannot interleave with another claim.

-- name: claim_candidates_in_queue
SELECT id, job, queue, status, resuming, attempt, available_at, claim_priority,
       concurrency_key FROM runs INDEXED BY runs_ready_queue
WHERE status IN ('queued', 'scheduled', 'retrying') AND queue = :queue
  AND available_at <= :now AND job IN (SELECT value FROM json_each(:jobs))
  AND (:saturated IS NULL OR concurrency_key IS NULL
       OR job || char(31) || concurrency_key NOT IN (SELECT value FROM json_each(:saturated)))
ORDER BY claim_priority DESC, available_at, id
LIMIT :limit;

-- name: try_lock_key
SELECT 1 AS ok;

-- name: running_by_queue
SELECT queue, COUNT(*) AS n FROM runs
WHERE status = 'running' AND queue IN (SELECT value FROM json_each(:queues))
GROUP BY queue;

-- name: starts_by_queue
SELECT s.queue, COUNT(*) AS n FROM queue_starts s JOIN queues q ON q.name = s.queue
WHERE s.queue IN (SELECT value FROM json_each(:queues)) AND s.at > :now - q.rate_period
GROUP BY s.queue;

-- name: running_keys
SELECT job, concurrency_key, COUNT(*) AS n FROM runs
WHERE status = 'running' AND concurrency_key IS NOT NULL
  AND job IN (SELECT value FROM json_each(:jobs))
GROUP BY job, concurrency_key;

-- name: claim_update_many
-- claim_update for several runs at once (:ids is a JSON list).
UPDATE runs
SET status = 'running', attempt = attempt + 1 - resuming, resuming = 0,
    lease_owner = :worker_id, lease_expires_at = :lease_expires_at,
    started_at = COALESCE(started_at, :now), waiting_for = NULL,
    available_at = NULL, claim_priority = priority, on_failure = :on_failure,
    updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING *;

-- name: finish_many_leased
-- finish_leased_run for several runs at once (:endings is a JSON list of objects
-- with its parameters); returns the ids of the runs whose lease was still held.
-- Only for short results and errors: SQLite parses an element again for each
-- field, so endings with long ones use finish_leased_run (SHARED_ENDING_TEXT).
-- The unary + keeps SQLite from reading every running run through runs_status
-- or runs_leases: each ending finds its run by primary key.
UPDATE runs
SET status = i.status, result = i.result, error = i.error, finished_at = i.finished_at,
    available_at = i.available_at, lease_owner = NULL, lease_expires_at = NULL,
    cancel_requested = 0, updated_at = i.now
FROM (SELECT json_extract(value, '$.id') AS id,
             json_extract(value, '$.worker_id') AS worker_id,
             json_extract(value, '$.attempt') AS attempt,
             json_extract(value, '$.expired_before') AS expired_before,
             json_extract(value, '$.status') AS status,
             json_extract(value, '$.result') AS result,
             json_extract(value, '$.error') AS error,
             json_extract(value, '$.finished_at') AS finished_at,
             json_extract(value, '$.available_at') AS available_at,
             json_extract(value, '$.now') AS now
      FROM json_each(:endings)) AS i
WHERE runs.id = i.id AND runs.lease_owner = i.worker_id AND runs.attempt = i.attempt
  AND +runs.status = 'running' AND +runs.lease_expires_at <= i.expired_before
RETURNING runs.id;

-- fragment: timeline_from
-- The state a timeline entry's run moved from (its data's "from"), or NULL.
json_extract(data, '$.from')

-- fragment: finished_second
-- The whole second of finished_at: a cast truncates here.
CAST(finished_at AS INTEGER)
