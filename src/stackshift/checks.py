"""The checks of input every shell shares: the SDK, the remote client, the HTTP API,
the CLI and the dashboard refuse the same values with the same words.

Each takes what a caller gave (any object), returns it checked, or raises
:class:`~stackshift.errors.ValidationError` saying what was wrong and what to give.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .durations import format_duration, parse_duration
from .errors import ValidationError
from .jobs import check_name
from .serialization import limit_advice, utf8_size
from .settings import LONGEST_KEY, Settings, server_setting

ON_TIMEOUT = ("fail", "continue", "cancel")

def check_endpoint_url(url: object) -> str:
    """An absolute ``http(s)://`` URL with a host, at most 2,000 characters, that the
    server can post to: no whitespace or control characters, a port from 1 to 65535."""
    if not isinstance(url, str) or len(url) > 2000:
        raise ValidationError(f"url: must be a string of at most 2000 characters, "
                              f"got {url!r}")
    for position, char in enumerate(url):
        if char.isspace() or unicodedata.category(char) == "Cc":
            raise ValidationError(
                f"url: {url!r} has {char!r} at position {position}: a URL has no whitespace "
                f"or control characters (percent-encode them, e.g. %20 for a space)")
    import httpx  # here: commands that never register a route start without it

    try:
        port = httpx.URL(url).port  # as the server reads it to post to the route
        parts = urlsplit(url)
        hostname = parts.hostname
    except (httpx.InvalidURL, ValueError) as exc:
        raise ValidationError(f"url: {url!r} is not a URL the server can call: {exc}"
                              ) from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ValidationError(f"url: must be an absolute http:// or https:// URL, "
                              f"got {url!r}")
    if parts.fragment:
        raise ValidationError(f"url: {url!r} has a #fragment, which is never sent to the "
                              f"route: leave it out")
    if port is not None and not 1 <= port <= 65535:
        raise ValidationError(f"url: {url!r} has port {port}: a port is from 1 to 65535")
    return url


def check_key(value: object, what: str, limit: int, setting: str | None = None,
              raised_by: Callable[[str], str] | None = None) -> str:
    """A key of at most ``limit`` characters; ``setting``, ``raised_by``: how the
    limit is raised (:func:`limit_advice`), said while it is below the longest
    key any store holds."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > limit:
        raise ValidationError(
            f"{what} is {len(value)} characters, over the limit of {limit}"
            + (limit_advice(setting, raised_by) if limit < LONGEST_KEY else ""))
    return _storable(value, what)


def _storable(value: str, what: str) -> str:
    """Text every store can hold: no NUL (PostgreSQL's text cannot hold it, so it is
    refused on every store alike) and no lone surrogate (UTF-8 cannot hold it)."""
    if "\x00" in value:
        raise ValidationError(f"{what} must not contain the NUL character (U+0000)")
    if not value.isascii():
        utf8_size(value, what)
    return value


#: The list filters by a name a run or event is given (the SDK's parameter: what it
#: names) and those by a key (``search`` is a run id or an idempotency key).
NAME_FILTERS = {"job": "job name", "queue": "queue name", "name": "event name"}
KEY_FILTERS = ("idempotency_key", "correlation_key", "search")


def check_filter(value: object, what: str) -> str | None:
    """A value a list is filtered by: text (or None for no filter), named by its
    parameter (``what``). A filter no run or event can match is refused rather than
    answered with an empty list: a name no job, queue or event can be given
    (:data:`NAME_FILTERS`: empty, blank, ``'a b'``) and an empty key
    (:data:`KEY_FILTERS`), which no run is started and no event sent with. This is
    the check of every shell: the SDK, the remote client, the HTTP API and the CLI."""
    if value is not None:
        if not isinstance(value, str):
            raise ValidationError(f"{what} must be a string, got {value!r}")
        _storable(value, what)
        if what in NAME_FILTERS:
            check_name(value, NAME_FILTERS[what])
        elif what in KEY_FILTERS and not value:
            raise ValidationError(f"{what} must be a non-empty string, got ''")
        elif what in KEY_FILTERS and len(value) > LONGEST_KEY:
            raise ValidationError(f"{what} is {len(value)} characters, longer than any key or"
                                  f" id can be ({LONGEST_KEY} at most)")
    return value


def check_int(value: object, what: str, bits: int) -> int:
    """A signed integer of ``bits`` bits (``bool`` is refused: it is not a number)."""
    if (isinstance(value, bool) or not isinstance(value, int)
            or not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)):
        raise ValidationError(f"{what} must be a {bits}-bit integer, got {value!r}")
    return value


def check_after(after: object) -> int:
    """``runs.logs``'s ``after``: the id of the last record read (0: from the first)."""
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2 ** 63:
        raise ValidationError("after must be the id of a log record (a whole number of 0"
                              f" or more), got {after!r}")
    return after


#: The most log records one read of ``runs.logs`` (one ``GET .../logs``) asks for.
MAX_LOG_PAGE = 10_000


