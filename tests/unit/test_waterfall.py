"""The run waterfall's layout: long idle stretches must not squash the steps."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from stackshift.dashboard import waterfall
from stackshift.models import Attempt, LogEntry, Run, RunError, TimelineEntry

T0 = 1_800_000_000.0


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def _run(**changes: Any) -> Run:
    fields: dict[str, Any] = dict(
        id="run_1", job="remind", queue="default", status="completed", payload={}, result=None,
        error=None, attempt=1, max_attempts=3, idempotency_key=None, priority=0,
        concurrency_key=None, created_at=_at(0), scheduled_at=None, started_at=_at(0.01),
        finished_at=_at(3 * 86400 + 0.2), next_attempt_at=None, waiting_for=None)
    fields.update(changes)
    return Run(**fields)


def _entries(*rows: tuple[float, str, int | None, str | None, dict[str, Any]]
             ) -> list[TimelineEntry]:
    return [TimelineEntry(i, "run_1", _at(at), kind, attempt, step, data)
            for i, (at, kind, attempt, step, data) in enumerate(rows, 1)]


def test_a_three_day_sleep_is_compressed_and_labelled_while_steps_stay_readable() -> None:
    sleep_end = 3 * 86400.0
    timeline = _entries(
        (0.0, "run.queued", None, None, {}),
        (0.01, "attempt.started", 1, None, {}),
        (0.01, "step.completed", 1, "fetch", {"duration": 0.02}),
        (0.04, "run.waiting", 1, "cool-down", {"waiting_for": "sleep", "until": T0 + sleep_end}),
        (sleep_end, "run.queued", 1, None, {"from": "waiting", "woke": "cool-down"}),
        (sleep_end + 0.05, "run.resumed", 1, None, {}),
        (sleep_end + 0.06, "step.completed", 1, "notify", {"duration": 0.1}),
        (sleep_end + 0.2, "run.completed", 1, None, {"from": "running"}),
    )
    attempts = [Attempt("run_1", 1, "completed", "w", _at(0.01), _at(sleep_end + 0.2), None)]
    chart = waterfall.build(_run(), timeline, attempts, now=T0 + sleep_end + 1)

    steps = {r.step: r for r in chart.rows if r.kind == "step"}
    assert set(steps) == {"fetch", "notify"}
    # Linear, the 20 ms step would be 0.00001% of the width; here it is readable.
    assert steps["fetch"].bars[0].width > 5
    assert steps["notify"].bars[0].width > steps["fetch"].bars[0].width * 3
    [gap] = chart.gaps
    assert gap.label == "3d"
    assert gap.width < 20
    sleep = next(r for r in chart.rows if r.kind == "sleep")
    assert sleep.detail == "slept 3d"
    assert sleep.bars[0].left < steps["notify"].bars[0].left
    assert chart.now is None


def test_retries_show_backoff_and_failed_steps_per_attempt() -> None:
    error = {"type": "ConnectionError", "message": "502"}
    timeline = _entries(
        (0.0, "run.queued", None, None, {}),
        (0.01, "attempt.started", 1, None, {}),
        (0.01, "step.failed", 1, "charge", {"duration": 0.05, "error": error}),
        (0.07, "attempt.failed", 1, None, {"error": error}),
        (0.07, "run.retrying", 1, None, {"from": "running", "next_attempt_at": T0 + 1.07}),
        (1.07, "run.queued", None, None, {"from": "retrying"}),
        (1.08, "attempt.started", 2, None, {}),
        (1.08, "step.completed", 2, "charge", {"duration": 0.05}),
        (1.14, "run.completed", 2, None, {"from": "running"}),
    )
    attempts = [
        Attempt("run_1", 1, "failed", "w", _at(0.01), _at(0.07),
                RunError("ConnectionError", "502")),
        Attempt("run_1", 2, "completed", "w", _at(1.08), _at(1.14), None),
    ]
    chart = waterfall.build(_run(finished_at=_at(1.14), attempt=2), timeline, attempts,
                            now=T0 + 2)
    kinds = [(r.kind, r.attempt, r.step) for r in chart.rows]
    assert kinds == [("attempt", 1, None), ("step", 1, "charge"), ("attempt", 2, None),
                     ("step", 2, "charge")]
    first, failed_step, second, _ = chart.rows
    assert first.status == "failed" and [m.kind for m in first.marks] == ["failed"]
    assert failed_step.bars[0].kind == "step-failed"
    backoff = next(b for b in second.bars if b.kind == "backoff")
    assert backoff.label == "retry in 1.01 s"
    assert [m.kind for m in second.marks] == ["retry"]
    # Attempt 2 starts right where its backoff ends, after attempt 1 ended.
    assert abs(backoff.left + backoff.width - second.bars[1].left) < 0.01
    assert second.bars[1].left > first.bars[1].left + first.bars[1].width


def test_each_attempt_leads_in_from_its_own_backoff_or_the_manual_retry_before_it() -> None:
    """Attempts after a manual retry: the first is queued from the retry, the next
    backs off from its predecessor's failure, not from an earlier one's."""
    error = {"type": "ConnectionError", "message": "502"}
    rows: list[tuple[float, str, int | None, str | None, dict[str, Any]]] = [
        (0.0, "run.queued", None, None, {})]
    attempts = []
    starts = {1: 0.01, 2: 1.0, 3: 10.0, 4: 12.0}
    for number, start in starts.items():
        end = start + 0.1
        rows.append((start, "attempt.started", number, None, {}))
        attempts.append(Attempt("run_1", number, "completed" if number == 4 else "failed", "w",
                                _at(start), _at(end),
                                None if number == 4 else RunError("ConnectionError", "502")))
        if number in (1, 3):  # attempts left: backoff
            rows.append((end, "attempt.failed", number, None, {"error": error}))
            rows.append((end, "run.retrying", number, None, {"from": "running"}))
        elif number == 2:  # failed for good, retried by hand at 9.0
            rows.append((end, "run.failed", number, None, {"from": "running"}))
            rows.append((9.0, "run.queued", None, None, {"from": "failed",
                                                         "manual_retry": True}))
        else:
            rows.append((end, "run.completed", number, None, {"from": "running"}))
    chart = waterfall.build(_run(finished_at=_at(12.1), attempt=4), _entries(*rows), attempts,
                            now=T0 + 13)
    leads = {r.attempt: ([b.kind for b in r.bars][:2], [m.kind for m in r.marks])
             for r in chart.rows if r.kind == "attempt"}
    assert leads[1][0][0] == "queued"
    assert leads[2] == (["backoff", "attempt-failed"], ["retry", "failed"])
    assert leads[3] == (["queued", "attempt-failed"], ["manual", "failed"])
    assert leads[4] == (["backoff", "attempt-completed"], ["retry"])
    fourth = next(r for r in chart.rows if r.kind == "attempt" and r.attempt == 4)
    assert fourth.bars[0].label == "retry in 1.90 s"  # from attempt 3's end at 10.1


def test_a_run_still_waiting_has_an_open_bar_and_a_now_line() -> None:
    timeline = _entries(
        (0.0, "run.queued", None, None, {}),
        (0.01, "attempt.started", 1, None, {}),
        (0.02, "run.waiting", 1, "email.verified",
         {"waiting_for": "event", "event": "email.verified", "correlation_key": "user:1",
          "until": T0 + 86400}),
    )
    attempts = [Attempt("run_1", 1, "waiting", "w", _at(0.01), None, None)]
    run = _run(status="waiting", finished_at=None)
    chart = waterfall.build(run, timeline, attempts, now=T0 + 600)
    wait = next(r for r in chart.rows if r.kind == "wait")
    assert wait.bars[0].open and wait.detail == "waiting 10m"
    assert chart.now == 100.0


def test_tick_labels_round_before_they_carry() -> None:
    # A tick a hair under a second (as summed steps land) reads +1s, not +1000ms.
    assert waterfall._relative(0.1 * 3 + 0.7 - 1e-12, 0.1) == "+1s"
    assert waterfall._relative(0.2, 0.2) == "+200ms"
    assert waterfall._relative(86.2, 0.2) == "+1m 26.2s"


def _running_after_a_step() -> tuple[Run, list[TimelineEntry], list[Attempt]]:
    timeline = _entries(
        (0.0, "run.queued", None, None, {}),
        (1.0, "attempt.started", 1, None, {}),
        (1.0, "step.completed", 1, "load", {"duration": 0.5}),
    )
    attempts = [Attempt("run_1", 1, "running", "w", _at(1.0), None, None)]
    return _run(status="running", finished_at=None), timeline, attempts


def test_a_running_attempt_shows_what_it_executes_since_its_last_recorded_step() -> None:
    """Steps are recorded when they end: the last row is the time since the last
    one ended, named after the step its log records (logged since) name."""
    run, timeline, attempts = _running_after_a_step()
    logs = [LogEntry(1, "run_1", 1, "load", _at(1.2), "INFO", "app", "loading"),
            LogEntry(2, "run_1", 1, "import", _at(3.0), "INFO", "app", "importing")]
    chart = waterfall.build(run, timeline, attempts, now=T0 + 11.5, logs=logs)
    assert chart.in_progress == waterfall.InProgress(1, T0 + 1.5, 10.0, "import")
    *_, load, running = chart.rows
    assert (load.step, load.status) == ("load", "completed")
    assert (running.kind, running.label, running.step, running.status, running.detail) == (
        "step", "import", "import", "running", "10.0 s so far")
    [bar] = running.bars
    assert bar.kind == "step-running" and bar.open
    assert abs(bar.left - (load.bars[0].left + load.bars[0].width)) < 0.01
    assert abs(bar.left + bar.width - 100) < 0.01
    assert "named by its log records" in bar.title

    # Nothing logged since: the row has no name.
    chart = waterfall.build(run, timeline, attempts, now=T0 + 11.5, logs=logs[:1])
    assert chart.in_progress == waterfall.InProgress(1, T0 + 1.5, 10.0, None)
    assert (chart.rows[-1].label, chart.rows[-1].step) == ("in progress", None)


def test_only_a_running_attempt_shows_what_it_executes() -> None:
    _, timeline, attempts = _running_after_a_step()
    waiting = timeline + _entries((2.0, "run.waiting", 1, "approval",
                                   {"waiting_for": "event", "event": "approved"}))[-1:]
    chart = waterfall.build(_run(status="waiting", finished_at=None), waiting, attempts,
                            now=T0 + 5)
    assert chart.in_progress is None
    assert [r.status for r in chart.rows if r.kind == "step"] == ["completed"]
    ended = timeline + _entries((2.0, "run.completed", 1, None, {"from": "running"}))[-1:]
    done = [Attempt("run_1", 1, "completed", "w", _at(1.0), _at(2.0), None)]
    chart = waterfall.build(_run(finished_at=_at(2.0)), ended, done, now=T0 + 5)
    assert chart.in_progress is None


def test_what_a_running_attempt_executes_is_drawn_past_the_most_step_rows() -> None:
    run, timeline, attempts = _running_after_a_step()
    many = timeline + [TimelineEntry(10 + n, "run_1", _at(2.0 + n / 100), "step.completed", 1,
                                     f"row-{n}", {"duration": 0.005})
                       for n in range(waterfall.MAX_STEP_ROWS + 50)]
    chart = waterfall.build(run, many, attempts, now=T0 + 10)
    assert chart.hidden_steps == 51  # "load" and the first fifty
    steps = [r.label for r in chart.rows if r.kind == "step"]
    assert (steps[0], steps[-2]) == ("row-50", f"row-{waterfall.MAX_STEP_ROWS + 49}")
    # what came before the first drawn is folded into the first tenth of the width
    first = next(r for r in chart.rows if r.kind == "step")
    assert first.bars[0].left == 100 * waterfall.FOLD_SHARE == chart.gaps[0].width
    assert (chart.rows[-1].status, chart.rows[-1].label) == ("running", "in progress")


def _poller(pauses: int) -> tuple[Run, list[TimelineEntry], list[Attempt]]:
    """A run that checks for 10 ms, then sleeps a minute, ``pauses`` times."""
    rows: list[tuple[float, str, int | None, str | None, dict[str, Any]]] = [
        (0.0, "run.queued", None, None, {}), (0.0, "attempt.started", 1, None, {})]
    at = 0.0
    for n in range(pauses):
        rows += [(at, "step.completed", 1, f"check-{n}", {"duration": 0.01}),
                 (at + 0.01, "run.waiting", 1, f"pause-{n}",
                  {"waiting_for": "sleep", "until": T0 + at + 60.01}),
                 (at + 60.01, "run.queued", 1, None, {"from": "waiting"}),
                 (at + 60.01, "run.resumed", 1, None, {})]
        at += 60.01
    rows.append((at + 0.01, "run.completed", 1, None, {"from": "running"}))
    attempts = [Attempt("run_1", 1, "completed", "w", _at(0.0), _at(at + 0.01), None)]
    return _run(started_at=_at(0.0), finished_at=_at(at + 0.01)), _entries(*rows), attempts


def _executing(chart: waterfall.Waterfall) -> list[waterfall.PlacedBar]:
    [attempt] = [r for r in chart.rows if r.kind == "attempt"]
    return [b for b in attempt.bars if b.kind == "active"]


def test_a_run_that_paused_thousands_of_times_draws_its_latest_rows_past_a_fold() -> None:
    run, timeline, attempts = _poller(3000)
    chart = waterfall.build(run, timeline, attempts, now=T0 + 10**6)
    fold = 100 * waterfall.FOLD_SHARE
    rows = [r for r in chart.rows if r.kind != "attempt"]
    assert (rows[0].label, rows[-1].label) == ("check-2875", "pause-2999")
    assert chart.hidden_steps == 5750
    # Before the first row drawn: one gap of its real length, a tenth of the width.
    first = chart.gaps[0]
    assert (first.left, first.width, first.label, first.labelled) == (0.0, fold, "1d 23h", True)
    assert rows[0].bars[0].left == fold
    # The 2,875 stretches of execution before it are not drawn (the page reads no
    # pauses there); the 126 from its edge on (before each of the 125 sleeps drawn,
    # a minute apart, and after the last), one by one.
    executing = _executing(chart)
    assert executing[0].left == fold and executing[0].width < 0.1
    assert len(executing) == 126
    # The minute-long sleeps drawn are 125 gaps, labelled where a label has room.
    assert len(chart.gaps) == 1 + 125
    centres = [g.left + g.width / 2 for g in chart.gaps if g.labelled]
    assert 1 < len(centres) < 20
    assert all(b - a >= waterfall.GAP_LABEL for a, b in itertools.pairwise(centres))


def test_an_attempt_that_paused_a_few_times_draws_each_stretch_of_execution() -> None:
    run, timeline, attempts = _poller(3)
    chart = waterfall.build(run, timeline, attempts, now=T0 + 10**6)
    bars = _executing(chart)
    assert len(bars) == 4
    assert all(g.labelled for g in chart.gaps) and len(chart.gaps) == 3
    sleeps = [r for r in chart.rows if r.kind == "sleep"]
    for before, sleep, after in zip(bars, sleeps, bars[1:], strict=False):
        # each pause lies between the stretches around it
        assert before.left + before.width <= sleep.bars[0].left + 1e-6
        assert sleep.bars[0].left + sleep.bars[0].width <= after.left + 1e-6
