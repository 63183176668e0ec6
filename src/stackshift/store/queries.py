"""Loads the named SQL blocks from ``sql/*.sql``.

A block starts with ``-- name: <name>``; comment lines right after it document
the query. The dialect's own file overrides the shared one query by query.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def _parse(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = "\n".join(
            line for line in text[match.end() : end].splitlines() if not line.startswith("--")
        ).strip()
        blocks[match.group(1)] = body.rstrip(";")
    return blocks


def load_queries(dialect: str, convert: Callable[[str], str] | None = None) -> dict[str, str]:
    """All named queries for ``dialect``, with placeholders passed through ``convert``."""
    folder = resources.files(__package__) / "sql"
    queries = _parse((folder / "queries.sql").read_text())
    queries.update(_parse((folder / f"{dialect}.sql").read_text()))
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
