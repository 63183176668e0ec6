"""What a running attempt executes now, as far as a run's records tell.

Steps are recorded when they end: while one runs, the timeline only says when
the attempt started (or resumed) and which of its steps ended since. The
dashboard's waterfall and ``stackshift runs show`` draw that stretch as a row of
its own, named after the step its latest log records name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .models import Attempt, LogEntry, Run, TimelineEntry

#: The timeline entries of a step, written when it ends (the store's
#: ``timeline_outline`` and ``latest_step_entries`` statements name them too).
STEP_ENDED = ("step.completed", "step.failed")
#: The timeline entries that pause or end the handler's execution.
ENDS_RUNNING = ("run.waiting", "run.completed", "run.failed", "run.retrying", "run.cancelled",
                "run.queued")


@dataclass(frozen=True)
class InProgress:
    """The part of a running attempt since its last recorded step (or since it
    started or resumed): a step not yet recorded, or the handler between steps.
    ``step`` is the step its log records name, when it has logged."""

    attempt: int
    since: float
    seconds: float
    step: str | None


def executing(entries: Sequence[TimelineEntry]) -> tuple[list[tuple[float, float]], float | None]:
    """From ``entries`` in time order: the stretches the handler executed (from a
    start or resume to what paused or ended it), and when the one still open
    began, if one is."""
    stretches: list[tuple[float, float]] = []
    since: float | None = None
    for e in entries:
        at = e.at.timestamp()
        if e.kind in ("attempt.started", "run.resumed"):
            since = at
        elif (e.kind in ENDS_RUNNING and since is not None
              and (e.kind != "run.queued" or e.data.get("from") == "running")):
            stretches.append((since, at))
            since = None
    return stretches, since


def in_progress(run: Run, attempts: Sequence[Attempt], entries: Sequence[TimelineEntry],
                logs: Sequence[LogEntry], now: float) -> InProgress | None:
    """What ``run``'s running attempt executes at ``now``: from the end of its last
    recorded step (or when it started or resumed), named after the step of the
    latest of ``logs`` logged since. ``entries`` in time order."""
    open_attempts = [a for a in attempts if a.finished_at is None]
    running_since = executing(entries)[1]
    if run.status != "running" or running_since is None or not open_attempts:
        return None
    number = max(a.number for a in open_attempts)
    since = running_since
    for e in entries:
        if e.attempt == number and e.kind in STEP_ENDED:
            since = max(since, e.at.timestamp() + float(e.data.get("duration") or 0.0))
    named = [e for e in logs if e.attempt == number and e.step and e.at.timestamp() >= since]
    return InProgress(number, since, max(0.0, now - since), named[-1].step if named else None)
