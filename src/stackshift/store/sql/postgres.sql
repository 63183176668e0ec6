-- Queries that differ on PostgreSQL.

-- name: claim_candidates
-- SKIP LOCKED lets many workers claim at once without waiting on each other.
SELECT id, status, resuming, attempt, available_at FROM runs
WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :now
  AND job = ANY(:jobs)
ORDER BY priority DESC, available_at, id
LIMIT :limit
FOR UPDATE SKIP LOCKED;

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
