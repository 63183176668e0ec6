-- 0002: API keys for `stackshift server` (the same table as SQLite's 0002).
-- A key is shown once, when it is created; only its SHA-256 hash is stored.
-- `prefix` is the key's first characters, kept so that operators can tell keys
-- apart in listings; it is far too short to be used as the key.

CREATE TABLE api_keys (
    id            text COLLATE "C" PRIMARY KEY,
    name          text COLLATE "C" NOT NULL,
    prefix        text COLLATE "C" NOT NULL,
    key_hash      text COLLATE "C" NOT NULL UNIQUE,
    created_at    double precision NOT NULL,
    last_used_at  double precision,
    revoked_at    double precision
);
CREATE INDEX api_keys_name ON api_keys (name);
