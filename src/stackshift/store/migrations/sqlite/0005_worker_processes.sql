-- 0005: a worker's process, so that another worker on the same machine can tell
-- at once that it has ended (see stackshift/processes.py). Both stay NULL for
-- workers that cannot say (remote workers, systems without /proc).
-- `process_space`: boot id, pid namespace and user; `process_started`: the
-- process's start time in clock ticks after boot.
ALTER TABLE workers ADD COLUMN process_space TEXT;
ALTER TABLE workers ADD COLUMN process_started INTEGER;
