-- Queries that differ on PostgreSQL.

-- name: claim_candidates
-- The plain claim query. SKIP LOCKED lets many workers claim at once without
-- waiting on each other; NO KEY UPDATE leaves the run's foreign-key checks
-- unblocked. "controlled" counts the queues that are paused or limited (an
-- InitPlan, read once): when there are none (the common case) this query is the
-- whole claim; otherwise store/flow.py claims with the queries below. Keep its
-- WHERE clause free of flow-control terms: they would change its plan.
SELECT id, job, queue, status, resuming, attempt, available_at, claim_priority,
       concurrency_key,
       (SELECT COUNT(*) FROM queues c WHERE c.paused <> 0 OR c.concurrency IS NOT NULL
            OR c.rate_count IS NOT NULL) AS controlled
FROM runs
WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :now
  AND job = ANY(:jobs)
  AND (CAST(:queues AS text[]) IS NULL OR queue = ANY(CAST(:queues AS text[])))
ORDER BY claim_priority DESC, available_at, id
LIMIT :limit
FOR NO KEY UPDATE SKIP LOCKED;

-- name: claim_plain
-- The whole plain claim in one round trip: claim_candidates, claim_update_many,
-- the attempts started or resumed, their timeline entries, and the completed
-- steps a replay needs (JSON, for runs resuming or on a later attempt). Claims
-- nothing when a queue is paused or limited ("controlled" > 0): store/flow.py
-- then claims in the same transaction. No run claimed: one row, id NULL.
-- Run with all_limited: its plan is made once and reused (a generic plan),
-- where planning it anew would take about as long as running it.
-- Keep in step with claim_candidates, claim_update_many, insert_attempt,
-- set_attempt_status and _claim_batch in store/execution.py.
WITH ctl AS (
    SELECT COUNT(*) AS n FROM queues c
    WHERE c.paused <> 0 OR c.concurrency IS NOT NULL OR c.rate_count IS NOT NULL
), cand AS (
    SELECT id, status AS was, resuming AS was_resuming, available_at AS was_available,
           claim_priority AS was_priority
    FROM runs
    WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :now
      AND job = ANY(:jobs)
      AND (CAST(:queues AS text[]) IS NULL OR queue = ANY(CAST(:queues AS text[])))
      AND (SELECT n FROM ctl) = 0
    ORDER BY claim_priority DESC, available_at, id
    LIMIT :limit
    FOR NO KEY UPDATE SKIP LOCKED
), moved AS (
    UPDATE runs r
    SET status = 'running', attempt = r.attempt + 1 - r.resuming, resuming = 0,
        lease_owner = :worker_id, lease_expires_at = :lease_expires_at,
        started_at = COALESCE(r.started_at, :now), waiting_for = NULL,
        available_at = NULL, claim_priority = r.priority,
        on_failure = (SELECT f.handler
                      FROM unnest(CAST(:failure_jobs AS text[]),
                                  CAST(:failure_handlers AS text[])) AS f(job, handler)
                      WHERE f.job = r.job),
        updated_at = :now
    FROM cand
    -- The id list lets a cached generic plan find the rows by primary key
    -- (left to the join, it scans the whole table).
    WHERE r.id = cand.id AND r.id = ANY(ARRAY(SELECT id FROM cand))
    RETURNING r.*, cand.was, cand.was_resuming, cand.was_available, cand.was_priority
), started AS (
    INSERT INTO attempts (run_id, number, status, worker_id, started_at)
    SELECT id, attempt, 'running', :worker_id, :now FROM moved WHERE was_resuming = 0
), resumed AS (
    UPDATE attempts a SET status = 'running', worker_id = :worker_id
    FROM moved m
    WHERE m.was_resuming <> 0 AND a.run_id = m.id AND a.number = m.attempt
), noted AS (
    INSERT INTO timeline (run_id, at, kind, attempt, step, data)
    -- the attempt before this claim, as when maintenance queues the run (move_run)
    SELECT id, was_available, 'run.queued', NULLIF(attempt - 1 + was_resuming, 0), NULL,
           '{"from":"' || was || '"}'
    FROM moved WHERE was <> 'queued'
    UNION ALL
    SELECT id, :now,
           CASE WHEN was_resuming <> 0 THEN 'run.resumed' ELSE 'attempt.started' END,
           attempt, NULL,
           CASE WHEN was_resuming <> 0 THEN NULL ELSE CAST(:started_data AS text) END
    FROM moved
)
SELECT c.n AS controlled, m.*,
       CASE WHEN m.was_resuming <> 0 OR m.attempt > 1 THEN
           (SELECT json_agg(s) FROM steps s WHERE s.run_id = m.id AND s.status = 'completed')
       END AS completed_steps
