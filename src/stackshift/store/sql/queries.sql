-- Named queries shared by both dialects. Parameters are written :name; the
-- PostgreSQL driver rewrites them to its own placeholder style at load time.
-- A dialect file (sqlite.sql, postgres.sql) overrides a query of the same name.

-- name: insert_run
-- max_attempts: the start option or the job's, else the queue's default, else
-- the installation's; a run claims at its own priority until it ages.
INSERT INTO runs (id, job, queue, status, payload, max_attempts, idempotency_key,
                  priority, claim_priority, concurrency_key, created_at, scheduled_at,
                  available_at, updated_at)
VALUES (:id, :job, :queue, :status, :payload,
        COALESCE(CAST(:max_attempts AS INTEGER),
                 (SELECT q.max_attempts FROM queues q WHERE q.name = :queue),
                 CAST(:default_max_attempts AS INTEGER)),
        :idempotency_key, :priority, :priority, :concurrency_key, :now, :scheduled_at,
        :available_at, :now)
RETURNING *;

-- name: claim_idempotency_key
-- Takes the key when it is free or expired; returns nothing when it is live.
INSERT INTO idempotency_keys (scope, key, target_id, fingerprint, created_at, expires_at)
VALUES (:scope, :key, :target_id, :fingerprint, :now, :expires_at)
ON CONFLICT (scope, key) DO UPDATE
    SET target_id = excluded.target_id, fingerprint = excluded.fingerprint,
        created_at = excluded.created_at, expires_at = excluded.expires_at
    WHERE idempotency_keys.expires_at <= :now
RETURNING target_id;

-- name: get_idempotency_key
SELECT target_id, fingerprint, expires_at FROM idempotency_keys
WHERE scope = :scope AND key = :key;

-- name: get_run
SELECT * FROM runs WHERE id = :id;

-- name: lock_run
-- A run about to be moved from the status read here (PostgreSQL locks the row;
-- SQLite's write transaction already excludes every other writer).
SELECT * FROM runs WHERE id = :id;

-- name: insert_timeline
INSERT INTO timeline (run_id, at, kind, attempt, step, data)
VALUES (:run_id, :at, :kind, :attempt, :step, :data);

-- name: insert_log
INSERT INTO logs (run_id, attempt, step, at, level, logger, message, fields)
VALUES (:run_id, :attempt, :step, :at, :level, :logger, :message, :fields);

-- name: insert_attempt
INSERT INTO attempts (run_id, number, status, worker_id, started_at)
VALUES (:run_id, :number, 'running', :worker_id, :now);

-- name: update_attempt
UPDATE attempts SET status = :status, finished_at = :finished_at, error = :error
WHERE run_id = :run_id AND number = :number;

-- name: cancel_open_attempt
-- The attempt a run cancelled at once leaves open: a parked run's (waiting, or
-- queued to resume after its wait) or a handed-back run's. A run queued or
-- retrying between attempts has none open, and its last attempt keeps its ending.
UPDATE attempts SET status = 'cancelled', finished_at = :finished_at, error = :error
WHERE run_id = :run_id AND number = :number AND status IN ('running', 'waiting');

-- name: set_attempt_status
UPDATE attempts SET status = :status, worker_id = :worker_id
WHERE run_id = :run_id AND number = :number;

-- name: claim_update
UPDATE runs
SET status = 'running', attempt = attempt + 1 - resuming, resuming = 0,
    lease_owner = :worker_id, lease_expires_at = :lease_expires_at,
    started_at = COALESCE(started_at, :now), waiting_for = NULL,
    available_at = NULL, claim_priority = priority, on_failure = :on_failure,
    updated_at = :now
WHERE id = :id
RETURNING *;

-- name: completed_steps
SELECT * FROM steps WHERE run_id = :run_id AND status = 'completed';

-- name: renew_lease
-- Every step checkpoint goes through here: it proves this worker still owns the
-- run and extends its lease in the same write.
UPDATE runs SET lease_expires_at = :lease_expires_at, updated_at = :now
WHERE id = :id AND lease_owner = :worker_id AND attempt = :attempt AND status = 'running'
RETURNING cancel_requested;

-- name: upsert_step
-- A failed or waiting step is replaced by its next checkpoint; a completed one
-- keeps its result for good (the checkpoint changes nothing: 0 rows).
INSERT INTO steps (run_id, key, name, kind, function, status, result, error, attempt,
                   started_at, finished_at)
VALUES (:run_id, :key, :name, :kind, :function, :status, :result, :error, :attempt,
        :started_at, :finished_at)
ON CONFLICT (run_id, key) DO UPDATE
    SET name = excluded.name, kind = excluded.kind, function = excluded.function,
        status = excluded.status, result = excluded.result, error = excluded.error,
        attempt = excluded.attempt, started_at = excluded.started_at,
        finished_at = excluded.finished_at
    WHERE steps.status <> 'completed';

