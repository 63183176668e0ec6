"""``stackshift state``: read and change the durable state store, and see and break
its locks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from ..durations import parse_duration, parse_instant, span, to_datetime
from ..errors import ValidationError
from .failures import bad_input, not_found
from .options import (
    Whole,
    database_url_option,
    duration,
    json_option,
    open_client,
    parse_json_argument,
    say_next_page,
)
from .render import console, echo_json, locks_table, state_table

_MISSING = object()



@click.group()
def state() -> None:
    """Get, set, delete and list state keys; list and break locks."""


@state.command()
@click.argument("key")
@json_option
@database_url_option
def get(key: str, as_json: bool, database_url: str | None) -> None:
    """Print the value of KEY as JSON. Exit 3 when it is missing or expired.

    The output is JSON with or without --json.
    """
    with open_client(database_url) as app:
        value = app.state.get(key, _MISSING)
    if value is _MISSING:
        raise not_found(f"no state value for key {key!r}")
    echo_json(value)


@state.command("set")
@click.argument("key")
@click.argument("value_json")
@click.option("--ttl", help="Expire after this long, e.g. 10m.")
@click.option("--expires-at", help="Expire at this ISO-8601 time, e.g. 2026-05-06T09:00:00Z "
                                   "(in the future; not with --ttl).")
@json_option
@database_url_option
def set_(
    key: str, value_json: str, ttl: str | None, expires_at: str | None, as_json: bool,
    database_url: str | None
) -> None:
    """Set KEY to VALUE_JSON ('-' reads it from stdin). Without --ttl or
    --expires-at the key does not expire, whatever expiry it had."""
    value = parse_json_argument(value_json, "VALUE_JSON")
    seconds = duration(ttl, "--ttl")
    deadline = None
    if expires_at is not None:
        if ttl is not None:
            raise bad_input("give --ttl or --expires-at, not both")
        try:
            deadline = parse_instant(expires_at, name="--expires-at")
        except ValidationError as exc:
            raise bad_input(str(exc)) from None
    held: list[dict[str, Any]] = []
    with open_client(database_url, creates=True) as app:
        began = time.time()
        app.state.set(key, value, ttl=seconds, expires_at=expires_at)
        if as_json:
            # What the store holds now, as `state list` shows it: of the keys
            # starting with this one, the first is the key itself while it lives.
            held = [item for item in app.state.keys(key, 1) if item["key"] == key]
    if as_json:
        if not held:  # a TTL shorter than the round trip: it expired already
            expires = deadline if seconds is None else began + parse_duration(seconds)
            held = [{"key": key, "value": value, "expires_at": expires, "updated_at": began}]
        echo_json(_entry(held[0]))
        return
    # A bare number is seconds: "90" reads "1m30s", as durations do in every table.
    lasts = "" if seconds is None else f" (expires in {span(parse_duration(seconds))})"
    if deadline is not None:
        lasts = f" (expires at {to_datetime(deadline):%Y-%m-%d %H:%M:%S} UTC)"
    console().print(f"Set {key!r}{lasts}.", markup=False)


@state.command()
@click.argument("key")
@json_option
@database_url_option
def delete(key: str, as_json: bool, database_url: str | None) -> None:
    """Delete KEY. Exit 3 when it held no live value."""
    with open_client(database_url) as app:
        deleted = app.state.delete(key)
    if not deleted:
        raise not_found(f"no state value for key {key!r}")
    if as_json:
        echo_json({"key": key, "deleted": True})
        return
    console().print(f"Deleted {key!r}.", markup=False)


def _key_cursor(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--cursor`` of a listing of keys: the last key of a page, taken as given,
    blank included (``' '`` is a key, and the cursor after it); only empty text,
    which no key is, is refused."""
    if value == "":
        raise click.BadParameter("is empty")
    return value


def _listing_options(noun: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options of a paged listing of keys (state keys or locks)."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed([
            click.option("--prefix", help="Only those whose key starts with this, spaces "
                                          "included ('' starts every key: all are listed)."),
            click.option("--limit", type=Whole(1, 1000), default=100,
                         show_default=True, help=f"{noun.capitalize()} per page."),
            click.option("--cursor", callback=_key_cursor,
                         help="Next page: the cursor printed under the previous one."),
            json_option,
            database_url_option,
        ]):
            command = option(command)
        return command

    return decorate


def _show_page(listing: Callable[..., list[dict[str, Any]]], prefix: str | None, limit: int,
               cursor: str | None, as_json: bool,
               as_entry: Callable[[dict[str, Any]], dict[str, Any]],
               table: Callable[[list[dict[str, Any]]], Any], none: str, no_more: str) -> None:
    """Print a page of ``listing`` (``state.keys`` or ``state.locks``): as JSON with
    each item made by ``as_entry`` and the next cursor, or as ``table`` with the
    command for the next page. The cursor is the last key of the page: the next
    page starts after it, and there is one when a live key follows it."""
    items = listing(prefix, limit, after=cursor)
    more = len(items) == limit and bool(listing(prefix, 1, after=items[-1]["key"]))
    next_cursor = items[-1]["key"] if more else None
    if as_json:
        echo_json({"items": [as_entry(item) for item in items], "next_cursor": next_cursor})
        return
    out = console()
    if not items:
        out.print(none if cursor is None else no_more)
        return
    out.print(table(items))
    if next_cursor is not None:
        say_next_page(out, next_cursor)


@state.command("list")
@_listing_options("keys")
def list_state(prefix: str | None, limit: int, cursor: str | None, as_json: bool,
               database_url: str | None) -> None:
    """Live keys in key order."""
    with open_client(database_url) as app:
        # Times as ISO-8601 in UTC, as in every other command's JSON.
        _show_page(app.state.keys, prefix, limit, cursor, as_json, _entry, state_table,
                   "No state keys match." if prefix else  # '' lists every key
                   "No state keys yet. Set one with: stackshift state set KEY VALUE_JSON",
                   "No more state keys.")


@state.command("locks")
@_listing_options("locks")
def list_locks(prefix: str | None, limit: int, cursor: str | None, as_json: bool,
               database_url: str | None) -> None:
    """Live locks in key order: who holds each, and until when."""
    with open_client(database_url) as app:
        _show_page(app.state.locks, prefix, limit, cursor, as_json,
                   lambda item: {**item, "expires_at": to_datetime(item["expires_at"])},
                   locks_table, "No locks are held.", "No more locks.")


@state.command()
@click.argument("key")
@json_option
@database_url_option
def unlock(key: str, as_json: bool, database_url: str | None) -> None:
    """Break the lock on KEY, whatever its owner (one that is stuck). Its owner's
    extend() then returns False and its block ends lost. Exit 3 when KEY held no
    live lock."""
    with open_client(database_url) as app:
        broken = app.state.break_lock(key)
    if not broken:
        raise not_found(f"no live lock on key {key!r}")
    if as_json:
        echo_json({"key": key, "broken": True})
        return
    console().print(f"Broke the lock on {key!r}.", markup=False)


def _entry(item: dict[str, Any]) -> dict[str, Any]:
    """A state entry as JSON: its times as ISO-8601 in UTC, as in every other command."""
    return {**item, "expires_at": to_datetime(item["expires_at"]),
            "updated_at": to_datetime(item["updated_at"])}
