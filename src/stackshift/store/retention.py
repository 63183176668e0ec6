"""Retention: deleting what has outlived its use, a batch per transaction.

Finished runs older than the retention go with everything recorded about them
(steps, attempts, logs, timeline, waits, event consumptions and run
correlations, through ``ON DELETE CASCADE``). Unfinished runs are never touched, and a finished run
whose idempotency key is still live is kept until the key expires, so that a
repeated start still finds it. Events past their retention, expired
idempotency keys, state keys and locks (the marks of broken locks a day after
the break), old rate-limit starts, and the records of dashboard sessions ended
by logging out once their cookies have expired go too.
Each batch is one short transaction, so clean-up never holds the database for
long; the maintainer calls again while a batch comes back full.
"""

from __future__ import annotations

from .database import Database
from .state import BROKEN_LOCK_KEPT


class RetentionStore:
    db: Database

    def delete_finished_runs(self, before: float, now: float, limit: int) -> int:
        """Delete up to ``limit`` runs finished before ``before``, oldest first."""
        with self.db.write() as tx:
            return len(tx.all("delete_finished_runs", before=before, now=now, limit=limit))

    def delete_expired(self, now: float, limit: int) -> dict[str, int]:
        """Delete up to ``limit`` each of expired events, idempotency keys and state keys,
        and every expired lock, old rate-limit start and ended dashboard session's
        record whose cookie has expired."""
        with self.db.write() as tx:
            return {
                "events": len(tx.all("delete_expired_events_batch", now=now, limit=limit)),
                "idempotency_keys": len(
                    tx.all("delete_expired_idempotency_keys_batch", now=now, limit=limit)),
                "state": len(tx.all("delete_expired_state_batch", now=now, limit=limit)),
                "locks": tx.run("delete_expired_locks", now=now,
                                broken_before=-(now - BROKEN_LOCK_KEPT)),
                "queue_starts": tx.run("prune_all_queue_starts", now=now),
                "ended_sessions": tx.run("delete_ended_sessions", now=now),
            }
