"""The lines ``stackshift dev``'s run board prints into a pipe or a file: the
newest runs at its first look, then every change of a run's status, read from
the runs' timelines (the board's process is under test in test_cli.py)."""

from __future__ import annotations

import time

import psycopg

from stackshift import StackShift
from stackshift.cli.liveview import MAX_LINES, RunBoard
from stackshift.store.postgres import parse_postgres_url


def _shown(board: RunBoard) -> list[list[str]]:
    """Run id, job and status of each line the board prints now."""
    return [line.plain.split("  ")[1:4] for line in board.change_lines()]


def test_the_board_prints_each_change_once_and_skips_a_flood_to_the_latest(
        app: StackShift) -> None:
    earlier = app.start("parked")
    board = RunBoard(app)
    assert _shown(board) == [[earlier.id, "parked", "queued"]]  # the first look: as it is
    assert _shown(board) == []  # nothing since

    run = app.start("parked")
    app.runs.cancel(run.id, reason="not needed")
    lines = [line.plain for line in board.change_lines()]
    assert [line.split("  ")[1:4] for line in lines] == [
        [run.id, "parked", "queued"], [run.id, "parked", "cancelled"]]
    assert lines[1].endswith("  attempt 0/3  Cancelled: not needed"), lines[1]
    assert _shown(board) == []

    # More changes than the board prints at once: the first MAX_LINES, then a
    # line that says the rest were skipped; the next look starts after them.
    flood = [app.start("parked").id for _ in range(MAX_LINES + 30)]
    lines = [line.plain for line in board.change_lines()]
    assert [line.split("  ")[1] for line in lines[:-1]] == flood[:MAX_LINES]
    assert lines[-1].startswith("… more status changes than the board prints at once"), lines
    after = app.start("parked")
    assert _shown(board) == [[after.id, "parked", "queued"]]


def test_the_board_prints_an_entry_committed_after_later_ones_once(pg_url: str) -> None:
    # PostgreSQL hands out a timeline id when the row is inserted, not when its
    # transaction commits: an entry with a lower id can become visible after
    # higher ones were shown.
    app = StackShift(pg_url)
    try:
        late = app.start("parked")
        board = RunBoard(app)
        assert _shown(board) == [[late.id, "parked", "queued"]]
        conninfo, options = parse_postgres_url(pg_url)
        with psycopg.connect(conninfo, options=f"-c search_path={options['schema']}") as conn:
            conn.execute("INSERT INTO timeline (run_id, at, kind, attempt)"
                         " VALUES (%s, %s, 'run.cancelled', 0)", (late.id, time.time()))
            # Uncommitted still: a later start commits an entry with a higher id.
            early = app.start("parked")
            assert _shown(board) == [[early.id, "parked", "queued"]]
        # Committed now (leaving the block).
        assert _shown(board) == [[late.id, "parked", "cancelled"]]
        assert _shown(board) == []
    finally:
        app.close()
