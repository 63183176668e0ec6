"""Turning SDK values into JSON for scripts and Rich tables for people."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Sequence
from copy import copy
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import click
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import StyleType
from rich.table import Table
from rich.text import Text

from ..durations import span
from ..models import (
    Attempt,
    Event,
    LogEntry,
    Run,
    Step,
    TimelineEntry,
    details_with_datetimes,
    is_time_detail,
)
from ..progress import InProgress
from ..runlogs import fields_line
from .failures import output_gone

STATUS_STYLES = {
    "scheduled": "blue",
    "queued": "bright_blue",
    "running": "cyan",
    "waiting": "yellow",
    "retrying": "dark_orange",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


# -- JSON ----------------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_data(value: Any) -> Any:
    """Plain JSON data for a model (dataclasses, datetimes, lists, dicts)."""
    if isinstance(value, datetime):
        return iso(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_data(item) for item in value]
    return value


#: The JSON the commands print with ``--json``.
_JSON = json.JSONEncoder(indent=2, ensure_ascii=False)


def shown_json(text: str) -> str:
    """JSON ``text`` with the characters a terminal would not show as they are
    (format characters such as U+202E, which reorders what follows it, and
    other unprintable ones) written as ``\\u`` escapes: the same JSON value,
    safe to print. JSON's own encoder escapes only control characters."""
    if text.replace("\n", "").isprintable():
        return text
    return "".join(c if c == "\n" or c.isprintable() else _json_escape(c) for c in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # a character past the BMP: its UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def echo_json(value: Any) -> None:
    click.echo(shown_json(_JSON.encode(to_data(value))))


def echo_json_list(pages: Iterable[Iterable[Any]]) -> None:
    """The items of ``pages`` as one JSON list, the characters :func:`echo_json`
    writes for it, printed page by page: a long list is not held whole."""
    started = False
    for page in pages:
        items = to_data(list(page))
        if items:  # the page's list, less its opening "[\n" and closing "\n]"
            click.echo((",\n" if started else "[\n") + shown_json(_JSON.encode(items)[2:-2]),
                       nl=False)
            started = True
    click.echo("\n]" if started else "[]")


def compact_json(value: Any, limit: int | None = None) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def shown_url(url: str | None) -> str:
    """A database URL to print in a banner or a warning: its password, if it has
    one, as ``***`` (worker output ends up in logs)."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# -- consoles ----------------------------------------------------------------------------


#: The width of a console that is not a terminal and was given no ``COLUMNS``:
#: no limit, so that nothing is wrapped or cut to fit a screen there is none of.
UNLIMITED_WIDTH = sys.maxsize


def console(*, stderr: bool = False, goes_on_when_closed: bool = False) -> Console:
    """A console on stdout (or stderr) as its reader needs it.

    A terminal gets Rich's layout, colours and wrapping. Anything else (a file, a
    pipe, a log collector, systemd's journal) gets one line per message, never
    wrapped, without escape codes, and tables at their full width: a long status
    line stays one record, and every cell of a table is whole, so that
    ``stackshift runs list | grep`` finds full ids and names. ``COLUMNS`` set in
    the environment still sets the width tables fit in.

    When its reader goes away (``| head``), printing ends the command (exit 1,
    as Rich does), or, ``goes_on_when_closed``, prints nothing more and lets the
    command go on (a worker that runs until it is asked to stop).
    """
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        shown: _Console = _TerminalConsole(stderr=stderr, highlight=False)
    else:
        width = None if "COLUMNS" in os.environ else UNLIMITED_WIDTH
        shown = _Console(stderr=stderr, width=width, soft_wrap=True, highlight=False)
    shown.goes_on_when_closed = goes_on_when_closed
    return shown


class _Console(Console):
    goes_on_when_closed = False

    def on_broken_pipe(self) -> None:
        if not self.goes_on_when_closed:
            super().on_broken_pipe()  # SystemExit(1)
        self.quiet = True
        output_gone()


class _TerminalConsole(_Console):
    """A terminal's console, whose lines are never cut at the screen's edge: a
    table whose ids alone are wider than the screen runs past it (and the
    terminal wraps it), the ids whole."""

    def print(self, *objects: Any, crop: bool = False, **options: Any) -> None:
        super().print(*objects, crop=crop, **options)


# -- times -------------------------------------------------------------------------------


def offset(seconds: float) -> str:
    """A timeline offset from the run's creation: ``+0.000s``, ``+12.345s``, ``+4m05.2s``,
    ``+5h02m03s``, ``+400d00h00m``."""
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    # Each form rounds first: 3599.99996 s is +1h00m00s, not +59m60.0s.
    if round(seconds, 3) < 60:
        return f"{sign}{seconds:.3f}s"
    if round(seconds, 1) < 3600:
        minutes, secs = divmod(round(seconds, 1), 60)
        return f"{sign}{int(minutes)}m{secs:04.1f}s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours < 48:
        return f"{sign}{hours}h{minutes:02d}m{secs:02d}s"
    days, hours = divmod(hours, 24)  # a run scheduled weeks ahead: +400d00h00m
    return f"{sign}{days}d{hours:02d}h{minutes:02d}m"


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return ""
    now = now or datetime.now(UTC)
    return span((now - moment).total_seconds())


def when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


# -- runs --------------------------------------------------------------------------------


def waiting_text(run: Run) -> str:
    waiting = run.waiting_for
    if waiting is None:
        return ""
    if waiting.kind == "event":
        key = f" ({waiting.correlation_key})" if waiting.correlation_key else ""
        until = f" until {when(waiting.until)}" if waiting.until else ""
        return f"event {waiting.event_name}{key}{until}"
    return f"sleep {waiting.step} until {when(waiting.until)}"


def due(moment: datetime, now: datetime, to_come: str = "", gone_by: str = "", *,
        grace: float = 1.0) -> str:
    """When something is to happen: ``starts in 4m05s`` (``to_come`` first), ``starts
    now``; once ``moment`` is more than ``grace`` seconds gone and it has not
    happened (no worker is up, or none may take the run yet: its queue is full,
    paused or at a limit), ``start due 2m05s ago`` (``gone_by`` first), as the
    dashboard says."""
    seconds = (moment - now).total_seconds()
    if seconds > 0:
        lead, text = to_come, f"in {span(seconds)}"
    elif seconds > -grace:
        lead, text = to_come, "now"
    else:
        lead, text = gone_by, f"due {span(-seconds)} ago"
    return f"{lead} {text}" if lead else text


#: What a running run asked to cancel shows beside its status.
CANCEL_REQUESTED = "cancel requested: stops at its next step boundary"


def run_detail_line(run: Run, now: datetime | None = None) -> str:
    """What is most worth knowing about a run beside its status, in one line."""
    now = now or datetime.now(UTC)
    waiting = run.waiting_for
    if waiting is not None:
        if waiting.kind == "event":
            key = f" ({waiting.correlation_key})" if waiting.correlation_key else ""
            what = f"for {waiting.event_name}{key}"
            return what if waiting.until is None else (
                f"{what}, {due(waiting.until, now, 'times out', 'timeout')}")
        what = f"sleeping ({waiting.step})"
        return what if waiting.until is None else (
            f"{what}, {due(waiting.until, now, 'wakes', 'wake-up')}")
    if run.status == "retrying" and run.error is not None:
        error = f"{run.error.type}: {run.error.message}"
        return error if run.next_attempt_at is None else (
            f"{error}; {due(run.next_attempt_at, now, 'next attempt', 'next attempt')}")
    if run.error is not None and run.status in ("failed", "cancelled"):
        return f"{run.error.type}: {run.error.message}"
    if run.cancel_requested:
        return CANCEL_REQUESTED
    if run.scheduled_at is not None and (
            run.status == "scheduled" or (run.status == "queued" and run.attempt == 0)):
        # A delayed start that has come is queued, due since then, until a worker
        # may take it (none is up, or its queue is paused or full).
        return due(run.scheduled_at, now, "starts", "start")
    if run.status == "completed":
        return compact_json(run.result, 60)
    return ""


#: How a column of a table gives way on a screen too narrow for it:
#:
#: - ``whole``: ids, keys, names, URLs, cron lines, which users copy; never
#:   wrapped nor cut (only its header may wrap);
#: - ``folds`` (the default): short values (times, statuses, counts) and lists
#:   of names, wrapped at spaces, never inside a word;
#: - ``wraps``: users' free text (errors, details, a key's name), wrapped;
#: - ``shortened``: one-line previews (payloads, values), cut with "…".
#:
#: Free text gives way first (down to :data:`_TEXT_FLOOR` cells), then the other
#: columns fold; no column is left out. A table that is still too wide sets its
#: columns closer if that makes it fit (:data:`_NARROWER_GAPS`), and otherwise
#: runs past the screen's edge rather than cut an id.
Fit = Literal["whole", "folds", "wraps", "shortened"]

#: Cells between two columns of a :func:`_table`: padding, the rule, padding.
_GAP = 3

#: Narrower gaps a table too wide for the screen at :data:`_GAP` takes, the
#: widest that lets it fit, and the padding (top, right, bottom, left) of each.
_NARROWER_GAPS = (2, 1)
_PADDING = {3: (0, 1, 0, 1), 2: (0, 1, 0, 0), 1: (0, 0, 0, 0)}

#: How narrow free text gets before the other columns give way.
_TEXT_FLOOR = 12


class _PlainTable(Table):
    """A table whose text cells are shown as they are, never read as markup: keys,
    payloads and error messages are users' text, and ``[/]`` in a state key
    would otherwise stop the command. Styled cells are ``Text`` objects.

    Each column says how it gives way (:data:`Fit`) when the table is wider than
    the screen; at its full width every cell is whole on one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fits: list[Fit] = []

    def add_column(self, header: RenderableType = "", footer: RenderableType = "", *,
                   fit: Fit = "folds", **options: Any) -> None:
        shortened = fit == "shortened"
        options.setdefault("no_wrap", shortened)
        options.setdefault("overflow", "ellipsis" if shortened else "fold")
        super().add_column(header, footer, **options)
        self.fits.append(fit)

    def add_row(self, *cells: RenderableType | None, style: StyleType | None = None,
                end_section: bool = False) -> None:
        super().add_row(*(Text(one_line(cell)) if isinstance(cell, str) else cell
                          for cell in cells), style=style, end_section=end_section)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        plain = self._plain_lines(console, options)
        if plain is not None:
            yield Segment("".join(plain))
            return
        laid_out = self._laid_out(console, options)
        if console.is_terminal or console.color_system is not None:
            yield from laid_out
            return
        # Into a file or a pipe, as _plain_lines writes it: no line ends in the
        # spaces that pad it to the table's width.
        segments = (part for item in laid_out for part in (
            [item] if isinstance(item, Segment) else console.render(item, options)))
        for line in Segment.split_lines(segments):
            yield Segment("".join(segment.text for segment in line).rstrip(" ") + "\n")

    def _laid_out(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Rich's layout, its columns fitted to a screen too narrow for it."""
        measured = self._measured(console, options)
        if sum(longest for longest, _ in measured) + _GAP * (len(measured) - 1) \
                <= options.max_width:
            yield from super().__rich_console__(console, options)  # every cell whole
            return
        widths, excess = self._fitted_widths(measured, _GAP, options.max_width)
        gap = _GAP
        # Still too wide: closer columns, if that fits (a table as _table makes them).
        standard = self.padding == _PADDING[_GAP] and self.box is box.SIMPLE_HEAD
        for narrower in _NARROWER_GAPS if standard else ():
            if excess <= 0:
                break
            closer, excess = self._fitted_widths(measured, narrower, options.max_width)
            if excess <= 0:
                widths, gap = closer, narrower
        fitted = copy(self)
        fitted.columns = [dataclasses.replace(column, width=width, min_width=None,
                                              max_width=None)
                          for column, width in zip(self.columns, widths, strict=True)]
        if gap != _GAP:
            fitted.padding = _PADDING[gap]
        wide = max(options.max_width, sum(widths) + gap * (len(widths) - 1))
        yield from Table.__rich_console__(fitted, console, options.update_width(wide))

    def _plain_lines(self, console: Console, options: ConsoleOptions) -> list[str] | None:
        """The lines Rich would print, laid out here, without the spaces that pad
        each to the table's width: on a console without colours
        (a file, a pipe), for a table of one-line text cells that fits its width.
        Rich takes about 0.1 ms a cell, seconds for the timeline of a long run sent
        to ``grep``; ``None`` for any other table, which Rich lays out."""
        if (console.is_terminal or console.color_system is not None or not self.columns
                or self.title_justify != "left" or self.box is not box.SIMPLE_HEAD
                or self.show_edge or self.pad_edge or not self.show_header
                or self.show_footer or self.expand or self.padding != (0, 1, 0, 1)
                or self.row_styles or self.leading
                or any(row.style is not None or row.end_section for row in self.rows)):
            return None
        columns: list[tuple[list[tuple[str, int]], int, str]] = []
        for column in self.columns:
            if (column.width is not None or column.min_width is not None
                    or column.ratio is not None
                    or column.justify not in ("left", "right", "center")):
                return None
            texts: list[tuple[str, int]] = []  # each cell's text and terminal cells
            for cell in (column.header, *column.cells):
                if isinstance(cell, Text) and cell.justify is None:
                    cell = cell.plain
                if not isinstance(cell, str) or not cell.isprintable():  # a line break, a tab
                    return None
                texts.append((cell, cell_len(cell)))
            width = max(cells for _, cells in texts)
            if column.max_width is not None and width > column.max_width:
                return None
            columns.append((texts, width, column.justify))
        last = len(columns) - 1
        wide = sum(width for _, width, _ in columns) + _GAP * last
        title = self.title.plain if isinstance(self.title, Text) else self.title
        if wide > options.max_width or (title is not None and not (
                isinstance(title, str) and title.isprintable() and cell_len(title) <= wide)):
            return None
        lines = [] if title is None else [title + "\n"]
        for at in range(len(self.rows) + 1):
            line = []
            for n, (texts, width, justify) in enumerate(columns):
                text, cells = texts[at]
                room = width - cells
                if justify == "right":
                    text = " " * room + text
                elif justify == "center":
                    text = " " * (room // 2) + text + " " * (room - room // 2)
                else:
                    text += " " * room
                line.append(text if n == last else text + " ")
            lines.append("  ".join(line).rstrip(" ") + "\n")
            if at == 0:
                lines.append("\u2500" * wide + "\n")
        return lines

    def _measured(self, console: Console, options: ConsoleOptions) -> list[tuple[int, int]]:
        """Each column's width with every cell whole on one line, and the floor
        its :data:`Fit` lets it give way to."""
        unlimited = options.update_width(UNLIMITED_WIDTH)
        measured = []
        for column, fit in zip(self.columns, self.fits, strict=True):
            header = Measurement.get(console, unlimited, column.header)
            cells = [Measurement.get(console, unlimited, cell) for cell in column.cells]
            longest = max([header.maximum, *(cell.maximum for cell in cells)])
            if column.max_width is not None:
                longest = min(longest, column.max_width)
            if fit == "whole":
                floor = max([header.minimum, *(cell.maximum for cell in cells)])
            elif fit == "folds":
                floor = max([header.minimum, *(cell.minimum for cell in cells)])
            else:
                floor = max(header.minimum, min(longest, _TEXT_FLOOR))
            measured.append((longest, min(floor, longest)))
        return measured

    def _fitted_widths(self, measured: list[tuple[int, int]], gap: int,
                       room: int) -> tuple[list[int], int]:
        """The columns' widths (of :meth:`_measured`), ``gap`` cells apart, in
        ``room`` cells, by their :data:`Fit` (each whole when they fit), and the
        cells by which they still exceed it."""
        widths = [longest for longest, _ in measured]
        floors = [floor for _, floor in measured]
        excess = sum(widths) + gap * (len(widths) - 1) - room
        if excess <= 0:
            return widths, excess
        for giving in (("wraps", "shortened"), ("folds", "whole")):
            excess = _narrow(widths, floors, [fit in giving for fit in self.fits], excess)
        return widths, excess


def _narrow(widths: list[int], floors: list[int], may: Iterable[bool], excess: int) -> int:
    """Take up to ``excess`` cells off the ``widths`` that ``may`` give way, the
    widest first and none below its floor; the cells still to take."""
    narrowable = [at for at, allowed in enumerate(may) if allowed]
    while excess > 0:
        left = [at for at in narrowable if widths[at] > floors[at]]
        if not left:
            break
        widest = max(widths[at] for at in left)
        for at in left:
            if widths[at] == widest and excess > 0:
                widths[at] -= 1
                excess -= 1
    return excess


def _escaped(text: str, keep: str = "") -> str:
    """``text`` with its control characters but those in ``keep`` escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode()
                   for c in text)


def one_line(text: str) -> str:
    """``text`` with control characters escaped (a newline shows as ``\\n``), so
    that a cell never spills into the rows below it."""
    return _escaped(text)


def shown_as_is(text: str) -> str:
    """Users' text that may span lines (a log message, an error, a traceback) with
    its other control characters escaped, so that an escape sequence in it shows
    as ``\x1b[2J`` instead of clearing or recolouring the terminal."""
    return _escaped(text, keep="\n\t")


def _table(title: str | None = None) -> _PlainTable:
    """A table as every command shows one; see :data:`Fit` for its columns."""
    return _PlainTable(title=Text(title) if title is not None else None, title_justify="left",
                       header_style="bold", box=box.SIMPLE_HEAD, show_edge=False,
                       pad_edge=False)


def paused_text() -> Text:
    """How a paused queue or schedule shows in a table."""
    return Text("paused", style="yellow")


def _clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal cells with an ellipsis (a wide character
    such as 失 or 😀 takes two cells)."""
    if cell_len(text) <= width:
        return text
    kept, used = [], 0
    for char in text:
        used += cell_len(char)
        if used > width - 1:
            break
        kept.append(char)
    return "".join(kept) + "…"


def runs_table(
    runs: list[Run],
    *,
    now: datetime | None = None,
    title: str | None = None,
    width: int | None = None,
) -> Table:
    """Runs, one per row. With ``width`` the table fits it: on a narrow screen the
    queue is left out, long job and queue names are shortened (to 12 characters at
    least) before the detail column is, and the detail column is shortened, or
    left out when fewer than 12 cells would remain for it (the names then keep
    all they can); never the id or status."""
    show_queue = width is None or width >= 110
    rows = []
    for run in runs:
        cells = [run.id, run.job] + ([run.queue] if show_queue else [])
        cells += [run.status, attempt_cell(run), age(run.created_at, now)]
        rows.append((cells, one_line(run_detail_line(run, now))))
    headers = ["RUN", "JOB"] + (["QUEUE"] if show_queue else []) + ["STATUS", "ATT", "AGE"]
    show_detail = True
    if width is not None:
        # Measured in terminal cells: a wide character takes two.
        widths = [max([len(h)] + [cell_len(c[i]) for c, _ in rows])
                  for i, h in enumerate(headers)]
        gaps = _GAP * len(headers)  # between the columns, the detail's included
        detail_wanted = min(24, max(cell_len(detail) for _, detail in rows)) if rows else 0
        fitted = _names_fitted(headers, widths, width - gaps - detail_wanted)
        room = width - sum(fitted) - gaps
        show_detail = room >= 12
        if not show_detail:  # no detail column to make room for: names keep all they can
            fitted = _names_fitted(headers, widths, width - gaps + _GAP)  # one gap fewer
        for at, fit in enumerate(fitted):
            if fit < widths[at]:
                rows = [([*cells[:at], _clip(cells[at], fit), *cells[at + 1:]], detail)
                        for cells, detail in rows]
        rows = [(cells, _clip(detail, room)) for cells, detail in rows]
    table = _table(title)
    for header in headers:
        table.add_column(header, fit="whole" if header == "RUN" else "folds",
                         justify="right" if header in ("ATT", "AGE") else "left")
    if show_detail:
        table.add_column("DETAIL", fit="shortened")
    status_at = headers.index("STATUS")
    for cells, detail in rows:
        shown: list[str | Text] = list(cells)
        shown[status_at] = status_text(cells[status_at])
        table.add_row(*shown, *([detail] if show_detail else []))
    return table


def _names_fitted(headers: list[str], widths: list[int], room: int) -> list[int]:
    """``widths`` with the queue's, then the job's, column shortened (to 12 cells
    at least) until all of them take at most ``room`` cells."""
    fitted = list(widths)
    for name in ("QUEUE", "JOB"):  # names give way before the id, status and detail
        if name in headers:
            at = headers.index(name)
            fitted[at] = min(fitted[at], max(12, fitted[at] - (sum(fitted) - room)))
    return fitted


def _fields(rows: list[tuple[str, Any]]) -> Table:
    # Table.grid's settings; piped, the lines end without the padding.
    grid = _PlainTable(box=None, padding=(0, 2), collapse_padding=True, show_header=False,
                       show_edge=False, pad_edge=False)
    grid.add_column(style="bold", fit="whole")
    grid.add_column(fit="wraps")  # an id too: wrapped on a narrow screen, never cut
    for name, value in rows:
        grid.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    return grid


def _json_block(value: Any) -> Text:
    return Text(shown_json(json.dumps(value, indent=2, ensure_ascii=False)))


def attempt_text(run: Run) -> str:
    """The run's attempt within its budget, e.g. ``2 of 3``; after a manual retry,
    which starts a fresh budget, ``1 of 2 after a manual retry (3 in all)``."""
    text = f"{run.budget_attempt} of {run.max_attempts}"
    if run.retry_base:
        text += f" after a manual retry ({run.attempt} in all)"
    return text


def attempt_cell(run: Run) -> str:
    """:func:`attempt_text` for a table: ``2/3``, or ``1/2 (3)`` after a manual retry."""
    text = f"{run.budget_attempt}/{run.max_attempts}"
    return f"{text} ({run.attempt})" if run.retry_base else text


#: How many of the runs started again from a run ``runs show`` names, the latest first.
STARTED_AGAIN_SHOWN = 3


def run_detail(run: Run, attempts: list[Attempt], steps: list[Step],
               current: InProgress | None = None, *, again_of: str | None = None,
               started_again: Sequence[str] = ()) -> RenderableType:
    """``runs show``: the run, its payload, result, error, attempts and steps, the
    last row of which says what a running attempt executes (``current``), and
    the run it was started again from and those started again from it (the
    latest few, with their count)."""
    rows: list[tuple[str, Any]] = [
        ("id", run.id),
        ("job", run.job),
        ("queue", run.queue),
        ("status", status_text(run.status) + (f" ({CANCEL_REQUESTED})"
                                              if run.cancel_requested else "")),
        ("attempt", attempt_text(run)),
    ]
    if run.idempotency_key:
        rows.append(("idempotency key", run.idempotency_key))
    if run.priority:
        rows.append(("priority", run.priority))
    if run.concurrency_key:
        rows.append(("concurrency key", run.concurrency_key))
    rows.append(("created", when(run.created_at)))
    # The due time is the next attempt's only while retrying: a queued run's is
    # when it became ready, a scheduled run's its start (shown as "scheduled").
    for name, moment in (
        ("scheduled", run.scheduled_at),
        ("started", run.started_at),
        ("finished", run.finished_at),
        ("next attempt", run.next_attempt_at if run.status == "retrying" else None),
    ):
        if moment is not None:
            rows.append((name, when(moment)))
    if run.waiting_for is not None:
        rows.append(("waiting for", waiting_text(run)))
    if again_of is not None:
        rows.append(("started again from", again_of))
    if started_again:
        latest = list(reversed(started_again[-STARTED_AGAIN_SHOWN:]))
        if len(started_again) > STARTED_AGAIN_SHOWN:
            latest.append(f"(the latest {STARTED_AGAIN_SHOWN} of {len(started_again)})")
        rows.append(("started again as", "\n".join(latest)))
    parts: list[RenderableType] = [_fields(rows), Text(""), Text("payload", style="bold")]
    parts.append(_json_block(run.payload))
    if run.status == "completed" or run.result is not None:
        parts += [Text(""), Text("result", style="bold"), _json_block(run.result)]
    if run.error is not None:
        parts += [
            Text(""),
            Text("error", style="bold red"),
            Text(shown_as_is(f"{run.error.type}: {run.error.message}"), style="red"),
        ]
        if run.error.traceback:
            parts.append(Text(shown_as_is(run.error.traceback.rstrip()), style="dim"))
    if attempts:
        parts += [Text(""), attempts_table(attempts)]
    if steps or current:
        parts += [Text(""), steps_table(steps, current)]
    return Group(*parts)


def attempts_table(attempts: list[Attempt]) -> Table:
    table = _table("attempts")
    fits: tuple[tuple[str, Fit], ...] = (("#", "folds"), ("STATUS", "folds"),
                                         ("STARTED", "folds"), ("DURATION", "folds"),
                                         ("WORKER", "whole"), ("ERROR", "wraps"))
    for name, fit in fits:
        table.add_column(name, fit=fit)
    for attempt in attempts:
        duration = attempt.duration
        error = attempt.error
        table.add_row(
            str(attempt.number),
            status_text(attempt.status),
            when(attempt.started_at),
            "" if duration is None else span(duration),
            attempt.worker_id or "",
            f"{error.type}: {error.message}" if error else "",
        )
    return table


def steps_table(steps: list[Step], current: InProgress | None = None) -> Table:
    table = _table("steps")
    fits: tuple[tuple[str, Fit], ...] = (("STEP", "whole"), ("KIND", "folds"),
                                         ("STATUS", "folds"), ("ATTEMPT", "folds"),
                                         ("DURATION", "folds"), ("RESULT / ERROR", "wraps"))
    for name, fit in fits:
        table.add_column(name, fit=fit)
    for step in steps:
        duration = (
            span((step.finished_at - step.started_at).total_seconds())
            if step.finished_at and step.started_at
            else ""
        )
        outcome = (
            f"{step.error.type}: {step.error.message}"
            if step.error
            else compact_json(step.result, 80)
            if step.status == "completed"
            else ""
        )
        table.add_row(step.key, step.kind, status_text(step.status), str(step.attempt),
                      duration, outcome)
    if current is not None:
        table.add_row(current.step or Text("in progress", style="dim"), "",
                      status_text("running"), str(current.attempt),
                      f"{span(current.seconds)} so far",
                      ("named by its log records; " if current.step else "")
                      + "recorded when it ends")
    return table


# -- timeline and logs -----------------------------------------------------------------------


def _detail_value(key: str, value: Any, created: float) -> str:
    if isinstance(value, dict) and {"type", "message"} <= set(value):
        return f"{value['type']}: {value['message']}"
    if key == "duration" and isinstance(value, int | float):
        return span(float(value))
    if is_time_detail(key) and isinstance(value, int | float):
        return offset(float(value) - created)
    if isinstance(value, str):
        return value
    return compact_json(value, 80)


def timeline_details(entry: TimelineEntry, created: float) -> str:
    data = dict(entry.data)
    parts = []
    if "error" in data:
        parts.append(_detail_value("error", data.pop("error"), created))
    if "from" in data:
        parts.append(f"from {data.pop('from')}")
    for key, value in data.items():
        parts.append(f"{key}={_detail_value(key, value, created)}")
    return ", ".join(parts)


def timeline_rows(run: Run, entries: list[TimelineEntry]) -> list[dict[str, Any]]:
    """Entries as JSON data with ``offset_seconds`` from the run's creation."""
    created = run.created_at.timestamp()
    rows = []
    for entry in entries:
        row = to_data(entry)
        row["data"] = to_data(details_with_datetimes(entry.data))
        row["offset_seconds"] = round(entry.at.timestamp() - created, 6)
        rows.append(row)
    return rows


def timeline_table(run: Run, entries: list[TimelineEntry]) -> RenderableType:
    """The run's line (id, job, creation) over a table of its entries. The line is
    not the table's title, which would wrap to a narrow table's width and split
    the creation time in two."""
    created = run.created_at.timestamp()
    heading = Text(f"{run.id} · {run.job} · created {when(run.created_at)}")
    table = _table()
    table.add_column("OFFSET", justify="right")
    table.add_column("EVENT")
    table.add_column("STEP", fit="whole")
    table.add_column("ATTEMPT", justify="right")
    table.add_column("DETAILS", fit="wraps")
    for entry in entries:
        kind = entry.kind
        style = ""
        if kind.startswith("run."):
            style = STATUS_STYLES.get(kind.removeprefix("run."), "")
        elif kind.endswith("failed") or kind.endswith("timed_out"):
            style = "red"
        table.add_row(
            offset(entry.at.timestamp() - created),
            Text(kind, style=style),
            entry.step or "",
            "" if entry.attempt is None else str(entry.attempt),
            timeline_details(entry, created),
        )
    return Group(heading, table)


_LEVEL_STYLES = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red"}


def _log_parts(entry: LogEntry) -> tuple[str, str, str, str, str, str]:
    """A record's lines: its time, level, where it was logged, its message's
    first line, its fields (``name=value`` pairs) and the rest of its message
    (a traceback)."""
    where = f"attempt {entry.attempt}" if entry.attempt is not None else "-"
    if entry.step:
        where += f" step {entry.step}"
    first, newline, rest = shown_as_is(entry.message).partition("\n")
    fields = "  " + one_line(fields_line(entry.fields)) if entry.fields else ""
    return (f"{when(entry.at)}  ", f"{entry.level:<8}",
            shown_as_is(f" [{where}] {entry.logger}: "), first, fields, newline + rest + "\n")


def log_lines(entries: list[LogEntry]) -> Text:
    """Records as a terminal shows them, coloured by level."""
    text = Text()
    for entry in entries:
        style = _LEVEL_STYLES.get(entry.level, "")
        at, level, where, first, fields, rest = _log_parts(entry)
        text.append(at, style="dim")
        text.append(level, style=style)
        text.append(where, style="dim")
        text.append(first, style=style)
        text.append(fields, style="cyan")
        text.append(rest, style=style)
    return text


def print_logs(out: Console, entries: list[LogEntry]) -> None:
    """Print records on ``out``: through Rich on a terminal; elsewhere (a file, a
    pipe) the same characters written straight out, several times faster, as a
    long log sent to ``grep`` needs."""
    if isinstance(out, _TerminalConsole):
        out.print(log_lines(entries), end="")
        return
    lines = "".join("".join(_log_parts(entry)) for entry in entries)
    if "\t" in lines:  # tab stops every 8 cells, as Rich lays them out
        lines = "\n".join(_expand_tabs(line) for line in lines.split("\n"))
    out.file.write(lines)
    out.file.flush()


def _expand_tabs(line: str) -> str:
    if "\t" not in line:
        return line
    text = Text(line)
    text.expand_tabs(8)
    return text.plain


# -- events and state -------------------------------------------------------------------------


def event_detail(event: Event) -> RenderableType:
    """``events get``: the event and its whole payload."""
    rows: list[tuple[str, Any]] = [("id", event.id), ("name", event.name)]
    if event.correlation_key is not None:
        rows.append(("correlation key", one_line(event.correlation_key)))
    if event.idempotency_key is not None:
        rows.append(("idempotency key", one_line(event.idempotency_key)))
    rows.append(("received", when(event.received_at)))
    return Group(_fields(rows), Text(""), Text("payload", style="bold"),
                 Text(shown_as_is(json.dumps(event.payload, indent=2, ensure_ascii=False))))


def events_table(events: list[Event]) -> Table:
    """Events, one per row, with their age as ``runs list`` gives a run's (``events
    get`` gives the time received)."""
    table = _table()
    table.add_column("EVENT", fit="whole")
    table.add_column("NAME", fit="whole")
    table.add_column("CORRELATION KEY", fit="whole")
    table.add_column("AGE", justify="right")
    table.add_column("PAYLOAD", fit="shortened")
    now = datetime.now(UTC)  # every row's age from one instant
    for event in events:
        table.add_row(event.id, event.name, event.correlation_key or "",
                      age(event.received_at, now), compact_json(event.payload))
    return table


def state_table(items: list[dict[str, Any]]) -> Table:
    table = _table()
    table.add_column("KEY", fit="whole")
    table.add_column("VALUE", fit="shortened")
    table.add_column("EXPIRES")
    for item in items:
        expires = item.get("expires_at")
        table.add_row(
            item["key"],
            compact_json(item["value"]),
            "" if expires is None else when(datetime.fromtimestamp(expires, UTC)),
        )
    return table


def locks_table(items: list[dict[str, Any]]) -> Table:
    table = _table()
    table.add_column("KEY", fit="whole")
    table.add_column("HELD BY")
    table.add_column("EXPIRES")
    for item in items:
        table.add_row(item["key"], item["holder"] or "(not said)",
                      when(datetime.fromtimestamp(item["expires_at"], UTC)))
    return table
