-- 0012: a schedule's overlap policy (store/schedules.py). 'allow': every tick
-- starts a run, as before. 'skip': a tick while the run of an earlier tick is
-- still unfinished starts none; the schedule moves on and counts it in
-- skipped_ticks. Existing schedules keep 'allow'.
ALTER TABLE schedules ADD COLUMN overlap text NOT NULL DEFAULT 'allow'
    CHECK (overlap IN ('allow', 'skip'));
ALTER TABLE schedules ADD COLUMN skipped_ticks integer NOT NULL DEFAULT 0;
