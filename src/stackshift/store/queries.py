"""Loads the named SQL blocks from ``sql/*.sql``.

A block starts with ``-- name: <name>``; comment lines right after it document
the query. The dialect's own file overrides the shared one query by query.

A block that starts with ``-- fragment: <name>`` is a piece of SQL that queries
include as ``{{<name>}}``, for a condition several queries must state alike: it
is written into their text once, as they are loaded, so each query runs exactly
as if it were written out there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from importlib import resources

_BLOCK = re.compile(r"^--\s*(name|fragment):\s*(\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"\{\{(\w+)\}\}")


def _parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """The queries and the fragments of one file, by name."""
    blocks: dict[str, dict[str, str]] = {"name": {}, "fragment": {}}
    matches = list(_BLOCK.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = "\n".join(
            line for line in text[match.end() : end].splitlines() if not line.startswith("--")
        ).strip()
        blocks[match.group(1)][match.group(2)] = body.rstrip(";")
    return blocks["name"], blocks["fragment"]


def _include(name: str, sql: str, fragments: dict[str, str]) -> str:
    def fragment(found: re.Match[str]) -> str:
        if found[1] not in fragments:
            raise LookupError(f"query {name} includes no fragment {found[1]!r}")
        return fragments[found[1]]

    return _INCLUDE.sub(fragment, sql)


def load_queries(dialect: str, convert: Callable[[str], str] | None = None) -> dict[str, str]:
    """All named queries for ``dialect``, with their fragments included and
    placeholders passed through ``convert``."""
    folder = resources.files(__package__) / "sql"
    queries, fragments = _parse((folder / "queries.sql").read_text())
    own_queries, own_fragments = _parse((folder / f"{dialect}.sql").read_text())
    queries.update(own_queries)
    fragments.update(own_fragments)
    queries = {name: _include(name, sql, fragments) for name, sql in queries.items()}
    if convert is not None:
        queries = {name: convert(sql) for name, sql in queries.items()}
    return queries


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every migration file of ``dialect``, in order."""
    folder = resources.files(__package__) / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


@functools.cache
def latest_version(dialect: str) -> int:
    """The schema version this release's migrations of ``dialect`` bring a database to."""
    return len(load_migrations(dialect))