-- name: finish_leased_run
-- Ends the current attempt of a leased run. Only the lease owner can do it.
UPDATE runs
SET status = :status, result = :result, error = :error, finished_at = :finished_at,
    available_at = :available_at, lease_owner = NULL, lease_expires_at = NULL,
    cancel_requested = 0, updated_at = :now
WHERE id = :id AND lease_owner = :worker_id AND attempt = :attempt AND status = 'running'
  AND lease_expires_at <= :expired_before
RETURNING id, job, queue, payload, attempt, idempotency_key, on_failure;

-- name: retry_leased_run
-- finish_leased_run for an attempt that failed with attempts left: the run waits
-- to be retried, unless a cancel was requested while the attempt ran; then it is
-- cancelled (:cancel_error) instead, and no further attempt starts.
-- (On PostgreSQL, the same statement also wakes idle workers when it frees
-- room: postgres.sql.)
{{retry_leased}};

-- fragment: retry_leased
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'retrying' END,
    error = CASE WHEN cancel_requested = 1 THEN :cancel_error ELSE :error END,
    finished_at = CASE WHEN cancel_requested = 1 THEN :now END,
    available_at = CASE WHEN cancel_requested = 1 THEN NULL
                        ELSE CAST(:available_at AS DOUBLE PRECISION) END,
    result = NULL, lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0,
    updated_at = :now
WHERE id = :id AND lease_owner = :worker_id AND attempt = :attempt AND status = 'running'
  AND lease_expires_at <= :expired_before
RETURNING id, job, queue, payload, attempt, idempotency_key, on_failure, status,
          concurrency_key;

-- name: fail_leased_run
-- finish_leased_run for an attempt that failed with no retry left: the run
-- fails, unless a cancel was requested while the attempt ran; then it is
-- cancelled (:cancel_error) instead, as in retry_leased_run. The returned
-- status says which.
-- (On PostgreSQL, the same statement also wakes idle workers when it frees
-- room: postgres.sql.)
{{fail_leased}};

-- fragment: fail_leased
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'failed' END,
    error = CASE WHEN cancel_requested = 1 THEN :cancel_error ELSE :error END,
    result = NULL, finished_at = :finished_at, available_at = NULL,
    lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0, updated_at = :now
WHERE id = :id AND lease_owner = :worker_id AND attempt = :attempt AND status = 'running'
  AND lease_expires_at <= :expired_before
RETURNING id, job, queue, payload, attempt, idempotency_key, on_failure, status,
          concurrency_key;

-- name: suspend_leased_run
-- Parks a leased run (sleep or wait); a run asked to cancel while it ran is
-- cancelled (:cancel_error) instead. The returned status says which.
-- (On PostgreSQL, the same statement also wakes idle workers when it frees
-- room: postgres.sql.)
{{suspend_leased}};

-- fragment: suspend_leased
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'waiting' END,
    waiting_for = CASE WHEN cancel_requested = 1 THEN NULL ELSE :waiting_for END,
    available_at = CASE WHEN cancel_requested = 1 THEN NULL ELSE :available_at END,
    finished_at = CASE WHEN cancel_requested = 1 THEN :now END,
    error = CASE WHEN cancel_requested = 1 THEN :cancel_error ELSE error END,
    lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0, updated_at = :now
WHERE id = :id AND lease_owner = :worker_id AND attempt = :attempt AND status = 'running'
RETURNING id, status, queue, concurrency_key;

-- name: get_step
SELECT * FROM steps WHERE run_id = :run_id AND key = :key;

-- name: expired_leases
SELECT * FROM runs WHERE status = 'running' AND lease_expires_at <= :now
ORDER BY lease_expires_at LIMIT :limit;

-- name: due_promotions
SELECT id, status, attempt FROM runs
WHERE status IN ('scheduled', 'retrying') AND available_at <= :now
ORDER BY available_at LIMIT :limit;

-- name: due_timers
SELECT * FROM runs WHERE status = 'waiting' AND available_at <= :now
ORDER BY available_at LIMIT :limit;

-- name: set_status
-- A transition from a known status; returns nothing when the run moved meanwhile.
UPDATE runs
SET status = :status, available_at = :available_at, finished_at = :finished_at,
    error = :error, resuming = :resuming, waiting_for = :waiting_for, updated_at = :now
WHERE id = :id AND status = :from_status
RETURNING id;

-- name: request_cancel
UPDATE runs SET cancel_requested = 1, updated_at = :now
WHERE id = :id AND status = 'running';

