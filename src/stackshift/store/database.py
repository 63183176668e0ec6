"""The thin, per-dialect layer under the store: connections and transactions.

A :class:`Database` hands out transactions (:class:`Tx`) that run named queries.
Everything above it (``store/*.py``) is shared by SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

Row = Mapping[str, Any]

def is_database_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or did not answer in time: PostgreSQL
    down, restarting, a connection dropped or out of pool connections (psycopg's
    ``OperationalError``, ``AdminShutdown`` and ``PoolTimeout`` included), SQLite
    locked past its busy timeout. Neither the caller's fault nor a bug: worth a
    retry."""
    return any(
        cls.__name__ == "OperationalError" and cls.__module__.startswith(("psycopg", "sqlite3"))
        for cls in type(exc).__mro__
    )


def is_schema_missing(exc: BaseException) -> bool:
    """A table of StackShift's schema is not there: the database was emptied, or
    dropped and made again, under a running process (or never migrated).
    Nothing a retry mends until ``stackshift migrate`` runs on it."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "UndefinedTable" and cls.__module__.startswith("psycopg"):
            return True
    return (type(exc).__module__ == "sqlite3" and is_database_unavailable(exc)
            and str(exc).startswith("no such table"))


#: What a process says of a database whose tables are gone (see is_schema_missing).
SCHEMA_MISSING = "the database has no StackShift tables; run `stackshift migrate` on it"


#: Seconds a maintenance leader may go without calling ``try_lead`` again before
#: another process may take the lead from it (see :meth:`Database.try_lead`).
LEAD_SILENCE = 5.0


class Tx(Protocol):
    """One open transaction. Queries are referred to by their name in ``sql/``."""

    dialect: str

    def one(self, query: str, **params: Any) -> Row | None: ...

    def all(self, query: str, **params: Any) -> list[Row]: ...

    def all_limited(self, query: str, limit: int, **params: Any) -> list[Row]:
        """``all`` with the statement's ``:limit`` written in as a constant: on
        PostgreSQL a statement (and its cached plan) per value, where a limit
        sent as a parameter leaves the planner guessing how many rows come."""
        ...

    def run(self, query: str, **params: Any) -> int:
        """Execute a statement; return the number of rows it changed."""
        ...

    def many(self, query: str, params: Sequence[Mapping[str, Any]]) -> None:
        """Execute a statement once for each parameter set (one batch, no results)."""
        ...

    def many_returning(self, query: str, params: Sequence[Mapping[str, Any]]
                       ) -> list[Row | None]:
        """Execute a statement once for each parameter set; the first row of each."""
        ...

    def raw(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        """Execute SQL built from fixed fragments (list filters); return its rows."""
        ...

    def lock(self, key: str) -> None:
        """Serialise with other transactions that lock ``key`` until this one ends."""
        ...

    def is_data_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database refusing a value (e.g. a failed cast)."""
        ...

    def link_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the link to the database broke mid-statement: the
        server may have applied the statement or not."""
        ...


class Database(Protocol):
    dialect: str
    url: str

    def write(self, durable: bool = True) -> AbstractContextManager[Tx]:
        """A read-write transaction, committed on exit, rolled back on error.

        ``durable=False`` commits without waiting for the flush to disk: the
        writes survive a crash of the process but maybe not of the machine. Only
        for writes that nothing depends on (a note on a run's timeline).
        """
        ...

    def write_one(self) -> AbstractContextManager[Tx]:
        """A write transaction of exactly one statement (a second one raises).

        On PostgreSQL it is sent without BEGIN and COMMIT: one round trip where
        a transaction takes three. Durable as :meth:`write`; should the link
        break during the statement (:meth:`Tx.link_lost`), whether it was
        applied is unknown, as it is when a COMMIT is cut off.
        """
        ...

    def read(self) -> AbstractContextManager[Tx]:
        """A read-only snapshot."""
        ...

    def migrate(self) -> int:
        """Apply pending migrations; return the schema version."""
        ...

    def schema_version(self) -> int: ...

    def changed(self) -> bool:
        """Whether another connection may have committed since the last call.

        Cheap enough to call every few milliseconds on an idle worker.
        """
        ...

    def detached(self) -> str | None:
        """What cut this process off from the database others use, if anything
        (an SQLite file deleted or replaced under it), else None."""
        ...

    def try_lead(self, owner: str, silence: float = LEAD_SILENCE) -> bool:
        """Whether ``owner`` may run maintenance now (held until :meth:`resign` or death).

        Several processes may call this; at most one of them is told yes at a time
        where the dialect can share a database between machines. A leader calls
        again every maintenance round; one that goes ``silence`` seconds without
        calling (hung, stopped, cut off) may lose the lead to another process.
        """
        ...

    def resign(self, owner: str) -> None:
        """Give up what :meth:`try_lead` granted ``owner``, if anything."""
        ...

    def close(self) -> None: ...


def split_statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (no semicolons inside strings)."""
    statement: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--") and not statement:
            continue
        statement.append(line)
        if line.rstrip().endswith(";"):
            text = "\n".join(statement).strip()
            if text:
                yield text
            statement = []
    tail = "\n".join(statement).strip()
    if tail:
        yield tail
