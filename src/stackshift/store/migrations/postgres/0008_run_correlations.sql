-- 0008: the correlation keys each run has waited with, kept as long as the run
-- (the same table as SQLite's 0008), so that runs.list(correlation_key=) finds
-- a run after its wait timed out or the event it took passed its retention.
-- Filled from the waits and the taken events still stored; a wait that ended
-- before this migration and left no stored event is not known.
CREATE TABLE run_correlations (
    correlation_key  text COLLATE "C" NOT NULL,
    run_id           text COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    PRIMARY KEY (correlation_key, run_id)
);
CREATE INDEX run_correlations_run ON run_correlations (run_id);
INSERT INTO run_correlations (correlation_key, run_id)
SELECT correlation_key, run_id FROM waits WHERE correlation_key <> ''
UNION
SELECT e.correlation_key, c.run_id FROM event_consumptions c JOIN events e ON e.id = c.event_id
WHERE e.correlation_key <> '';
