"""``stackshift migrate``: bring the database schema up to date."""

from __future__ import annotations

import click

from ..client import StackShift
from ..store.queries import latest_version
from .options import database_only, database_only_option, json_option
from .render import console, echo_json, shown_url


@click.command()
@json_option
@database_only_option
def migrate(as_json: bool, database_url: str | None) -> None:
    """Apply pending migrations (forward only) and print the schema version."""
    app = StackShift(database_only(database_url), migrate=False)
    try:
        db = app._service.store.db
        before = db.schema_version()
        after = app.migrate()
        known = latest_version(db.dialect)
    finally:
        app.close()
    if after > known:
        # Nothing to apply, and nothing this code could check: the schema is
        # from a later release (there is no downgrade).
        raise click.ClickException(
            f"the database schema is at version {after}, newer than this StackShift knows"
            f" (version {known}): run `stackshift migrate` and the workers and servers with"
            " the release that made it")
    if as_json:
        echo_json({"database_url": shown_url(app.database_url), "version": after,
                   "previous_version": before})
        return
    if after == before:
        message = f"Schema is up to date at version {after}."
    else:
        message = f"Migrated the schema from version {before} to {after}."
    console().print(message, markup=False)
