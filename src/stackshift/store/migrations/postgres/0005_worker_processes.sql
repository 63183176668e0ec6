-- 0005: a worker's process (the same columns as SQLite's 0005), so that another
-- worker on the same machine can tell at once that it has ended (see
-- stackshift/processes.py). Both stay NULL for workers that cannot say (remote
-- workers, systems without /proc).
ALTER TABLE workers ADD COLUMN process_space text;
ALTER TABLE workers ADD COLUMN process_started bigint;
