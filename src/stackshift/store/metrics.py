"""Aggregate counts for monitoring (``/metrics``): cheap, index-backed queries."""

from __future__ import annotations

from .database import Database


class MetricsStore:
    db: Database

    def run_counts(self) -> dict[tuple[str, str], int]:
        """Runs per ``(queue, status)``."""
        with self.db.read() as tx:
            found = tx.all("count_runs_by_queue_status")
        return {(r["queue"], r["status"]): int(r["n"]) for r in found}

    def event_count(self, now: float) -> int:
        """Events kept (not yet past their retention)."""
        with self.db.read() as tx:
            row = tx.one("count_live_events", now=now)
        return 0 if row is None else int(row["n"])
