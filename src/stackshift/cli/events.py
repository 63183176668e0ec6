"""``stackshift events``: send events that resume waiting runs, list them, show one."""

from __future__ import annotations

import click

from .options import (
    Whole,
    database_url_option,
    hidden_alias,
    json_option,
    list_filter,
    open_client,
    parse_json_argument,
    say_next_page,
)
from .render import console, echo_json, event_detail, events_table


@click.group()
def events() -> None:
    """Send events, list stored ones and show one."""


@events.command()
@click.argument("name")
@click.argument("payload_json", required=False, metavar="[PAYLOAD_JSON]")
@click.option("--correlation-key", help="Resumes only runs waiting with this key.")
@click.option("--idempotency-key", help="A repeat while the key holds returns the first event;"
              " the key with another name, correlation key or payload is refused (exit 4)."
              " The key holds for the event_dedupe_window of the process that sent it"
              " first: 24h for this command on a database; through a server"
              " (STACKSHIFT_URL), the server's (--setting event_dedupe_window=...).")
@json_option
@database_url_option
def send(
    name: str,
    payload_json: str | None,
    correlation_key: str | None,
    idempotency_key: str | None,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Send event NAME with PAYLOAD_JSON ('-' reads it from stdin)."""
    payload = parse_json_argument(payload_json, "PAYLOAD_JSON")
    with open_client(database_url, creates=True) as app:
        sent = app.events.send(
            name, payload, correlation_key=correlation_key, idempotency_key=idempotency_key
        )
    if as_json:
        echo_json(sent)
        return
    out = console()
    resumed = sent.resumed_run_ids
    if sent.duplicate:
        out.print(f"Event {sent.id} was already sent with this idempotency key; "
                  "nothing was resumed again.")
        if resumed:
            out.print(f"Its first send resumed {len(resumed)} run(s): {', '.join(resumed)}")
        return
    if resumed:
        out.print(f"Sent event {sent.id}; resumed {len(resumed)} run(s): {', '.join(resumed)}")
    else:
        out.print(f"Sent event {sent.id}; no run was waiting for it (it is kept for later waits).")


@events.command("list")
@click.option("--name", callback=list_filter, help="Only events with this name.")
@click.option("--correlation-key", callback=list_filter,
              help="Only events with this correlation key.")
@click.option("--limit", type=Whole(), default=20, show_default=True,
              help="Events per page (1-1000).")
@click.option("--cursor", help="Next page: the cursor printed under the previous one.")
@json_option
@database_url_option
def list_events(
    name: str | None,
    correlation_key: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Stored events, newest first."""
    with open_client(database_url) as app:
        page = app.events.list(name=name, correlation_key=correlation_key, limit=limit,
                               cursor=cursor)
    if as_json:
        echo_json({"items": page.items, "next_cursor": page.next_cursor})
        return
    out = console()
    if not page.items:
        if cursor is not None:
            out.print("No more events.")
        elif (name, correlation_key) == (None, None):
            out.print("No events yet. Send one with: stackshift events send NAME '{...}'",
                      markup=False)
        else:
            out.print("No events match.")
        return
    out.print(events_table(page.items))
    if page.next_cursor:
        say_next_page(out, page.next_cursor)


@events.command("get")
@click.argument("event_id")
@json_option
@database_url_option
def get_event(event_id: str, as_json: bool, database_url: str | None) -> None:
    """Event EVENT_ID with its whole payload (exit 3 when no event has that id, or
    it is past its retention)."""
    with open_client(database_url) as app:
        event = app.events.get(event_id)
    if as_json:
        echo_json(event)
        return
    console().print(event_detail(event))


# `events show ID` as `runs show`, `queues show` and `schedules show` read one.
hidden_alias(events, get_event, "show")
