"""The run board ``stackshift dev`` shows: recent runs, updating as they progress.

On a terminal it is a live table; piped to a file it prints one line per change
of a run's status, read from the runs' timelines, so logs of a dev session stay
readable and show every step a run went through (a retry after a short
backoff included, over before the board looks again).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from ..client import StackShift
from ..errors import RunNotFoundError
from ..models import Run, RunError, TimelineEntry, WaitingFor
from .failures import output_gone
from .render import (
    STATUS_STYLES,
    attempt_cell,
    one_line,
    run_detail_line,
    runs_table,
    status_text,
)
from .worker import HeldLines

REFRESH_SECONDS = 0.3

#: The status each timeline entry of :meth:`RunStore.status_changes_after` brings.
STATUS_OF = {
    "run.queued": "queued", "run.scheduled": "scheduled", "attempt.started": "running",
    "run.resumed": "running", "run.retrying": "retrying", "run.waiting": "waiting",
    "run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled",
}
#: Status changes shown per look at most; past them the board skips to the latest.
MAX_LINES = 200
#: Timeline ids below the last one read that are read again at the next look: on
#: PostgreSQL an id is handed out before its transaction commits, so an entry
#: can become visible after higher ones have been shown.
LOOKBACK = 100


class RunBoard:
    """Reads the newest runs and the count of runs per status through the SDK."""

    def __init__(self, app: StackShift, limit: int = 15) -> None:
        self.app = app
        self.limit = limit
        #: The last timeline entry read (None before the first look).
        self._horizon: int | None = None
        #: Entries up to this one are not shown: those before the first look
        #: (which shows the runs as they are) or before the board skipped ahead.
        self._floor = 0
        #: Entries shown within LOOKBACK of the horizon.
        self._shown: set[int] = set()
        #: The error of each run's last failed attempt, until its status line.
        self._errors: dict[str, RunError] = {}

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

    def failed_at(self, run: Run) -> datetime | None:
        """When a retrying run's last attempt failed: its next attempt's delay
        counts from then. None for a run not retrying."""
        if run.status != "retrying":
            return None
        ends = [a.finished_at for a in self.app.runs.attempts(run.id) if a.number == run.attempt]
        return ends[0] if ends else None

    def change_lines(self) -> list[Text]:
        """The lines to print since the last call: at the first, the newest runs as
        they are; then every change of a run's status since, oldest first."""
        return [line for _, line in self.timed_changes()]

    def timed_changes(self) -> list[tuple[float, Text]]:
        """:meth:`change_lines`, each with the time it tells of: that of the
        change, or now for the first look and for a skip to the latest."""
        store = self.app._service.store
        now = time.time()
        if self._horizon is None:
            newest, self._horizon = store.newest_runs_and_last_entry(self.limit)
            self._floor = self._horizon
            return [(now, change_line(run, self.failed_at(run))) for run in reversed(newest)]
        entries = store.status_changes_after(max(self._floor, self._horizon - LOOKBACK),
                                             LOOKBACK + MAX_LINES + 1)
        fresh = [entry for entry in entries if entry.id not in self._shown]
        runs: dict[str, Run | None] = {}
        lines: list[tuple[float, Text]] = []
        for entry in fresh[:MAX_LINES]:
            self._shown.add(entry.id)
            if entry.kind == "attempt.failed":
                error = entry.data.get("error") or {}
                self._errors[entry.run_id] = RunError(error.get("type") or "Error",
                                                      error.get("message") or "")
                continue
            if entry.run_id not in runs:
                try:
                    runs[entry.run_id] = self.app.runs.get(entry.run_id)
                except RunNotFoundError:  # deleted since (retention)
                    runs[entry.run_id] = None
            run = runs[entry.run_id]
            if run is not None:
                lines.append((entry.at.timestamp(),
                              transition_line(entry, run, self._errors.pop(entry.run_id, None))))
        if len(fresh) > MAX_LINES:
            self._horizon = self._floor = store.last_timeline_id()
            self._errors.clear()
            lines.append((now, Text("… more status changes than the board prints at once: "
                                    "skipped to the latest (`stackshift runs list` shows every"
                                    " run)", style="dim")))
        elif entries:
            self._horizon = max(self._horizon, entries[-1].id)
        self._shown = {i for i in self._shown if i > self._horizon - LOOKBACK}
        return lines


