"""The run timeline drawn as a waterfall: what ran when, across attempts.

:func:`build` turns a run's timeline entries and attempts into rows of bars and
marks placed on a shared time axis (percentages of the chart's width). It is a
pure function of its inputs, so it is tested without a browser.

The axis is linear while the run executes, but long idle stretches (waits,
sleeps, backoff between attempts, time in the queue) are compressed to a fixed
share of the width and labelled with their real length. Otherwise one three-day
sleep would squeeze every 20 ms step into an invisible sliver.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from ..models import Attempt, LogEntry, Run, TimelineEntry
from ..progress import STEP_ENDED, InProgress, executing
from ..progress import in_progress as find_in_progress
from .formatting import duration

#: Idle stretches longer than this share of the busy time are compressed to it.
IDLE_SHARE = 0.12
#: Most step rows drawn, the latest; a run looping over thousands of steps gets a
#: note of those before them.
MAX_STEP_ROWS = 250
#: "Executing" bars of one attempt closer than this, in percent of the width, are
#: drawn as one: less than a pixel apart on any chart narrower than 1,000 px.
ACTIVE_JOIN = 0.1
#: The share of the width of the stretch before the first row drawn, when a run has
#: more rows than MAX_STEP_ROWS: the rows drawn get the rest.
FOLD_SHARE = 0.1
#: Room a gap's label takes, in percent of the width ("⋯ 2h 5m ⋯").
GAP_LABEL = 11.0
#: Least distance between two tick labels, in percent of the width.
TICK_SPACING = 9.0

_ENDS_WAIT = ("run.queued", "wait.timed_out", "run.cancelled", "run.failed", "run.completed")


@dataclass(frozen=True)
class Bar:
    start: float
    end: float
    kind: str  # queued, backoff, active, attempt-<status>, step-<status>, wait, sleep
    label: str = ""
    title: str = ""
    open: bool = False
    short: str = ""  # the label where it has little room ("291 ms" for "retry in 291 ms")


@dataclass(frozen=True)
class Mark:
    at: float
    kind: str  # event, failed, retry, cancel, timeout, manual
    title: str


@dataclass
class Row:
    kind: str  # attempt, step, wait, sleep
    label: str
    detail: str
    status: str
    attempt: int | None
    step: str | None = None
    bars: list[Bar] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    start: float = 0.0


@dataclass(frozen=True)
class PlacedBar:
    left: float
    width: float
    kind: str
    label: str
    title: str
    open: bool
    short: str = ""


@dataclass(frozen=True)
class PlacedMark:
    left: float
    kind: str
    title: str


@dataclass(frozen=True)
class PlacedRow:
    kind: str
    label: str
    detail: str
    status: str
    attempt: int | None
    step: str | None
    bars: list[PlacedBar]
    marks: list[PlacedMark]


@dataclass(frozen=True)
class Tick:
    left: float
    label: str


@dataclass(frozen=True)
class Gap:
    left: float
    width: float
    label: str
    labelled: bool = True  # False where the label would cover another


@dataclass(frozen=True)
class Waterfall:
    rows: list[PlacedRow]
    ticks: list[Tick]
    gaps: list[Gap]
    total: float  # real seconds from creation to the last thing drawn
    now: float | None  # percent position of "now" while the run is not finished
    hidden_steps: int = 0  # the run's first steps (sleeps and waits too), not drawn
    #: what the running attempt executes now, not recorded until it ends
    in_progress: InProgress | None = None


def _f(value: Any) -> float:
    return float(value)


def _relative(seconds: float, step: float) -> str:
    """A tick's offset from the start, as precise as the tick ``step`` needs: ticks
    0.2 s apart after a minute-long gap read ``+1m 26.2s``, ``+1m 26.4s``."""
    if seconds <= 0:
        return "0"
    if round(seconds * 1000) < 1000:  # 0.9999999 s is +1s, not +1000ms
        return f"+{seconds * 1000:.0f}ms"
    decimals = next((d for d in range(4) if abs(step * 10**d - round(step * 10**d)) < 1e-6), 3)
    units = [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")]
    finest = next(size for size, _ in units if step >= size) if step >= 1 else 1
    parts: list[str] = []
    rest = seconds
    for size, name in units:
        if size < finest:
            break
        if size == 1:
            text = f"{rest:.{decimals}f}"
            text = text.rstrip("0").rstrip(".") if "." in text else text
            if float(text) or not parts:
                parts.append(text + "s")
            break
        count = int((rest + 1e-6) // size) if size > finest else round(rest / size)
        rest -= count * size
        if count or (size == finest and not parts):
            parts.append(f"{count}{name}")
    return "+" + " ".join(parts)


class _Axis:
    """Maps real time to a position in percent, compressing long idle stretches."""

    def __init__(self, t0: float, t1: float, busy: list[tuple[float, float]],
                 points: list[float], fold: float | None = None) -> None:
        self.t0 = t0
        self.t1 = max(t1, t0)
        # Before ``fold`` (the first row drawn of a run whose earlier rows are
        # not), one stretch drawn as a gap of FOLD_SHARE of the width.
        fold = None if fold is None or fold <= t0 else min(fold, self.t1)
        start = t0 if fold is None else fold
        bounds = sorted({start, self.t1, *(min(max(p, start), self.t1) for p in points)})
        spans = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
        merged = _merge(busy)
        merged_starts = [s for s, _ in merged]

        def is_busy(a: float, b: float) -> bool:
            mid = (a + b) / 2
            i = bisect.bisect_right(merged_starts, mid) - 1
            return i >= 0 and merged[i][0] <= mid <= merged[i][1]

        flags = [is_busy(a, b) for a, b in spans]
        busy_total = sum(b - a for (a, b), f in zip(spans, flags, strict=True) if f)
        cap = busy_total * IDLE_SHARE if busy_total > 0 else float("inf")
        # Join neighbouring idle spans so that one long wait is one gap.
        joined: list[tuple[float, float, bool]] = []
        for (a, b), f in zip(spans, flags, strict=True):
            if joined and not f and not joined[-1][2]:
                joined[-1] = (joined[-1][0], b, False)
            else:
                joined.append((a, b, f))
        self.pieces: list[tuple[float, float, float]] = []  # (start, end, weight)
        self.compressed: list[tuple[float, float]] = []
        for a, b, f in joined:
            weight = b - a
            if not f and weight > cap:
                weight = cap
                self.compressed.append((a, b))
            self.pieces.append((a, b, weight))
        if fold is not None:
            rest = sum(w for _, _, w in self.pieces)
            self.pieces.insert(0, (t0, fold, rest * FOLD_SHARE / (1 - FOLD_SHARE) or 1.0))
            self.compressed.insert(0, (t0, fold))
        self._compressed = set(self.compressed)
        self.starts = [a for a, _, _ in self.pieces]
        self.weight_total = sum(w for _, _, w in self.pieces)
        self.cum: list[float] = []
        acc = 0.0
        for _, _, w in self.pieces:
            self.cum.append(acc)
            acc += w

    def pos(self, t: float) -> float:
        if self.weight_total <= 0 or not self.pieces:
            return 0.0
        t = min(max(t, self.t0), self.t1)
        i = max(0, bisect.bisect_right(self.starts, t) - 1)
        a, b, w = self.pieces[i]
        inside = 0.0 if b <= a else (t - a) / (b - a) * w
        return round(100 * (self.cum[i] + inside) / self.weight_total, 3)

    def ticks(self, gaps: list[Gap]) -> list[Tick]:
        linear = sum(b - a for a, b, _ in self.pieces if (a, b) not in self._compressed)
        if linear <= 0:
            return [Tick(0.0, "0")]
        step = _nice_step(linear / 5)
        found = [Tick(0.0, "0")]
        # Gap labels (GAP_LABEL wide, centred on their gap) keep their space.
        taken = [(g.left + g.width / 2 - GAP_LABEL / 2, g.left + g.width / 2 + GAP_LABEL / 2)
                 for g in gaps if g.labelled]
        for a, b, _ in self.pieces:
            if (a, b) in self._compressed:
                continue
            k = int((a - self.t0) // step) + 1
            while self.t0 + k * step <= b:
                t = self.t0 + k * step
                left = self.pos(t)
                clear = all(not lo - 3 <= left <= hi + 3 for lo, hi in taken)
                if (clear and left - found[-1].left >= TICK_SPACING
                        and left <= 100 - TICK_SPACING / 2):
                    found.append(Tick(left, _relative(k * step, step)))
                k += 1
        return found

    def gaps(self) -> list[Gap]:
        """The shortened stretches; those whose label would cover the one before
        it are drawn without one (a run that paused hundreds of times)."""
        out = []
        labelled_at = -GAP_LABEL
        for a, b in self.compressed:
            left = self.pos(a)
            width = round(self.pos(b) - left, 3)
            labelled = left + width / 2 - labelled_at >= GAP_LABEL
            if labelled:
                labelled_at = left + width / 2
            out.append(Gap(left, width, duration(b - a), labelled))
        return out


def _nice_step(raw: float) -> float:
    for unit in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15,
                 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400):
        if unit >= raw:
            return float(unit)
    return 86400.0 * max(1, round(raw / 86400))


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def build(run: Run, timeline: list[TimelineEntry], attempts: list[Attempt],
          now: float, logs: list[LogEntry] | None = None, *,
          earlier_steps: int = 0) -> Waterfall:
    """Lay out ``run``'s history as rows of bars and marks on one time axis.

    While an attempt runs, a last row shows what it executes now (see
    :class:`InProgress`), named after the step of ``logs`` logged since.
    ``timeline`` may leave out the entries of the run's first ``earlier_steps``
    rows, its steps and the pauses of its sleeps and waits
    (:meth:`RunStore.timeline_outline`), as long as it holds every entry from the
    first of its last ``MAX_STEP_ROWS`` steps on: only rows from there are drawn,
    and what the handler executed before the first row drawn is not."""
    entries = sorted(timeline, key=lambda e: (e.at.timestamp(), e.id))
    t0 = run.created_at.timestamp()
    finished = run.finished_at.timestamp() if run.finished_at else None
    horizon = finished if finished is not None else max(now, t0)

    # -- the time the handler was actually executing (between resumes and pauses)
    busy, running_since = executing(entries)
    if running_since is not None:
        busy.append((running_since, horizon))

    rows: list[Row] = []
    attempt_rows: dict[int, Row] = {}
    spans: list[tuple[Row, float, float]] = []  # each attempt's row, start and end
    previous_end: float | None = None
    requeues = _Requeues(entries)
    for attempt in sorted(attempts, key=lambda a: a.number):
        start = attempt.started_at.timestamp()
        end = attempt.finished_at.timestamp() if attempt.finished_at else horizon
        outcome = attempt.status
        row = Row("attempt", f"Attempt {attempt.number}", "", outcome, attempt.number,
                  start=start)
        row.detail = duration(end - start) + ("" if attempt.finished_at else " so far")
        lead = _lead_in(requeues, attempt.number, start, previous_end, t0)
        if lead is not None:
            row.bars.append(lead[0])
            row.marks.extend(lead[1])
        title = f"Attempt {attempt.number}: {outcome}, {duration(end - start)}"
        if attempt.worker_id:
            title += f" on {attempt.worker_id}"
        row.bars.append(Bar(start, end, f"attempt-{outcome}", "", title,
                            open=attempt.finished_at is None))
        spans.append((row, start, end))
        if attempt.error is not None and outcome in ("failed", "cancelled"):
            kind = "failed" if outcome == "failed" else "cancel"
            row.marks.append(Mark(end, kind, f"{attempt.error.type}: {attempt.error.message}"))
        rows.append(row)
        attempt_rows[attempt.number] = row
        previous_end = attempt.finished_at.timestamp() if attempt.finished_at else None

    # The rows under the attempts, in the order drawn (attempt, start, then the
    # order of the entries): a step's row is made only if it is among those drawn.
    children: list[tuple[int, float, int, Row | TimelineEntry]] = []
    waits: dict[tuple[int | None, str | None], Row] = {}
    # The entry that ends a pause begun at each index: the first of _ENDS_WAIT after it.
    ends: list[TimelineEntry | None] = [None] * len(entries)
    following: TimelineEntry | None = None
    for i in range(len(entries) - 1, -1, -1):
        ends[i] = following
        if entries[i].kind in _ENDS_WAIT:
            following = entries[i]
    for i, e in enumerate(entries):
        at = e.at.timestamp()
        if e.kind in STEP_ENDED:
            children.append((e.attempt or 0, at, i, e))
        elif e.kind == "run.waiting":
            kind = "sleep" if e.data.get("waiting_for") == "sleep" else "wait"
            end_entry = ends[i]
            end = end_entry.at.timestamp() if end_entry else horizon
            until = e.data.get("until")
            if kind == "sleep":
                label = f"{'slept' if end_entry else 'sleeping'} {duration(end - at)}"
                title = f"{e.step}: sleeping"
            else:
                key = e.data.get("correlation_key")
                label = f"{'waited' if end_entry else 'waiting'} {duration(end - at)}"
                title = f"{e.step}: waiting for event {e.data.get('event')!r}" + (
                    f" with key {key!r}" if key else "")
            if end_entry is None and until is not None:
                title += f"; until +{duration(_f(until) - t0)} after creation"
            row = Row(kind, e.step or kind, label, "waiting" if end_entry is None else "done",
                      e.attempt, e.step, start=at)
            row.bars.append(Bar(at, end, kind, label, title, open=end_entry is None,
                                short=duration(end - at)))
            if end_entry is not None and end_entry.kind == "wait.timed_out":
                row.marks.append(Mark(end, "timeout",
                                      f"timed out ({end_entry.data.get('on_timeout')})"))
            children.append((e.attempt or 0, at, i, row))
            waits[(e.attempt, e.step)] = row
        elif e.kind == "event.received":
            title = f"event {e.data.get('event')!r} received ({e.data.get('event_id')})"
            found = waits.get((e.attempt, e.step))
            if found is None:  # an early event: the wait took it without pausing
                found = Row("wait", e.step or "event", "event already there", "done", e.attempt,
                            e.step, start=at)
                children.append((e.attempt or 0, at, i, found))
                waits[(e.attempt, e.step)] = found
            found.marks.append(Mark(at, "event", title))
        elif e.kind == "run.cancel_requested":
            target = attempt_rows.get(e.attempt or 0)
            if target is not None:
                target.marks.append(Mark(at, "cancel", "cancel requested"))
        elif e.kind == "run.cancelled" and not e.attempt and rows:
            rows[-1].marks.append(Mark(at, "cancel", "cancelled"))

    in_progress = find_in_progress(run, attempts, entries, logs or [], horizon)
    current: Row | None = None
    if in_progress is not None:
        name = in_progress.step
        so_far = duration(in_progress.seconds)
        if name:
            title = (f"{name}: running for {so_far} so far (named by its log records);"
                     " a step is recorded when it ends")
        else:
            title = (f"Running for {so_far} since the last recorded step ended (or the attempt"
                     " started or resumed): a step not recorded until it ends, or the handler"
                     " between steps")
        current = Row("step", name or "in progress", f"{so_far} so far", "running",
                      in_progress.attempt, name, start=in_progress.since,
                      bars=[Bar(in_progress.since, horizon, "step-running", so_far, title,
                                open=True)])

    children.sort(key=lambda c: c[:3])
    cut = max(0, len(children) - MAX_STEP_ROWS)
    drawn = [item if isinstance(item, Row) else _step_row(item) for *_, item in children[cut:]]
    # The stretch before the first row drawn is folded into a gap.
    fold = min(r.start for r in drawn) if drawn and (cut or earlier_steps) else None
    if current is not None:  # drawn however many steps are not
        drawn.append(current)
    # What the handler executed, on each attempt's row; before the fold, nothing
    # (the run's outline holds no pauses there: timeline_outline).
    if fold is not None:
        busy = [(max(a, fold), b) for a, b in busy if b > fold]
    for row, start, end in spans:
        for a, b in busy:
            if a >= start - 1e-9 and a < end + 1e-9:
                row.bars.append(Bar(a, min(b, end), "active", "", "executing"))
    ordered: list[Row] = []
    for row in rows:
        ordered.append(row)
        ordered.extend(c for c in drawn if c.attempt == row.attempt)
    ordered.extend(c for c in drawn if c.attempt not in attempt_rows)
    if not rows and run.status in ("queued", "scheduled"):
        since = t0
        # The badge names the status: the detail is how long the run has waited, so
        # that "Not started" keeps its room.
        ordered.insert(0, Row("attempt", "Not started", duration(now - t0),
                              run.status, None,
                              bars=[Bar(since, horizon, "queued", "", run.status, open=True)]))

    points = [t0, horizon]
    for row in ordered:
        for bar in row.bars:
            points += [bar.start, bar.end]
        points += [m.at for m in row.marks]
    last = max(points)
    axis = _Axis(t0, last, busy + [(b.start, b.end) for r in ordered for b in r.bars
                                   if b.kind.startswith("step-")], points, fold)
    gaps = axis.gaps()
    placed = [
        PlacedRow(
            r.kind, r.label, r.detail, r.status, r.attempt, r.step,
            _place_bars(r.bars, axis),
            [PlacedMark(axis.pos(m.at), m.kind, m.title) for m in r.marks],
        )
        for r in ordered
    ]
    return Waterfall(
        rows=placed,
        ticks=axis.ticks(gaps),
        gaps=gaps,
        total=last - t0,
        now=None if finished is not None else axis.pos(now),
        hidden_steps=earlier_steps + cut,
        in_progress=in_progress,
    )


def _place_bars(bars: list[Bar], axis: _Axis) -> list[PlacedBar]:
    """``bars`` placed on ``axis``; "executing" bars closer than ``ACTIVE_JOIN``
    percent to the one before become one bar (a run that paused thousands of times
    draws a band, not thousands of bars a pixel apart)."""
    placed: list[PlacedBar] = []
    for b in bars:
        left = axis.pos(b.start)
        width = round(axis.pos(b.end) - left, 3)
        last = placed[-1] if placed else None
        if (b.kind == "active" and last is not None and last.kind == "active"
                and left - (last.left + last.width) < ACTIVE_JOIN):
            width = round(max(last.left + last.width, left + width) - last.left, 3)
            placed[-1] = replace(last, width=width)
            continue
        placed.append(PlacedBar(left, width, b.kind, b.label, b.title, b.open, b.short))
    return placed


def _step_row(e: TimelineEntry) -> Row:
    """The row of a step's ``step.completed`` or ``step.failed`` entry."""
    at = e.at.timestamp()
    dur = _f(e.data.get("duration") or 0.0)
    status = e.kind.split(".")[1]
    title = f"{e.step}: {status} in {duration(dur)}"
    if e.data.get("function"):
        title += f"\n{e.data['function']}"
    error = e.data.get("error")
    if error:
        title += f"\n{error.get('type')}: {error.get('message')}"
    row = Row("step", e.step or "?", duration(dur), status, e.attempt, e.step, start=at)
    row.bars.append(Bar(at, at + dur, f"step-{status}", duration(dur), title))
    if error:
        row.marks.append(Mark(at + dur, "failed", f"{error.get('type')}: "
                                                 f"{error.get('message')}"))
    return row


