-- 0006: the defaults of each job as its workers define it (the same table as
-- SQLite's 0006), written when a worker starts, for the processes that start
-- runs without the job's code (the CLI, the HTTP server).
CREATE TABLE jobs (
    name          text COLLATE "C" PRIMARY KEY,
    queue         text,
    max_attempts  integer,
    updated_at    double precision NOT NULL
);