def change_line(run: Run, since: datetime | None = None) -> Text:
    """One line for a run that changed. Its detail's times count from ``since``
    (default now): for a retrying run, from its failure, so that the line gives
    the delay before the next attempt, not what was left of it when the board
    read the run (a short backoff is often over by then)."""
    line = Text(f"{datetime.now(UTC):%H:%M:%S}  {run.id}  {run.job}  ")
    line.append_text(status_text(run.status))
    line.append(f"  attempt {attempt_cell(run)}")
    detail = run_detail_line(run, since)
    if detail:  # an error's message may span lines: one line per change, escaped
        line.append(f"  {one_line(detail)}", style="dim")
    return line


def transition_line(entry: TimelineEntry, run: Run, error: RunError | None = None) -> Text:
    """One line for a change of ``run``'s status that ``entry`` recorded, as it
    was then: its time, the attempt it belongs to and what the entry says
    (``error``: that of the failed attempt before a retrying or failed run)."""
    status = STATUS_OF[entry.kind]
    data = entry.data
    waiting = None
    if status == "waiting":
        waiting = WaitingFor(kind=data.get("waiting_for", "sleep"), step=entry.step or "",
                             until=_instant(data.get("until")),
                             event_name=data.get("event"),
                             correlation_key=data.get("correlation_key"))
    then = dataclasses.replace(
        run, status=status, attempt=entry.attempt if entry.attempt is not None else 0,
        waiting_for=waiting, error=error or (run.error if status in ("failed", "cancelled")
                                             else None),
        next_attempt_at=_instant(data.get("next_attempt_at")),
        scheduled_at=_instant(data.get("scheduled_at")), cancel_requested=False)
    line = Text(f"{entry.at:%H:%M:%S}  {run.id}  {run.job}  ")
    line.append_text(status_text(status))
    line.append(f"  attempt {_attempt(then, run.retry_base)}")
    detail = ("resumed" if entry.kind == "run.resumed"
              else f"started again from {data['again_of']}" if "again_of" in data
              else run_detail_line(then, entry.at))
    if detail:  # an error's message may span lines: one line per change, escaped
        line.append(f"  {one_line(detail)}", style="dim")
    return line


def _attempt(then: Run, retry_base: int) -> str:
    """:func:`attempt_cell` for an attempt made before the run's last manual
    retry too (counted from the start, as it was then)."""
    if then.attempt <= retry_base:
        return attempt_cell(dataclasses.replace(then, retry_base=0))
    return attempt_cell(then)


def _instant(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def show_board(board: RunBoard, out: Console, stop: threading.Event,
               start: Callable[[], object], log: logging.Handler | None = None) -> None:
    """Show the board on ``out`` until ``stop`` is set; what changed since its last
    look is still shown once ``stop`` is set. ``start`` starts the worker.

    Into a file or pipe the board has its first look before ``start``, so that
    it shows the runs as they were before the worker took any; from then on
    the lines of ``log`` (a :class:`HeldLines`) wait for each look and print
    among its lines in time order: a handler's log records of an attempt come
    after the line that says it started, and before the one that says how it
    ended.
    """
    stopping = False
    if out.is_terminal:
        start()
        with Live(board.render(out.width), console=out, refresh_per_second=4) as live:
            while not stopping:
                stopping = stop.wait(REFRESH_SECONDS)
                live.update(board.render(out.width))
        return
    for first in board.change_lines():
        out.print(first)
    held = log if isinstance(log, HeldLines) else None
    if held is not None:
        held.hold()
    try:
        start()
        while not stopping:
            stopping = stop.wait(REFRESH_SECONDS)
            lines: list[tuple[float, Text | str]] = [*board.timed_changes()]
            if held is not None:
                lines += held.take()
            try:
                for _, line in sorted(lines, key=lambda timed: timed[0]):
                    if isinstance(line, str):  # a log line, written as the handler writes it
                        out.file.write(line + "\n")
                    else:
                        out.print(line)
                out.file.flush()
            except BrokenPipeError:  # its reader went away: the board goes on, unseen
                output_gone()
    finally:
        if held is not None:
            held.stop_holding()