def check_log_limit(limit: object, name: str = "limit") -> int | None:
    """``runs.logs``'s ``limit`` (or ``last``): None (every record) or 1 to
    :data:`MAX_LOG_PAGE`."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LOG_PAGE:
        raise ValidationError(f"{name} must be a whole number from 1 to {MAX_LOG_PAGE:,},"
                              f" got {limit!r}")
    return limit


def check_log_window(after: object, limit: object,
                     last: object) -> tuple[int, int | None, int | None]:
    """``runs.logs``'s ``after``, ``limit`` and ``last``, checked: ``last`` (the
    latest records) goes with neither of the others (the first ones after a record)."""
    checked = (0 if after is None else check_after(after), check_log_limit(limit),
               check_log_limit(last, "last"))
    if last is not None and (after is not None or limit is not None):
        raise ValidationError("give last (the latest records) or after and limit (the first"
                              " ones after a record), not both")
    return checked


def check_idempotency(settings: Settings, key: object, ttl: Any) -> float:
    """Check an idempotency key and its TTL (the remote client's: against the
    server's limits); the TTL in seconds, the installation's default when ``ttl``
    is None."""
    check_key(key, "idempotency_key", settings.max_idempotency_key_length,
              "max_idempotency_key_length", server_setting)
    return idempotency_seconds(settings, ttl)


def idempotency_seconds(settings: Settings, ttl: Any) -> float:
    """An idempotency key's TTL in seconds, the installation's default when
    ``ttl`` is None."""
    seconds = (settings.default_idempotency_ttl if ttl is None
               else parse_duration(ttl, name="idempotency_ttl"))
    if seconds <= 0 or seconds > settings.max_idempotency_ttl:
        raise ValidationError("idempotency_ttl must be more than 0 and at most "
                              f"{format_duration(settings.max_idempotency_ttl)}")
    return seconds


#: Runs one ``start_many`` call starts at most.
MAX_START_MANY = 1000


#: A ``start_many`` given an ``idempotency_ttl`` and no key to keep for that long.
IDEMPOTENCY_TTL_MANY = "idempotency_ttl needs idempotency_keys with at least one key"


def check_many(payloads: object, idempotency_keys: object, concurrency_keys: object) -> None:
    """Check the lists of ``start_many`` (shared with the remote client): the
    payloads a list, at most ``MAX_START_MANY`` of them, and each list of keys,
    when given, a list as long (``None`` for a run without a key)."""
    if not isinstance(payloads, list | tuple):
        raise ValidationError(f"payloads must be a list of payloads, one per run, got a "
                              f"{type(payloads).__name__}")
    if len(payloads) > MAX_START_MANY:
        raise ValidationError(f"start_many starts at most {MAX_START_MANY:,} runs a call, "
                              f"got {len(payloads):,} payloads")
    for name, keys in (("idempotency_keys", idempotency_keys),
                       ("concurrency_keys", concurrency_keys)):
        if keys is None:
            continue
        if not isinstance(keys, list | tuple):
            raise ValidationError(f"{name} must be a list (a key or None per payload), got a "
                                  f"{type(keys).__name__}")
        if len(keys) != len(payloads):
            raise ValidationError(
                f"{name} has {len(keys)} key{'s' if len(keys) != 1 else ''} for"
                f" {len(payloads)} payload{'s' if len(payloads) != 1 else ''}: give one per"
                " payload (None for a run without one)")


#: The longest cancel reason: well under a server's request limit, so that an
#: embedded and a remote client refuse the same reasons with the same error.
MAX_REASON_LENGTH = 10_000


def check_not_blank(text: str, what: str, advice: str) -> str:
    """``text`` unless it is blank (empty or only whitespace): words that say
    nothing are refused rather than recorded; ``advice`` says what to do instead."""
    if not text.strip():
        raise ValidationError(f"{what} must not be blank, got {text!r}: {advice}")
    return text


def check_holder(holder: object) -> str:
    """A lock's ``holder``: who its owner is, in words of 1 to 200 characters."""
    return check_not_blank(check_key(holder, "holder", 200), "holder",
                           "leave it out when the owner does not say")


def check_reason(reason: object) -> str | None:
    """A cancel's reason: text (it becomes the run's error message), or None.

    Blank text (empty or only whitespace) is refused rather than recorded as a
    reason that says nothing: leave the reason out for none."""
    if reason is not None:
        if not isinstance(reason, str):
            raise ValidationError(f"reason must be a string, got {reason!r}")
        check_not_blank(reason, "reason", "leave it out for no reason")
        if len(reason) > MAX_REASON_LENGTH:
            raise ValidationError(f"reason is {len(reason)} characters, over the limit of "
                                  f"{MAX_REASON_LENGTH}")
        if not reason.isascii():
            utf8_size(reason, "reason")
    return reason


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValidationError(f"limit must be an integer from 1 to 1000, got {limit!r}")
    return limit