FROM ctl c LEFT JOIN moved m ON true;

-- name: claim_candidates_open
-- Runs outside the queues in :blocked (paused, or limited: claimed one queue at
-- a time under the queue's row lock), leaving out "job<US>key" pairs in
-- :saturated (at their key_concurrency).
SELECT id, job, queue, status, resuming, attempt, available_at, claim_priority,
       concurrency_key FROM runs
WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :now
  AND job = ANY(:jobs)
  AND (CAST(:queues AS text[]) IS NULL OR queue = ANY(CAST(:queues AS text[])))
  AND (CAST(:blocked AS text[]) IS NULL OR queue <> ALL(CAST(:blocked AS text[])))
  AND (CAST(:saturated AS text[]) IS NULL OR concurrency_key IS NULL
       OR (job || chr(31) || concurrency_key) <> ALL(CAST(:saturated AS text[])))
ORDER BY claim_priority DESC, available_at, id
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

-- name: insert_event_locked
-- insert_event after taking the advisory lock of its name and correlation key
-- (:lock, as Tx.lock takes it), in one round trip.
INSERT INTO events (id, name, correlation_key, payload, idempotency_key, received_at,
                    expires_at)
SELECT :id, :name, :correlation_key, :payload, :idempotency_key, :now, :expires_at
FROM (SELECT pg_advisory_xact_lock(:lock)) AS locked;

-- name: resume_for_event
-- Every run waiting for the event (:name, :correlation_key) takes it:
-- insert_consumption, its timeline entry, complete_waiting_step, then
-- set_status to queued (resuming), delete_wait and that timeline entry; one
-- statement for all of them, sent after the statement that took the event's
-- advisory lock, so that it reads the waits committed before the lock was
-- granted. The UPDATE locks each run and checks again that it is still
-- waiting: a run that a timer, a cancel or another event moved meanwhile drops
-- out. Returns the runs resumed in run id order, the order in which
-- runs_resumed_by_event answers a repeat of the send. The waits are found
-- first (MATERIALIZED) and their runs by primary key: the status is compared as
-- status || '' so that the planner cannot scan runs_timers instead (statistics
-- taken before the runs began to wait make that index look nearly empty, and a
-- scan of it reads every waiting run). Keep matched's WHERE clause in step
-- with matching_waits in queries.sql, the rest with _take and move_run in
-- store/events.py and store/runs.py.
WITH matched AS MATERIALIZED (
    SELECT run_id, step_key FROM waits
    WHERE event_name = :name AND correlation_key = :correlation_key AND timeout_at > :now
), moved AS (
    UPDATE runs
    SET status = 'queued', available_at = :now, finished_at = NULL, resuming = 1,
        waiting_for = NULL, updated_at = :now
    FROM matched
    WHERE runs.id = matched.run_id AND (runs.status || '') = 'waiting'
    RETURNING runs.id, runs.attempt, matched.step_key
), consumed AS (
    INSERT INTO event_consumptions (run_id, event_id, step_key, at)
    SELECT id, :event_id, step_key, :now FROM moved
    ON CONFLICT (run_id, event_id) DO NOTHING
), stepped AS (
    UPDATE steps SET status = 'completed', result = :result, finished_at = :now
    FROM moved
    WHERE steps.run_id = moved.id AND steps.key = moved.step_key
      AND steps.status = 'waiting'
), unwaited AS (
    DELETE FROM waits USING moved WHERE waits.run_id = moved.id
), noted AS (
    INSERT INTO timeline (run_id, at, kind, attempt, step, data)
    SELECT id, :now, 'event.received', NULLIF(attempt, 0), step_key,
           CAST(:received_data AS text)
    FROM moved
    UNION ALL
    SELECT id, :now, 'run.queued', NULLIF(attempt, 0), NULL, CAST(:queued_data AS text)
    FROM moved
)
SELECT id FROM moved ORDER BY id;

-- name: lock_run
-- A run about to be moved by an operator action (cancel, retry), locked so that
-- the status it is moved from is the status it has.
SELECT * FROM runs WHERE id = :id FOR NO KEY UPDATE;

-- Flow control (store/flow.py). Claims of a limited queue lock its queues row
-- FOR UPDATE before counting, so claimers of that queue take turns (claimers of
-- other queues are not held up); a concurrency key is guarded by a
-- transaction-scoped advisory lock that a claimer skips when another holds it.

-- name: claim_candidates_in_queue
SELECT id, job, queue, status, resuming, attempt, available_at, claim_priority,
       concurrency_key FROM runs
WHERE status IN ('queued', 'scheduled', 'retrying') AND queue = :queue
  AND available_at <= :now AND job = ANY(:jobs)
  AND (CAST(:saturated AS text[]) IS NULL OR concurrency_key IS NULL
       OR (job || chr(31) || concurrency_key) <> ALL(CAST(:saturated AS text[])))
ORDER BY claim_priority DESC, available_at, id
LIMIT :limit
FOR NO KEY UPDATE SKIP LOCKED;

-- name: lock_queue
SELECT * FROM queues WHERE name = :name FOR UPDATE;

-- name: try_lock_key
-- Keys cannot hold NUL on PostgreSQL, so hashing the text in SQL is safe here.
SELECT pg_try_advisory_xact_lock(hashtextextended('stackshift.key:' || CAST(:key AS text), 0)) AS ok;

-- name: running_by_queue
SELECT queue, COUNT(*) AS n FROM runs
WHERE status = 'running' AND queue = ANY(CAST(:queues AS text[]))
GROUP BY queue;

-- name: starts_by_queue
SELECT s.queue, COUNT(*) AS n FROM queue_starts s JOIN queues q ON q.name = s.queue
WHERE s.queue = ANY(CAST(:queues AS text[])) AND s.at > :now - q.rate_period
GROUP BY s.queue;

-- name: running_keys
SELECT job, concurrency_key, COUNT(*) AS n FROM runs
WHERE status = 'running' AND concurrency_key IS NOT NULL AND job = ANY(:jobs)
GROUP BY job, concurrency_key;

-- name: lock_schedule
SELECT * FROM schedules WHERE id = :id FOR UPDATE;

-- name: due_schedules
-- SKIP LOCKED: two maintainers never fire the same schedule at once. The most
-- recently due first, in the order of peek_due_schedules.
SELECT * FROM schedules WHERE paused = 0 AND next_run_at <= :now
ORDER BY next_run_at DESC, id LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: claim_update_many
-- claim_update for several runs at once.
UPDATE runs
SET status = 'running', attempt = attempt + 1 - resuming, resuming = 0,
    lease_owner = :worker_id, lease_expires_at = :lease_expires_at,
    started_at = COALESCE(started_at, :now), waiting_for = NULL,
    available_at = NULL, claim_priority = priority, on_failure = :on_failure,
    updated_at = :now
WHERE id = ANY(:ids)
RETURNING *;

-- Worker writes that share a transaction, one statement for all of them. The
-- writes come as one JSON array of objects, a row each (json_to_recordset):
-- psycopg prepares an array parameter per column in Python (about 110 µs for
-- the 17 columns of one step checkpoint, where its row as JSON text takes 14
-- µs, and about 350 µs against 55 for ten rows). On SQLite (no
-- data-modifying WITH) the store runs the same statements one by one: keep them
-- in step with finish_leased_run, update_attempt, renew_lease, upsert_step and
-- insert_timeline.

-- name: finish_many_recorded
-- Completed and cancelled endings: finish_leased_run, then the attempt's ending
-- and the run's timeline entry. Returns the ids of the runs whose lease was
-- still held (and ended).
WITH input AS (
    SELECT * FROM json_to_recordset(CAST(:endings AS json)) AS i(
        id text, worker_id text, attempt integer, expired_before double precision,
        status text, result text, error text, finished_at double precision,
        available_at double precision, now double precision, kind text, data text)
), moved AS (
    UPDATE runs r
    SET status = i.status, result = i.result, error = i.error, finished_at = i.finished_at,
        available_at = i.available_at, lease_owner = NULL, lease_expires_at = NULL,
        cancel_requested = 0, updated_at = i.now
    FROM input i
    WHERE r.id = i.id AND r.lease_owner = i.worker_id AND r.attempt = i.attempt
      AND r.status = 'running' AND r.lease_expires_at <= i.expired_before
    RETURNING r.id, r.attempt, r.queue, r.concurrency_key, i.status, i.error, i.now, i.kind,
              i.data
), ended AS (
    UPDATE attempts a SET status = m.status, finished_at = m.now, error = m.error
    FROM moved m
    WHERE a.run_id = m.id AND a.number = m.attempt
), noted AS (
    INSERT INTO timeline (run_id, at, kind, attempt, step, data)
    SELECT id, now, kind, attempt, NULL, data FROM moved
), freed AS (
    {{room_freed}}
)
SELECT id, (SELECT COUNT(*) FROM freed) AS woken FROM moved;

-- name: renew_many
-- renew_lease for several leases at once; returns the runs still held.
UPDATE runs r SET lease_expires_at = :lease_expires_at, updated_at = :now
FROM json_to_recordset(CAST(:leases AS json)) AS l(id text, worker_id text, attempt integer)
WHERE r.id = l.id AND r.lease_owner = l.worker_id AND r.attempt = l.attempt
  AND r.status = 'running'
RETURNING r.id, r.cancel_requested;

-- name: save_many_recorded
-- Step checkpoints: renew_lease, then upsert_step and the step's timeline
-- entry (none for a checkpoint of a step completed already, which is kept). Returns (ord: the element's place) each kept checkpoint's
-- cancel_requested; a checkpoint whose lease was lost is left out, and nothing
-- of it is written.
WITH input AS (
    SELECT * FROM json_to_recordset(CAST(:saves AS json)) AS i(
        ord integer, run_id text, worker_id text, attempt integer,
        lease_expires_at double precision, now double precision, key text, name text,
        step_kind text, function text, status text, result text, error text,
        started_at double precision, finished_at double precision, timeline_kind text,
        data text)
), leases AS (
    SELECT DISTINCT ON (run_id) run_id, worker_id, attempt, lease_expires_at, now
    FROM input ORDER BY run_id, ord DESC
), renewed AS (
    UPDATE runs r SET lease_expires_at = l.lease_expires_at, updated_at = l.now
    FROM leases l
    WHERE r.id = l.run_id AND r.lease_owner = l.worker_id AND r.attempt = l.attempt
      AND r.status = 'running'
    RETURNING r.id, r.attempt, r.cancel_requested
), kept AS (
    SELECT i.*, r.cancel_requested FROM input i
    JOIN renewed r ON r.id = i.run_id AND r.attempt = i.attempt
), saved AS (
    INSERT INTO steps (run_id, key, name, kind, function, status, result, error, attempt,
                       started_at, finished_at)
    SELECT run_id, key, name, step_kind, function, status, result, error, attempt,
           started_at, finished_at
    FROM kept
    ON CONFLICT (run_id, key) DO UPDATE
        SET name = excluded.name, kind = excluded.kind, function = excluded.function,
            status = excluded.status, result = excluded.result, error = excluded.error,
            attempt = excluded.attempt, started_at = excluded.started_at,
            finished_at = excluded.finished_at
        WHERE steps.status <> 'completed'
    RETURNING run_id, key
), noted AS (
    INSERT INTO timeline (run_id, at, kind, attempt, step, data)
    SELECT k.run_id, k.started_at, k.timeline_kind, k.attempt, k.key, k.data
    FROM kept k JOIN saved s ON s.run_id = k.run_id AND s.key = k.key ORDER BY k.ord
)
SELECT ord, cancel_requested FROM kept;

-- name: start_many
-- insert_run and the run's first timeline entry for several starts without an
-- idempotency key (one JSON object each, as above); returns the new rows.
WITH input AS (
    SELECT * FROM json_to_recordset(CAST(:starts AS json)) AS i(
        ord integer, id text, job text, queue text, status text, payload text,
        max_attempts integer, default_max_attempts integer, priority integer,
        concurrency_key text, now double precision, scheduled_at double precision,
        available_at double precision, data text)
), started AS (
    INSERT INTO runs (id, job, queue, status, payload, max_attempts, idempotency_key,
                      priority, claim_priority, concurrency_key, created_at, scheduled_at,
                      available_at, updated_at)
    SELECT i.id, i.job, i.queue, i.status, i.payload,
           COALESCE(i.max_attempts,
                    (SELECT q.max_attempts FROM queues q WHERE q.name = i.queue),
                    i.default_max_attempts),
           NULL, i.priority, i.priority, i.concurrency_key, i.now, i.scheduled_at,
           i.available_at, i.now
    FROM input i ORDER BY i.ord
    RETURNING *
), noted AS (
    INSERT INTO timeline (run_id, at, kind, attempt, step, data)
    SELECT id, now, 'run.' || status, NULL, NULL, data FROM input ORDER BY ord
)
SELECT * FROM started;

-- name: duplicate_start
-- A start whose idempotency key is live, in one statement sent as a transaction
-- of its own (no BEGIN or COMMIT: one round trip; RunStore.start_run). The key
-- bound to the same job and payload (:fingerprint, or :earlier, the form keys
-- taken by earlier versions hold: see runs.fingerprints): the run.duplicate_start
-- note is written and the run is returned, matched true. Bound to another job
-- or payload: the key's target_id only, matched false, nothing written. Missing
-- or expired: no row, nothing written, and the caller starts the run durably
-- through insert_run (which also settles a key being taken right now). The note
-- is all this transaction ever writes, so set_config(..., true) turns
-- synchronous_commit off for this transaction only, and every note written
-- passed through it: the commit does not wait for the WAL flush, and a crash of
-- the server may drop the note, never a run or a key. Keep the checks in step
-- with claim_idempotency_key and insert_run.
WITH live AS (
    SELECT target_id,
           fingerprint IN (CAST(:fingerprint AS text), CAST(:earlier AS text)) AS matched
    FROM idempotency_keys
    WHERE scope = 'run' AND key = CAST(:key AS text) AND expires_at > :now
), noted AS (
    INSERT INTO timeline (run_id, at, kind)
    SELECT r.id, CAST(:now AS double precision), 'run.duplicate_start'
    FROM live JOIN runs r ON r.id = live.target_id
    WHERE live.matched AND set_config('synchronous_commit', 'off', true) = 'off'
)
SELECT live.matched, live.target_id, r.*
FROM live LEFT JOIN runs r ON r.id = live.target_id AND live.matched;

-- name: change_marker
-- Identity values are handed out before commit, so a transaction holding a
-- lower timeline id can commit after a higher one is already visible: MAX(id)
-- alone would then stay the same while the data changed. The ids of the
-- transactions still in flight close that gap: when one of them ends, the
-- list changes. An idle database gives an empty list and a steady marker.
SELECT (SELECT MAX(id) FROM timeline) AS timeline, (SELECT MAX(id) FROM logs) AS logs,
       (SELECT MAX(id) FROM events) AS events, (SELECT COUNT(*) FROM workers) AS workers,
       (SELECT MAX(started_at) FROM workers) AS joined,
       (SELECT string_agg(x::text, ',' ORDER BY x::text)
          FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS in_flight;

-- fragment: room_freed
-- Of the runs that stopped running (`moved`: their queue and concurrency key), one
-- in a limited queue or with a concurrency key frees room there: wake every idle
-- worker listening (delivered at commit), not only the one that ran it, which
-- would otherwise see it only at its next poll. A plain SELECT in WITH runs only
-- when referenced: the statements that include it read its count ("woken", read
-- by no one).
SELECT pg_notify('stackshift', current_schema())
FROM moved m LEFT JOIN queues q ON q.name = m.queue
WHERE m.concurrency_key IS NOT NULL OR q.concurrency IS NOT NULL
   OR q.rate_count IS NOT NULL
LIMIT 1;

-- name: retry_leased_run
-- queries.sql's, waking idle workers when it frees room (room_freed).
WITH moved AS ({{retry_leased}}), freed AS ({{room_freed}})
SELECT m.*, (SELECT COUNT(*) FROM freed) AS woken FROM moved m;

-- name: fail_leased_run
-- queries.sql's, waking idle workers when it frees room (room_freed).
WITH moved AS ({{fail_leased}}), freed AS ({{room_freed}})
SELECT m.*, (SELECT COUNT(*) FROM freed) AS woken FROM moved m;

-- name: suspend_leased_run
-- queries.sql's, waking idle workers when it frees room (room_freed).
WITH moved AS ({{suspend_leased}}), freed AS ({{room_freed}})
SELECT m.*, (SELECT COUNT(*) FROM freed) AS woken FROM moved m;

-- name: wake_workers
-- A queue resumed or given new limits: wake every idle worker listening, in every
-- process (delivered at commit), as a run becoming ready does.
SELECT pg_notify('stackshift', current_schema());

-- fragment: timeline_from
-- The state a timeline entry's run moved from (its data's "from"), or NULL.
CAST(data AS jsonb) ->> 'from'

-- fragment: finished_second
-- The whole second of finished_at: a cast rounds here (a run finished in the
-- last half second of the newest bucket fell past the chart), floor() does not.
CAST(FLOOR(finished_at) AS BIGINT)
