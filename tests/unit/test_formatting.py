"""How durations, ages and error messages read in the CLI and on the dashboard,
at their edges."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from markupsafe import Markup

from stackshift.cli.failures import in_option_terms
from stackshift.cli.queues import _rate
from stackshift.dashboard.formatting import (
    ago,
    chart_times,
    day_time,
    duration,
    percent,
    shown,
    time_in_run,
    verbatim,
)
from stackshift.durations import span
from stackshift.models import QueueInfo
from stackshift.wording import per_minute


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.0123, "12ms"), (0.9994, "999ms"), (0.9996, "1.0s"), (12.34, "12.3s"),
    (59.96, "1m00s"), (245.6, "4m06s"), (3599.6, "1h00m"), (7830, "2h10m"),
    (273600, "3d4h"), (-1, "0ms"),
])
def test_cli_durations_round_before_they_carry(seconds: float, shown: str) -> None:
    # Never "1000ms" or "60.0s": a value that rounds up to a unit reads in it.
    assert span(seconds) == shown


@pytest.mark.parametrize(("seconds", "shown"), [
    (None, "—"), (0.0004, "<1 ms"), (0.0123, "12 ms"), (0.9996, "1.00 s"),
    (9.996, "10.0 s"), (59.96, "1m"), (75, "1m 15s"), (93784, "1d 2h"),
])
def test_dashboard_durations_round_before_they_carry(seconds: float | None,
                                                     shown: str) -> None:
    assert duration(seconds) == shown


@pytest.mark.parametrize(("delta", "shown"), [
    (2, "just now"), (-3, "just now"), (12.4, "12s ago"), (59.6, "1m ago"),
    (75, "1m 15s ago"), (700, "11m ago"), (7260, "2h 1m ago"), (7200, "2h ago"),
    (93784, "1d 2h ago"), (-300, "in 5m"), (-7140, "in 1h 59m"),
])
def test_dashboard_ages_read_as_the_pages_script_writes_them(delta: float,
                                                             shown: str) -> None:
    # dashboard.js rewrites these every few seconds with the same rules: the
    # text must not change form when the script first takes over.
    now = 1_800_000_000.0
    assert ago(datetime.fromtimestamp(now - delta, UTC), now) == shown


@pytest.mark.parametrize(("delta", "shown"), [
    (2, "just now"), (75, "due 1m 15s ago"), (7200, "due 2h ago"), (-300, "in 5m"),
])
def test_a_due_time_past_reads_due(delta: float, shown: str) -> None:
    """A schedule's next run that has passed has not happened: ``due 1m 15s ago``."""
    now = 1_800_000_000.0
    assert ago(datetime.fromtimestamp(now - delta, UTC), now, due=True) == shown


@pytest.mark.parametrize(("part", "whole", "shown"), [
    (0, 10, "0%"), (1, 10_000, "<0.1%"), (999, 10_000, "10%"),
    (5, 100, "5.0%"), (9_999, 10_000, ">99%"), (10, 10, "100%"), (1, 0, "—"),
])
def test_dashboard_shares_say_none_or_all_only_when_so(part: int, whole: int,
                                                       shown: str) -> None:
    assert percent(part, whole) == shown


@pytest.mark.parametrize(("failed", "finished", "shown"), [
    (0, 10, "0%"), (1, 1000, "<1%"), (1, 4, "25%"), (999, 1000, ">99%"), (7, 7, "100%"),
])
def test_cli_failure_rates_say_none_or_all_only_when_so(failed: int, finished: int,
                                                        shown: str) -> None:
    queue = QueueInfo("q", None, None, None, False, {}, 900.0, finished - failed, failed,
                      0.0, failed / finished, None)
    assert _rate(queue) == shown


