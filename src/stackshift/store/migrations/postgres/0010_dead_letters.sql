-- 0010: dead letters are listed by failure time, the latest first, a page at a
-- time (store/queues.py): each queue's failed runs by finish time and id, so a
-- page reads its own entries of this index, however many runs the queue holds.
-- Builds an index on runs: writes to runs wait while it is built.
CREATE INDEX runs_dead_letters ON runs (queue, finished_at, id) WHERE status = 'failed';
