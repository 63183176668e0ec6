"""How values read on the dashboard: durations, ages, times and JSON.

These are Jinja filters and globals. They return plain text, which the templates
escape, but for :func:`link_runs`, which escapes its text itself and adds links.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

from ..models import details_with_datetimes
from ..runlogs import field_text, level_number
from ..wording import per_minute, shell_word


def duration(seconds: float | None) -> str:
    """``0.0123`` -> ``12 ms``, ``75`` -> ``1m 15s``, ``93784`` -> ``1d 2h``, as the
    page's script writes a duration it keeps current (``duration`` in dashboard.js:
    keep the two alike)."""
    if seconds is None:
        return "—"
    if seconds < 0:
        seconds = 0.0
    # Each form rounds first, so that 59.96 s reads 1m, not 60.0 s.
    if round(seconds * 1000) < 1000:
        ms = seconds * 1000
        if ms < 1:
            return "<1 ms"
        return f"{ms:.0f} ms"
    if round(seconds, 2) < 10:
        return f"{seconds:.2f} s"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m {secs}s" if secs else f"{minutes}m"


def between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    return duration((end - start).total_seconds())


def ago(moment: datetime | None, now: float, due: bool = False) -> str:
    """``3m ago`` / ``in 5m``, as the page's script writes them when it keeps them
    current (``ago`` in dashboard.js: keep the two alike). ``due``: the moment
    is when something should happen (a schedule's next run), so once past it
    reads ``due 3m ago``: it has not happened."""
    if moment is None:
        return "—"
    delta = now - moment.timestamp()
    if abs(delta) < 5:
        return "just now"
    r = int(abs(delta) + 0.5)  # whole seconds, rounded as the script's Math.round
    if r < 60:
        text = f"{r}s"
    elif r < 3600:
        text = f"{r // 60}m"
        if r < 600 and r % 60:
            text += f" {r % 60}s"
    elif r < 86400:
        hours, minutes = r // 3600, r % 3600 // 60
        text = f"{hours}h {minutes}m" if minutes else f"{hours}h"
    else:
        days, hours = r // 86400, r % 86400 // 3600
        text = f"{days}d {hours}h" if hours else f"{days}d"
    if delta < 0:
        return f"in {text}"
    return f"due {text} ago" if due else f"{text} ago"


def gone_by(moment: datetime, now: float) -> bool:
    """Whether a time something was to happen at is more than a second past: if
    the thing is still to happen, it is due (no worker is up, or none may take
    the run yet: its queue is full, paused or at a limit)."""
    return moment.timestamp() <= now - 1


def clock_time(moment: datetime | None) -> str:
    """``2026-01-05 09:00:01.234`` in UTC."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def day_time(moment: datetime | None, now: float) -> str:
    """``09:12:00`` on the UTC day of ``now``, ``2026-03-02 09:12:00`` on any other,
    so that a time of days ago does not read as today's."""
    if moment is None:
        return "—"
    at = moment.astimezone(UTC)
    if at.date() == datetime.fromtimestamp(now, UTC).date():
        return at.strftime("%H:%M:%S")
    return at.strftime("%Y-%m-%d %H:%M:%S")


def chart_times(moments: list[datetime], now: float) -> list[str]:
    """Axis labels of a chart that ends at ``now``: ``03-02 09:12`` in UTC, short,
    unless the chart reaches back into a year other than now's: then every label
    carries its year (``2026-12-30 09:12``), so that last December does not read
    as this one."""
    at = [m.astimezone(UTC) for m in moments]
    year = datetime.fromtimestamp(now, UTC).year
    shape = "%m-%d %H:%M" if all(m.year == year for m in at) else "%Y-%m-%d %H:%M"
    return [m.strftime(shape) for m in at]


def time_in_run(moment: datetime | None, first: datetime) -> str:
    """``09:12:05.000`` on the UTC day of ``first`` (a run's creation), with the date
    on a later one: log lines three days apart do not read as seconds apart."""
    if moment is None:
        return "—"
    text = clock_time(moment)
    same_day = moment.astimezone(UTC).date() == first.astimezone(UTC).date()
    return text[11:] if same_day else text


def timeline_details(data: dict[str, Any], first: datetime) -> dict[str, Any]:
    """A timeline entry's details as the run page lists them: its points in time
    (epoch seconds in the entry: ``next_attempt_at``, ``until``) as times in the run,
    as the entries' own times read, and a step's ``duration`` as other durations
    read (``53 ms``), not as raw numbers of seconds."""
    return {key: time_in_run(value, first) if isinstance(value, datetime)
            else duration(value) if key == "duration" and isinstance(value, int | float)
            and not isinstance(value, bool) else value
            for key, value in details_with_datetimes(data).items()}


#: A run's id, whole (a shortened text's last id may be cut).
RUN_ID = re.compile(r"\brun_[0-9a-f]{26}\b")


def link_runs(text: str, runs_url: str) -> Markup:
    """``text``, escaped, with each run id in it a link to that run's page
    (``runs_url`` + id): the run a timeline entry names (``again_of``,
    ``new_run_id``, ``handler_run_id``) is a click away."""
    return Markup(RUN_ID.sub(lambda found: f'<a href="{escape(runs_url)}{found[0]}">'
                                           f'{found[0]}</a>', str(escape(text))))


def iso(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


#: The most of one JSON value a page shows: a state value may hold 256 KiB, an event's
#: payload and a run's payload and result 1 MiB each, and every page is fetched again
#: at each live update (a list of 50 in full would be tens of megabytes).
LISTED_JSON = 10_000


def json_head(value: Any, limit: int = LISTED_JSON) -> tuple[str, int]:
    """``value`` as indented JSON, cut after ``limit`` characters, and how many
    characters were cut (0: all of it is shown)."""
    text = pretty_json(value)
    return (text, 0) if len(text) <= limit else (text[:limit], len(text) - limit)


def compact_json(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: int | float) -> str:
    return f"{value:,}"


def percent(part: float, whole: float) -> str:
    if whole <= 0:
        return "—"
    share = 100 * part / whole
    if share == 0:
        return "0%"
    # 0% and 100% only when none or all: 9,999 of 10,000 is not "100%".
    if 0 < share < 0.1:
        return "<0.1%"
    if part < whole and round(share) >= 100:
        return ">99%"
    return f"{share:.1f}%" if round(share, 1) < 10 else f"{share:.0f}%"


def short_id(value: str) -> str:
    """``run_01a229d363f102f55f8b68b4c2`` -> ``run_…f55f8b68b4c2``."""
    if len(value) <= 18:
        return value
    prefix, _, rest = value.partition("_")
    return f"{prefix}_…{rest[-10:]}" if rest else value[:8] + "…" + value[-8:]


#: The characters that reorder the text around them (bidirectional embeddings,
#: overrides, isolates and marks): users' text holding them could read on a page
#: as something else than it is (``abc\u202edef`` shows ``abcfed``).
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class Verbatim(str):
    """Text a page must hold exactly as it is (a form field's value, sent back as
    typed): :func:`shown` leaves it alone."""


def verbatim(value: Any) -> Verbatim:
    return Verbatim("" if value is None else value)


def shown(value: Any) -> Any:
    """What the page shows for a value it prints (Jinja's ``finalize``): text with
    any character that reorders the text around it written as its escape
    (``\\u202e``), as the command line shows it; a :class:`Verbatim` as it is."""
    if not isinstance(value, str) or isinstance(value, Verbatim) \
            or not _BIDI_CONTROLS.search(value):
        return value
    text = _BIDI_CONTROLS.sub(lambda found: f"\\u{ord(found.group()):04x}", value)
    return Markup(text) if isinstance(value, Markup) else text


def key_text(key: str) -> str:
    """A key as a page shows it: as it is, or quoted when it starts or ends with a
    space (or another blank), which would not show (``"user:ada "`` is not the key
    ``user:ada``), or holds a blank other than a space (a line break, a tab), which
    would show as one: quoted as JSON, ``"resource:1\\nline2"``."""
    if key != key.strip() or _HIDDEN_BLANKS.search(key):
        return json.dumps(key, ensure_ascii=False)
    return key


#: Blanks other than the space: a page shows them as spaces.
_HIDDEN_BLANKS = re.compile(r"[^\S ]")


FILTERS = {
    "verbatim": verbatim,
    "key_text": key_text,
    "rate": per_minute,
    "shell_word": shell_word,
    "duration": duration,
    "pretty_json": pretty_json,
    "json_head": json_head,
    "compact_json": compact_json,
    "field_text": field_text,
    "level_number": level_number,
    "clock": clock_time,
    "iso": iso,
    "number": number,
    "short_id": short_id,
}