def test_dashboard_times_of_another_day_carry_their_date() -> None:
    morning = datetime(2026, 3, 2, 9, 12, tzinfo=UTC)
    later = datetime(2026, 3, 5, 9, 12, 5, 250000, tzinfo=UTC)
    assert day_time(morning, morning.timestamp() + 3600) == "09:12:00"
    assert day_time(morning, later.timestamp()) == "2026-03-02 09:12:00"
    assert time_in_run(morning, morning) == "09:12:00.000"
    assert time_in_run(later, morning) == "2026-03-05 09:12:05.250"


def test_chart_axis_times_carry_the_year_only_when_the_chart_reaches_into_another() -> None:
    now = datetime(2027, 1, 2, 10, 0, tzinfo=UTC).timestamp()
    last_week = [datetime(2026, 12, 26, 10, 0, tzinfo=UTC), datetime(2026, 12, 29, 22, 0,
                                                                     tzinfo=UTC)]
    assert chart_times(last_week, now) == ["2026-12-26 10:00", "2026-12-29 22:00"]
    # Both in now's year (even if the first is another year's in a local time zone).
    yesterday = [datetime(2027, 1, 1, 10, 0, tzinfo=UTC), datetime(2027, 1, 1, 22, 0,
                                                                   tzinfo=UTC)]
    assert chart_times(yesterday, now) == ["01-01 10:00", "01-01 22:00"]
    # One label in the old year is enough for every label to carry its year.
    new_year = [datetime(2026, 12, 31, 22, 0, tzinfo=UTC), datetime(2027, 1, 1, 4, 0,
                                                                    tzinfo=UTC)]
    assert chart_times(new_year, now) == ["2026-12-31 22:00", "2027-01-01 04:00"]


LIST_OPTIONS = {"limit": "--limit", "idempotency_key": "--idempotency-key", "job": "--job",
                "scheduled_at": "--scheduled-at", "delay": "--delay"}


@pytest.mark.parametrize(("sdk", "cli"), [
    ("limit must be an integer from 1 to 1000, got 0",
     "--limit must be an integer from 1 to 1000, got 0"),
    # An identifier wherever it stands; a plain word only where a name stands.
    ("idempotency_key is 600 characters, over the limit of 512",
     "--idempotency-key is 600 characters, over the limit of 512"),
    ("scheduled_at: 'x' is not an ISO-8601 time", "--scheduled-at: 'x' is not an ISO-8601 time"),
    ("give scheduled_at or delay, not both", "give --scheduled-at or --delay, not both"),
    ("job name '' is invalid", "job name '' is invalid"),
    ("give ttl or expires_at, not both", "give ttl or expires_at, not both"),
    ("max_attempts_total must be", "max_attempts_total must be"),
    # The user's own text, quoted, stays as typed.
    ("scheduled_at: 'idempotency_key' is not an ISO-8601 time",
     "--scheduled-at: 'idempotency_key' is not an ISO-8601 time"),
    ('scheduled_at: "it\'s idempotency_key" is not',
     '--scheduled-at: "it\'s idempotency_key" is not'),
])
def test_cli_errors_name_the_options_the_user_typed(sdk: str, cli: str) -> None:
    assert in_option_terms(sdk, LIST_OPTIONS) == cli