-- name: cancel_requests
-- The cancel requests made since the run was last claimed, oldest first (their
-- details hold the reasons). An earlier one was for an invocation that ended.
SELECT data FROM timeline
WHERE run_id = :run_id AND kind = 'run.cancel_requested'
  AND id > (SELECT COALESCE(MAX(id), 0) FROM timeline
            WHERE run_id = :run_id AND kind IN ('attempt.started', 'run.resumed'))
ORDER BY id;

-- name: set_cancel_error
-- The error of a run cancelled while running, once its ending is written.
UPDATE runs SET error = :error WHERE id = :run_id AND status = 'cancelled';

-- name: set_cancelled_attempt_error
UPDATE attempts SET error = :error
WHERE run_id = :run_id AND number = :number AND status = 'cancelled';

-- name: manual_retry
-- A fresh budget of max_attempts after the attempts made so far (retry_base),
-- and no current error: each attempt's error stays in attempts. A run cancelled
-- before the time it was scheduled for is now scheduled for now, when it is queued.
UPDATE runs
SET status = 'queued', retry_base = attempt, resuming = 0, available_at = :now,
    finished_at = NULL, error = NULL, cancel_requested = 0, waiting_for = NULL,
    scheduled_at = CASE WHEN scheduled_at > :now THEN :now ELSE scheduled_at END,
    claim_priority = priority, updated_at = :now
WHERE id = :id AND status = :from_status
RETURNING id;

-- name: next_due
SELECT MIN(available_at) AS due FROM runs
WHERE status IN ('scheduled', 'retrying', 'waiting');

-- name: timeline
SELECT * FROM timeline WHERE run_id = :run_id ORDER BY at, id;

-- name: status_changes_after
-- The entries after entry :after that change a run's status, and the failed
-- attempts whose errors they give, oldest first (RunStore.status_changes_after).
SELECT * FROM timeline
WHERE id > :after
  AND kind IN ('run.queued', 'run.scheduled', 'attempt.started', 'run.resumed',
               'attempt.failed', 'run.retrying', 'run.waiting', 'run.completed',
               'run.failed', 'run.cancelled')
ORDER BY id LIMIT :limit;

-- name: last_timeline_id
SELECT COALESCE(MAX(id), 0) AS id FROM timeline;

-- name: latest_timeline
-- The run's last :limit entries in the order of `timeline`, newest first
-- (RunStore.latest_timeline turns them).
SELECT * FROM timeline WHERE run_id = :run_id ORDER BY at DESC, id DESC LIMIT :limit;

-- name: count_timeline
SELECT COUNT(*) AS n FROM timeline WHERE run_id = :run_id;

-- name: timeline_outline
-- The run's timeline without its steps' entries, the kinds of
-- progress.STEP_ENDED (RunStore.timeline_outline adds those of the latest
-- steps: latest_step_entries).
SELECT * FROM timeline
WHERE run_id = :run_id AND kind NOT IN ('step.completed', 'step.failed')
ORDER BY at, id;

-- name: timeline_outline_since
-- The run's entries from entry (:at, :id) on but those of steps, and before it
-- those that are neither of steps nor of pauses: what began and ended its
-- attempts (RunStore.timeline_outline).
SELECT * FROM timeline
WHERE run_id = :run_id AND kind NOT IN ('step.completed', 'step.failed')
  AND (at > :at OR (at = :at AND id >= :id)
       OR (kind NOT IN ('run.waiting', 'run.resumed', 'event.received', 'wait.timed_out')
           AND NOT (kind = 'run.queued' AND COALESCE({{timeline_from}}, '') = 'waiting')))
ORDER BY at, id;

-- name: pauses_before
-- What began the rows of sleeps and waits before entry (:at, :id).
SELECT kind, attempt, step FROM timeline
WHERE run_id = :run_id AND kind IN ('run.waiting', 'event.received')
  AND (at < :at OR (at = :at AND id < :id))
ORDER BY at, id;

-- name: latest_step_entries
SELECT * FROM timeline
WHERE run_id = :run_id AND kind IN ('step.completed', 'step.failed')
ORDER BY at DESC, id DESC LIMIT :limit;

-- name: count_step_entries
SELECT COUNT(*) AS n FROM timeline
WHERE run_id = :run_id AND kind IN ('step.completed', 'step.failed');

-- name: logs
SELECT * FROM logs WHERE run_id = :run_id AND id > :after ORDER BY id LIMIT :limit;

-- name: latest_logs
-- The run's last :limit records, newest first (RunStore.latest_logs turns them).
SELECT * FROM logs WHERE run_id = :run_id ORDER BY id DESC LIMIT :limit;

-- name: count_logs_before
SELECT COUNT(*) AS n FROM logs WHERE run_id = :run_id AND id < :before;

