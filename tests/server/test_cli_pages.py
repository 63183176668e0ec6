"""The command a paged CLI list prints for its next page runs as printed, page
after page, whatever the keys and names it carries: on the database (SQLite and
PostgreSQL) and through a real server (``STACKSHIFT_URL``)."""

from __future__ import annotations

import json
import shlex
import subprocess

from serverproc import STACKSHIFT

from stackshift import NonRetriableError, StackShift
from stackshift.testing import run_until_idle


def _pages(env: dict[str, str], *args: str) -> list[list[str]]:
    """The first column of each page's rows, running ``stackshift ARGS`` and then
    each next-page command it prints (as a shell reads it) until there is none."""
    pages: list[list[str]] = []
    words = list(args)
    while True:
        # --json goes before any "--" that ends the options.
        end = words.index("--") if "--" in words else len(words)
        done = subprocess.run([*STACKSHIFT, *words[:end], "--json", *words[end:]],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, (words, done.stderr)
        listed = json.loads(done.stdout)
        shown = subprocess.run([*STACKSHIFT, *words], capture_output=True, text=True,
                               timeout=60, env=env)
        assert shown.returncode == 0, (words, shown.stderr)
        first = [item.get("key", item.get("id")) for item in listed["items"]]
        pages.append(first)
        hint = shown.stdout.splitlines()[-1]
        if listed["next_cursor"] is None:
            assert not hint.startswith("More:"), shown.stdout
            return pages
        assert hint.startswith("More: stackshift "), shown.stdout
        words = shlex.split(hint.removeprefix("More: stackshift "))
        assert words[words.index("--cursor") + 1] == listed["next_cursor"], hint


def test_pages_of_keys_that_end_on_a_blank_key_go_on(
        cli_env: dict[str, str], db_url: str) -> None:
    app = StackShift(db_url)
    try:
        for key in (" ", "  ", "a"):  # keys of spaces are keys; they sort first
            app.state.set(key, 1)
        assert _pages(cli_env, "state", "list", "--limit", "1") == [[" "], ["  "], ["a"]]
        with app.state.lock(" ", ttl="1m"), app.state.lock("  ", ttl="1m"), \
                app.state.lock("a", ttl="1m"):
            assert _pages(cli_env, "state", "locks", "--limit", "1") == [[" "], ["  "], ["a"]]
    finally:
        app.close()
    # An empty cursor is still refused: no page ends on an empty key.
    refused = subprocess.run([*STACKSHIFT, "state", "list", "--cursor", ""],
                             capture_output=True, text=True, timeout=60, env=cli_env)
    assert refused.returncode == 2 and "'--cursor': is empty" in refused.stderr


def test_the_dead_letters_of_a_queue_named_like_an_option_page_on(
        cli_env: dict[str, str], db_url: str) -> None:
    app = StackShift(db_url)
    try:
        @app.job("import", max_attempts=1)
        def fail(ctx: object) -> None:
            raise NonRetriableError("no")

        started = [app.start("import", queue_name="-retry").id for _ in range(3)]
        run_until_idle(app)
    finally:
        app.close()
    pages = _pages(cli_env, "queues", "dead-letters", "--limit", "1", "--", "-retry")
    assert pages == [[run_id] for run_id in reversed(started)]


def test_runs_logs_prints_a_log_longer_than_a_page_whole_and_in_order(
        cli_env: dict[str, str], db_url: str) -> None:
    """``runs logs`` reads a long log 10,000 records at a time: every record is
    printed once, in order, across the page boundary (and so is ``--json``)."""
    from stackshift.store.base import LogWrite
    from stackshift.store.execution import write_logs

    count = 10_050
    app = StackShift(db_url)
    try:
        app.job("quiet", lambda ctx: None)
        run = app.start("quiet")
        other = app.start("quiet")
        db = app._service.store.db
        with db.write() as tx:
            write_logs(tx, run.id, [LogWrite(1.0 + n / 1e4, "INFO", "app", f"line {n}", "s", 1)
                                    for n in range(count)])
            write_logs(tx, other.id, [LogWrite(1.0, "INFO", "app", "other run", "s", 1)])
    finally:
        app.close()
    shown = subprocess.run([*STACKSHIFT, "runs", "logs", run.id], capture_output=True,
                           text=True, timeout=120, env=cli_env)
    assert shown.returncode == 0, shown.stderr
    assert [line.rsplit(": ", 1)[-1] for line in shown.stdout.splitlines()] == [
        f"line {n}" for n in range(count)]
    listed = subprocess.run([*STACKSHIFT, "runs", "logs", run.id, "--json"],
                            capture_output=True, text=True, timeout=120, env=cli_env)
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [e["message"] for e in entries] == [f"line {n}" for n in range(count)]
    assert len({e["id"] for e in entries}) == count
