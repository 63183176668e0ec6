"""The store: one class over any :class:`~stackshift.store.database.Database`."""

from __future__ import annotations

from .database import LEAD_SILENCE, Database
from .endpoints import EndpointStore
from .events import EventStore
from .keys import KeyStore
from .metrics import MetricsStore
from .overview import OverviewStore
from .queues import QueueStore
from .retention import RetentionStore
from .runs import RunStore
from .schedules import ScheduleStore
from .sessions import SessionStore
from .state import StateStore


class SqlStore(RunStore, EventStore, StateStore, KeyStore, MetricsStore, OverviewStore,
               QueueStore, ScheduleStore, RetentionStore, EndpointStore, SessionStore):
    """All storage operations, each one short transaction on ``db``.

    SQLite and PostgreSQL differ only below this class: connections, the claim
    query, advisory locks and error classification live in their ``Database``.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def migrate(self) -> int:
        return self.db.migrate()

    def changed(self) -> bool:
        return self.db.changed()

    def detached(self) -> str | None:
        return self.db.detached()

    def try_lead(self, worker_id: str, silence: float = LEAD_SILENCE) -> bool:
        """Whether ``worker_id`` is the elected maintainer (rescuer, timers, clean-up).

        On PostgreSQL one worker across all processes and machines is elected, and
        another takes over when its process dies or it goes ``silence`` seconds
        without calling again; on SQLite every worker is.
        """
        return self.db.try_lead(worker_id, silence)

    def resign(self, worker_id: str) -> None:
        self.db.resign(worker_id)

    def close(self) -> None:
        self.db.close()


def open_store(url: str) -> SqlStore:
    """Open the store for ``url`` (``sqlite:///...`` or ``postgresql://...``)."""
    if url.startswith("sqlite:"):
        from .sqlite import SqliteDatabase

        return SqlStore(SqliteDatabase(url))
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from .postgres import PostgresDatabase
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("psycopg"):
                raise
            raise ModuleNotFoundError(
                f"a PostgreSQL URL needs the driver: pip install 'stackshift[postgres]' ({exc})",
                name=exc.name,
            ) from exc

        return SqlStore(PostgresDatabase(url))
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///file.db or postgresql://...")