-- name: attempts
SELECT * FROM attempts WHERE run_id = :run_id ORDER BY number;

-- name: steps
SELECT * FROM steps WHERE run_id = :run_id ORDER BY started_at, key;

-- name: latest_steps
-- The run's last :limit steps in the order of `steps`, newest first (each
-- database sorts NULLs at the same end both ways; RunStore.latest_steps turns them).
SELECT * FROM steps WHERE run_id = :run_id ORDER BY started_at DESC, key DESC LIMIT :limit;

-- name: count_steps
SELECT COUNT(*) AS n FROM steps WHERE run_id = :run_id;

-- name: delete_wait
DELETE FROM waits WHERE run_id = :run_id;

-- name: upsert_worker
INSERT INTO workers (id, hostname, pid, jobs, queues, concurrency, started_at, heartbeat_at,
                     process_space, process_started)
VALUES (:id, :hostname, :pid, :jobs, :queues, :concurrency, :now, :now,
        :process_space, :process_started)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at;

-- name: upsert_job
INSERT INTO jobs (name, queue, max_attempts, updated_at)
VALUES (:name, :queue, :max_attempts, :now)
ON CONFLICT (name) DO UPDATE SET queue = excluded.queue,
    max_attempts = excluded.max_attempts, updated_at = excluded.updated_at;

-- name: get_job
SELECT * FROM jobs WHERE name = :name;

-- name: list_jobs
SELECT name, queue, max_attempts, updated_at FROM jobs ORDER BY name;

-- name: workers_in_space
-- The other workers whose process is in :space (see stackshift/processes.py).
SELECT id, pid, process_started FROM workers
WHERE process_space = :space AND id <> :id;

-- name: leases_held_by
SELECT * FROM runs WHERE status = 'running' AND lease_owner = :worker_id
ORDER BY id LIMIT :limit;

-- name: delete_worker
DELETE FROM workers WHERE id = :id;

-- name: delete_stale_workers
DELETE FROM workers WHERE heartbeat_at < :before;

-- name: list_workers
SELECT * FROM workers ORDER BY started_at;

-- name: oldest_unconsumed_event
-- Early events are not lost: a wait takes the oldest matching event received
-- since the run was created that this run has not taken yet (compared with
-- the creation time as stored: the one a worker reads back is rounded).
SELECT * FROM events e
WHERE e.name = :name AND e.correlation_key = :correlation_key
  AND e.received_at >= (SELECT created_at FROM runs WHERE id = :run_id)
  AND e.expires_at > :now
  AND NOT EXISTS (SELECT 1 FROM event_consumptions c
                  WHERE c.run_id = :run_id AND c.event_id = e.id)
ORDER BY e.received_at, e.id
LIMIT 1;

-- name: insert_event
INSERT INTO events (id, name, correlation_key, payload, idempotency_key, received_at, expires_at)
VALUES (:id, :name, :correlation_key, :payload, :idempotency_key, :now, :expires_at);

-- name: get_event
SELECT * FROM events WHERE id = :id;

-- name: insert_consumption
INSERT INTO event_consumptions (run_id, event_id, step_key, at)
VALUES (:run_id, :event_id, :step_key, :now)
ON CONFLICT (run_id, event_id) DO NOTHING;

-- name: note_correlation
-- The run waits with this correlation key: runs.list(correlation_key=) finds it
-- from now on, as long as the run is kept.
INSERT INTO run_correlations (correlation_key, run_id) VALUES (:correlation_key, :run_id)
ON CONFLICT (correlation_key, run_id) DO NOTHING;

-- name: insert_wait
INSERT INTO waits (run_id, step_key, event_name, correlation_key, created_at, timeout_at,
                   on_timeout)
VALUES (:run_id, :step_key, :event_name, :correlation_key, :now, :timeout_at, :on_timeout);

-- name: matching_waits
-- A wait past its timeout is over even before the timer has fired: it takes nothing.
-- A run waiting now was created before this event came, whatever the clock of
-- the process that started it said: its created_at is not compared.
-- (PostgreSQL matches and resumes in one statement: resume_for_event.)
SELECT w.* FROM waits w JOIN runs r ON r.id = w.run_id
WHERE w.event_name = :name AND w.correlation_key = :correlation_key
  AND r.status = 'waiting' AND w.timeout_at > :now
ORDER BY w.created_at;

-- name: get_wait
SELECT * FROM waits WHERE run_id = :run_id;

-- name: complete_waiting_step
UPDATE steps SET status = 'completed', result = :result, finished_at = :now
WHERE run_id = :run_id AND key = :key AND status = 'waiting';