def test_log_records_written_to_a_pipe_read_as_rich_lays_them_out() -> None:
    """``runs logs`` into a file or a pipe writes its lines without Rich (several
    times faster): the characters are those Rich would have written there, tab
    stops, escaped control characters and wide characters included."""
    import io

    from rich.console import Console

    from stackshift.cli.render import UNLIMITED_WIDTH, log_lines, print_logs
    from stackshift.models import LogEntry

    at = datetime(2026, 5, 6, 9, 0, 0, 123000, tzinfo=UTC)
    messages = ["plain", "a\tb\tc", "\tlead", "失\tafter a wide one", "😀😀\t|", "x" * 7 + "\t|",
                "two\nlines\twith tabs", "esc \x1b[2J bell \x07 cr \r back \b", "nul \x00 end",
                "line\u2028sep\ttab", "trailing  ", "", "combining e\u0301\t|",
                "Traceback (most recent call last):\n  File \"x.py\"\n\tKeyError: 'k'"]
    entries = [LogEntry(n, "run_1", None if n % 3 == 0 else n, "step\t1" if n % 2 else None,
                        at, ("INFO", "WARNING", "ERROR", "DEBUG")[n % 4], "app.logger", message)
               for n, message in enumerate(messages)]

    def piped() -> tuple[Console, io.StringIO]:
        sink = io.StringIO()
        return Console(file=sink, width=UNLIMITED_WIDTH, soft_wrap=True, highlight=False), sink

    through_rich, rich_sink = piped()
    through_rich.print(log_lines(entries), end="")
    straight, sink = piped()
    print_logs(straight, entries)
    assert sink.getvalue() == rich_sink.getvalue()
    assert "\\x1b[2J" in sink.getvalue() and "\x1b" not in sink.getvalue()
    assert sink.getvalue().count("\n") == len(messages) + 3  # a line each, and 3 within