class _Requeues:
    """The times of a run's manual retries and of its ``run.retrying`` entries (by
    the attempt that failed), each in time order: an attempt's lead-in looks up
    the latest before it by bisection, so that a run of thousands of attempts
    is drawn as quickly as one of a few."""

    def __init__(self, entries: list[TimelineEntry]) -> None:
        self.manual: list[float] = []
        self.retrying: dict[int | None, list[float]] = {}
        for e in entries:
            if e.kind == "run.queued" and e.data.get("manual_retry"):
                self.manual.append(e.at.timestamp())
            elif e.kind == "run.retrying":
                self.retrying.setdefault(e.attempt, []).append(e.at.timestamp())
        self.manual.sort()
        for times in self.retrying.values():
            times.sort()

    @staticmethod
    def latest(times: list[float], until: float) -> float | None:
        """The latest of ``times`` at or before ``until``."""
        i = bisect.bisect_right(times, until)
        return times[i - 1] if i else None


def _lead_in(requeues: _Requeues, number: int, start: float,
             previous_end: float | None, t0: float) -> tuple[Bar, list[Mark]] | None:
    """What came before attempt ``number``: time in the queue, a backoff, or a manual retry."""
    if number == 1:
        return Bar(t0, start, "queued", "", f"queued for {duration(start - t0)}"), []
    until = start + 1e-9
    manual = requeues.latest(requeues.manual, until)
    retrying = requeues.latest(requeues.retrying.get(number - 1, []), until)
    if manual is not None and (retrying is None or manual >= retrying):
        return (Bar(manual, start, "queued", "", f"queued for {duration(start - manual)}"),
                [Mark(manual, "manual", "retried by an operator")])
    if retrying is not None:
        return (Bar(retrying, start, "backoff", f"retry in {duration(start - retrying)}",
                    f"backoff before attempt {number}: {duration(start - retrying)}",
                    short=duration(start - retrying)),
                [Mark(retrying, "retry", f"attempt {number - 1} failed; retrying")])
    if previous_end is not None:
        return Bar(previous_end, start, "queued", "", "queued"), []
    return None