-- name: end_waiting_step
-- The wait or sleep of a run that ends while it waits (a wait timed out with
-- on_timeout "fail" or "cancel", a cancel) ends with it: failed, with the run's
-- error, as its attempt does. A retry that waits again rewrites the step.
UPDATE steps SET status = 'failed', error = :error, finished_at = :now
WHERE run_id = :run_id AND status = 'waiting';

-- name: consumers_of_event
SELECT run_id, step_key, at FROM event_consumptions WHERE event_id = :event_id ORDER BY at;

-- name: runs_resumed_by_event
-- The runs that the send of event :event_id resumed, in run id order, as
-- send_event returns them: the send stamps its takes with the event's own
-- received_at (the same :now), a wait that takes the event later as an early
-- event stamps its take with its own, later, time (only a clock that stands
-- still, such as a test's fake clock, could stamp both alike). Nothing once the
-- event is past its retention, whether or not clean-up has deleted it yet.
SELECT c.run_id FROM event_consumptions c JOIN events e ON e.id = c.event_id
WHERE c.event_id = :event_id AND c.at = e.received_at AND e.expires_at > :now
ORDER BY c.run_id;

-- name: state_get
SELECT value, expires_at FROM state
WHERE key = :key AND (expires_at IS NULL OR expires_at > :now);

-- name: state_set
INSERT INTO state (key, value, expires_at, updated_at) VALUES (:key, :value, :expires_at, :now)
ON CONFLICT (key) DO UPDATE
    SET value = excluded.value, expires_at = excluded.expires_at, updated_at = excluded.updated_at;

-- name: state_delete
DELETE FROM state WHERE key = :key AND (expires_at IS NULL OR expires_at > :now);

-- name: state_purge
DELETE FROM state WHERE key = :key;

-- name: lock_acquire
-- Free, expired, or already ours: take it. Held by a live owner: returns nothing.
-- Taken again by its live owner without a holder, it keeps the one it was taken with.
INSERT INTO locks (key, owner, holder, expires_at) VALUES (:key, :owner, :holder, :expires_at)
ON CONFLICT (key) DO UPDATE
    SET owner = excluded.owner, expires_at = excluded.expires_at,
        holder = CASE WHEN locks.expires_at > :now AND excluded.holder IS NULL
                      THEN locks.holder ELSE excluded.holder END
    WHERE locks.expires_at <= :now OR locks.owner = excluded.owner
RETURNING owner;

-- name: lock_extend
-- Only a live lock of this owner: an expired one stays expired (another owner
-- may have taken it meanwhile, or may take it now).
UPDATE locks SET expires_at = :expires_at
WHERE key = :key AND owner = :owner AND expires_at > :now
RETURNING owner;

-- name: lock_release
-- The owner's lock, gone whether or not it had expired; its expiry tells the
-- owner whether it still held the lock, and if not, whether its TTL ran out or
-- it was broken (an expiry below 0, see lock_break).
DELETE FROM locks WHERE key = :key AND owner = :owner RETURNING expires_at;

-- name: lock_break
-- Any owner's live lock (an operator frees a lock whose owner is stuck). Its
-- row stays as the mark of the break: expired, with minus the time of the break
-- (:broken_at) as its expiry, until its owner releases it (and so learns that
-- it was broken), another owner takes the key, or clean-up removes it.
UPDATE locks SET expires_at = :broken_at WHERE key = :key AND expires_at > :now
RETURNING owner;

-- name: delete_expired_locks
-- Expired locks, and the marks of broken ones made at or before the time whose
-- minus is :broken_before (a mark's expiry is minus the time of its break).
DELETE FROM locks WHERE expires_at <= :now AND expires_at >= :broken_before;

-- name: release_leased_run
-- A stopping worker hands back an attempt it could not finish: the next claim
-- continues the same attempt, reusing its completed steps. A run asked to cancel
-- while it ran is cancelled (:cancel_error) instead; the returned status says which.
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
    resuming = CASE WHEN cancel_requested = 1 THEN 0 ELSE 1 END,
    available_at = CASE WHEN cancel_requested = 1 THEN NULL ELSE :now END,
    finished_at = CASE WHEN cancel_requested = 1 THEN :now END,
    error = CASE WHEN cancel_requested = 1 THEN :cancel_error ELSE error END,
    lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0, updated_at = :now
WHERE id = :id AND lease_owner = :worker_id AND attempt = :attempt AND status = 'running'
RETURNING id, status;

-- name: insert_api_key
INSERT INTO api_keys (id, name, prefix, key_hash, created_at)
VALUES (:id, :name, :prefix, :key_hash, :now);

-- name: api_key_by_hash
-- Revoked keys are returned too: the caller tells "revoked" from "unknown".
SELECT * FROM api_keys WHERE key_hash = :key_hash;

-- name: api_key_by_id
SELECT * FROM api_keys WHERE id = :id;

-- name: list_api_keys
SELECT * FROM api_keys ORDER BY created_at, id;

-- name: find_api_keys
-- By id or by the prefix shown in listings.
SELECT * FROM api_keys WHERE id = :key OR prefix = :key;

-- name: revoke_api_key
-- Revoking twice keeps the first time.
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, :now) WHERE id = :id
RETURNING *;

-- name: touch_api_key
UPDATE api_keys SET last_used_at = :now WHERE id = :id;

-- name: end_dashboard_session
-- Logging out twice (or from two tabs) keeps the first record.
INSERT INTO ended_sessions (id, expires_at) VALUES (:id, :expires_at)
ON CONFLICT (id) DO NOTHING;

-- name: dashboard_session_open
-- Every request of a signed-in dashboard asks this: one statement, by primary
-- keys, for both the session (not ended) and its API key (not revoked; no key
-- to check when :key_id is NULL).
SELECT NOT EXISTS (SELECT 1 FROM ended_sessions WHERE id = :id)
       AND (CAST(:key_id AS TEXT) IS NULL
            OR EXISTS (SELECT 1 FROM api_keys WHERE id = :key_id AND revoked_at IS NULL))
       AS open;

-- name: delete_ended_sessions
-- Records of sessions whose cookies have expired anyway.
DELETE FROM ended_sessions WHERE expires_at <= :now;

-- name: upsert_endpoint
-- Registering a URL again keeps its id and secret and replaces what it serves.
INSERT INTO endpoints (id, url, secret, jobs, rules, concurrency, created_at, updated_at)
VALUES (:id, :url, :secret, :jobs, :rules, :concurrency, :now, :now)
ON CONFLICT (url) DO UPDATE SET jobs = excluded.jobs, rules = excluded.rules,
    concurrency = excluded.concurrency, updated_at = excluded.updated_at;

-- name: endpoint_by_url
SELECT * FROM endpoints WHERE url = :url;

-- name: list_endpoints
SELECT * FROM endpoints ORDER BY created_at, id;

-- name: delete_endpoint
DELETE FROM endpoints WHERE id = :id RETURNING *;

-- name: insert_push_delivery
INSERT INTO push_deliveries (id, endpoint_id, run_id, attempt, created_at)
VALUES (:id, :endpoint_id, :run_id, :attempt, :now);

-- name: accept_push_delivery
-- Once: a second request carrying the same delivery changes nothing.
UPDATE push_deliveries SET accepted_at = :now WHERE id = :id AND accepted_at IS NULL
RETURNING run_id, attempt;

-- name: purge_push_deliveries
DELETE FROM push_deliveries WHERE created_at < :before;

-- name: count_runs_by_queue_status
SELECT queue, status, COUNT(*) AS n FROM runs GROUP BY queue, status;

-- name: count_live_events
SELECT COUNT(*) AS n FROM events WHERE expires_at > :now;

-- Operational read models (store/overview.py): the dashboard's queue, job,
-- worker and change views.

-- name: oldest_ready_by_queue
-- Per queue, when its oldest run that is due and not yet started became due:
-- queue_oldest_ready for every queue at once.
SELECT queue, MIN(available_at) AS oldest FROM runs
WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :now
GROUP BY queue;

-- name: throughput_by_queue
-- Finished runs per bucket of :bucket seconds since :since (whole seconds): the
-- whole second a run finished in (finished_second, each dialect's), less
-- :since, divided as integers alike on both dialects.
SELECT queue, ({{finished_second}} - :since) / :bucket AS slot, status, COUNT(*) AS n
FROM runs
WHERE finished_at >= :since AND status IN ('completed', 'failed')
GROUP BY queue, ({{finished_second}} - :since) / :bucket, status;

-- name: throughput_of_queue
SELECT queue, ({{finished_second}} - :since) / :bucket AS slot, status, COUNT(*) AS n
FROM runs
WHERE queue = :queue AND finished_at >= :since AND status IN ('completed', 'failed')
GROUP BY queue, ({{finished_second}} - :since) / :bucket, status;

-- name: count_runs_by_job_status
SELECT job, status, COUNT(*) AS n, MAX(created_at) AS last_created FROM runs
GROUP BY job, status;

-- name: due_runs_by_job
-- Runs a worker of the job could claim at :now (as the claim queries pick them),
-- and the earliest time any of them is (or was) due.
SELECT job, SUM(CASE WHEN available_at <= :now THEN 1 ELSE 0 END) AS due,
       MIN(available_at) AS next_due
FROM runs WHERE status IN ('queued', 'scheduled', 'retrying')
GROUP BY job;

-- name: change_marker
-- Cheap: each part is the end of an index (or a tiny table).
SELECT (SELECT MAX(id) FROM timeline) AS timeline, (SELECT MAX(id) FROM logs) AS logs,
       (SELECT MAX(id) FROM events) AS events, (SELECT COUNT(*) FROM workers) AS workers,
       (SELECT MAX(started_at) FROM workers) AS joined;

-- name: job_names
SELECT DISTINCT job FROM runs ORDER BY job;

-- name: queue_names
SELECT DISTINCT queue FROM runs ORDER BY queue;

-- Flow control, schedules and retention (store/flow.py, store/schedules.py,
-- store/retention.py).

-- name: controlled_queues
-- The queues a claim must treat specially: paused or limited. Tiny: one row per
-- configured queue.
SELECT * FROM queues WHERE paused <> 0 OR concurrency IS NOT NULL OR rate_count IS NOT NULL;

-- name: lock_queue
-- PostgreSQL locks the row (see postgres.sql); SQLite's write transaction
-- already excludes every other writer.
SELECT * FROM queues WHERE name = :name;

-- name: get_queue
SELECT * FROM queues WHERE name = :name;

-- fragment: queue_has_setting
-- A row of queues that has a setting. A row whose settings were all removed
-- (limits set to none, resumed, or a name only ever resumed) is no queue of its
-- own: the lists show a queue that holds runs or has a setting.
(paused <> 0 OR concurrency IS NOT NULL OR rate_count IS NOT NULL
 OR max_attempts IS NOT NULL)

-- name: all_queue_names
-- Queues that hold runs or have a setting (queue_has_setting).
SELECT name FROM (SELECT DISTINCT queue AS name FROM runs
                  UNION SELECT name FROM queues WHERE {{queue_has_setting}}) q
ORDER BY name;

-- name: list_queues
-- Queues with a setting.
SELECT * FROM queues WHERE {{queue_has_setting}} ORDER BY name;

-- name: ensure_queue
INSERT INTO queues (name, created_at, updated_at) VALUES (:name, :now, :now)
ON CONFLICT (name) DO NOTHING;

-- name: update_queue
UPDATE queues
SET concurrency = :concurrency, rate_limit = :rate_limit, rate_count = :rate_count,
    rate_period = :rate_period, max_attempts = :max_attempts, paused = :paused,
    updated_at = :now
WHERE name = :name
RETURNING *;

-- name: running_in_queue
SELECT COUNT(*) AS n FROM runs WHERE status = 'running' AND queue = :queue;

-- name: running_for_key
SELECT COUNT(*) AS n FROM runs
WHERE status = 'running' AND job = :job AND concurrency_key = :key;

-- name: starts_in_window
SELECT COUNT(*) AS n FROM queue_starts WHERE queue = :queue AND at > :since;

-- name: insert_queue_start
INSERT INTO queue_starts (queue, at) VALUES (:queue, :at);

-- name: prune_queue_starts
DELETE FROM queue_starts WHERE queue = :queue AND at <= :before;

-- name: prune_all_queue_starts
-- Rows a minute past their queue's period (or of a queue no longer rate limited).
DELETE FROM queue_starts
WHERE at <= :now - 60 - COALESCE((SELECT q.rate_period FROM queues q
                                  WHERE q.name = queue_starts.queue), 0);

-- name: age_ready_runs
-- Runs ready since before :before claim ahead of every priority, oldest first.
UPDATE runs SET claim_priority = 2147483648
WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :before
  AND claim_priority < 2147483648;

-- name: queue_status_counts
SELECT status, COUNT(*) AS n FROM runs WHERE queue = :queue GROUP BY status;

-- name: queue_finished_since
-- Runs per final status (completed, failed, cancelled) finished since :since.
SELECT status, COUNT(*) AS n FROM runs
WHERE queue = :queue AND finished_at >= :since
GROUP BY status;

-- name: queue_known
-- A queue the lists show (see all_queue_names): it holds runs or has a setting.
SELECT 1 AS known
WHERE EXISTS (SELECT 1 FROM runs WHERE queue = :name)
   OR EXISTS (SELECT 1 FROM queues WHERE name = :name AND {{queue_has_setting}});

-- name: queue_oldest_ready
-- The oldest run of the queue that is due and not yet started.
SELECT MIN(available_at) AS oldest FROM runs
WHERE queue = :queue AND status IN ('queued', 'scheduled', 'retrying')
  AND available_at <= :now;

-- name: insert_schedule
INSERT INTO schedules (id, job, cron, timezone, payload, queue, overlap, source, paused,
                       next_run_at, created_at, updated_at)
VALUES (:id, :job, :cron, :timezone, :payload, :queue, :overlap, :source, 0, :next_run_at,
        :now, :now)
ON CONFLICT (id) DO NOTHING;

-- name: get_schedule
SELECT * FROM schedules WHERE id = :id;

-- name: lock_schedule
-- get_schedule in a write transaction that changes the schedule from what it read
-- (PostgreSQL locks the row: a tick being fired meanwhile is waited for, not undone).
SELECT * FROM schedules WHERE id = :id;

-- name: list_schedules
SELECT s.*, r.status AS last_run_status, r.error AS last_run_error
FROM schedules s LEFT JOIN runs r ON r.id = s.last_run_id
ORDER BY s.job, s.id;

-- name: get_schedule_detail
SELECT s.*, r.status AS last_run_status, r.error AS last_run_error
FROM schedules s LEFT JOIN runs r ON r.id = s.last_run_id
WHERE s.id = :id;

-- name: due_schedules
-- In the order of peek_due_schedules.
SELECT * FROM schedules WHERE paused = 0 AND next_run_at <= :now
ORDER BY next_run_at DESC, id LIMIT :limit;

-- name: next_schedule_tick
SELECT MIN(next_run_at) AS due FROM schedules WHERE paused = 0;

-- name: peek_due_schedules
-- Read without locks before the write transaction that fires them. The most
-- recently due first: a schedule kept up to date fires on time while others
-- catch up after an outage, whose missed ticks take long to count.
SELECT id, cron, timezone, next_run_at FROM schedules WHERE paused = 0 AND next_run_at <= :now
ORDER BY next_run_at DESC, id LIMIT :limit;

-- name: schedule_fired
-- Conditional on the tick read, so a tick is moved past once.
UPDATE schedules
SET next_run_at = :next_run_at, last_tick_at = :tick, last_run_id = :run_id,
    last_error = :error, missed_ticks = missed_ticks + :missed,
    skipped_ticks = skipped_ticks + :skipped, updated_at = :now
WHERE id = :id AND next_run_at = :due;

-- name: schedule_run_unfinished
-- Whether the run an overlap='skip' schedule started last is still to finish
-- (a run removed by retention has finished).
SELECT 1 AS unfinished FROM runs
WHERE id = :id AND status NOT IN ('completed', 'failed', 'cancelled');

-- name: set_schedule_paused
UPDATE schedules SET paused = :paused, next_run_at = :next_run_at, updated_at = :now
WHERE id = :id
RETURNING id;

-- name: update_code_schedule
-- A schedule defined in code whose expression changed: ticks restart from now.
UPDATE schedules
SET cron = :cron, timezone = :timezone, queue = :queue, overlap = :overlap,
    next_run_at = :next_run_at, updated_at = :now
WHERE id = :id;

-- name: update_schedule
-- A schedule created again under its id with another definition.
UPDATE schedules
SET job = :job, cron = :cron, timezone = :timezone, payload = :payload, queue = :queue,
    overlap = :overlap, next_run_at = :next_run_at, updated_at = :now
WHERE id = :id;

-- name: delete_schedule
DELETE FROM schedules WHERE id = :id;

-- name: delete_finished_runs
-- Oldest first, a batch at a time; runs whose idempotency key is still live are
-- kept until it expires, so a repeated start still finds its run. Only finished
-- runs have a finished_at (a CHECK constraint of runs), so this reads the
-- runs_finished index and never an unfinished run.
-- The condition is repeated outside the subquery (here and in the deletes below):
-- a row changed by a transaction that commits while the delete waits for it
-- (a run retried, a key taken over, a state key set again) is checked again as
-- it now is, so it stays; the subquery's rows are not read again.
DELETE FROM runs WHERE finished_at < :before AND id IN (
    SELECT r.id FROM runs r
    WHERE r.finished_at < :before
      AND (r.idempotency_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM idempotency_keys k
          WHERE k.scope = 'run' AND k.key = r.idempotency_key AND k.target_id = r.id
            AND k.expires_at > :now))
    ORDER BY r.finished_at LIMIT :limit)
RETURNING id;

-- name: delete_expired_events_batch
DELETE FROM events WHERE expires_at <= :now AND id IN (
    SELECT id FROM events WHERE expires_at <= :now ORDER BY expires_at LIMIT :limit)
RETURNING id;

-- name: delete_expired_idempotency_keys_batch
DELETE FROM idempotency_keys WHERE expires_at <= :now AND (scope, key) IN (
    SELECT scope, key FROM idempotency_keys WHERE expires_at <= :now
    ORDER BY expires_at LIMIT :limit)
RETURNING key;

-- name: delete_expired_state_batch
DELETE FROM state WHERE expires_at <= :now AND key IN (
    SELECT key FROM state WHERE expires_at IS NOT NULL AND expires_at <= :now
    ORDER BY expires_at LIMIT :limit)
RETURNING key;
