-- Queries that differ on PostgreSQL.

-- name: claim_candidates
-- SKIP LOCKED lets many workers claim at once without waiting on each other;
-- NO KEY UPDATE leaves the run's foreign-key checks unblocked.
SELECT id, status, resuming, attempt, available_at FROM runs
WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :now
  AND job = ANY(:jobs)
  AND (CAST(:queues AS text[]) IS NULL OR queue = ANY(CAST(:queues AS text[])))
ORDER BY priority DESC, available_at, id
LIMIT :limit
FOR NO KEY UPDATE SKIP LOCKED;

-- name: state_increment
-- The row lock taken by ON CONFLICT DO UPDATE makes concurrent increments exact;
-- a value that is not an integer makes the cast fail.
INSERT INTO state (key, value, expires_at, updated_at) VALUES (:key, (:by)::bigint::text, NULL, :now)
ON CONFLICT (key) DO UPDATE
    SET value = CASE WHEN state.expires_at IS NOT NULL AND state.expires_at <= :now
                     THEN (:by)::bigint::text
                     ELSE (state.value::bigint + (:by)::bigint)::text END,
        expires_at = CASE WHEN state.expires_at IS NOT NULL AND state.expires_at <= :now
                          THEN NULL ELSE state.expires_at END,
        updated_at = :now
RETURNING value;

-- The queries below add row locks to the shared ones. Several processes write
-- at READ COMMITTED; a run read and then moved by status must not change under
-- the mover. FOR NO KEY UPDATE blocks other movers but not the foreign-key
-- checks of rows inserted for the run (timeline, logs), and a waiting locker
-- re-checks the WHERE clause on the row as it is once the holder commits.

-- name: due_timers
-- SKIP LOCKED: a run being resumed by an event right now is not a due timer.
SELECT * FROM runs WHERE status = 'waiting' AND available_at <= :now
ORDER BY available_at LIMIT :limit
FOR NO KEY UPDATE SKIP LOCKED;

-- name: due_promotions
SELECT id, status, attempt FROM runs
WHERE status IN ('scheduled', 'retrying') AND available_at <= :now
ORDER BY available_at LIMIT :limit
FOR NO KEY UPDATE SKIP LOCKED;

-- name: matching_waits
-- Locks each waiting run before its wait is completed; a run that a timer,
-- a cancel or another event moved meanwhile drops out. (Keep the WHERE clause
-- in step with queries.sql.)
SELECT w.*, r.created_at AS run_created_at FROM waits w JOIN runs r ON r.id = w.run_id
WHERE w.event_name = :name AND w.correlation_key = :correlation_key
  AND r.status = 'waiting' AND r.created_at <= :now AND w.timeout_at > :now
ORDER BY w.created_at
FOR NO KEY UPDATE OF r;

-- name: lock_run
-- A run about to be moved by an operator action (cancel, retry), locked so that
-- the status it is moved from is the status it has.
SELECT * FROM runs WHERE id = :id FOR NO KEY UPDATE;
