"""The named SQL blocks: fragments are written into the queries that include them."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from stackshift.store import queries
from stackshift.store.queries import load_queries

HAS_SETTING = ("(paused <> 0 OR concurrency IS NOT NULL OR rate_count IS NOT NULL\n"
               " OR max_attempts IS NOT NULL)")


def _sql_text() -> str:
    return (resources.files("stackshift.store") / "sql" / "queries.sql").read_text()


def test_a_queue_has_a_setting_is_stated_once_for_the_lists_and_the_lookup() -> None:
    """The two queue lists and ``queue_known`` include one condition, so a new
    queue setting cannot be added to one of them and forgotten in another."""
    text = _sql_text()
    assert len(re.findall(r"max_attempts IS NOT NULL", text)) == 1
    for dialect in ("sqlite", "postgres"):
        loaded = load_queries(dialect)
        for name in ("all_queue_names", "list_queues", "queue_known"):
            assert HAS_SETTING in loaded[name], (dialect, name)
        assert not [name for name, sql in loaded.items() if "{{" in sql]


def test_a_query_including_an_unknown_fragment_is_refused_when_loaded() -> None:
    found, fragments = queries._parse(
        "-- fragment: known\n-- what it is\nx = 1\n\n"
        "-- name: good\nSELECT 1 WHERE {{known}};\n\n-- name: bad\nSELECT {{nope}};\n")
    assert fragments == {"known": "x = 1"}
    assert queries._include("good", found["good"], fragments) == "SELECT 1 WHERE x = 1"
    with pytest.raises(LookupError, match="query bad includes no fragment 'nope'"):
        queries._include("bad", found["bad"], fragments)
