"""Listing state keys (and locks) page by page, on every store.

``state.keys(prefix, limit, after=...)`` lists live keys in key order; the last
key of one page, passed as ``after``, gives the next page. Keys are ordered by
code point on every store (PostgreSQL's key column is collated "C", SQLite
compares UTF-8 bytes), so pages never skip or repeat a key.
"""

from __future__ import annotations

import contextlib

import pytest

from stackshift import StackShift, ValidationError
from stackshift.testing import FakeClock

KEYS = ["imports:1", "imports:10", "imports:2", "imports:é", "imports:\U0001f600",
        "imports:\uffff", "importsZ", "other:1"]


def all_pages(app: StackShift, prefix: str | None, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    after = None
    while True:
        page = [entry["key"] for entry in app.state.keys(prefix, limit, after=after)]
        if not page:
            return pages
        pages.append(page)
        after = page[-1]


def test_pages_follow_one_another_without_gaps_or_repeats(fake_app: StackShift) -> None:
    for i, key in enumerate(KEYS):
        fake_app.state.set(key, i)
    assert all_pages(fake_app, None, 3) == [
        ["imports:1", "imports:10", "imports:2"],
        ["imports:é", "imports:\uffff", "imports:\U0001f600"],
        ["importsZ", "other:1"],
    ]
    # The prefix holds on every page; a page ends where the prefix's keys do.
    assert all_pages(fake_app, "imports:", 2) == [
        ["imports:1", "imports:10"], ["imports:2", "imports:é"],
        ["imports:\uffff", "imports:\U0001f600"],
    ]


def test_after_need_not_be_a_live_key(fake_app: StackShift, clock: FakeClock) -> None:
    for key in ("a", "b", "c", "d"):
        fake_app.state.set(key, key, ttl="1m" if key == "c" else None)
    fake_app.state.delete("b")
    clock.advance(120)  # "c" has expired
    assert [e["key"] for e in fake_app.state.keys(after="b")] == ["d"]
    assert [e["key"] for e in fake_app.state.keys(after="a0")] == ["d"]
    assert fake_app.state.keys(after="d") == []


def test_a_key_after_that_no_store_can_hold_is_refused(fake_app: StackShift) -> None:
    fake_app.state.set("a", 1)
    with pytest.raises(ValidationError, match="after must not contain the NUL"):
        fake_app.state.keys(after="a\x00")
    with pytest.raises(ValidationError, match="after must be a string"):
        fake_app.state.keys(after=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("prefix", "listed"), [
    ("a%", ["a%", "a%b"]),
    ("a_", ["a_b"]),
    ("a\\", ["a\\b"]),
    ("ab", ["ab", "abc", "ab\U0010ffff", "ab\U0010ffffx", "ab\U0010ffff\U0010ffffx"]),
    ("ab\U0010ffff", ["ab\U0010ffff", "ab\U0010ffffx", "ab\U0010ffff\U0010ffffx"]),
    ("ab\U0010ffff\U0010ffff", ["ab\U0010ffff\U0010ffffx"]),
    ("\U0010ffff", ["\U0010ffff", "\U0010ffff\U0010ffff"]),
    ("\ud7ff", ["\ud7ff\ue000"]),
])
def test_a_prefix_is_matched_literally_to_its_last_character(
        fake_app: StackShift, prefix: str, listed: list[str]) -> None:
    """No character of a prefix is a pattern ('%', '_', '\\' are themselves), and
    keys that follow it with the last code point, U+10FFFF, are listed too."""
    for key in ["a%", "a%b", "a_b", "a\\b", "axb", "a", "ab", "abc", "ab\U0010ffff",
                "ab\U0010ffffx", "ab\U0010ffff\U0010ffffx", "ac", "\U0010ffff",
                "\U0010ffff\U0010ffff", "\ud7ff\ue000", "\ue000"]:
        fake_app.state.set(key, 1)
    assert [e["key"] for e in fake_app.state.keys(prefix)] == listed


def test_locks_are_paged_and_matched_by_prefix_as_keys_are(fake_app: StackShift) -> None:
    with contextlib.ExitStack() as held:
        for key in [*KEYS, "a%", "a%b", "a_b", "a\\b"]:
            held.enter_context(fake_app.state.lock(key, ttl="1m"))
        pages: list[list[str]] = []
        after = None
        while page := [e["key"] for e in fake_app.state.locks("imports:", 2, after=after)]:
            pages.append(page)
            after = page[-1]
        assert pages == [["imports:1", "imports:10"], ["imports:2", "imports:é"],
                         ["imports:\uffff", "imports:\U0001f600"]]
        assert [e["key"] for e in fake_app.state.locks("a%")] == ["a%", "a%b"]
        assert [e["key"] for e in fake_app.state.locks("a_")] == ["a_b"]
        assert [e["key"] for e in fake_app.state.locks("a\\")] == ["a\\b"]
