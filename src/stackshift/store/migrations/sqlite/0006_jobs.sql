-- 0006: the defaults of each job as its workers define it (`@job(queue=...,
-- max_attempts=...)`), written when a worker starts. A process that starts runs
-- without the job's code (the CLI, the HTTP server) takes them from here, so a
-- run gets the same queue and attempts wherever it is started.
CREATE TABLE jobs (
    name          TEXT PRIMARY KEY,
    queue         TEXT,
    max_attempts  INTEGER,
    updated_at    REAL NOT NULL
);
