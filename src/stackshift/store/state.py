"""The durable key-value state store and its locks."""

from __future__ import annotations

from typing import Any

from ..errors import ValidationError
from ..models import LockLoss
from ..serialization import loads
from .database import Database, Row

#: How long the row of a broken lock stays (unless its owner releases it or
#: another owner takes the key first) so that its owner can learn it was broken.
BROKEN_LOCK_KEPT = 86400.0


class _Refused(Exception):
    """The database refused an increment (not an integer, or out of range)."""


def _check_increment(key: str, row: Row | None, by: int) -> None:
    """Refuse to add ``by`` to the value in ``row`` (``None``: no live value, 0)."""
    current = 0 if row is None else loads(row["value"])
    if isinstance(current, bool) or not isinstance(current, int):
        raise ValidationError(f"state key {key!r} does not hold an integer")
    if not -(2**63) <= current + by < 2**63:
        raise ValidationError(f"adding {by} to state key {key!r} leaves the 64-bit integer range")


def past_prefix(prefix: str) -> str | None:
    """The least text after every text that starts with ``prefix``, in code point
    order (``None``: there is none, the prefix is all U+10FFFF). Its last character
    that is not U+10FFFF, moved on by one (over the surrogates, which no key holds)."""
    kept = prefix.rstrip("\U0010ffff")
    if not kept:
        return None
    following = ord(kept[-1]) + 1
    return kept[:-1] + chr(0xE000 if 0xD800 <= following <= 0xDFFF else following)


class StateStore:
    db: Database

    def state_get(self, key: str, now: float) -> tuple[bool, Any]:
        """``(found, value)``; an expired key reads as missing."""
        with self.db.read() as tx:
            row = tx.one("state_get", key=key, now=now)
        return (False, None) if row is None else (True, loads(row["value"]))

    def state_set(self, key: str, value: str, expires_at: float | None, now: float) -> None:
        with self.db.write() as tx:
            tx.run("state_set", key=key, value=value, expires_at=expires_at, now=now)

    def state_delete(self, key: str, now: float) -> bool:
        """Delete ``key``; return whether a live value was there."""
        with self.db.write() as tx:
            live = tx.run("state_delete", key=key, now=now)
            tx.run("state_purge", key=key)
        return live > 0

    def state_increment(self, key: str, by: int, now: float) -> int:
        for _ in range(3):
            try:
                with self.db.write() as tx:
                    if tx.dialect == "sqlite":
                        # SQLite would turn true into 1 and an overflow into a float:
                        # refuse both here, as PostgreSQL's bigint cast does.
                        _check_increment(key, tx.one("state_get", key=key, now=now), by)
                    try:
                        result = tx.one("state_increment", key=key, by=by, now=now)
                    except Exception as exc:
                        if tx.is_data_error(exc):
                            raise _Refused from None
                        raise
                assert result is not None
                return int(result["value"])
            except _Refused:
                pass
            # PostgreSQL refused the cast or the sum: say which, as for SQLite.
            with self.db.read() as tx:
                _check_increment(key, tx.one("state_get", key=key, now=now), by)
            # The value changed in between to one that can be added to: try again.
        raise ValidationError(f"state key {key!r} does not hold an integer, or adding {by} "
                              "leaves the 64-bit integer range")

    def _live_page(self, table: str, prefix: str | None, limit: int, now: float,
                   after: str | None) -> list[Row]:
        """Live rows of ``table`` (state or locks) in key order (by code point on every
        store), those after ``after`` only when it is given: the last key of a page
        gives the next."""
        sql = f"SELECT * FROM {table} WHERE (expires_at IS NULL OR expires_at > :now)"
        params: dict[str, Any] = {"now": now, "limit": limit}
        if prefix:
            # A range, not LIKE: '%', '_' and '\\' in a prefix are literal, and the
            # primary key's order serves it.
            sql += " AND key >= :lo"
            params["lo"] = prefix
            if (hi := past_prefix(prefix)) is not None:
                sql += " AND key < :hi"
                params["hi"] = hi
        if after is not None:
            sql += " AND key > :after"
            params["after"] = after
        sql += " ORDER BY key LIMIT :limit"
        with self.db.read() as tx:
            return tx.raw(sql, params)

    def list_state(self, prefix: str | None, limit: int, now: float,
                   after: str | None = None) -> list[dict[str, Any]]:
        """Live keys in key order, as :meth:`_live_page` reads them."""
        return [
            {"key": r["key"], "value": loads(r["value"]), "expires_at": r["expires_at"],
             "updated_at": r["updated_at"]}
            for r in self._live_page("state", prefix, limit, now, after)
        ]

    def list_locks(self, prefix: str | None, limit: int, now: float,
                   after: str | None = None) -> list[dict[str, Any]]:
        """Live (unexpired) locks in key order, as :meth:`_live_page` reads them."""
        return [
            {"key": r["key"], "holder": r["holder"], "expires_at": r["expires_at"]}
            for r in self._live_page("locks", prefix, limit, now, after)
        ]

    def lock_acquire(self, key: str, owner: str, holder: str | None, expires_at: float,
                     now: float) -> bool:
        """Take ``key`` for ``owner`` (``holder`` says who that is, in words) unless
        another live owner holds it; return whether ``owner`` holds it now."""
        with self.db.write() as tx:
            return tx.one("lock_acquire", key=key, owner=owner, holder=holder,
                          expires_at=expires_at, now=now) is not None

    def lock_extend(self, key: str, owner: str, expires_at: float, now: float) -> bool:
        """Move the expiry of ``owner``'s live lock to ``expires_at``; return whether
        ``owner`` still held it (False when its TTL had run out: it is not taken back)."""
        with self.db.write() as tx:
            return tx.one("lock_extend", key=key, owner=owner, expires_at=expires_at,
                          now=now) is not None

    def lock_release(self, key: str, owner: str, now: float) -> LockLoss | None:
        """Delete ``owner``'s lock; return ``None`` when it still held it (its TTL had
        not run out and nobody broke it: no other owner can have taken it meanwhile),
        else how it had lost it."""
        with self.db.write() as tx:
            row = tx.one("lock_release", key=key, owner=owner)
        if row is None:  # another owner took the key after a break or the TTL, or clean-up
            return "expired_or_broken"
        if row["expires_at"] < 0:  # the mark of a break
            return "broken"
        return None if row["expires_at"] > now else "expired"

    def lock_break(self, key: str, now: float) -> bool:
        """Free the live lock on ``key`` whatever its owner; return whether there was
        one. Its owner finds out: its extend fails, and its release says it was broken."""
        with self.db.write() as tx:
            return tx.one("lock_break", key=key, now=now, broken_at=-now) is not None
