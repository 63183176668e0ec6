-- Queries that differ on SQLite. Claims run inside BEGIN IMMEDIATE, which holds
-- the database's single write lock, so a plain SELECT then UPDATE is race-free.

-- name: claim_candidates
SELECT id, status, resuming, attempt, available_at FROM runs
WHERE status IN ('queued', 'scheduled', 'retrying') AND available_at <= :now
  AND job IN (SELECT value FROM json_each(:jobs))
  AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
ORDER BY priority DESC, available_at, id
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
