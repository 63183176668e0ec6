"""SQLite has one write lock for all processes: starts made while another
process holds it wait for it together, and then share one transaction (and
its flush to disk) instead of taking the lock one after another."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from stackshift import StackShift


def test_starts_made_while_another_process_writes_share_one_transaction(
        tmp_path: Path) -> None:
    path = tmp_path / "stackshift.db"
    app = StackShift(f"sqlite:///{path}")
    group = app._service.store.group_commit
    commits: list[int] = []
    commit = group._commit

    def counting(batch: list) -> None:  # type: ignore[type-arg]
        commit(batch)
        commits.append(len(batch))

    group._commit = counting  # type: ignore[method-assign]
    try:
        app.start("job")  # the schema exists from here on
        commits.clear()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process writing
        ids: list[str] = []
        first = threading.Thread(target=lambda: ids.append(app.start("job").id))
        first.start()
        time.sleep(0.2)  # the first start waits for the lock
        later = [threading.Thread(target=lambda: ids.append(app.start("job").id))
                 for _ in range(3)]
        for thread in later:
            thread.start()
        time.sleep(0.2)
        assert ids == [], "a start returned while another process held the write lock"
        other.execute("ROLLBACK")
        for thread in [first, *later]:
            thread.join(10)
        other.close()
        assert len(set(ids)) == 4
        assert commits == [4]
        assert {run.id for run in app.runs.list(job="job").items} >= set(ids)
    finally:
        app.close()
