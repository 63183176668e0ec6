-- 0002: API keys for `stackshift server`.
-- A key is shown once, when it is created; only its SHA-256 hash is stored.
-- `prefix` is the key's first characters, kept so that operators can tell keys
-- apart in listings; it is far too short to be used as the key.

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    created_at    REAL NOT NULL,
    last_used_at  REAL,
    revoked_at    REAL
);
CREATE INDEX api_keys_name ON api_keys (name);
