"""A write transaction that fails, in its statements or at its commit, changes
nothing and leaves the store writing as before."""

from __future__ import annotations

from typing import Any

import pytest

from stackshift import StackShift


def _timeline_rows(app: StackShift) -> int:
    with app._service.store.db.read() as tx:
        return int(tx.raw("SELECT COUNT(*) AS n FROM timeline", {})[0]["n"])


def test_a_write_that_fails_at_its_commit_changes_nothing_and_later_writes_work(
        app: StackShift) -> None:
    db = app._service.store.db
    run = app.start("job", {})
    before = _timeline_rows(app)

    def orphan_entry(tx: Any) -> None:
        # The foreign key is checked at the commit where the store can defer it
        # (SQLite), else at the insert: either way the transaction fails.
        if tx.dialect == "sqlite":
            tx.raw("PRAGMA defer_foreign_keys = ON", {})
        tx.raw("INSERT INTO timeline (run_id, at, kind) VALUES ('run_missing', 0, 'x')", {})

    with pytest.raises(Exception, match=r"(?i)foreign key"), db.write() as tx:
        tx.raw("UPDATE runs SET priority = 7 WHERE id = :id", {"id": run.id})
        orphan_entry(tx)

    assert _timeline_rows(app) == before
    assert app.runs.get(run.id).priority == 0
    # The store writes as before: a start, and a cancel of the first run.
    second = app.start("job", {})
    assert app.runs.cancel(run.id).status == "cancelled"
    assert app.runs.get(second.id).status == "queued"
