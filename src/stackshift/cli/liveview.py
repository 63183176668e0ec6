"""The run board ``stackshift dev`` shows: recent runs, updating as they progress.

On a terminal it is a live table; piped to a file it prints one line per change,
so logs of a dev session stay readable.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from ..client import StackShift
from ..models import Run
from .render import STATUS_STYLES, attempt_cell, run_detail_line, runs_table, status_text

REFRESH_SECONDS = 0.3


class RunBoard:
    """Reads the newest runs and the count of runs per status through the SDK."""

    def __init__(self, app: StackShift, limit: int = 15) -> None:
        self.app = app
        self.limit = limit
        self._seen: dict[str, tuple[str, int]] = {}

    def recent(self) -> list[Run]:
        return list(self.app.runs.list(limit=self.limit).items)

    def counts(self) -> dict[str, int]:
        return self.app._service.store.count_runs_by_status()

    def render(self, width: int | None = None) -> RenderableType:
        now = datetime.now(UTC)
        counts = self.counts()
        summary = Text("runs: ")
        if not counts:
            summary.append("none yet", style="dim")
        for i, status in enumerate(s for s in STATUS_STYLES if counts.get(s)):
            if i:
                summary.append("  ")
            summary.append(f"{counts[status]} {status}", style=STATUS_STYLES[status])
        table = runs_table(self.recent(), now=now, width=width,
                           title=f"newest {self.limit} runs · {now:%H:%M:%S} UTC")
        return Group(summary, table)

    def changes(self) -> list[Run]:
        """Runs whose status or attempt changed since the last call, oldest first."""
        changed = []
        for run in reversed(self.recent()):
            marker = (run.status, run.attempt)
            if self._seen.get(run.id) != marker:
                self._seen[run.id] = marker
                changed.append(run)
        return changed

    def failed_at(self, run: Run) -> datetime | None:
        """When a retrying run's last attempt failed: its next attempt's delay
        counts from then. None for a run not retrying."""
        if run.status != "retrying":
            return None
        ends = [a.finished_at for a in self.app.runs.attempts(run.id) if a.number == run.attempt]
        return ends[0] if ends else None


def change_line(run: Run, since: datetime | None = None) -> Text:
    """One line for a run that changed. Its detail's times count from ``since``
    (default now): for a retrying run, from its failure, so that the line gives
    the delay before the next attempt, not what was left of it when the board
    read the run (a short backoff is often over by then)."""
    line = Text(f"{datetime.now(UTC):%H:%M:%S}  {run.id}  {run.job}  ")
    line.append_text(status_text(run.status))
    line.append(f"  attempt {attempt_cell(run)}")
    detail = run_detail_line(run, since)
    if detail:
        line.append(f"  {detail}", style="dim")
    return line


def show_board(board: RunBoard, out: Console, stop: threading.Event) -> None:
    """Show the board on ``out`` until ``stop`` is set; what changed since its last
    look is still shown once ``stop`` is set."""
    stopping = False
    if out.is_terminal:
        with Live(board.render(out.width), console=out, refresh_per_second=4) as live:
            while not stopping:
                stopping = stop.wait(REFRESH_SECONDS)
                live.update(board.render(out.width))
        return
    while True:
        for run in board.changes():
            out.print(change_line(run, board.failed_at(run)))
        if stopping:
            return
        stopping = stop.wait(REFRESH_SECONDS)