@pytest.mark.parametrize("sizes", [[], [0], [1], [3, 0, 2], [0, 4, 0]])
def test_a_list_printed_page_by_page_is_the_json_printed_whole(
        sizes: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """``runs logs --json`` prints a run's records as they are read, page by
    page; the output is the one JSON list it printed holding them all."""
    from stackshift.cli.render import echo_json, echo_json_list
    from stackshift.models import LogEntry

    at = datetime(2026, 5, 6, 9, 0, 0, 123000, tzinfo=UTC)
    texts = iter(["two\nlines", "失 \u2028 \t", '"quoted" \\', "", "😀", "plain", "x"])
    pages = [[LogEntry(n * 10 + i, "run_1", n or None, "step", at, "INFO", "app", next(texts))
              for i in range(size)] for n, size in enumerate(sizes)]
    echo_json([entry for page in pages for entry in page])
    whole = capsys.readouterr().out
    echo_json_list(iter(pages))
    assert capsys.readouterr().out == whole


def test_tables_written_to_a_pipe_read_as_rich_lays_them_out() -> None:
    """Tables into a file or a pipe are laid out without Rich (the timeline of a run
    of 12,000 entries in about a sixth of the time): the characters are those Rich
    would have written there, less the spaces that end its lines, wide characters,
    escaped control characters, right justified and empty cells, titles and empty
    tables included."""
    import io
    from copy import copy

    from rich.console import Console, ConsoleOptions, Group, RenderableType
    from rich.text import Text

    from stackshift.cli import render
    from stackshift.models import Attempt, Event, Run, RunError, Step, TimelineEntry

    class RichLaidOut(render._PlainTable):
        def _plain_lines(self, console: Console, options: ConsoleOptions) -> None:
            return None

    def laid_out_by_rich(renderable: RenderableType) -> RenderableType:
        if isinstance(renderable, render._PlainTable):
            twin = copy(renderable)
            twin.__class__ = RichLaidOut
            return twin
        if isinstance(renderable, Group):
            return Group(*map(laid_out_by_rich, renderable.renderables))
        return renderable

    def piped(renderable: RenderableType) -> str:
        sink = io.StringIO()
        Console(file=sink, width=render.UNLIMITED_WIDTH, soft_wrap=True,
                highlight=False).print(renderable)
        return sink.getvalue()

    at = datetime(2026, 5, 6, 9, 0, 0, 123000, tzinfo=UTC)
    later = datetime(2026, 5, 6, 9, 0, 2, 500000, tzinfo=UTC)
    names = ["fetch", "失败-步骤", "😀 emoji", "tab\there", "line\nbreak", "esc \x1b[2J", "",
             "combining e\u0301", "x" * 90]
    run = Run(id="run_1", job="订单-sync", queue="默认", status="failed", payload={},
              result=None, error=RunError("KeyError", "'k'"), attempt=2, max_attempts=3,
              idempotency_key=None, priority=0, concurrency_key=None, created_at=at,
              scheduled_at=None, started_at=at, finished_at=later, next_attempt_at=None,
              waiting_for=None)
    steps = [Step("run_1", name, name, "run", None, ("completed", "failed")[n % 2],
                  {"n": n, "名": name}, RunError("ValueError", name) if n % 2 else None,
                  1 + n % 2, at, later if n % 3 else None)
             for n, name in enumerate(names)]
    timeline = [TimelineEntry(n, "run_1", at, kind, n % 3 or None, name or None,
                              {"from": "queued", "note": name})
                for n, (kind, name) in enumerate(zip(
                    ["run.queued", "attempt.started", "step.failed", "run.retrying",
                     "wait.timed_out", "run.completed", "event.received", "run.waiting",
                     "step.completed"], names, strict=True))]
    attempts = [Attempt("run_1", 1, "failed", "wkr_1", at, later, RunError("KeyError", "失")),
                Attempt("run_1", 2, "running", None, later, None, None)]
    events = [Event(f"evt_{n}", name or "e", {"k": name}, name or None, at)
              for n, name in enumerate(names)]
    state = [{"key": name or "k", "value": {"v": name}, "expires_at": None if n % 2 else 1.8e9}
             for n, name in enumerate(names)]
    locks = [{"key": name or "k", "holder": name or None, "expires_at": 1.8e9} for name in names]
    right = render._table("right and centred")
    right.add_column("N", justify="right")
    right.add_column("MIDDLE", justify="center")
    right.add_column("LAST")
    for n, name in enumerate(names):
        right.add_row(str(10 ** n), name, Text(render.one_line(name), style="red"))
    tables: list[RenderableType] = [
        render.runs_table([run] * 3), render.runs_table([]),
        render.attempts_table(attempts), render.steps_table(steps), render.steps_table([]),
        render.timeline_table(run, timeline), render.events_table(events),
        render.state_table(state), render.locks_table(locks), right,
    ]
    for table in tables:
        assert piped(table) == piped(laid_out_by_rich(table))
        assert "\x1b" not in piped(table)
        # No line is padded with spaces to the table's width, the rule included.
        assert not [line for line in piped(table).splitlines() if line.endswith(" ")]
    # Laid out here, not by Rich: each of these tables takes the quick way.
    options = Console(width=render.UNLIMITED_WIDTH).options
    timeline_group = tables[5]
    assert isinstance(timeline_group, Group)
    for table in [*tables[:5], timeline_group.renderables[1], *tables[6:]]:
        assert isinstance(table, render._PlainTable)
        assert table._plain_lines(Console(file=io.StringIO()), options) is not None, table
    # Nor the fields of `runs show` and `events get`, whose values differ in width.
    for detail in (render.run_detail(run, attempts, steps), render.event_detail(events[1])):
        lines = piped(detail).splitlines()
        assert lines[0].startswith("id") and not [line for line in lines if line.endswith(" ")]


@pytest.mark.parametrize(("rate", "said"), [
    (0.0, "0.0"), (1 / 60, "<0.1"), (0.049, "<0.1"), (0.05, "0.1"), (2.345, "2.3"),
])
def test_a_rate_reads_none_only_when_none_finished(rate: float, said: str) -> None:
    assert per_minute(rate) == said


def test_characters_that_reorder_text_are_shown_as_escapes_but_in_verbatim_text() -> None:
    assert shown("a\u202eb\u2066c\u200fd") == "a\\u202eb\\u2066c\\u200fd"
    assert shown("plain: \u05e9\u05dc\u05d5\u05dd") == "plain: \u05e9\u05dc\u05d5\u05dd"
    marked = shown(Markup("<b>\u202e</b>"))
    assert isinstance(marked, Markup) and marked == Markup("<b>\\u202e</b>")
    assert shown(verbatim("key\u202e")) == "key\u202e"
    assert shown(5) == 5
