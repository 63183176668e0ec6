"""API keys of ``stackshift server``: stored as SHA-256 hashes, never as keys.

A key is a long random token; hashing it once with SHA-256 is enough because it
cannot be guessed from a dictionary (unlike a password), and it lets a request
be checked with one indexed lookup.
"""

from __future__ import annotations

from ..durations import to_datetime
from ..errors import ValidationError
from ..models import ApiKey
from .database import Database, Row


def api_key(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=to_datetime(row["created_at"]),  # type: ignore[arg-type]
        last_used_at=to_datetime(row["last_used_at"]),
        revoked_at=to_datetime(row["revoked_at"]),
    )


class KeyStore:
    db: Database

    def insert_api_key(self, key_id: str, name: str, prefix: str, key_hash: str,
                       now: float) -> ApiKey:
        with self.db.write() as tx:
            tx.run("insert_api_key", id=key_id, name=name, prefix=prefix, key_hash=key_hash,
                   now=now)
            row = tx.one("api_key_by_hash", key_hash=key_hash)
        assert row is not None
        return api_key(row)

    def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not; ``None`` when there is none."""
        with self.db.read() as tx:
            row = tx.one("api_key_by_hash", key_hash=key_hash)
        return None if row is None else api_key(row)

    def api_key_by_id(self, key_id: str) -> ApiKey | None:
        """The key with this id, revoked or not; ``None`` when there is none."""
        with self.db.read() as tx:
            row = tx.one("api_key_by_id", id=key_id)
        return None if row is None else api_key(row)

    def touch_api_key(self, key_id: str, now: float) -> None:
        with self.db.write() as tx:
            tx.run("touch_api_key", id=key_id, now=now)

    def list_api_keys(self) -> list[ApiKey]:
        with self.db.read() as tx:
            return [api_key(r) for r in tx.all("list_api_keys")]

    def revoke_api_key(self, key: str, now: float) -> tuple[ApiKey, bool] | None:
        """Revoke the key with this id or listed prefix: the key, and whether this
        call revoked it (false: it was revoked before, and keeps that time);
        ``None`` when none matches.

        Raises :class:`ValidationError` when a prefix matches more than one key.
        """
        with self.db.write() as tx:
            found = tx.all("find_api_keys", key=key)
            if not found:
                return None
            if len(found) > 1:
                raise ValidationError(f"{key!r} matches {len(found)} keys; revoke by id")
            row = tx.one("revoke_api_key", id=found[0]["id"], now=now)
        assert row is not None
        return api_key(row), found[0]["revoked_at"] is None
