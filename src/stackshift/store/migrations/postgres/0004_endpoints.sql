-- 0004: push mode (the same tables as SQLite's 0004). An endpoint is an
-- application's handler route that the server invokes to execute runs of the
-- jobs it serves.
-- `secret` signs each request (HMAC-SHA256). Unlike an API key it cannot be
-- stored as a hash: the server needs the secret itself to sign.
-- `rules` is the endpoint's claim rules as JSON (per-job key limits and
-- failure handlers, sent by the application when it registers).
-- A delivery is one signed request; the route accepts each delivery once
-- (`accepted_at`), which is what makes a replayed request useless.

CREATE TABLE endpoints (
    id           text COLLATE "C" PRIMARY KEY,
    url          text COLLATE "C" NOT NULL UNIQUE,
    secret       text COLLATE "C" NOT NULL,
    jobs         text COLLATE "C" NOT NULL,
    rules        text COLLATE "C" NOT NULL,
    concurrency  integer NOT NULL,
    created_at   double precision NOT NULL,
    updated_at   double precision NOT NULL
);

CREATE TABLE push_deliveries (
    id           text COLLATE "C" PRIMARY KEY,
    endpoint_id  text COLLATE "C" NOT NULL,
    run_id       text COLLATE "C" NOT NULL,
    attempt      integer NOT NULL,
    created_at   double precision NOT NULL,
    accepted_at  double precision
);
CREATE INDEX push_deliveries_created ON push_deliveries (created_at);
