"""The ``stackshift`` command line, run as a real console script in subprocesses.

Every test works on a fresh database from the ``db_url`` fixture, so the same
commands are checked on SQLite and PostgreSQL. Runs that need executing are
driven in-process with ``run_until_idle`` (fast and deterministic), except in
the ``worker`` and ``dev`` tests, which run those commands as the user would.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from processes import interruptible
from stackshift import NonRetriableError, Settings, StackShift, TimelineEntry
from stackshift.cli.liveview import STATUS_OF, change_line
from stackshift.cli.render import when
from stackshift.testing import FakeClock, run_until_idle

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop.py"
_SCRIPT = Path(sys.executable).with_name("stackshift")
STACKSHIFT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "stackshift.cli.main"]


def _env(db_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    if db_url is not None:
        env["STACKSHIFT_DATABASE_URL"] = db_url
    return env


def cli(
    db_url: str | None, *args: str, stdin: str | None = None, columns: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``stackshift ARGS`` to completion with the database in the environment
    (and a terminal ``columns`` wide, if given)."""
    env = _env(db_url)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [*STACKSHIFT, *args], input=stdin, capture_output=True, text=True, timeout=60,
        env=env,
    )


def cli_json(db_url: str | None, *args: str, code: int = 0) -> Any:
    done = cli(db_url, *args, "--json")
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def run_ids(db_url: str, *filters: str) -> list[str]:
    page = cli_json(db_url, "runs", "list", "--limit", "1000", *filters)
    return [item["id"] for item in page["items"]]


# -- migrate, start, idempotency ---------------------------------------------------------


def test_migrate_prints_the_schema_version(db_url: str) -> None:
    first = cli_json(db_url, "migrate")
    assert first["previous_version"] == 0
    assert first["version"] >= 1
    again = cli(db_url, "migrate")
    assert again.returncode == 0, again.stderr
    assert f"up to date at version {first['version']}" in again.stdout


def test_migrate_refuses_a_schema_newer_than_it_knows(db_url: str, app: StackShift) -> None:
    """A database migrated by a later release: this one has nothing to apply and
    must not call it up to date."""
    version = app._service.schema_version()
    with app._service.store.db.write() as tx:
        tx.raw("INSERT INTO schema_migrations (version, name, applied_at)"
               f" VALUES ({version + 1}, 'later', 0) RETURNING version", {})
    done = cli(db_url, "migrate")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "up to date" not in done.stdout
    assert f"at version {version + 1}, newer than this StackShift knows" in done.stderr


def test_start_reports_one_run_per_idempotency_key_and_exit_4_on_conflict(
    db_url: str, app: StackShift
) -> None:
    plain = cli_json(db_url, "start", "syncInvoice", '{"invoiceId": "in_1"}', "--queue",
                     "billing", "--delay", "1h", "--priority", "7", "--max-attempts", "8")
    assert plain["created"] is True and plain["payload"] == {"invoiceId": "in_1"}
    assert (plain["queue"], plain["status"], plain["priority"], plain["max_attempts"]) == (
        "billing", "scheduled", 7, 8)

    keyed = ["start", "send-verification-email", '{"userId": "u1"}',
             "--idempotency-key", "verify:u1", "--idempotency-ttl", "30d"]
    first = cli_json(db_url, *keyed)
    second = cli(db_url, *keyed)
    assert second.returncode == 0, second.stderr
    assert (first["created"], first["status"]) == (True, "queued")
    assert f"{first['id']} already exists" in second.stdout
    third = cli_json(db_url, *keyed, "--database-url", db_url)
    assert (third["id"], third["created"]) == (first["id"], False)
    # --db, as dev takes it, is the same option on every command and on the group.
    fourth = cli_json(None, *keyed, "--db", db_url)
    assert (fourth["id"], fourth["created"]) == (first["id"], False)
    listed = cli_json(None, "--db", db_url, "runs", "list", "--idempotency-key", "verify:u1")
    assert [run["id"] for run in listed["items"]] == [first["id"]]

    conflict = cli(db_url, "start", "send-verification-email", '{"userId": "u2"}',
                   "--idempotency-key", "verify:u1")
    assert conflict.returncode == 4
    assert first["id"] in conflict.stderr and "Traceback" not in conflict.stderr
    assert len(app.runs.list().items) == 2

    at = cli(None, "--database-url", db_url, "start", "syncInvoice", "-",
             "--scheduled-at", "2031-05-06T09:00:00Z", stdin='{"from": "stdin"}')
    assert at.returncode == 0 and "scheduled" in at.stdout, at.stderr
    newest = app.runs.list(limit=1).items[0]
    assert newest.payload == {"from": "stdin"}
    assert newest.scheduled_at is not None and newest.scheduled_at.year == 2031


def test_start_uses_the_queue_and_attempts_the_jobs_workers_recorded(
    db_url: str, app: StackShift
) -> None:
    # Without the job's code, and before any worker of it has started: the defaults.
    before = cli_json(db_url, "start", "sendReceipt", "{}")
    assert (before["queue"], before["max_attempts"]) == ("default", 3)

    @app.job("sendReceipt", queue="emails", max_attempts=5)
    def send_receipt(ctx: Any) -> None:
        return None

    with app.worker(concurrency=1):  # a worker records its jobs when it starts
        pass
    started = cli_json(db_url, "start", "sendReceipt", "{}")
    assert (started["queue"], started["max_attempts"]) == ("emails", 5)
    chosen = cli_json(db_url, "start", "sendReceipt", "{}", "--queue", "other",
                      "--max-attempts", "2")
    assert (chosen["queue"], chosen["max_attempts"]) == ("other", 2)
    other = cli_json(db_url, "start", "neverServed", "{}")
    assert (other["queue"], other["max_attempts"]) == ("default", 3)


def test_start_uses_the_default_queue_of_the_settings_of_the_jobs_workers(
    db_url: str, tmp_path: Path
) -> None:
    # A job that names no queue runs on its workers' default queue: started from
    # the command line, which has not the app's Settings, it went to "default",
    # where none of them looked, and waited there for good.
    with StackShift(db_url, settings=Settings(default_queue="other")) as app:
        app.job("big", lambda ctx: "done")
        with app.worker(queues=["other"]):
            started = cli_json(db_url, "start", "big", "{}")
            assert started["queue"] == "other"
            assert app.runs.wait(started["id"], timeout="20s").result == "done"


def test_start_payloads_starts_a_run_per_line_with_keys_from_their_fields(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    orders = tmp_path / "orders.jsonl"
    orders.write_text('{"order_id": "o-1", "total": 12.5}\n\n{"order_id": 2}\n'
                      '{"order_id": "o-3", "shop": "north"}\n', encoding="utf-8")
    options = ["--idempotency-key", "import:{order_id}", "--concurrency-key", "shop-{order_id}",
               "--priority", "3", "--queue", "imports"]
    runs = cli_json(db_url, "start", "importOrder", "--payloads", str(orders), *options)
    assert [run["payload"] for run in runs] == [
        {"order_id": "o-1", "total": 12.5}, {"order_id": 2},
        {"order_id": "o-3", "shop": "north"}]
    assert [(run["idempotency_key"], run["concurrency_key"]) for run in runs] == [
        ("import:o-1", "shop-o-1"), ("import:2", "shop-2"), ("import:o-3", "shop-o-3")]
    assert {(run["created"], run["queue"], run["priority"], run["status"]) for run in runs} == {
        (True, "imports", 3, "queued")}

    # Again, with one new line read from stdin: the keys name the runs already started.
    again = cli(db_url, "start", "importOrder", "--payloads", "-", *options,
                stdin=orders.read_text(encoding="utf-8") + '{"order_id": "o-4"}\n')
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "Started 1 run of job importOrder on queue imports (1 queued).",
        "3 lines named runs that already existed for their idempotency keys; nothing new was"
        " started for them."]
    assert again.stderr == ("warning: no worker has registered job 'importOrder'; the runs wait"
                            " queued until one does\n")
    assert len(app.runs.list().items) == 4

    # An idempotency key the same on every line would name one run: refused.
    same = refused(db_url, ["start", "importOrder", "--payloads", str(orders),
                            "--idempotency-key", "nightly"])
    assert "--idempotency-key 'nightly' would give every line of --payloads the same key" in same
    assert "--idempotency-key 'nightly:{id}'" in same
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    none = cli(db_url, "start", "importOrder", "--payloads", str(empty))
    assert (none.returncode, none.stdout) == (0, f"No runs started: {empty} has no payloads.\n")
    assert cli_json(db_url, "start", "importOrder", "--payloads", str(empty)) == []
    assert len(app.runs.list().items) == 4


def test_start_payloads_starts_a_thousand_lines_a_transaction_and_says_how_far_it_got(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    taken = app.start("importOrder", {"order_id": 1001, "note": "by hand"},
                      idempotency_key="import:1001")
    lines = tmp_path / "lines.jsonl"
    lines.write_text("".join(json.dumps({"order_id": n}) + "\n" for n in range(1, 1202)),
                     encoding="utf-8")
    done = cli(db_url, "start", "importOrder", "--payloads", str(lines),
               "--idempotency-key", "import:{order_id}")
    # Line 1,001's key names a run of another payload: its batch is refused whole.
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert ("note: the runs of lines 1 to 1000 were started; none from line 1001 on (starting"
            " again with the same idempotency keys starts only the rest)") in done.stderr
    assert taken.id in done.stderr and "Traceback" not in done.stderr
    keys = {run.idempotency_key for run in every_run(app)}
    assert len(keys) == 1001 and "import:1000" in keys and "import:1002" not in keys

    # Without that line, the rest start and the first thousand are found again.
    kept = [line for line in lines.read_text(encoding="utf-8").splitlines()
            if json.loads(line)["order_id"] != 1001]
    lines.write_text("\n".join(kept) + "\n", encoding="utf-8")
    runs = cli_json(db_url, "start", "importOrder", "--payloads", str(lines),
                    "--idempotency-key", "import:{order_id}")
    assert [run["payload"]["order_id"] for run in runs] == [
        n for n in range(1, 1202) if n != 1001]
    assert [run["created"] for run in runs] == [False] * 1000 + [True] * 200
    assert len(every_run(app)) == 1201


def test_start_payloads_refused_part_of_the_way_exits_1_naming_the_line(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """Exit 2 says nothing was written: a refusal found in a later batch, with the
    batches before it started, fails the command part of the way instead."""
    lines = tmp_path / "lines.jsonl"
    lines.write_text("".join(json.dumps({"order_id": "x" * 600 if n == 1050 else n}) + "\n"
                             for n in range(1, 1101)), encoding="utf-8")
    done = cli(db_url, "start", "importOrder", "--payloads", str(lines),
               "--idempotency-key", "import:{order_id}")
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (
        "note: the runs of lines 1 to 1000 were started; none from line 1001 on (starting"
        " again with the same idempotency keys starts only the rest)\n"
        "error: the --idempotency-key of line 1050 is 607 characters, over the limit of 512\n")
    assert sorted(run.payload["order_id"] for run in every_run(app)) == list(range(1, 1001))


def test_start_payloads_refuses_a_line_too_large_before_starting_any(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """A payload over the size limit on line 1,001 is refused (exit 2) before the
    first thousand start: exit 2 says nothing was written, and a new SQLite file
    the command made is removed again with nothing in it."""
    lines = tmp_path / "lines.jsonl"
    lines.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(1000))
                     + json.dumps({"x": "p" * (1 << 20)}) + "\n", encoding="utf-8")
    refused = cli(db_url, "start", "importOrder", "--payloads", str(lines))
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert ("the payload of line 1001 is 1048584 bytes as JSON, over the limit of 1048576"
            " bytes") in refused.stderr
    assert "were started" not in refused.stderr
    assert app.runs.list(job="importOrder").items == []
    if db_url.startswith("sqlite"):
        fresh = tmp_path / "fresh.db"
        refused = cli(f"sqlite:///{fresh}", "start", "importOrder", "--payloads", str(lines))
        assert refused.returncode == 2 and not fresh.exists()


def every_run(app: StackShift) -> list[Any]:
    page = app.runs.list(limit=1000)
    runs = list(page.items)
    while page.next_cursor:
        page = app.runs.list(limit=1000, cursor=page.next_cursor)
        runs += page.items
    return runs


def test_start_payloads_wait_reports_how_the_runs_ended(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    @app.job("tally", max_attempts=1)
    def tally(ctx: Any) -> int:
        if ctx.payload.get("fail"):
            raise NonRetriableError(f"row {ctx.payload['n']} is broken")
        return int(ctx.payload["n"]) * 2

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"n": 1}\n{"n": 2, "fail": true}\n{"n": 3}\n', encoding="utf-8")
    # No worker yet: the time given runs out with the runs queued.
    late = cli(db_url, "start", "tally", "--payloads", str(rows), "--idempotency-key",
               "tally:{n}", "--wait", "--timeout", "0.5")
    assert late.returncode == 1, (late.stdout, late.stderr)
    assert late.stdout.startswith("Started 3 runs of job tally on queue default (3 queued).")
    first = app.runs.list(idempotency_key="tally:1").items[0]
    assert (f"error: 3 of the 3 runs had not ended after 0.5s (run {first.id} is still queued)"
            in late.stderr)
    # With --json, the runs as they stand: a script keeps their ids.
    late = cli(db_url, "start", "tally", "--payloads", str(rows), "--idempotency-key",
               "tally:{n}", "--wait", "--timeout", "0.3", "--json")
    assert late.returncode == 1 and "error: 3 of the 3 runs had not ended" in late.stderr
    assert [(r["id"], r["status"], r["created"]) for r in json.loads(late.stdout)] == [
        (app.runs.list(idempotency_key=f"tally:{n}").items[0].id, "queued", False)
        for n in (1, 2, 3)]
    one = cli(db_url, "start", "tally", '{"n": 4}', "--wait", "--timeout", "0.2", "--json")
    assert one.returncode == 1 and "is still queued after 0.2s" in one.stderr
    assert json.loads(one.stdout)["status"] == "queued" and json.loads(one.stdout)["created"]

    with app.worker(concurrency=2):
        done = cli(db_url, "start", "tally", "--payloads", str(rows), "--idempotency-key",
                   "tally:{n}", "--wait")
        assert done.returncode == 1, (done.stdout, done.stderr)
        shown = done.stdout.splitlines()
        assert shown[:2] == [
            "Started 0 runs of job tally on queue default.",
            "3 lines named runs that already existed for their idempotency keys; nothing new"
            " was started for them."]
        failed = app.runs.list(status="failed").items
        assert len(failed) == 1
        # Started before a worker registered the job: the default of 3 attempts.
        assert shown[2:] == ["Waited for 3 runs: 2 completed, 1 failed.",
                             f"Run {failed[0].id} failed on attempt 1 of 3: NonRetriableError: "
                             "row 2 is broken"]

        rows.write_text('{"n": 4}\n{"n": 5}\n', encoding="utf-8")
        ended = cli_json(db_url, "start", "tally", "--payloads", str(rows), "--wait")
    assert [(run["status"], run["result"], run["created"]) for run in ended] == [
        ("completed", 8, True), ("completed", 10, True)]


def test_start_payloads_refuses_a_bad_line_or_template_and_starts_nothing(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a"}\n{"id": 7}\n', encoding="utf-8")

    def lines(name: str, text: str | bytes) -> str:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return str(path)

    cases = [
        (["--payloads", lines("a.jsonl", '{"id": 1}\nhello\n')],
         'a.jsonl line 2 is not valid JSON (Expecting value: line 1 column 1 (char 0)): '
         "'hello'; a string is written in double quotes, e.g. \"hello\""),
        (["--payloads", lines("b.jsonl", '{"id": 1, "id": 2}\n')],
         "b.jsonl line 1: duplicate key 'id' in one object"),
        (["--payloads", lines("c.jsonl", b'{"id": "\xff"}\n')], "c.jsonl is not UTF-8 text"),
        (["--payloads", str(tmp_path / "missing.jsonl")], "No such file or directory"),
        (["{}", "--payloads", str(good)], "give PAYLOAD_JSON or --payloads, not both"),
        (["--payloads", str(good), "--idempotency-key", "k:{"], "Single '{' encountered"),
        (["--payloads", str(good), "--idempotency-key", "k:{id!r}"],
         "name a payload field in braces"),
        (["--payloads", str(good), "--concurrency-key", "{user.id}"],
         "name a payload field in braces"),
        (["--payloads", lines("d.jsonl", '{"id": 1}\n\n{"name": "x"}\n'),
          "--idempotency-key", "k:{id}"],
         "line 3: --idempotency-key 'k:{id}' needs field 'id', which the payload does not have"),
        (["--payloads", lines("e.jsonl", '{"id": 1.5}\n'), "--concurrency-key", "{id}"],
         "line 1: --concurrency-key '{id}' needs field 'id' to be text or an integer, not 1.5"),
        (["--payloads", lines("f.jsonl", '[1, 2]\n'), "--idempotency-key", "k:{id}"],
         "needs field 'id' of the payload, which is not an object but [1, 2]"),
        (["--payloads", lines("g.jsonl", '{"id": 1}\n1e999\n')], "inf is not JSON"),
        (["--payloads", str(good), "--queue", ""], "queue name '' is invalid"),
        # A file with no payloads starts nothing; its options are checked all the same.
        (["--payloads", lines("i.jsonl", "\n"), "--scheduled-at", "soon"],
         "--scheduled-at: 'soon' is not an ISO-8601 time"),
        # What start_many refuses names the line, not the item of its batch.
        (["--payloads", lines("h.jsonl", '{"id": "a"}\n\n{"id": "' + "x" * 600 + '"}\n'),
          "--idempotency-key", "k:{id}"],
         "the --idempotency-key of line 3 is 602 characters, over the limit of 512"),
    ]
    for args, message in cases:
        stderr = refused(db_url, ["start", "importOrder", *args])
        assert message in stderr, (args, stderr)
        assert "Traceback" not in stderr, (args, stderr)
    assert app.runs.list().items == []
    # A brace doubled is a brace.
    runs = cli_json(db_url, "start", "importOrder", "--payloads", str(good),
                    "--idempotency-key", "{{k}}:{id}")
    assert [run["idempotency_key"] for run in runs] == ["{k}:a", "{k}:7"]


BAD_INPUT = [
    (["start", "job", "{not json"], "PAYLOAD_JSON is not valid JSON"),
    (["start", "job", "[1, NaN]", "--max-attempts", "0"], "NaN is not allowed"),
    (["start", "job", "--delay", "soon"], "--delay"),
    (["start", "job", "--scheduled-at", "2030-01-01T09:00:00"], "time zone"),
    (["start", "bad name!"], "job name"),
    (["start", "job", "--timeout", "5s"], "--timeout only applies with --wait"),
    (["runs", "list", "--status", "finished"], "unknown status 'finished'"),
    (["events", "send", "email verified"], "event name"),
    (["state", "set", "greeting", "hello"], "VALUE_JSON is not valid JSON"),
    (["runs", "list", "--database-url", "mysql://db/x"], "unsupported database URL"),
    (["start", "job", "1e999"], "inf is not JSON (NaN and infinity are refused; a number"
                                " beyond ±1.8e308 reads as infinity)"),
    (["start", "job", "9" * 4301],
     "PAYLOAD_JSON: an integer of more than 4,300 digits cannot be written as JSON"),
    (["state", "set", "big", "[" + "9" * 4301 + "]"],
     "VALUE_JSON: an integer of more than 4,300 digits cannot be written as JSON"),
    (["start", "job", "[" * 150 + "]" * 150], "nested more than 100 levels deep"),
    (["start", "job", "[" * 50_000 + "]" * 50_000], "nested too deeply"),
    (["start", "job", "--queue", ""], "queue name '' is invalid"),
    (["--database-url", "", "runs", "list"], "'--database-url': is empty"),
    (["runs", "list", "--database-url", " "], "'--database-url'"),
    (["events", "send", "ev", '{"n": 1e999}'], "inf is not JSON"),
    (["state", "set", "greeting", "1e999"], "inf is not JSON"),
    (["state", "set", "greeting", '{"to": "ann", "to": "bob"}'],
     "VALUE_JSON: duplicate key 'to' in one object (readers disagree on which value it means)"),
    (["start", "job", '[{"n": 1}, {"a": {"n": 1, "n": 2}}]'],
     "PAYLOAD_JSON: duplicate key 'n' in one object"),
    (["events", "send", "ev", '{"n": 1, "n": 1}'], "PAYLOAD_JSON: duplicate key 'n'"),
    (["state", "list", "--cursor", ""], "'--cursor': is empty"),
]


def refused(db_url: str | None, args: list[str]) -> str:
    """Run the CLI with ``args``, which it must refuse as bad input (exit 2, nothing
    on stdout); its stderr."""
    done = cli(db_url, *args)
    assert done.returncode == 2, (args, done.returncode, done.stdout, done.stderr)
    assert done.stdout == "", (args, done.stdout)
    return done.stderr


def test_bad_input_exits_2_with_a_message_and_writes_nothing(
    db_url: str, app: StackShift
) -> None:
    for args, message in BAD_INPUT:
        stderr = refused(db_url, args)
        assert message in stderr, (args, stderr)
        assert "Traceback" not in stderr, (args, stderr)
    assert app.runs.list().items == []
    assert app.events.list().items == []
    assert app.state.get("greeting") is None


def test_settings_of_the_app_are_given_to_commands_on_its_database(
    db_url: str, app: StackShift
) -> None:
    """An app that raised a limit with Settings() stores values the commands on its
    database refused at the default, with nothing to raise it by there."""
    big = json.dumps("x" * 300_000)
    done = cli(db_url, "state", "set", "big", "-", stdin=big)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "error: state value for 'big' is 300002 bytes as JSON, over the limit of 262144 bytes;"
        " raise the limit with stackshift --setting max_state_value_bytes=...\n")
    assert app.state.get("big") is None
    done = cli(db_url, "--setting", "max_state_value_bytes=1048576", "state", "set", "big", "-",
               stdin=big)
    assert done.returncode == 0, done.stderr
    assert app.state.get("big") == "x" * 300_000
    # Checked before anything is opened; and refused where the app or a server holds them.
    for args, message in [
        (["--setting", "max_state_value_bytes=lots", "state", "list"],
         "error: --setting: Settings.max_state_value_bytes: expected a whole number, got 'lots'"),
        (["--setting", "max_payload_bytes=10", "worker", "app.py"],
         "error: --setting before worker: the app's own Settings(...) hold for its workers;"
         " give them in the app"),
        (["--setting", "max_payload_bytes=10", "server"],
         "error: --setting before server: a server takes its settings after it (stackshift"
         " server --setting NAME=VALUE)"),
    ]:
        assert refused(db_url, args) == message + "\n"


def test_a_server_out_of_reach_is_named_in_the_failure() -> None:
    """``STACKSHIFT_URL`` naming a port nobody listens on: exit 1, and the message
    says which server did not answer, without a traceback."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**_env(None), "STACKSHIFT_URL": f"http://127.0.0.1:{port}",
           "STACKSHIFT_API_KEY": "ssk_unused"}
    done = subprocess.run([*STACKSHIFT, "runs", "list"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith(
        f"error: the server at http://127.0.0.1:{port} did not answer: ConnectError"), done.stderr
    assert "Traceback" not in done.stderr


def test_a_bare_word_where_json_goes_is_refused_with_the_quoting_that_works(
    db_url: str, app: StackShift
) -> None:
    """``state set greeting hello``: the message shows how to write the string, and
    what it shows, typed as shown, sets it."""
    stderr = refused(db_url, ["state", "set", "greeting", "hello there"])
    assert stderr.rstrip().endswith(
        """; a string is written in double quotes, e.g. '"hello there"'"""), stderr
    suggested = shlex.split(stderr.rstrip().rpartition("e.g. ")[2])
    assert cli(db_url, "state", "set", "greeting", *suggested).returncode == 0
    assert app.state.get("greeting") == "hello there"
    for args in (["start", "job", "order_1"], ["events", "send", "ev", "ann@example.com"]):
        assert "a string is written in double quotes" in refused(db_url, args), args
    # Not for what was meant as an object, an array or a number: quoting is not the fix.
    for text in ("{orderId: 1}", "[1,", "1.2.3", "'hello'", "x" * 61):
        assert "double quotes, e.g." not in refused(db_url, ["start", "job", text]), text
    assert app.runs.list().items == [] and app.events.list().items == []


#: Input the SDK refuses, with the message naming the option the user typed.
REFUSED_OPTIONS = [
    (["start", "job", "--scheduled-at", "soon"], "--scheduled-at: 'soon' is not an ISO-8601"),
    (["start", "job", "--delay", "1h", "--scheduled-at", "2030-01-01T09:00:00Z"],
     "give --scheduled-at or --delay, not both"),
    (["start", "job", "--idempotency-ttl", "1h"], "--idempotency-ttl needs an --idempotency-key"),
    (["start", "job", "--max-attempts", "0"], "--max-attempts must be an integer from 1"),
    (["start", "job", "--priority", str(2**40)], "--priority must be a 32-bit integer"),
    (["start", "job", "--concurrency-key", ""], "--concurrency-key must be a non-empty"),
    (["start", "job", "--concurrency-key", "k" * 600], "--concurrency-key is 600 characters"),
    (["runs", "list", "--limit", "0"], "--limit must be an integer from 1 to 1000"),
    (["events", "send", "ev", "--correlation-key", ""], "--correlation-key must be a non-empty"),
    (["events", "send", "ev", "--idempotency-key", ""], "--idempotency-key must be a non-empty"),
    (["state", "set", "greeting", "1", "--ttl", "0"], "--ttl must be more than 0"),
    # A number is quoted as it was typed, not as read (-5.0, inf).
    (["state", "set", "greeting", "1", "--ttl", "-5"],
     "--ttl: '-5' must be a finite, non-negative duration"),
    (["state", "set", "greeting", "1", "--ttl", "1e999"],
     "--ttl: '1e999' must be a finite, non-negative duration"),
    (["state", "set", "greeting", "1", "--ttl", "1e3"],
     "--ttl: seconds are written in digits (e.g. '60', '1.5'), got '1e3'"),
    (["state", "set", "greeting", "1", "--ttl", "-5"],
     "--ttl: '-5' must be a finite, non-negative duration"),
    (["state", "set", "greeting", "1", "--ttl", "4000000000"],
     "--ttl: '4000000000' is longer than 100 years"),
    (["start", "job", "--delay", "-1.50"],
     "--delay: '-1.50' must be a finite, non-negative duration"),
    (["start", "job", "--delay", "-5m"], "--delay: '-5m' must be a finite, non-negative duration"),
    (["schedules", "create", "job", "--cron", "@hourly", "--timezone", ""],
     "--timezone must be an IANA zone name"),
    (["queues", "set", "q", "--rate-limit", "fast"], "--rate-limit 'fast' is invalid"),
    (["queues", "set", "q", "--concurrency", "0"], "--concurrency must be an integer from 1"),
    (["queues", "set", "q", "--max-attempts", "0"], "--max-attempts must be an integer from 1"),
    (["queues", "--window", "0"], "--window: must be from 1s to 90d"),
    (["queues", "show", "q", "--window", "100d"], "--window: must be from 1s to 90d"),
]


def test_refused_input_is_named_by_the_option_the_user_typed(
    db_url: str, app: StackShift
) -> None:
    for args, message in REFUSED_OPTIONS:
        stderr = refused(db_url, args)
        assert stderr.startswith(f"error: {message}"), (args, stderr)
        # Not the SDK's parameter name (scheduled_at, limit) beside the option.
        for word in args:
            if word.startswith("--"):
                name = word[2:].replace("-", "_")
                assert not re.search(rf"(?<![\w-]){name}(?![\w-])", stderr), (args, stderr)
    assert app.runs.list().items == []
    assert app.events.list().items == []
    assert app.state.get("greeting") is None
    assert app.schedules.list() == []
    assert app.queues.list() == []


NAME_HINT = "is invalid: use 1-200 ASCII letters, digits, '.', '_', ':' or '-'"

#: Filters that name nothing any run or event can have, for each list that takes them.
EMPTY_FILTERS = [
    (["runs", "list", "--job", ""], f"job name '' {NAME_HINT}"),
    (["runs", "list", "--job", "  "], f"job name '  ' {NAME_HINT}"),
    (["runs", "list", "--queue", ""], f"queue name '' {NAME_HINT}"),
    (["runs", "list", "--queue", " "], f"queue name ' ' {NAME_HINT}"),
    (["runs", "list", "--idempotency-key", ""], "--idempotency-key must be a non-empty string"),
    (["runs", "list", "--correlation-key", ""], "--correlation-key must be a non-empty string"),
    (["queues", "dead-letters", "billing", "--job", ""], f"job name '' {NAME_HINT}"),
    (["queues", "dead-letters", "billing", "--job", " "], f"job name ' ' {NAME_HINT}"),
    (["queues", "retry", "billing", "--job", ""], f"job name '' {NAME_HINT}"),
    (["queues", "retry", "billing", "--job", "\t"], f"job name '\\t' {NAME_HINT}"),
    (["events", "list", "--name", ""], f"event name '' {NAME_HINT}"),
    (["events", "list", "--name", " "], f"event name ' ' {NAME_HINT}"),
    (["events", "list", "--correlation-key", ""], "--correlation-key must be a non-empty string"),
]


def test_an_empty_filter_is_refused_by_every_list_not_answered_with_nothing(
    db_url: str, app: StackShift
) -> None:
    """``runs list --job ''`` is refused as ``queues dead-letters --job ''`` is (exit 2),
    not answered "No runs match." while runs exist; nothing changes."""
    failed = app.start("charge", {"order": 1}, queue_name="billing")
    app.runs.cancel(failed.id)
    app.events.send("paid", {"order": 1}, correlation_key="order:1")
    for args, message in EMPTY_FILTERS:
        stderr = refused(db_url, args)
        assert stderr.startswith(f"error: {message}"), (args, stderr)
    assert app.runs.get(failed.id).status == "cancelled"  # the bulk retry retried nothing
    # The same filters with a real value still list.
    assert run_ids(db_url, "--job", "charge", "--queue", "billing") == [failed.id]
    assert len(cli_json(db_url, "events", "list", "--name", "paid")["items"]) == 1


def test_an_empty_filter_is_refused_before_the_database_is_opened(tmp_path: Path) -> None:
    """The SDK's check of the filter is made on the option: a mistyped filter does not
    create (and migrate) a database file that was not there."""
    database = tmp_path / "never.db"
    for args, message in EMPTY_FILTERS:
        stderr = refused(None, [*args, "--database-url", f"sqlite:///{database}"])
        assert stderr.startswith(f"error: {message}"), (args, stderr)
    assert not database.exists()


def test_a_command_that_creates_leaves_no_database_when_it_refuses_its_input(
        tmp_path: Path) -> None:
    """A command that may create the SQLite file (``start``, ``queues set``...) but
    refuses its input (exit 2, nothing written) leaves no file behind: a mistyped
    ``--db`` is still refused by the next read command, not taken for an empty
    installation. One that succeeds keeps it."""
    database = tmp_path / "typo.db"
    url = f"sqlite:///{database}"
    for args, message in [
        (["start", ""], "job name '' "),
        (["queues", "set", "x", "--concurrency", "0"], "--concurrency must be"),
        (["queues", "pause", ""], "queue name '' "),
        (["schedules", "create", "report", "--cron", "bad"], "invalid cron expression"),
        (["events", "send", "", "{}"], "event name '' "),
        (["state", "set", "", "1"], "state key"),
        (["keys", "create", "--name", ""], "key name must not be blank"),
    ]:
        stderr = refused(None, [*args, "--database-url", url])
        assert stderr.startswith("error: ") and message in stderr, (args, stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == [], args
    assert "error: no database at" in refused(None, ["runs", "list", "--database-url", url])
    started = cli(None, "start", "report", "--database-url", url)
    assert started.returncode == 0, started.stderr
    assert database.exists()


def test_state_list_takes_a_prefix_exactly_as_given(db_url: str, app: StackShift) -> None:
    """A prefix is not a name: '' starts every key (all are listed) and spaces are
    part of it, so "my key " lists "my key 1" and not "my keyring"."""
    for key in ("my key 1", "my keyring", " padded", "other"):
        app.state.set(key, 1)

    def keys(prefix: str) -> list[str]:
        page = cli_json(db_url, "state", "list", "--prefix", prefix)
        return [item["key"] for item in page["items"]]

    assert keys("") == [" padded", "my key 1", "my keyring", "other"]
    assert keys("my key ") == ["my key 1"]
    assert keys(" ") == [" padded"]


def test_an_empty_queues_list_is_refused_not_read_as_every_queue(db_url: str) -> None:
    """``worker --queues "$QUEUES"`` with the variable unset must not serve every queue."""
    for value in ("", " , "):
        done = cli(db_url, "worker", str(SHOP), "--queues", value)
        assert done.returncode == 2, (value, done.stdout, done.stderr)
        assert done.stderr.startswith(f"error: --queues names no queue, got {value!r}"), (
            value, done.stderr)


def test_a_blank_cancel_reason_is_refused_and_the_run_stays_as_it_was(
    db_url: str, app: StackShift
) -> None:
    run = app.start("report", delay="1h")
    for reason in ("", "   "):
        stderr = refused(db_url, ["runs", "cancel", run.id, "--reason", reason])
        assert stderr == (f"error: --reason must not be blank, got {reason!r}: "
                          "leave it out for no reason\n"), stderr
    assert app.runs.get(run.id).status == "scheduled"
    assert [e.kind for e in app.runs.timeline(run.id)] == ["run.scheduled"]
    cancelled = cli_json(db_url, "runs", "cancel", run.id, "--reason", "duplicate order")
    assert cancelled["error"]["message"] == "duplicate order"


def test_runs_show_and_list_tell_a_running_run_asked_to_cancel(
    db_url: str, app: StackShift
) -> None:
    run = app.start("report")
    [claimed] = app._service.store.claim_runs("busy-worker", ["report"], 1, 60, time.time())
    requested = cli(db_url, "runs", "cancel", run.id)
    assert requested.returncode == 0 and "Cancel requested" in requested.stdout
    shown = cli(db_url, "runs", "show", run.id, columns=200)
    assert shown.returncode == 0, shown.stderr
    assert "running (cancel requested: stops at its next step boundary)" in shown.stdout
    assert cli_json(db_url, "runs", "show", run.id)["cancel_requested"] is True
    listed = cli(db_url, "runs", "list", columns=200)
    assert "cancel requested: stops at its next step boundary" in listed.stdout
    assert app._service.store.release_run(claimed.lease, time.time())
    shown = cli(db_url, "runs", "show", run.id, columns=200)
    assert "cancel requested" not in shown.stdout
    assert cli_json(db_url, "runs", "show", run.id)["cancel_requested"] is False


def test_unknown_ids_and_keys_exit_3(db_url: str) -> None:
    assert cli(db_url, "migrate").returncode == 0
    for args in (["runs", "show", "run_missing"], ["runs", "cancel", "run_missing"],
                 ["runs", "wait", "run_missing"], ["runs", "logs", "run_missing", "--follow"]):
        done = cli(db_url, *args)
        assert done.returncode == 3, (args, done.returncode, done.stderr)
        assert "no run with id 'run_missing'" in done.stderr
    done = cli(db_url, "state", "get", "nothing")
    assert done.returncode == 3 and "no state value for key 'nothing'" in done.stderr


# -- runs: list, show, logs, timeline, retry, cancel, wait -------------------------------------


def _charge_job(app: StackShift) -> None:
    """``charge``: a step that counts its executions, then fails while a flag is set."""

    def reserve(amount: int) -> dict[str, int]:
        app.state.increment("charge:reserve-calls")
        return {"reserved": amount}

    @app.job("charge", max_attempts=1)
    def charge(ctx: Any) -> dict[str, Any]:
        reserved = ctx.step.run("reserve-funds", reserve, ctx.payload["amount"])
        ctx.log.info("reserved %s for the charge", reserved["reserved"])
        if app.state.get("charge:declined"):
            raise NonRetriableError("card declined")
        return {"charged": reserved["reserved"]}


def test_runs_show_logs_timeline_retry_and_wait_follow_a_failed_run(
    db_url: str, app: StackShift
) -> None:
    _charge_job(app)
    app.state.set("charge:declined", True)
    run_id = app.start("charge", {"amount": 5}).id
    run_until_idle(app)

    shown = cli(db_url, "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    for text in ("failed", "NonRetriableError: card declined", "Traceback (most recent call",
                 "reserve-funds", '"amount": 5', "attempts"):
        assert text in shown.stdout, text
    detail = cli_json(db_url, "runs", "show", run_id)
    assert detail["status"] == "failed"
    assert detail["error"]["type"] == "NonRetriableError"
    assert "card declined" in detail["error"]["traceback"]
    assert [a["status"] for a in detail["attempts"]] == ["failed"]
    assert [(s["key"], s["status"]) for s in detail["steps"]] == [("reserve-funds", "completed")]

    logs = cli(db_url, "runs", "logs", run_id)
    assert logs.returncode == 0 and "reserved 5 for the charge" in logs.stdout
    assert "[attempt 1] stackshift.run: reserved 5" in logs.stdout

    timeline = cli(db_url, "runs", "timeline", run_id)
    assert timeline.returncode == 0, timeline.stderr
    for text in ("+0.000s", "run.queued", "attempt.started", "step.completed", "reserve-funds",
                 "attempt.failed", "NonRetriableError: card declined", "run.failed"):
        assert text in timeline.stdout, text
    entries = cli_json(db_url, "runs", "timeline", run_id)
    offsets = [e["offset_seconds"] for e in entries]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    assert [e["kind"] for e in entries][-1] == "run.failed"

    waited = cli(db_url, "runs", "wait", run_id, "--timeout", "5")
    assert waited.returncode == 1 and "failed" in waited.stdout

    app.state.delete("charge:declined")
    retried = cli_json(db_url, "runs", "retry", run_id)
    assert retried["status"] == "queued"
    run_until_idle(app)
    final = cli_json(db_url, "runs", "wait", run_id, "--timeout", "10s")
    assert (final["status"], final["result"]) == ("completed", {"charged": 5})
    # The retry reused the completed step instead of reserving funds twice.
    assert app.state.get("charge:reserve-calls") == 1

    again = cli(db_url, "runs", "retry", run_id)
    assert again.returncode == 1 and "only failed or cancelled runs" in again.stderr
    cancel = cli(db_url, "runs", "cancel", run_id)
    assert cancel.returncode == 1 and "cannot be cancelled" in cancel.stderr

    # A completed run can be started again: a new run, with its payload.
    fresh = cli_json(db_url, "runs", "again", run_id)
    assert fresh["id"] != run_id
    assert (fresh["job"], fresh["payload"], fresh["status"]) == ("charge", {"amount": 5},
                                                                 "queued")
    told = cli(db_url, "runs", "again", run_id)
    assert told.returncode == 0, told.stderr
    [newer] = [r for r in app.runs.list(job="charge").items if r.id not in (run_id, fresh["id"])]
    assert told.stdout.splitlines()[:2] == [
        f"Started run {newer.id} · job charge · queue default · queued",
        f"It has the payload and options of run {run_id}."]
    entries = cli_json(db_url, "runs", "timeline", run_id)
    assert [e["data"] for e in entries if e["kind"] == "run.started_again"] == [
        {"new_run_id": fresh["id"]}, {"new_run_id": newer.id}]
    # `runs show` names the runs each way: from the original, the latest first.
    shown = cli_json(db_url, "runs", "show", run_id)
    assert (shown["again_of"], shown["started_again"]) == (None, [fresh["id"], newer.id])
    assert (cli_json(db_url, "runs", "show", newer.id)["again_of"],
            cli_json(db_url, "runs", "show", newer.id)["started_again"]) == (run_id, [])
    lines = cli(db_url, "runs", "show", run_id).stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("started again as"))
    assert [line.split()[-1] for line in lines[at:at + 2]] == [newer.id, fresh["id"]]
    assert f"started again from  {run_id}" in cli(db_url, "runs", "show", fresh["id"]).stdout
    # An unknown run, and --timeout without --wait: refused, nothing started.
    unknown = cli(db_url, "runs", "again", "run_00000000000000000000000000")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        3, "error: no run with id 'run_00000000000000000000000000'")
    refused = cli(db_url, "runs", "again", run_id, "--timeout", "5s")
    assert (refused.returncode, refused.stderr.strip()) == (
        2, "error: --timeout only applies with --wait")
    assert len(app.runs.list(job="charge").items) == 3


@contextmanager
def following(db_url: str, run_id: str,
              *args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``stackshift runs logs RUN_ID --follow ARGS`` running for the block, with the
    lines it prints as they come."""
    lines: list[str] = []
    with subprocess.Popen([*STACKSHIFT, "runs", "logs", run_id, "--follow", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=_env(db_url)) as follow:
        assert follow.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(follow.stdout), daemon=True)
        reader.start()
        try:
            yield follow, lines
        finally:
            follow.kill()
            reader.join(10)


def piped(db_url: str, command: str, into: str) -> subprocess.CompletedProcess[str]:
    """``stackshift COMMAND | INTO`` under ``set -o pipefail``: the pipeline's exit
    code is stackshift's unless ``INTO`` fails."""
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {shlex.join(STACKSHIFT)} {command} | {into}"],
        capture_output=True, text=True, timeout=60, env=_env(db_url))


def test_a_reader_that_goes_away_or_a_closed_stdout_changes_no_exit_code(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """`| head -1` on a list longer than the pipe holds exits 0 as on a short one,
    in text and JSON; with stdout closed (``>&-``) a command still does its work
    and exits with its own code."""
    app.start_many("importOrder", [{"n": n, "pad": "x" * 200} for n in range(1000)])
    for command in ("runs list --limit 1000", "runs list --limit 1000 --json"):
        done = piped(db_url, command, "head -1")
        assert (done.returncode, done.stderr) == (0, ""), (command, done.stderr)
        assert len(done.stdout.splitlines()) == 1
    shell = shlex.join(STACKSHIFT)
    for command, code in (("runs list", 0), ("runs list --json", 0), ("runs show run_none", 3),
                          ("start importOrder '{\"n\": 1000}' --json", 0)):
        closed = subprocess.run(["bash", "-c", f"{shell} {command} >&-"], capture_output=True,
                                text=True, timeout=60, env=_env(db_url))
        assert closed.returncode == code, (command, closed.stderr)
        assert "Error" not in closed.stderr and "I/O" not in closed.stderr, closed.stderr
    assert len(app.runs.list(job="importOrder", limit=1000).items) == 1000
    assert app.runs.list(job="importOrder", limit=1000).next_cursor is not None  # 1,001
    # A wait that times out prints its runs as they stand (far more than the pipe
    # holds), then fails: exit 1, and stderr, whose reader is still there, says so.
    lines = tmp_path / "lines.jsonl"
    lines.write_text("".join(json.dumps({"n": n, "pad": "x" * 200}) + "\n" for n in range(1000)))
    done = piped(db_url, f"start importOrder --payloads {lines} --wait --timeout 1s --json",
                 "head -c 10")
    assert done.returncode == 1, done.stderr
    assert "error: 1,000 of the 1,000 runs had not ended" in done.stderr, done.stderr


def test_runs_show_says_what_a_running_attempt_executes_since_its_last_recorded_step(
    db_url: str, app: StackShift
) -> None:
    """Steps are recorded when they end: while one runs, ``runs show`` ends its
    steps with a row for it (named after the step its saved records name, else
    ``in progress``), and ``--json`` gives it as ``in_progress``; once it ends,
    the recorded step takes its place."""
    started, release = threading.Event(), threading.Event()

    @app.job("crunch")
    def crunch(ctx: Any) -> str:
        ctx.step.run("load", lambda: 1)
        ctx.step.run("quiet", lambda: started.set() or release.wait(30))

        def work() -> None:
            ctx.log.info("crunching")
            release.wait(30)

        ctx.step.run("work", work)
        return "ok"

    def rows(shown: str) -> list[list[str]]:
        table = shown[shown.index("STEP"):].splitlines()[2:]
        return [line.split() for line in table if line.strip()]

    # Leases of 3 s: the worker writes pending records with each renewal (every 1 s).
    with app.worker(lease="3s"):
        run = app.start("crunch")
        try:
            assert started.wait(20)
            shown = cli(db_url, "runs", "show", run.id)
            assert shown.returncode == 0, shown.stderr
            assert [r[:2] for r in rows(shown.stdout)] == [["load", "run"], ["in", "progress"]]
            assert rows(shown.stdout)[1][2:4] == ["running", "1"]
            assert "so far" in shown.stdout and "recorded when it ends" in shown.stdout
            release.set()  # the quiet step ends; the next logs, then waits again
            release.clear()
            eventually(lambda: [s.key for s in app.runs.steps(run.id)] == ["load", "quiet"]
                       and app.runs.logs(run.id), what="the quiet step, then a saved record")
            data = cli_json(db_url, "runs", "show", run.id)
            progress = data["in_progress"]
            assert (progress["attempt"], progress["step"]) == (1, "work")
            assert progress["seconds"] >= 0
            # Since the end of the quiet step: its start plus its duration, in float
            # seconds, which may land a microsecond off its recorded end.
            since = datetime.fromisoformat(progress["since"])
            ended = datetime.fromisoformat(data["steps"][-1]["finished_at"])
            assert abs(since - ended) < timedelta(milliseconds=1)
            shown = cli(db_url, "runs", "show", run.id)
            assert rows(shown.stdout)[-1][:3] == ["work", "running", "1"]
            assert "named by its log records; recorded when it ends" in shown.stdout
        finally:
            release.set()
        assert app.runs.wait(run.id, timeout="20s").status == "completed"
    done = cli_json(db_url, "runs", "show", run.id)
    assert done["in_progress"] is None
    assert [s["key"] for s in done["steps"]] == ["load", "quiet", "work"]
    assert "so far" not in cli(db_url, "runs", "show", run.id).stdout


def test_runs_logs_follow_ends_with_exit_0_once_its_reader_has_its_line(
    db_url: str, app: StackShift
) -> None:
    """`runs logs --follow | grep -m1 ...` returns once the line is found, while the
    run goes on logging, with exit 0 under pipefail."""
    stop = threading.Event()

    @app.job("chatty")
    def chatty(ctx: Any) -> None:
        n = 0
        while not stop.wait(0.05):
            ctx.log.info("line %d", n)
            n += 1

    # Leases of 3 s: the worker writes pending records with each renewal (every 1 s).
    with app.worker(lease="3s"):
        run = app.start("chatty")
        try:
            done = piped(db_url, f"runs logs {run.id} --follow", "grep -m1 'line 5$'")
            assert done.returncode == 0, done.stderr
            assert done.stdout.rstrip().endswith("line 5"), done.stdout
            assert app.runs.get(run.id).status == "running"
        finally:
            stop.set()


def test_runs_logs_follow_prints_a_running_runs_records_as_they_are_saved(
    db_url: str, app: StackShift
) -> None:
    release = threading.Event()

    @app.job("long")
    def long(ctx: Any) -> str:
        ctx.step.run("first", lambda: ctx.log.info("first part done"))

        def wait() -> None:
            ctx.log.info("waiting for the release")
            release.wait(30)

        ctx.step.run("wait", wait)
        ctx.log.warning("all done")
        return "ok"

    # Leases of 3 s: the worker writes pending records with each renewal (every 1 s).
    with app.worker(lease="3s"):
        run = app.start("long")
        try:
            with following(db_url, run.id) as (follow, lines):
                eventually(lambda: any("waiting for the release" in line for line in lines),
                           what="the record of the step still running")
                assert app.runs.get(run.id).status == "running"
                assert follow.poll() is None  # still following
                release.set()
                assert follow.wait(timeout=30) == 0, lines
        finally:
            release.set()
    messages = [line for line in lines if "stackshift.run:" in line]
    assert [m.split("stackshift.run: ", 1)[1].strip() for m in messages] == [
        "first part done", "waiting for the release", "all done"]
    assert "[attempt 1 step wait]" in messages[1] and "WARNING" in messages[2]
    assert re.search(rf"Run {run.id} completed: \"ok\"", lines[-1]), lines[-1]


def test_runs_logs_tail_prints_the_latest_records_and_follows_from_them(
    db_url: str, app: StackShift
) -> None:
    release = threading.Event()

    @app.job("chatty-then-long")
    def chatty(ctx: Any) -> str:
        def talk() -> None:
            for n in range(6):
                ctx.log.info("n %d", n)

        ctx.step.run("talk", talk)  # saved with the step's checkpoint
        ctx.step.run("wait", lambda: release.wait(30))
        ctx.log.info("after")
        return "ok"

    def said(lines: list[str]) -> list[str]:
        return [line.split("stackshift.run: ", 1)[1].strip() for line in lines
                if "stackshift.run: " in line]

    with app.worker():
        run = app.start("chatty-then-long")
        try:
            eventually(lambda: len(app.runs.logs(run.id)) == 6, what="the first six records")
            tail = cli(db_url, "runs", "logs", run.id, "--tail", "2")
            assert tail.returncode == 0, tail.stderr
            assert said(tail.stdout.splitlines()) == ["n 4", "n 5"]
            assert [r["message"] for r in cli_json(db_url, "runs", "logs", run.id, "-n", "3")] \
                == ["n 3", "n 4", "n 5"]
            for bad in ("0", "10001", "x"):
                refused = cli(db_url, "runs", "logs", run.id, "--tail", bad)
                assert refused.returncode == 2 and "'--tail'" in refused.stderr, refused.stderr
            with following(db_url, run.id, "--tail", "1") as (follow, lines):
                eventually(lambda: said(lines) == ["n 5"], what="the latest record")
                assert follow.poll() is None  # still following
                release.set()
                assert follow.wait(timeout=30) == 0, lines
        finally:
            release.set()
    assert said(lines) == ["n 5", "after"]
    assert re.search(rf"Run {run.id} completed: \"ok\"", lines[-1]), lines[-1]


def test_runs_logs_level_filters_a_level_without_a_name_by_its_number(
    db_url: str, app: StackShift
) -> None:
    # Stored as "Level 35", such a record was below every level: --level warning
    # left it out, and so did --level debug.
    @app.job("unnamed-levels")
    def unnamed(ctx: Any) -> None:
        ctx.log.log(25, "between info and warning")
        ctx.log.log(35, "between warning and error")

    with app.worker():
        run = app.start("unnamed-levels")
        assert app.runs.wait(run.id, timeout="20s").status == "completed"
    for level, expected in (("warning", ["between warning and error"]),
                            ("debug", ["between info and warning",
                                       "between warning and error"])):
        assert [r["message"] for r in cli_json(
            db_url, "runs", "logs", run.id, "--level", level)] == expected, level


def test_runs_logs_level_keeps_records_at_that_level_or_above(
    db_url: str, app: StackShift
) -> None:
    """``--level`` with the whole log, the latest N of those records (``--tail``:
    the latest N at that level, not those among the latest N records), and
    ``--follow``, which goes on past records below the level without printing
    them again."""
    release = threading.Event()

    @app.job("mixed")
    def mixed(ctx: Any) -> str:
        def talk() -> None:
            for n in range(4):
                ctx.log.warning("w %d", n)
                ctx.log.info("i %d", n)
            ctx.log.error("e 0")
            ctx.log.debug("d 0")

        ctx.step.run("talk", talk)  # saved with the step's checkpoint
        ctx.step.run("wait", lambda: release.wait(30))
        ctx.log.info("i after")
        ctx.log.critical("c after")
        return "ok"

    def said(lines: list[str]) -> list[str]:
        return [line.split("stackshift.run: ", 1)[1].strip() for line in lines
                if "stackshift.run: " in line]

    with app.worker():
        run = app.start("mixed")
        try:
            eventually(lambda: len(app.runs.logs(run.id)) == 10, what="the first ten records")
            for args, expected in (
                    (["--level", "warning"], ["w 0", "w 1", "w 2", "w 3", "e 0"]),
                    (["--level", "ERROR"], ["e 0"]),
                    (["--level", "warning", "--tail", "2"], ["w 3", "e 0"]),
                    (["--level", "info", "--tail", "3"], ["w 3", "i 3", "e 0"]),
                    (["--level", "debug"], [m for n in range(4) for m in (f"w {n}", f"i {n}")]
                     + ["e 0", "d 0"])):
                shown = cli(db_url, "runs", "logs", run.id, *args)
                assert shown.returncode == 0, shown.stderr
                assert said(shown.stdout.splitlines()) == expected, (args, shown.stdout)
            assert [r["message"] for r in cli_json(
                db_url, "runs", "logs", run.id, "--level", "error")] == ["e 0"]
            none = cli(db_url, "runs", "logs", run.id, "--level", "critical")
            assert none.stdout == "No logs at CRITICAL or above for this run.\n"
            refused = cli(db_url, "runs", "logs", run.id, "--level", "loud")
            assert refused.returncode == 2 and "'--level'" in refused.stderr, refused.stderr
            with following(db_url, run.id, "--level", "warning", "--tail", "1") as (
                    follow, lines):
                eventually(lambda: said(lines) == ["e 0"], what="the latest warning")
                assert follow.poll() is None  # still following
                release.set()
                assert follow.wait(timeout=30) == 0, lines
        finally:
            release.set()
    assert said(lines) == ["e 0", "c after"]


def test_runs_logs_follow_json_of_a_failed_run_prints_one_object_a_line_and_exits_1(
    db_url: str, app: StackShift
) -> None:
    @app.job("doomed")
    def doomed(ctx: Any) -> None:
        for i in range(3):
            ctx.log.info("try %d", i)
        raise NonRetriableError("no luck")

    run = app.start("doomed")
    run_until_idle(app)
    done = cli(db_url, "runs", "logs", run.id, "--follow", "--json")
    assert done.returncode == 1, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["message"] for r in records] == ["try 0", "try 1", "try 2"]
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    assert all(r["run_id"] == run.id for r in records)


def _field(shown: str, name: str) -> str:
    """The value of field ``name`` in the output of ``runs show``."""
    found = re.search(rf"^{name}  +(.*?) *$", shown, re.MULTILINE)
    assert found, (name, shown)
    return found.group(1)


def test_timeline_json_shows_its_times_as_iso(db_url: str, app: StackShift) -> None:
    run = app.start("later", {}, delay="1h")
    entries = cli_json(db_url, "runs", "timeline", run.id)
    scheduled = entries[0]["data"]["scheduled_at"]
    assert (entries[0]["kind"], scheduled) == ("run.scheduled", run.scheduled_at.isoformat()
                                               .replace("+00:00", "Z"))
    # The table still shows it from the run's creation.
    assert "scheduled_at=+1h00m00s" in cli(db_url, "runs", "timeline", run.id).stdout


def test_the_timeline_heading_keeps_the_creation_time_whole(db_url: str,
                                                            app: StackShift) -> None:
    # A run with one short entry makes a table narrower than its heading.
    run = app.start("later", {}, delay="5m")
    shown = cli(db_url, "runs", "timeline", run.id)
    assert shown.returncode == 0, shown.stderr
    created = run.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    assert shown.stdout.splitlines()[0] == f"{run.id} · later · created {created}", shown.stdout


def test_runs_show_and_list_count_attempts_from_a_manual_retry(
    db_url: str, app: StackShift
) -> None:
    """A run that used its 2 attempts and was retried by hand shows attempt 1 of its
    fresh budget, with the attempts in all beside it, and while it runs again it
    shows no error: the one it failed with is its attempts' record."""
    shown_while_running: list[subprocess.CompletedProcess[str]] = []

    @app.job("sync-ledger", max_attempts=2, backoff={"base": "0.01s"})
    def sync_ledger(ctx: Any) -> str:
        if ctx.run.attempt <= 2:
            raise ConnectionError("ledger down")
        shown_while_running.append(cli(db_url, "runs", "show", ctx.run.id))
        return "synced"

    run_id = app.start("sync-ledger").id
    eventually(lambda: run_until_idle(app) >= 0 and app.runs.get(run_id).status == "failed",
               what="both attempts failed")
    failed = cli(db_url, "runs", "show", run_id)
    assert failed.returncode == 0, failed.stderr
    assert _field(failed.stdout, "attempt") == "2 of 2"
    assert "ConnectionError: ledger down" in failed.stdout

    retried = cli(db_url, "runs", "retry", run_id)
    assert retried.returncode == 0, retried.stderr
    assert "queued again with a fresh budget of 2 attempts (after 2 in all)" in retried.stdout
    queued = cli(db_url, "runs", "show", run_id)
    assert _field(queued.stdout, "attempt") == "0 of 2 after a manual retry (2 in all)"
    assert "ConnectionError" not in queued.stdout.split("attempts")[0]

    run_until_idle(app)
    (running,) = shown_while_running
    assert running.returncode == 0, running.stderr
    assert _field(running.stdout, "status") == "running"
    assert _field(running.stdout, "attempt") == "1 of 2 after a manual retry (3 in all)"
    # The error section is gone; the attempts table still lists both failures.
    before_attempts, attempts = running.stdout.split("attempts", 1)
    assert "ledger down" not in before_attempts
    assert attempts.count("ConnectionError: ledger down") == 2

    done = cli(db_url, "runs", "show", run_id)
    assert _field(done.stdout, "attempt") == "1 of 2 after a manual retry (3 in all)"
    detail = cli_json(db_url, "runs", "show", run_id)
    assert (detail["status"], detail["attempt"], detail["retry_base"]) == ("completed", 3, 2)
    assert detail["error"] is None
    # One run reads the same in show and list (show adds its attempts and steps,
    # what a running attempt executes, and the runs it was started again from
    # and as: none here).
    (listed,) = cli_json(db_url, "runs", "list", "--job", "sync-ledger")["items"]
    assert (detail.pop("in_progress"), detail.pop("again_of"), detail.pop("started_again")
            ) == (None, None, [])
    assert {k: v for k, v in detail.items() if k not in ("attempts", "steps")} == listed
    table = cli(db_url, "runs", "list", "--job", "sync-ledger")
    row = next(line for line in table.stdout.splitlines() if run_id in line)
    assert " 1/2 (3) " in row


def test_runs_show_gives_a_next_attempt_only_to_a_retrying_run(
    db_url: str, app: StackShift
) -> None:
    @app.job("push-invoice", max_attempts=3, backoff={"base": "1h"})
    def push_invoice(ctx: Any) -> None:
        raise ConnectionError("erp down")

    retrying = app.start("push-invoice")
    run_until_idle(app)
    queued = app.start("push-invoice")
    scheduled = app.start("push-invoice", delay="2d")
    retrying_run = app.runs.get(retrying.id)
    assert retrying_run.status == "retrying" and retrying_run.next_attempt_at is not None
    shown = cli(db_url, "runs", "show", retrying.id).stdout
    next_at = retrying_run.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    assert _field(shown, "next attempt") == next_at, shown
    for run in (queued, scheduled):
        shown = cli(db_url, "runs", "show", run.id).stdout
        assert "next attempt" not in shown, shown  # no attempt failed; none is due
    assert _field(shown, "scheduled")


def test_runs_list_filters_pages_and_cancels(db_url: str, app: StackShift) -> None:
    ids = [app.start("report", {"n": n}).id for n in range(3)]
    other = app.start("cleanup", queue_name="maintenance").id

    table = cli(db_url, "runs", "list")
    assert table.returncode == 0
    assert all(run_id in table.stdout for run_id in [*ids, other])
    assert run_ids(db_url, "--queue", "maintenance") == [other]
    first = cli_json(db_url, "runs", "list", "--job", "report", "--limit", "2")
    assert [r["id"] for r in first["items"]] == ids[:0:-1] and first["next_cursor"]
    rest = cli_json(db_url, "runs", "list", "--job", "report", "--limit", "2",
                    "--cursor", first["next_cursor"])
    assert [r["id"] for r in rest["items"]] == ids[:1] and rest["next_cursor"] is None

    cancelled = cli_json(db_url, "runs", "cancel", ids[0], "--reason", "not needed")
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["message"] == "not needed"
    human = cli(db_url, "runs", "cancel", ids[1])
    assert human.returncode == 0 and "cancelled" in human.stdout
    assert run_ids(db_url, "--status", "cancelled") == ids[1::-1]
    waited = cli(db_url, "runs", "wait", ids[0], "--json")
    assert waited.returncode == 1 and json.loads(waited.stdout)["status"] == "cancelled"
    requeued = cli_json(db_url, "runs", "retry", ids[0])
    assert requeued["status"] == "queued"
    timed_out = cli(db_url, "runs", "wait", ids[2], "--timeout", "0.2")
    assert timed_out.returncode == 1 and "still queued" in timed_out.stderr
    # With --json, a script still gets the run as it stands.
    timed_out = cli(db_url, "runs", "wait", ids[2], "--timeout", "0.2", "--json")
    assert timed_out.returncode == 1 and "still queued" in timed_out.stderr
    assert json.loads(timed_out.stdout)["status"] == "queued"


def test_runs_list_takes_the_sdks_time_and_search_filters(db_url: str, app: StackShift) -> None:
    """--created-after (at or after), --created-before (strictly before) and
    --search (a run id or an idempotency key) select as ``runs.list`` does; a
    time that is not one, or has no time zone, is refused naming the option."""
    first = app.start("report", {"n": 1}, idempotency_key="report:1")
    second = app.start("report", {"n": 2})
    at = second.created_at.isoformat()
    assert run_ids(db_url, "--created-after", at) == [second.id]
    assert run_ids(db_url, "--created-before", at) == [first.id]
    assert run_ids(db_url, "--created-before", at, "--created-after", at) == []
    assert run_ids(db_url, "--search", "report:1") == [first.id]
    assert run_ids(db_url, "--search", second.id) == [second.id]
    assert cli(db_url, "runs", "--created-after", "2020-01-01T00:00Z", "--created-before",
               "2020-01-02T00:00Z").stdout == "No runs match.\n"
    for value, said in (("yesterday", "is not an ISO-8601 time"),
                        ("2026-12-05T09:00", "has no time zone; give an offset or 'Z'")):
        refused = cli(db_url, "runs", "--created-after", value)
        assert refused.returncode == 2 and refused.stdout == ""
        assert f"error: --created-after: '{value}' {said}" in refused.stderr, refused.stderr


def test_empty_lists_say_how_to_fill_them_unless_a_filter_emptied_them(
        db_url: str, app: StackShift) -> None:
    assert cli(db_url, "runs").stdout == (
        "No runs yet. Start one with: stackshift start JOB '{...}'\n")
    assert cli(db_url, "events", "list").stdout == (
        "No events yet. Send one with: stackshift events send NAME '{...}'\n")
    assert cli(db_url, "queues").stdout == (
        "No queues yet. One is listed once a run is started on it (stackshift start JOB "
        "--queue NAME) or it has settings (stackshift queues set NAME ...).\n")
    assert cli(db_url, "schedules").stdout == (
        "No schedules yet. Create one with: stackshift schedules create JOB --cron "
        "'0 * * * *', or with @job(cron=...) in the code.\n")
    for every_key in ([], ["--prefix", ""]):
        assert cli(db_url, "state", *every_key).stdout == (
            "No state keys yet. Set one with: stackshift state set KEY VALUE_JSON\n")
    assert cli(db_url, "runs", "list", "--status", "failed").stdout == "No runs match.\n"
    assert cli(db_url, "events", "--name", "paid").stdout == "No events match.\n"
    assert cli(db_url, "state", "--prefix", "imports:").stdout == "No state keys match.\n"
    # A queue no run has, named like one that has runs: that one, perhaps.
    app.start("report", queue_name="emails")
    assert cli(db_url, "runs", "--queue", "emials").stdout == (
        "No runs match. No queue is named 'emials' (did you mean 'emails'?).\n")
    for filters in (["--queue", "zzz"], ["--queue", "emails", "--status", "failed"]):
        assert cli(db_url, "runs", *filters).stdout == "No runs match.\n"
    # A job no worker has registered, named like one that a worker has.
    app.job("report", lambda ctx: None)
    with app.worker(concurrency=1):
        pass  # registers the job, as any worker with its code does
    assert "report" in [info.name for info in app.list_jobs()]
    assert cli(db_url, "runs", "--job", "reprot").stdout == (
        "No runs match. No worker has registered job 'reprot' (did you mean 'report'?).\n")
    assert cli(db_url, "runs", "--job", "reprot", "--queue", "emials").stdout == (
        "No runs match. No worker has registered job 'reprot' (did you mean 'report'?). "
        "No queue is named 'emials' (did you mean 'emails'?).\n")
    for filters in (["--job", "zzz"], ["--job", "report", "--status", "failed"]):
        assert cli(db_url, "runs", *filters).stdout == "No runs match.\n"


def test_schedules_list_gives_how_far_off_each_next_run_is_and_how_long_ago_the_last_was(
        db_url: str, app: StackShift) -> None:
    """As the dashboard does: ``in 25d23h``, ``2.1s ago``; a tick due that no worker
    has fired reads ``due ... ago``, a paused schedule has no next run, and
    ``schedules show`` gives the times in UTC, the next with its span."""
    app.job("report", lambda ctx: None)
    yearly = app.schedules.create("report", cron="@yearly")
    every = app.schedules.create("report", cron="@every 1s")
    paused = app.schedules.pause(app.schedules.create("report", cron="@daily").id)
    time.sleep(1.1)  # the first tick of `every` passes with no worker up

    def row_of(schedule_id: str) -> str:
        listed = cli(db_url, "schedules")
        assert listed.returncode == 0, listed.stderr
        [row] = [line for line in listed.stdout.splitlines() if schedule_id in line]
        return row

    span = r"\d+(?:ms|\.\ds|m\d\ds|h\d\dm|d\d+h)"
    assert re.search(rf" active +in {span} +- +- *$", row_of(yearly.id)), row_of(yearly.id)
    assert re.search(rf" active +due {span} ago +- +- *$", row_of(every.id)), row_of(every.id)
    assert re.search(r" paused +- +- +- *$", row_of(paused.id)), row_of(paused.id)
    run_until_idle(app)  # fires the tick due, and runs its run
    fired = app.schedules.get(every.id)
    assert fired.last_run_status == "completed"
    assert re.search(rf" {span} ago +completed *$", row_of(every.id)), row_of(every.id)
    shown = cli(db_url, "schedules", "show", every.id).stdout
    next_at = when(app.schedules.get(every.id).next_run_at)
    assert re.search(rf"^next run +{re.escape(next_at)} \((in {span}|due {span} ago)\)$",
                     shown, re.M), shown
    assert re.search(rf"^last run +{re.escape(when(fired.last_run_at))} {fired.last_run_id}$",
                     shown, re.M), shown


def test_runs_list_says_when_a_time_went_by_with_nothing_done(db_url: str) -> None:
    """A start, wake-up, timeout or next attempt whose time went by while no worker
    was up reads ``start due 9m00s ago``, as the dashboard says, not ``starts now``."""
    clock = FakeClock(time.time() - 602)
    app = StackShift(db_url, clock=clock)
    try:
        app.job("nap", lambda ctx: ctx.step.sleep("rest", "1m"))
        app.job("await", lambda ctx: ctx.step.wait_for_event(
            "paid", correlation_key="o1", timeout="1m"))

        @app.job("flaky", max_attempts=3)
        def flaky(ctx: Any) -> None:
            raise ConnectionError("down")

        app.job("held", lambda ctx: None, queue="held")
        app.queue("held").pause()
        # Its start came while its queue was paused: queued, never started.
        held = app.start("held", delay="1s")
        clock.advance("2s")
        later = app.start("nap", delay="1m")
        napping, waiting, retrying = (app.start(job) for job in ("nap", "await", "flaky"))
        run_until_idle(app)  # at the start of the ten minutes: nothing more is due
        assert [app.runs.get(r.id).status for r in (
            later, napping, waiting, retrying, held)] == [
            "scheduled", "waiting", "waiting", "retrying", "queued"]
    finally:
        app.close()
    listed = cli(db_url, "runs")
    assert listed.returncode == 0, listed.stderr
    ago = r"due (9|10)m\d\ds ago$"
    for run, detail in ((later, "start"), (held, "start"),
                        (napping, r"sleeping \(rest\), wake-up"),
                        (waiting, r"for paid \(o1\), timeout"),
                        (retrying, "ConnectionError: down; next attempt")):
        [row] = [line for line in listed.stdout.splitlines() if run.id in line]
        assert re.search(rf"  {detail} {ago}", row), row


def test_a_group_with_a_list_lists_when_given_no_other_command(
        db_url: str, app: StackShift) -> None:
    failed = app.start("report", {"n": 1})
    app.runs.cancel(failed.id)
    kept = app.start("report", {"n": 2})
    app.events.send("order.paid", {"orderId": "o1"})
    app.state.set("imports:42", {"done": 3})

    bare = cli(db_url, "runs")
    assert bare.returncode == 0 and failed.id in bare.stdout and kept.id in bare.stdout
    assert run_ids(db_url, "--status", "cancelled") == [failed.id]
    listed = cli_json(db_url, "runs", "--status", "cancelled")
    assert [r["id"] for r in listed["items"]] == [failed.id]
    [event_row] = [line for line in cli(db_url, "events").stdout.splitlines()
                   if "order.paid" in line]
    # Its age, as a run's in `runs list` (`events get` gives the time received).
    assert re.search(r" (\d+ms|\d+\.\ds) +\{\"orderId\": \"o1\"\}$", event_row), event_row
    assert [e["name"] for e in cli_json(db_url, "events")["items"]] == ["order.paid"]
    assert "imports:42" in cli(db_url, "state", "--prefix", "imports:").stdout
    assert "No API keys" in cli(db_url, "keys").stdout
    assert "No endpoints" in cli(db_url, "endpoints").stdout
    assert "Usage:" in cli(db_url, "runs", "--help").stdout

    # Before another command, a list's option would be ignored: refused, nothing done.
    misplaced = cli(db_url, "runs", "--status", "failed", "cancel", kept.id)
    assert misplaced.returncode == 2
    assert ("--status is an option of `stackshift runs list`, not of `stackshift runs cancel`"
            in misplaced.stderr)
    assert app.runs.get(kept.id).status == "queued"
    early = cli(db_url, "runs", "--json", "show", kept.id)
    assert early.returncode == 2
    assert "--json goes after the subcommand, e.g. stackshift runs show ... --json" in early.stderr


def test_the_next_page_command_keeps_the_filters_and_page_size(
    db_url: str, app: StackShift
) -> None:
    for job in ("import.a", "import.b"):
        @app.job(job, queue="imports", max_attempts=1)
        def fail(ctx: Any) -> None:
            raise NonRetriableError("no")

    for _ in range(3):
        app.start("import.a")
        app.start("import.b")
    run_until_idle(app)
    for event in ("paid", "shipped", "paid", "shipped"):
        app.events.send(event, correlation_key="o 1")
    for args, column, expected in [
        (["runs", "list", "--job", "import.a", "--limit", "2"], 1, "import.a"),
        (["queues", "dead-letters", "imports", "--job", "import.b", "--limit", "2"], 1,
         "import.b"),
        (["events", "list", "--name", "paid", "--limit", "1"], 1, "paid"),
    ]:
        first = cli(db_url, *args)
        assert first.returncode == 0, first.stderr
        hint = first.stdout.splitlines()[-1]
        assert hint.startswith("More: stackshift "), first.stdout
        words = shlex.split(hint.removeprefix("More: stackshift "))
        assert words[:len(args) - 2] == args[:-2], hint  # same command, filters and size
        following = cli(db_url, *words)
        assert following.returncode == 0, following.stderr
        rows = [line.split() for line in following.stdout.splitlines()[2:]]
        rows = [row for row in rows if row and row[0][:4] in ("run_", "evt_")]
        assert len(rows) == 1, following.stdout
        assert all(row[column] == expected for row in rows), following.stdout
        # `stackshift runs [OPTIONS]` lists as `stackshift runs list [OPTIONS]` does,
        # and prints the same next page command.
        if args[1] == "list":
            grouped = cli(db_url, args[0], *args[2:])
            assert grouped.stdout.splitlines()[-1] == hint, grouped.stdout


def test_the_next_page_command_keeps_a_database_given_on_the_command_line(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """Run elsewhere, with no database in the environment, the printed command
    lists the next page of the same database; a URL with a password is not
    printed again, and the command says to add it."""
    ids = {app.start("import.d").id for _ in range(3)}
    # On the command, or on stackshift itself for every command.
    for where in (["runs", "list", "--limit", "2", "--db", db_url],
                  ["--db", db_url, "runs", "list", "--limit", "2"]):
        first = cli(None, *where)
        assert first.returncode == 0, first.stderr
        hint = first.stdout.splitlines()[-1].removeprefix("More: ")
        assert shlex.split(hint)[:7] == ["stackshift", "runs", "list", "--limit", "2", "--db",
                                         db_url], hint
        following = subprocess.run(hint, shell=True, capture_output=True, text=True,
                                   timeout=60, cwd=tmp_path,
                                   env={**_env(None), "PATH": f"{Path(sys.executable).parent}:"
                                        + os.environ["PATH"]})
        assert following.returncode == 0, following.stderr
        shown = {word for word in (first.stdout + following.stdout).split() if word in ids}
        assert shown == ids, (first.stdout, following.stdout)

    parts = urlsplit(db_url)
    if parts.scheme.startswith("postgresql"):  # trust auth takes any password
        host = parts.netloc.rsplit("@", 1)[-1]
        secret = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:s3cret@{host}"))
        guarded = cli(None, "runs", "list", "--limit", "2", "--db", secret)
        assert guarded.returncode == 0, guarded.stderr
        assert "s3cret" not in guarded.stdout, guarded.stdout
        assert guarded.stdout.splitlines()[-1].endswith(
            "  # and your --db (its password is not repeated here)"), guarded.stdout


def test_an_empty_later_page_says_there_are_no_more(db_url: str, app: StackShift) -> None:
    """Past the last item, every list says "No more ..." (as state keys and locks
    do); with no cursor, that nothing matches."""
    @app.job("import.c", queue="imports", max_attempts=1)
    def fail(ctx: Any) -> None:
        raise NonRetriableError("no")

    ids = [app.start("import.c").id for _ in range(2)]
    run_until_idle(app)
    for event in ("paid", "shipped", "paid", "shipped"):
        app.events.send(event, correlation_key="o 1")
    dead = cli_json(db_url, "queues", "dead-letters", "imports", "--limit", "1")
    assert dead["next_cursor"] is not None
    assert cli_json(db_url, "runs", "retry", ids[0])["status"] == "queued"  # the older one
    assert cli(db_url, "queues", "dead-letters", "imports", "--cursor", dead["next_cursor"]
               ).stdout == "No more dead letters.\n"
    assert cli(db_url, "queues", "dead-letters", "imports", "--job", "import.d"
               ).stdout == "No dead letters.\n"
    # The oldest "shipped" is the newest but two: no "shipped" comes after it.
    events = cli_json(db_url, "events", "list", "--limit", "3")
    assert events["next_cursor"] is not None
    assert cli(db_url, "events", "list", "--name", "shipped", "--cursor",
               events["next_cursor"]).stdout == "No more events.\n"
    assert cli(db_url, "events", "list", "--name", "refunded").stdout == "No events match.\n"
    runs = cli_json(db_url, "runs", "list", "--limit", "1")
    assert cli(db_url, "runs", "list", "--cursor", runs["next_cursor"], "--status", "running"
               ).stdout == "No more runs.\n"


def read_terminal(controller: int, shown: bytearray) -> None:
    """Add what a process writes to its pseudo-terminal (``controller`` is our side)
    to ``shown``, until the process ends and closes its side."""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the process ended and closed its side
            return
        if not chunk:
            return
        shown.extend(chunk)


def _on_terminal(db_url: str, *args: str) -> tuple[int, str, str]:
    """Run ``stackshift ARGS`` with stderr on a pseudo-terminal, as in a shell;
    its exit code, stdout and the text the terminal showed (colours left out)."""
    controller, terminal = pty.openpty()
    env = {**_env(db_url), "TERM": "xterm-256color", "COLUMNS": "200"}
    process = subprocess.Popen([*STACKSHIFT, *args], stdout=subprocess.PIPE,
                               stderr=terminal, text=True, env=env)
    os.close(terminal)
    shown = bytearray()
    reader = threading.Thread(target=read_terminal, args=(controller, shown), daemon=True)
    reader.start()
    out, _ = process.communicate(timeout=60)
    reader.join(timeout=10)
    os.close(controller)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    return process.returncode, out, text


def test_waiting_on_a_terminal_shows_the_runs_progress(db_url: str, app: StackShift) -> None:
    @app.job("slow")
    def slow(ctx: Any) -> str:
        for part in range(4):
            ctx.step.run(f"part-{part}", time.sleep, 0.4)
        return "rested"

    with app.worker():
        code, out, shown = _on_terminal(db_url, "start", "slow", "--wait")
    assert code == 0, (out, shown)
    assert "completed" in out and '"rested"' in out
    assert "running" in shown and "attempt 1 of 3" in shown, shown
    assert "steps done (last: part-" in shown, shown

    # A script asking for JSON gets no progress line, terminal or not.
    with app.worker():
        code, out, shown = _on_terminal(db_url, "start", "slow", "--wait", "--json")
    assert code == 0 and json.loads(out)["status"] == "completed"
    assert "attempt" not in shown, shown

    # A wait that times out still says so, and exits 1.
    queued = app.start("notDeployed")
    code, out, shown = _on_terminal(db_url, "runs", "wait", queued.id, "--timeout", "0.7")
    assert code == 1, (out, shown)
    assert f"Run {queued.id} queued · attempt 0 of 3" in shown, shown
    assert f"run {queued.id} is still queued after 0.7s" in shown, shown


def test_waiting_for_the_runs_of_a_file_on_a_terminal_shows_the_one_waited_for(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    @app.job("slow")
    def slow(ctx: Any) -> str:
        for part in range(4):
            ctx.step.run(f"part-{part}", time.sleep, 0.4)
        return "rested"

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"n": 1}\n{"n": 2}\n', encoding="utf-8")
    with app.worker():
        code, out, shown = _on_terminal(db_url, "start", "slow", "--payloads", str(rows),
                                        "--wait")
    assert code == 0, (out, shown)
    assert out.splitlines()[-1] == "Waited for 2 runs: 2 completed.", out
    first = min(app.runs.list(job="slow").items, key=lambda run: run.id)
    assert f"1 of 2 · Run {first.id} running · attempt 1 of 3" in shown, shown
    assert "steps done (last: part-" in shown, shown

    # The time runs out: the line named the run waited for, the error says how many.
    code, out, shown = _on_terminal(db_url, "start", "notDeployed", "--payloads", str(rows),
                                    "--wait", "--timeout", "0.7")
    assert code == 1, (out, shown)
    waited = min(app.runs.list(job="notDeployed").items, key=lambda run: run.id)
    assert f"1 of 2 · Run {waited.id} queued · attempt 0 of 3" in shown, shown
    assert (f"2 of the 2 runs had not ended after 0.7s (run {waited.id} is still queued)"
            in shown), shown


def test_the_progress_line_counts_attempts_as_runs_show_does_after_a_manual_retry(
    db_url: str, app: StackShift
) -> None:
    @app.job("flaky-export", max_attempts=2, backoff={"base": "0.01s"})
    def flaky_export(ctx: Any) -> None:
        raise ConnectionError("bucket down")

    run_id = app.start("flaky-export").id
    eventually(lambda: run_until_idle(app) >= 0 and app.runs.get(run_id).status == "failed",
               what="both attempts failed")
    app.runs.retry(run_id)  # a fresh budget of 2; no worker takes it up here
    shown = _field(cli(db_url, "runs", "show", run_id).stdout, "attempt")
    assert shown == "0 of 2 after a manual retry (2 in all)"
    code, out, progress = _on_terminal(db_url, "runs", "wait", run_id, "--timeout", "0.7")
    assert code == 1, (out, progress)
    assert f"Run {run_id} queued · attempt {shown} ·" in progress, progress

    # The lines `stackshift dev` prints when piped count them the same way.
    assert "  attempt 0/2 (2)" in change_line(app.runs.get(run_id)).plain


# -- events and state ------------------------------------------------------------------------


def test_events_send_resumes_the_waiting_run(db_url: str, app: StackShift) -> None:
    @app.job("approval")
    def approval(ctx: Any) -> Any:
        event = ctx.step.wait_for_event(
            "request.approved", correlation_key=f"request:{ctx.payload['id']}", timeout="1h"
        )
        return event.payload

    run_id = app.start("approval", {"id": 7}).id
    run_until_idle(app)
    waiting = cli_json(db_url, "runs", "show", run_id)
    assert waiting["status"] == "waiting"
    assert waiting["waiting_for"]["event_name"] == "request.approved"
    assert waiting["waiting_for"]["correlation_key"] == "request:7"
    assert "for request.approved (request:7)" in cli(db_url, "runs", "list").stdout

    unrelated = cli(db_url, "events", "send", "request.approved", '{"by": "bob"}',
                    "--correlation-key", "request:8")
    assert unrelated.returncode == 0 and "no run was waiting" in unrelated.stdout
    sent = cli_json(db_url, "events", "send", "request.approved", '{"by": "ada"}',
                    "--correlation-key", "request:7", "--idempotency-key", "approve:7")
    assert sent["resumed_run_ids"] == [run_id] and sent["duplicate"] is False
    repeat = cli(db_url, "events", "send", "request.approved", '{"by": "ada"}',
                 "--correlation-key", "request:7", "--idempotency-key", "approve:7")
    assert repeat.returncode == 0 and "already sent" in repeat.stdout
    assert f"Its first send resumed 1 run(s): {run_id}" in repeat.stdout
    again = cli_json(db_url, "events", "send", "request.approved", '{"by": "ada"}',
                     "--correlation-key", "request:7", "--idempotency-key", "approve:7")
    assert (again["id"], again["duplicate"], again["resumed_run_ids"]) == (
        sent["id"], True, [run_id])
    # The key names that event: another payload under it is a conflict, as in the SDK.
    reused = cli(db_url, "events", "send", "request.approved", '{"by": "eve"}',
                 "--correlation-key", "request:7", "--idempotency-key", "approve:7")
    assert reused.returncode == 4, (reused.stdout, reused.stderr)
    assert sent["id"] in reused.stderr

    listed = cli_json(db_url, "events", "list", "--name", "request.approved",
                      "--correlation-key", "request:7")
    assert [e["id"] for e in listed["items"]] == [sent["id"]]
    assert run_ids(db_url, "--correlation-key", "request:7") == [run_id]

    run_until_idle(app)
    final = cli_json(db_url, "runs", "wait", run_id, "--timeout", "10s")
    assert (final["status"], final["result"]) == ("completed", {"by": "ada"})


def test_events_send_idempotency_key_holds_for_the_first_senders_dedupe_window(
    db_url: str
) -> None:
    """The help names the setting rather than a fixed 24h, and says whose window
    counts: a key first sent by an app with a five-second window is free again
    for this command's send once those seconds have passed."""
    shown = " ".join(cli(None, "events", "send", "--help").stdout.split())
    assert "within 24h" not in shown
    assert ("The key holds for the event_dedupe_window of the process that sent it first:"
            " 24h for this command on a database; through a server (STACKSHIFT_URL), the"
            " server's (--setting event_dedupe_window=...).") in shown

    with StackShift(db_url, settings=Settings(event_dedupe_window="5s")) as brief:
        first = brief.events.send("invoice.paid", {"n": 1}, idempotency_key="pay:1")
        sent_at = time.monotonic()
    repeat = cli_json(db_url, "events", "send", "invoice.paid", '{"n": 1}',
                      "--idempotency-key", "pay:1")
    assert (repeat["id"], repeat["duplicate"]) == (first.id, True)
    time.sleep(max(0.0, sent_at + 5.2 - time.monotonic()))
    later = cli_json(db_url, "events", "send", "invoice.paid", '{"n": 1}',
                     "--idempotency-key", "pay:1")
    assert later["duplicate"] is False and later["id"] != first.id


def test_events_get_shows_one_event_with_its_whole_payload(db_url: str, app: StackShift) -> None:
    """`events list` shortens payloads to fit its table on a screen; `events get` shows one
    event whole, and an id no event has exits 3 (not found), as `runs show` does."""
    payload = {"note": "n" * 200, "lines": [1, 2, 3]}
    sent = app.events.send("order.shipped", payload, correlation_key="order:9",
                           idempotency_key="ship:9")
    assert "n" * 200 not in cli(db_url, "events", "list", columns=120).stdout  # shortened

    shown = cli_json(db_url, "events", "get", sent.id)
    assert shown == cli_json(db_url, "events", "list")["items"][0]
    assert (shown["id"], shown["name"], shown["payload"], shown["correlation_key"],
            shown["idempotency_key"]) == (sent.id, "order.shipped", payload, "order:9", "ship:9")
    table = cli(db_url, "events", "get", sent.id)
    assert table.returncode == 0, table.stderr
    assert "n" * 200 in table.stdout and "order:9" in table.stdout and sent.id in table.stdout
    # `events show`, as `runs show` is named, is the same command, not listed twice.
    assert cli(db_url, "events", "show", sent.id).stdout == table.stdout
    listed = cli(db_url, "events", "--help").stdout
    assert "  get " in listed and "  show " not in listed

    for unknown in ("evt_0000000000000000000000000f", "not-an-id"):
        missing = cli(db_url, "events", "get", unknown)
        assert missing.returncode == 3, (missing.stdout, missing.stderr)
        assert f"no event with id {unknown!r}" in missing.stderr and missing.stdout == ""


def test_state_get_set_delete(db_url: str) -> None:
    value = {"done": 3, "of": 10, "files": ["a.csv"]}
    assert cli(db_url, "state", "set", "imports:42:progress", json.dumps(value)).returncode == 0
    assert cli_json(db_url, "state", "get", "imports:42:progress") == value
    # --json shows the entry as the store holds it, as `state list` does: the
    # expiry as a time, not the TTL as it was typed.
    shown = cli(db_url, "state", "set", "imports:43:progress", "0", "--ttl", "90")
    assert shown.stdout == "Set 'imports:43:progress' (expires in 1m30s).\n"  # seconds
    stored = cli_json(db_url, "state", "set", "imports:43:progress", "0", "--ttl", "10m")
    assert set(stored) == {"key", "value", "expires_at", "updated_at"}
    keys = cli_json(db_url, "state", "list", "--prefix", "imports:")["items"]
    assert stored == keys[1]
    assert [(k["key"], k["expires_at"] is not None) for k in keys] == [
        ("imports:42:progress", False), ("imports:43:progress", True)
    ]
    # Times are ISO-8601 in UTC, as in the JSON of runs, events and schedules.
    expires = datetime.fromisoformat(keys[1]["expires_at"].replace("Z", "+00:00"))
    updated = datetime.fromisoformat(keys[1]["updated_at"].replace("Z", "+00:00"))
    assert keys[1]["expires_at"].endswith("Z")
    assert 599 <= (expires - updated).total_seconds() <= 601
    gone = cli(db_url, "state", "delete", "imports:42:progress")
    assert gone.returncode == 0
    assert cli(db_url, "state", "get", "imports:42:progress").returncode == 3
    assert cli_json(db_url, "state", "get", "imports:43:progress") == 0


def test_state_set_takes_an_expiry_time_in_the_future(db_url: str) -> None:
    done = cli(db_url, "state", "set", "report:7", '"ready"', "--expires-at",
               "2099-01-01T02:00:00+02:00")
    assert done.stdout == "Set 'report:7' (expires at 2099-01-01 00:00:00 UTC).\n"
    stored = cli_json(db_url, "state", "set", "report:8", "1", "--expires-at",
                      "2099-01-01T00:00:00Z")
    assert stored["expires_at"] == "2099-01-01T00:00:00Z"
    for args, message in [
        (("--expires-at", "2020-01-01T00:00:00Z"),
         "--expires-at must be in the future, got 2020-01-01T00:00:00+00:00"),
        (("--expires-at", "2099-01-01T00:00:00"), "has no time zone"),
        (("--expires-at", "soon"), "is not an ISO-8601 time"),
        (("--ttl", "1h", "--expires-at", "2099-01-01T00:00:00Z"),
         "give --ttl or --expires-at, not both"),
    ]:
        refused = cli(db_url, "state", "set", "report:7", '"changed"', *args)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    # Nothing was changed by the refused calls.
    assert [(k["key"], k["value"], k["expires_at"])
            for k in cli_json(db_url, "state", "list", "--prefix", "report:")["items"]] == [
        ("report:7", "ready", "2099-01-01T00:00:00Z"), ("report:8", 1, "2099-01-01T00:00:00Z")]
    # Set again without an expiry: the key no longer expires.
    cli(db_url, "state", "set", "report:7", '"kept"')
    assert cli_json(db_url, "state", "list", "--prefix", "report:7")["items"][0][
        "expires_at"] is None


def test_state_list_pages_keep_the_prefix_and_page_size(db_url: str, app: StackShift) -> None:
    odd = "imports:1\x1b[2J\nzz"  # the last key of the first page: the cursor of the next
    for key in ("imports:1", odd, "imports:2", "imports:3", "imports:4", "other"):
        app.state.set(key, 1)
    first = cli_json(db_url, "state", "list", "--prefix", "imports:", "--limit", "2")
    assert ([k["key"] for k in first["items"]], first["next_cursor"]) == (
        ["imports:1", odd], odd)
    rest = cli_json(db_url, "state", "list", "--prefix", "imports:", "--limit", "2",
                    "--cursor", first["next_cursor"])
    assert [k["key"] for k in rest["items"]] == ["imports:2", "imports:3"]
    last = cli_json(db_url, "state", "list", "--prefix", "imports:", "--limit", "2",
                    "--cursor", rest["next_cursor"])
    assert ([k["key"] for k in last["items"]], last["next_cursor"]) == (["imports:4"], None)

    # The text output ends with the command for the next page, run as printed.
    shown = cli(db_url, "state", "list", "--prefix", "imports:", "--limit", "2")
    pages, cursors = [], []
    while True:
        assert shown.returncode == 0, shown.stderr
        pages.append(shown.stdout)
        hint = shown.stdout.splitlines()[-1]
        if not hint.startswith("More: stackshift "):
            break
        assert "\x1b" not in hint  # the key's escape sequence is not sent to the terminal
        # What a shell makes of the command (bash reads $'...' as zsh does).
        words = json.loads(subprocess.run(
            ["bash", "-c", 'python3 -c "import json,sys; print(json.dumps(sys.argv[1:]))" '
             + hint.removeprefix("More: stackshift ")],
            capture_output=True, text=True, check=True).stdout)
        assert words[:-1] == ["state", "list", "--prefix", "imports:", "--limit", "2",
                              "--cursor"], hint
        cursors.append(words[-1])
        shown = cli(db_url, *words)
    assert cursors == [odd, "imports:3"]
    assert len(pages) == 3 and "imports:4" in pages[2]
    assert cli(db_url, "state", "list", "--cursor", "zzz").stdout == "No more state keys.\n"


def test_state_locks_lists_live_locks_page_by_page(db_url: str, app: StackShift) -> None:
    assert cli(db_url, "state", "locks").stdout == "No locks are held.\n"
    with app.state.lock("imports:1", ttl="1h") as first, app.state.lock("imports:2"), \
            app.state.lock("imports:3"), app.state.lock("other", ttl="1h"):
        app.state.set("imports:4", "a value, not a lock")
        page = cli_json(db_url, "state", "locks", "--prefix", "imports:", "--limit", "2")
        assert [k["key"] for k in page["items"]] == ["imports:1", "imports:2"]
        assert page["next_cursor"] == "imports:2"
        assert set(page["items"][0]) == {"key", "holder", "expires_at"}
        assert page["items"][0]["holder"] == first.holder  # this host and process
        expires = datetime.fromisoformat(page["items"][0]["expires_at"].replace("Z", "+00:00"))
        assert 3590 < expires.timestamp() - time.time() <= 3600
        rest = cli_json(db_url, "state", "locks", "--prefix", "imports:", "--limit", "2",
                        "--cursor", page["next_cursor"])
        assert ([k["key"] for k in rest["items"]], rest["next_cursor"]) == (["imports:3"], None)

        shown = cli(db_url, "state", "locks", "--prefix", "imports:", "--limit", "2")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].split() == ["KEY", "HELD", "BY", "EXPIRES"]
        assert lines[2].startswith("imports:1 ") and first.holder in lines[2]
        assert first.owner not in shown.stdout
        assert lines[-1] == ("More: stackshift state locks --prefix imports: --limit 2 "
                             "--cursor imports:2")
        assert cli(db_url, "state", "locks", "--cursor", "zzz").stdout == "No more locks.\n"
        refused = cli(db_url, "state", "locks", "--limit", "0")
        assert refused.returncode == 2 and "--limit" in refused.stderr
    assert cli_json(db_url, "state", "locks")["items"] == []  # released on exit


def test_state_unlock_breaks_a_lock_whatever_its_owner(db_url: str, app: StackShift) -> None:
    with app.state.lock("billing:close-month", ttl="1h") as stuck:
        app.state.set("billing:close-month", 7)
        done = cli(db_url, "state", "unlock", "billing:close-month")
        assert (done.returncode, done.stdout) == (0, "Broke the lock on 'billing:close-month'.\n")
        assert stuck.extend() is False  # its owner finds out
        # Like `state delete` of a missing key: exit 3.
        again = cli(db_url, "state", "unlock", "billing:close-month")
        assert again.returncode == 3
        assert "no live lock on key 'billing:close-month'" in again.stderr
        with app.state.lock("billing:close-month", ttl="1m"):
            assert cli_json(db_url, "state", "unlock", "billing:close-month") == {
                "key": "billing:close-month", "broken": True}
        refused = cli(db_url, "state", "unlock", "")
        assert refused.returncode == 2
        assert "state key must be a non-empty string" in refused.stderr
    assert stuck.lost is True
    assert app.state.get("billing:close-month") == 7  # the value under the key is left alone


def test_tables_show_users_text_as_it_is(db_url: str, app: StackShift) -> None:
    for key, value in [("a[/]b", "[/]"), ("[bold]z", "[red]x"), ("x\ny", 2)]:
        assert cli(db_url, "state", "set", key, json.dumps(value)).returncode == 0
    listed = cli(db_url, "state", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any("a[/]b" in line and '"[/]"' in line for line in lines), listed.stdout
    assert any("[bold]z" in line and '"[red]x"' in line for line in lines), listed.stdout
    assert any("x\\ny" in line for line in lines), listed.stdout  # one row, escaped
    assert len(lines) == 5  # header, rule, three keys

    @app.job("oddError", max_attempts=1)
    def odd_error(ctx: Any) -> None:
        raise NonRetriableError("bad index [/] in\nrow [x]")

    @app.job("oddResult")
    def odd_result(ctx: Any) -> str:
        return "[red]x[/]"

    run = app.start("oddError")
    done = app.start("oddResult")
    run_until_idle(app)
    for args in (["runs", "list"], ["runs", "show", run.id]):
        shown = cli(db_url, *args)
        assert shown.returncode == 0, (args, shown.stderr)
        assert "bad index [/] in" in shown.stdout, (args, shown.stdout)
    # The line a wait ends with shows them as they are too.
    waited = cli(db_url, "runs", "wait", run.id)
    assert waited.returncode == 1, waited.stderr
    assert (f"Run {run.id} failed on attempt 1 of 1: NonRetriableError: bad index [/] in"
            in waited.stdout), waited.stdout
    waited = cli(db_url, "runs", "wait", done.id)
    assert waited.returncode == 0, waited.stderr
    assert f'Run {done.id} completed: "[red]x[/]"' in waited.stdout, waited.stdout


def test_ctrl_c_on_a_wait_exits_130_not_as_a_failed_run(db_url: str, app: StackShift,
                                                        tmp_path: Path) -> None:
    """Exit 130; with --json, a wait prints the run as it stands first, as past its
    --timeout, so that a `start --wait --json` interrupted still gives its run's id."""
    run = app.start("neverTaken")  # no worker: the wait goes on until interrupted
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"n": 2}\n{"n": 3}\n', encoding="utf-8")
    for args in (["runs", "wait", run.id], ["runs", "logs", run.id, "--follow"],
                 ["runs", "wait", run.id, "--json"],
                 ["start", "neverTaken", '{"n": 1}', "--wait", "--json"],
                 ["start", "neverTaken", "--payloads", str(lines), "--wait", "--json"]):
        process = subprocess.Popen([*STACKSHIFT, *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=_env(db_url),
                                   preexec_fn=interruptible)
        started = len(every_run(app)) + (
            2 if "--payloads" in args else 1 if args[0] == "start" else 0)
        try:
            eventually(lambda n=started: len(every_run(app)) == n, what="the runs started")
            time.sleep(2.0)  # well into the wait
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 130, (args, out, err)
        assert "Traceback" not in err and "Aborted" not in err, (args, err)
        if "--json" in args:
            shown = json.loads(out)
            stood = shown if isinstance(shown, list) else [shown]
            assert [r["status"] for r in stood] == ["queued"] * len(stood), out
            assert [app.runs.get(r["id"]).job for r in stood] == ["neverTaken"] * len(stood)
            assert len(stood) == (2 if "--payloads" in args else 1)
    assert app.runs.get(run.id).status == "queued"


def test_the_line_a_wait_ends_with_gives_the_whole_result(db_url: str, app: StackShift) -> None:
    """A list's cell previews a result; the end of a wait is where a script or a
    user reads it, so it is whole, however long (up to 10,000 characters)."""
    @app.job("longResult")
    def long_result(ctx: Any) -> dict[str, Any]:
        return {"text": ctx.payload["text"], "end": "here"}

    text = "a fairly long sentence the job hands back to whoever waits for it " * 3
    done = app.start("longResult", {"text": text})
    huge = app.start("longResult", {"text": "x" * 20_000})
    run_until_idle(app)
    waited = cli(db_url, "runs", "wait", done.id)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == (
        f'Run {done.id} completed: {{"end": "here", "text": "{text}"}}'), waited.stdout
    waited = cli(db_url, "runs", "wait", huge.id)
    assert waited.returncode == 0, waited.stderr
    shown = waited.stdout.strip()
    assert shown.startswith(f'Run {huge.id} completed: {{"end": "here", "text": "xxx'), shown[:200]
    whole = len(json.dumps({"end": "here", "text": "x" * 20_000}))
    assert shown.endswith(f"… ({whole - 10_000:,} characters more: stackshift runs show"
                          f" {huge.id} --json gives it whole)"), shown[-200:]


def test_a_worker_on_a_terminal_shows_escape_sequences_in_records_not_obeys_them() -> None:
    """A handler's record or error holding a terminal reset (ESC c), a screen clear
    or a title change shows them escaped on the worker's terminal, its lines kept."""
    from rich.console import Console

    from stackshift.cli.worker import configure_logging

    screen = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("warning", Console(file=screen, force_terminal=True, width=200))
    try:
        logging.getLogger("shop").warning("A\x1bcB C\x1b[2JD E\x1b]0;PWNED\x07F\nnext line")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    shown = screen.getvalue()
    for raw in ("\x1bc", "\x1b[2J", "\x1b]0;", "\x07"):
        assert raw not in shown, shown
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)  # Rich's own colours
    assert "A\\x1bcB C\\x1b[2JD E\\x1b]0;PWNED\\x07F" in plain, plain
    assert re.search(r"\n +next line", plain), plain  # its own line, under the first


def test_escape_sequences_in_logs_and_errors_are_shown_not_obeyed(
    db_url: str, app: StackShift
) -> None:
    @app.job("ansiJob", max_attempts=1)
    def ansi_job(ctx: Any) -> None:
        ctx.log.warning("progress\x1b[2J 50%\nsecond line")
        raise NonRetriableError("upstream said \x1b[31mno")

    run = app.start("ansiJob")
    run_until_idle(app)
    for args in (["runs", "logs", run.id], ["runs", "show", run.id], ["runs", "wait", run.id]):
        shown = cli(db_url, *args)
        assert shown.returncode == (1 if args[1] == "wait" else 0), (args, shown.stderr)
        assert "\x1b" not in shown.stdout + shown.stderr, (args, shown.stdout, shown.stderr)
        expected = "progress\\x1b[2J 50%\nsecond line" if args[1] == "logs" else \
            "upstream said \\x1b[31mno"
        assert expected in shown.stdout, (args, shown.stdout)


def test_format_characters_in_values_are_printed_escaped_as_the_same_json(
    db_url: str, app: StackShift
) -> None:
    """U+202E reorders what a terminal shows after it: every view prints it as a
    ``\\u`` escape, and the JSON printed still reads back as the same value."""
    value = {"name": "invoice\u202egpj.exe", "note": "a\u200fb\u00a0c", "tag": "x\U000e0001y"}
    app.state.set("bidi", value)
    run = app.start("bidiJob", value)
    for args in (["state", "get", "bidi"], ["runs", "show", run.id],
                 ["runs", "show", run.id, "--json"], ["runs", "list", "--json"]):
        shown = cli(db_url, *args)
        assert shown.returncode == 0, (args, shown.stderr)
        for raw in ("\u202e", "\u200f", "\u00a0", "\U000e0001"):
            assert raw not in shown.stdout, (args, shown.stdout)
        assert "invoice\\u202egpj.exe" in shown.stdout, (args, shown.stdout)
    assert cli_json(db_url, "state", "get", "bidi") == value
    assert cli_json(db_url, "runs", "show", run.id)["payload"] == value


def test_runs_logs_prints_a_records_fields_after_its_first_line(
    db_url: str, app: StackShift
) -> None:
    """Fields show as ``name=value`` (a value with spaces, or not a string, as
    JSON) after the message's first line, before a traceback; ``--json`` gives
    them as an object, and the worker's own output shows them too."""
    @app.job("fieldsJob", max_attempts=1)
    def fields_job(ctx: Any) -> None:
        ctx.log.info("charging", extra={"order": "o-1", "note": "two words", "n": [1, 2]})
        try:
            raise KeyError("card")
        except KeyError:
            ctx.log.exception("declined", extra={"code": "51\x1b[2J"})

    run = app.start("fieldsJob")
    run_until_idle(app)
    shown = cli(db_url, "runs", "logs", run.id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].endswith(' stackshift.run: charging  order=o-1 note="two words" n=[1,2]')
    assert lines[1].endswith(" stackshift.run: declined  code=\"51\\u001b[2J\"")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "KeyError: 'card'"
    as_json = json.loads(cli(db_url, "runs", "logs", run.id, "--json").stdout)
    assert [e["fields"] for e in as_json] == [
        {"order": "o-1", "note": "two words", "n": [1, 2]}, {"code": "51\x1b[2J"}]


def test_run_tables_keep_every_runs_id_and_status_readable(db_url: str, app: StackShift) -> None:
    long_job = "invoice." + "x" * 110

    @app.job(long_job, max_attempts=1)
    def long_named(ctx: Any) -> None:
        raise NonRetriableError("the upstream refused the invoice: " + "detail " * 30)

    @app.job("chatty")
    def chatty(ctx: Any) -> dict[str, str]:
        return {"summary": "y" * 300}

    failed = app.start(long_job)
    completed = app.start("chatty")
    run_until_idle(app)
    expected = {failed.id: "failed", completed.id: "completed"}
    for columns in (None, 100, 80):
        for args in (["runs", "list"], ["queues", "dead-letters", "default"]):
            shown = cli(db_url, *args, columns=columns)
            assert shown.returncode == 0, (args, shown.stderr)
            rows = {line.split()[0]: line for line in shown.stdout.splitlines()[2:]}
            for run_id, status in expected.items():
                if args[0] == "queues" and status != "failed":
                    continue
                assert run_id in rows, (columns, args, shown.stdout)
                assert f" {status} " in rows[run_id], (columns, args, shown.stdout)
                if columns is not None:
                    assert all(len(line) <= columns for line in shown.stdout.splitlines())
            assert "invoice.xxx" in rows[failed.id], (columns, args, shown.stdout)
            if columns != 80:  # room for the error too, and at full width for the queue
                assert "NonRetriableError" in rows[failed.id], (columns, args, shown.stdout)
                assert (" default " in rows[failed.id]) == (columns is None)
            if columns is None:  # piped: every cell whole, nothing cut to a screen's width
                assert f" {long_job} " in rows[failed.id], shown.stdout
                assert ("detail " * 30).strip() in rows[failed.id], shown.stdout
                assert "…" not in rows[failed.id], shown.stdout


def test_state_and_event_tables_keep_values_whole_unless_a_screen_is_narrower(
    db_url: str, app: StackShift
) -> None:
    """Piped, a long state value or event payload is whole on its row (``| grep``
    finds it); on a screen it is shortened to the screen's width."""
    value = {"note": "v" * 300}
    app.state.set("long", value)
    app.events.send("order.noted", value)
    whole = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    for args in (["state", "list"], ["events", "list"]):
        piped = cli(db_url, *args)
        assert piped.returncode == 0, piped.stderr
        assert whole in piped.stdout and "…" not in piped.stdout, piped.stdout
        narrow = cli(db_url, *args, columns=80)
        if args[0] == "state":  # the event's id, name and time take more than 80 cells
            assert all(len(line) <= 80 for line in narrow.stdout.splitlines()), narrow.stdout
        assert whole not in narrow.stdout and '{"note": "v' in narrow.stdout, narrow.stdout
        assert "…" in narrow.stdout, narrow.stdout


def test_run_tables_measure_wide_characters_by_the_cells_they_take(
    db_url: str, app: StackShift
) -> None:
    from rich.cells import cell_len

    @app.job("order.processing." + "x" * 50, queue="fulfilment-" + "q" * 30, max_attempts=1)
    def wide_error(ctx: Any) -> None:
        raise NonRetriableError("失敗しました 😀 倉庫が応答しません")

    run = app.start("order.processing." + "x" * 50)
    run_until_idle(app)
    for columns in (None, 100):
        for args in (["runs", "list"], ["queues", "dead-letters", "fulfilment-" + "q" * 30]):
            shown = cli(db_url, *args, columns=columns)
            assert shown.returncode == 0, (args, shown.stderr)
            row = shown.stdout.splitlines()[2]
            assert row.split()[0] == run.id, (columns, args, shown.stdout)
            assert " failed " in row and " 1/1 " in row, (columns, args, shown.stdout)
            assert "NonRetriableError: 失敗" in row, (columns, args, shown.stdout)
            if columns is not None:
                assert all(cell_len(line) <= columns for line in shown.stdout.splitlines())
            else:
                assert "失敗しました 😀 倉庫が応答しません" in row, shown.stdout


def test_a_narrow_run_table_shortens_job_names_only_for_a_detail_column_it_shows(
    db_url: str, app: StackShift
) -> None:
    """80 columns leave no room for the detail beside the id, job, status,
    attempt and age: the job's name, which fits, is shown whole. At 90 the
    detail fits once the name gives way, as names do before the detail."""

    @app.job("userOnboarding")
    def onboarding(ctx: Any) -> dict[str, str]:
        return {"welcomed": "ada@example.com", "note": "x" * 40}

    run = app.start("userOnboarding")
    run_until_idle(app)
    narrow = cli(db_url, "runs", "list", columns=80).stdout.splitlines()
    assert narrow[0].split() == ["RUN", "JOB", "STATUS", "ATT", "AGE"], narrow
    assert narrow[2].split()[:3] == [run.id, "userOnboarding", "completed"], narrow
    assert all(len(line) <= 80 for line in narrow), narrow
    wider = cli(db_url, "runs", "list", columns=90).stdout.splitlines()
    assert wider[0].split()[-1] == "DETAIL", wider
    assert wider[2].split()[:3] == [run.id, "userOnboard…", "completed"], wider
    assert '{"note": "xx' in wider[2] and all(len(line) <= 90 for line in wider), wider


def test_keys_list_reads_like_the_other_tables(db_url: str) -> None:
    from rich.cells import cell_len

    for name in ("請求サービス", "billing"):
        assert cli(db_url, "keys", "create", "--name", name).returncode == 0
    listed = cli_json(db_url, "keys", "list")
    raw = cli(db_url, "keys", "list", "--json").stdout
    assert '"name": "請求サービス"' in raw, raw  # as written, as in every command's JSON
    shown = cli(db_url, "keys", "list")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    for key in listed:
        line = next(line for line in lines if line.startswith(key["id"]))
        # Times as in every other table (runs show, schedules, events, state).
        created = datetime.fromisoformat(key["created_at"])
        assert f" {created.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}Z " in line, line
        # The columns line up however wide the name's characters are.
        prefix_at = line.index(key["prefix"])
        assert cell_len(line[:prefix_at]) == lines[0].index("PREFIX"), shown.stdout


def test_queue_throughput_reads_zero_only_when_nothing_finished(
    db_url: str, app: StackShift
) -> None:
    @app.job("nightly-report", queue="reports")
    def nightly_report(ctx: Any) -> str:
        return "sent"

    app.start("nightly-report")
    app.start("nightly-report")
    run_until_idle(app)
    shown = cli(db_url, "queues", "show", "reports", "--window", "7d")
    assert shown.returncode == 0, shown.stderr
    # 2 runs in a week is 0.0002 a minute: not none. The window reads as given.
    assert "last 7d  " in shown.stdout, shown.stdout
    assert "2 completed, 0 failed (<0.1/min, failure rate 0%)" in shown.stdout, shown.stdout
    listed = cli(db_url, "queues", "list", "--window", "7d")
    row = next(line for line in listed.stdout.splitlines() if line.startswith("reports "))
    assert row.split()[-3:] == ["<0.1", "0%", "-"], listed.stdout
    hour = cli(db_url, "queues", "show", "reports", "--window", "90m").stdout
    assert "last 1h30m  " in hour, hour
    # A bare number is seconds, as for every other duration option.
    seconds = cli(db_url, "queues", "show", "reports", "--window", "5400")
    assert seconds.returncode == 0, seconds.stderr
    assert "last 1h30m  " in seconds.stdout, seconds.stdout


# -- stackshift worker ----------------------------------------------------------------------

WORKER_APP = """
    import time

    from stackshift import NonRetriableError, Settings, StackShift

    app = StackShift()

    @app.job("add")
    def add(ctx):
        return ctx.step.run("sum", lambda a, b: a + b, ctx.payload["a"], ctx.payload["b"])

    @app.job("boom", max_attempts=1)
    def boom(ctx):
        raise NonRetriableError("boom")

    @app.job("slow")
    def slow(ctx):
        ctx.step.run("nap", time.sleep, ctx.payload["seconds"])
        return "rested"
"""


def _stop(process: subprocess.Popen[str], sig: int, timeout: float) -> int:
    process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(
            f"the process did not exit within {timeout}s of signal {sig}"
        ) from None


def test_a_worker_whose_sqlite_file_is_deleted_says_so_and_stops(tmp_path: Path) -> None:
    """Deleted under a running worker, the file is no longer the database other
    processes use (a command that starts a run makes a new one): the worker says
    so and exits 1, rather than go on, unseen, writing where nobody reads."""
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(WORKER_APP))
    db = tmp_path / "jobs.db"
    url = f"sqlite:///{db}"
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen([*STACKSHIFT, "worker", f"{app_file}:app", "--db", url],
                                  stdout=log, stderr=subprocess.STDOUT, text=True,
                                  env=_env(None), cwd=tmp_path)
        try:
            eventually(lambda: "Stop with" in log_path.read_text(), what="the banner")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            assert worker.wait(timeout=30) == 1
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    output = log_path.read_text()
    assert f"its database file {db} was deleted; stopping" in output, output
    assert f"stopped: its database file {db} was deleted" in output, output
    assert "Traceback" not in output


def _stop_after_banner(process: subprocess.Popen[str], log_path: Path, banner: str,
                       what: str) -> None:
    """Wait for ``banner`` in the process's log, then stop it with SIGTERM (exit 0);
    kill it if it is still alive after all."""
    try:
        eventually(lambda: banner in log_path.read_text(), what=what)
        assert _stop(process, signal.SIGTERM, timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_worker_executes_runs_and_stops_gracefully_on_sigterm(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(WORKER_APP))
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [*STACKSHIFT, "worker", f"{app_file}:app", "--concurrency", "2",
         "--database-url", db_url],
        stdout=log, stderr=subprocess.STDOUT, text=True, env=_env(None), cwd=tmp_path,
    )
    try:
        added = cli_json(db_url, "start", "add", '{"a": 1, "b": 2}', "--wait", "--timeout", "30s")
        assert (added["status"], added["result"]) == ("completed", 3)
        failed = cli(db_url, "start", "boom", "--wait", "--timeout", "30s")
        assert failed.returncode == 1 and "NonRetriableError: boom" in failed.stdout
        again = cli_json(db_url, "runs", "again", added["id"], "--wait", "--timeout", "30s")
        assert again["id"] != added["id"]
        assert (again["status"], again["result"], again["payload"]) == (
            "completed", 3, {"a": 1, "b": 2})

        slow = app.start("slow", {"seconds": 1.0})
        eventually(lambda: app.runs.get(slow.id).status == "running", what="slow run to start")
        assert _stop(worker, signal.SIGTERM, timeout=20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
    # The attempt in progress at SIGTERM was allowed to finish.
    assert app.runs.get(slow.id).status == "completed"
    output = (tmp_path / "worker.log").read_text()
    assert "3 job(s) (add, boom, slow)" in output and "stopped" in output


@contextmanager
def _worker_on_a_slow_run(db_url: str, app: StackShift, tmp_path: Path, grace: str,
                          output: Any) -> Iterator[tuple[subprocess.Popen[str], Any]]:
    """`stackshift worker` on WORKER_APP with ``--shutdown-grace grace``, both its
    outputs to ``output``, running a run of 60 s; killed at the end if still up."""
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(WORKER_APP))
    worker = subprocess.Popen(
        [*STACKSHIFT, "worker", f"{app_file}:app", "--shutdown-grace", grace,
         "--database-url", db_url],
        stdout=output, stderr=subprocess.STDOUT, text=True, env=_env(None), cwd=tmp_path,
    )
    try:
        slow = app.start("slow", {"seconds": 60})
        eventually(lambda: app.runs.get(slow.id).status == "running",
                   what="slow run to start")
        yield worker, slow
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_ctrl_c_twice_stops_the_worker_at_once_and_hands_its_run_back(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log, _worker_on_a_slow_run(
            db_url, app, tmp_path, "60s", log) as (worker, slow):
        worker.send_signal(signal.SIGINT)
        eventually(lambda: "signal again" in log_path.read_text(), what="the grace notice")
        signalled = time.monotonic()
        assert _stop(worker, signal.SIGINT, timeout=15) == 0
        assert time.monotonic() - signalled < 8
    output = log_path.read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert "waiting up to 60s for 1 running attempt(s) to finish" in output, output
    assert f"run {slow.id}: still running when the worker stopped; handed back" in output
    assert "stopped." in output
    released = app.runs.get(slow.id)
    assert (released.status, released.attempt) == ("queued", 1)


def test_sighup_stops_the_worker_as_sigterm_does_and_hands_its_run_back(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """A closed terminal or a dropped ssh session (SIGHUP) stops the worker cleanly:
    the run still running is handed back with its attempt, not left leased by a
    process killed by the signal (the next worker would count a lost attempt)."""
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log, _worker_on_a_slow_run(
            db_url, app, tmp_path, "1s", log) as (worker, slow):
        assert _stop(worker, signal.SIGHUP, timeout=20) == 0
    output = log_path.read_text()
    assert "Traceback" not in output, output
    assert f"run {slow.id}: still running when the worker stopped; handed back" in output
    released = app.runs.get(slow.id)
    assert (released.status, released.attempt) == ("queued", 1)


def test_a_worker_whose_output_was_closed_still_exits_0_on_a_clean_stop(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """`stackshift worker ... 2>&1 | head -1`, or a log collector that died: the
    worker goes on, and once stopped as asked (its run handed back) it exits 0;
    the lines it could not print fail nothing."""
    with _worker_on_a_slow_run(db_url, app, tmp_path, "0.5s",
                               subprocess.PIPE) as (worker, slow):
        assert worker.stdout is not None
        assert "Stop with Ctrl-C or SIGTERM" in worker.stdout.readline()
        worker.stdout.close()  # as `head -1` does after its line
        assert _stop(worker, signal.SIGTERM, timeout=20) == 0
    released = app.runs.get(slow.id)
    assert (released.status, released.attempt) == ("queued", 1)


def test_the_worker_banner_and_migrate_do_not_print_the_database_password(tmp_path: Path) -> None:
    import psycopg

    server = os.environ.get("STACKSHIFT_TEST_POSTGRES_URL",
                            "postgresql://postgres@127.0.0.1:5432/test")
    schema = f"t_{os.urandom(6).hex()}"
    parts = urlsplit(server)  # the test server trusts any password
    url = urlunsplit(parts._replace(netloc=f"{parts.username}:hunter2-s3cret@"
                                           f"{parts.netloc.rsplit('@', 1)[-1]}",
                                    query=f"schema={schema}"))
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(WORKER_APP))
    log_path = tmp_path / "worker.log"
    try:
        with log_path.open("w") as log:
            worker = subprocess.Popen(
                [*STACKSHIFT, "worker", f"{app_file}:app", "--database-url", url,
                 "--queues", "default, mail,default"],
                stdout=log, stderr=subprocess.STDOUT, text=True, env=_env(None), cwd=tmp_path)
            _stop_after_banner(worker, log_path, "Stop with", "the banner")
        banner = " ".join(log_path.read_text().split())
        assert "queues default, mail, concurrency" in banner, banner  # each queue once
        assert "hunter2" not in banner, banner
        assert f"database postgresql://{parts.username}:***@" in banner, banner
        # Nor does `migrate --json`, which a deploy runs and logs.
        migrated = cli(url, "migrate", "--json")
        assert migrated.returncode == 0, migrated.stderr
        assert json.loads(migrated.stdout)["database_url"].startswith(
            f"postgresql://{parts.username}:***@"), migrated.stdout
        assert "hunter2" not in migrated.stdout + migrated.stderr
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


LONG_NAMED_APP = """
    from stackshift import NonRetriableError, Settings, StackShift

    app = StackShift()

    for name in ("send-the-verification-email-to-a-newly-registered-customer",
                 "synchronise-every-open-invoice-with-the-general-ledger",
                 "build-the-monthly-revenue-report-for-the-finance-team"):
        @app.job(name, max_attempts=1)
        def refuse(ctx):
            ctx.log.warning("refusing\\n\\x1b[31mfor now\\x1b[0m",
                            extra={"upstream": "ledger", "tries": [1, 2]})
            raise NonRetriableError("the upstream service refused the request:\\n" + "why " * 40)
"""
LONG_NAMES = ("build-the-monthly-revenue-report-for-the-finance-team, "
              "send-the-verification-email-to-a-newly-registered-customer, "
              "synchronise-every-open-invoice-with-the-general-ledger")


class _Piped:
    """A ``stackshift`` process with its stdout and stderr on pipes, as under a log
    collector or systemd; the lines each has written so far."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen([*STACKSHIFT, *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=_env(None),
                                        cwd=cwd)
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._readers = [threading.Thread(target=self._read, args=(name,), daemon=True)
                         for name in self.lines]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        for line in getattr(self.process, name):
            self.lines[name].append(line)

    def line_with(self, name: str, text: str) -> str:
        return eventually(lambda: next((line for line in self.lines[name] if text in line), ""),
                          what=f"{text!r} on {name}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        try:
            return _stop(self.process, sig, timeout=20)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for reader in self._readers:
                reader.join(timeout=10)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()


def test_piped_worker_lines_stay_whole_for_log_collectors(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """Not on a terminal, each status line is one line, however long, with no
    escape codes: a log collector gets one record per message. A failed attempt
    is one of them, and so is a record the handler logged, its fields included,
    its newline and escape sequence shown escaped."""
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(LONG_NAMED_APP))
    worker = _Piped("worker", f"{app_file}:app", "--database-url", db_url, cwd=tmp_path)
    try:
        banner = worker.line_with("stderr", "worker wkr_")
        # The banner comes once the worker has recorded its jobs: this client,
        # without their code, starts the run with the job's budget (1).
        run = app.start("synchronise-every-open-invoice-with-the-general-ledger")
        failed = worker.line_with("stderr", f"{run.id}: failed for good")
    finally:
        assert worker.stop() == 0
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d  WARNING synchronise-every-open-invoice-with-the-general-ledger "
        rf"{run.id}: refusing\\n\\x1b\[31mfor now\\x1b\[0m  upstream=ledger tries=\[1,2\]"
        r"  \[stackshift\.run\]\n",
        worker.line_with("stderr", "refusing")), worker.lines
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d  ERROR   synchronise-every-open-invoice-with-the-general-ledger "
        rf"{run.id}: failed for good on attempt 1 of 1: NonRetriableError: the upstream "
        rf"service refused the request: {('why ' * 40).strip()}  \[stackshift\.attempts\]\n",
        failed), failed
    assert banner.startswith("worker wkr_") and f"3 job(s) ({LONG_NAMES})" in banner, banner
    assert banner.rstrip("\n").endswith("Stop with Ctrl-C or SIGTERM."), worker.lines
    shown = "".join(worker.lines["stdout"] + worker.lines["stderr"])
    assert "\x1b" not in shown, shown
    assert [line for line in worker.lines["stderr"] if line.startswith("worker wkr_")] == [
        banner, f"{banner.split(':')[0]}: stopped.\n"], worker.lines


def test_a_record_whose_arguments_do_not_fit_its_message_is_one_worker_line(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """`log.warning("charged %d cents", "12")`: the worker prints the record as the
    run's logs keep it, on one line, not a "Logging error" of many lines."""
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent("""
        from stackshift import StackShift

        app = StackShift()

        @app.job("charge")
        def charge(ctx):
            ctx.log.warning("charged %d cents", "12")
            return "charged"
    """))
    worker = _Piped("worker", f"{app_file}:app", "--database-url", db_url, cwd=tmp_path)
    try:
        worker.line_with("stderr", "worker wkr_")
        run = app.start("charge")
        assert app.runs.wait(run.id, timeout="20s").status == "completed"
        line = worker.line_with("stderr", "charged %d cents")
    finally:
        assert worker.stop() == 0
    assert line.endswith(
        f"WARNING charge {run.id}: charged %d cents\\n[formatting the message failed: "
        "TypeError: %d format: a real number is required, not str; its arguments: "
        "('12',)]  [stackshift.run]\n"), line
    shown = "".join(worker.lines["stderr"])
    assert "Logging error" not in shown and "Traceback" not in shown, shown


def test_piped_dev_lines_stay_whole_for_log_collectors(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(LONG_NAMED_APP))
    dev = _Piped("dev", f"{app_file}:app", "--db", db_url, "--no-dashboard", "--no-seed",
                 cwd=tmp_path)
    try:
        services = dev.line_with("stdout", "  worker ")
        dev.line_with("stdout", "Stop with Ctrl-C")
        run = app.start("synchronise-every-open-invoice-with-the-general-ledger")
        change = dev.line_with("stdout", f"{run.id}  synchronise-every-open-invoice")
        eventually(lambda: app.runs.get(run.id).status == "failed", what="the run to fail")
        failed = dev.line_with("stdout", "  failed  ")
    finally:
        assert dev.stop(signal.SIGINT) == 0
    assert f"jobs: {LONG_NAMES}\n" in services, services
    assert re.match(rf"\d\d:\d\d:\d\d  {run.id}  synchronise-every-open-invoice-with-the-"
                    r"general-ledger  (queued|running|failed)  ", change), change
    # The board's change line for the failed run keeps its whole error on that line,
    # its newline shown escaped.
    assert failed.rstrip().endswith("request:\\n" + ("why " * 40).strip()), failed
    assert "…" not in failed, failed
    shown = "".join(dev.lines["stdout"] + dev.lines["stderr"])
    assert "\x1b" not in shown, shown
    # The board says how attempts end: the worker's records of them are not repeated.
    assert "[stackshift.attempts]" not in shown and "failed for good" not in shown, shown


def test_dev_whose_output_was_closed_goes_on_and_exits_0_when_stopped(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """`stackshift dev app.py | head -3`, or a log collector that died: dev goes on
    running runs, quiet, as a worker does, and stops as asked with exit 0, not
    exit 1 at the board's next line, nor a "Logging error" per record."""
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(LONG_NAMED_APP))
    err_path = tmp_path / "dev.err"
    with err_path.open("w") as err:
        dev = subprocess.Popen(
            [*STACKSHIFT, "dev", f"{app_file}:app", "--db", db_url, "--no-dashboard",
             "--no-seed"], stdout=subprocess.PIPE, stderr=err, text=True, env=_env(None),
            cwd=tmp_path)
        try:
            assert dev.stdout is not None
            assert "StackShift dev" in dev.stdout.readline()
            dev.stdout.close()  # as `head -1` does after its line
            runs = [app.start("synchronise-every-open-invoice-with-the-general-ledger")
                    for _ in range(3)]
            for run in runs:  # each logs a record and fails: lines the board cannot print
                eventually(lambda run=run: app.runs.get(run.id).status == "failed",
                           what="dev to go on running runs")
            assert dev.poll() is None
            assert _stop(dev, signal.SIGTERM, timeout=20) == 0
        finally:
            if dev.poll() is None:
                dev.kill()
                dev.wait()
    shown = err_path.read_text()
    assert "Traceback" not in shown and "Logging error" not in shown, shown


def test_a_worker_on_a_file_that_is_not_a_database_says_so_in_a_line(tmp_path: Path) -> None:
    # No fault of the app's code: no traceback of its import, as for a missing folder.
    (tmp_path / "notes.txt").write_text("shopping list\n")
    (tmp_path / "tasks.py").write_text(textwrap.dedent(WORKER_APP))
    for command in ("worker", "dev"):
        done = subprocess.run(
            [*STACKSHIFT, command, "tasks.py:app", "--db", "sqlite:///notes.txt"],
            capture_output=True, text=True, env=_env(None), cwd=tmp_path, timeout=60)
        assert done.returncode == 1, done.stderr
        assert done.stderr == (
            f"error: importing {tmp_path / 'tasks.py'} failed: the database sqlite:///notes.txt"
            " could not be opened: DatabaseError: file is not a database: notes.txt (set"
            " STACKSHIFT_DEBUG=1 for the traceback)\n"), done.stderr
    assert (tmp_path / "notes.txt").read_text() == "shopping list\n"


def test_worker_refuses_an_app_it_cannot_find(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "nojobs.py").write_text("from stackshift import StackShift\nx = 1\n"
                                        "app = StackShift()\n")
    cases = [
        ([str(tmp_path / "missing.py")], "no such file"),
        ([f"{tmp_path / 'nojobs.py'}:x"], "x is an int, not a StackShift"),
        ([str(tmp_path / "nojobs.py")], "defines no jobs"),
        (["no_such_module_here:app"], "cannot import module"),
        (["", "--lease", "1m"], "'' is not a module name"),
        ([".shop"], "'.shop' is not a module name"),
        ([str(SHOP), "--lease", "0s"], "error: --lease must be at least 1s"),
        ([str(SHOP), "--lease", "0.5"], "error: --lease must be at least 1s"),
        ([str(SHOP), "--queues", "bad_q!"], "queue name 'bad_q!' is invalid"),
    ]
    for args, message in cases:
        done = cli(db_url, "worker", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_a_database_the_app_cannot_open_is_named_not_blamed_on_the_apps_code(
        tmp_path: Path) -> None:
    """The app's client opens the database as the app is imported: a wrong --db
    is said to be the database's fault, with no traceback through the app, and
    an error in the app's own code keeps its traceback."""
    for url in (f"sqlite:///{tmp_path}/no/such/folder/x.db",
                "postgresql://postgres@127.0.0.1:1/nowhere"):
        done = cli(None, "worker", str(SHOP), "--db", url)
        assert done.returncode == 1, (url, done.stderr)
        assert (f"error: importing {SHOP} failed: the database {url} could not be opened:"
                f" OperationalError: ") in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("from stackshift import StackShift\napp = StackShift()\n1 / 0\n")
    done = cli(f"sqlite:///{tmp_path}/ok.db", "worker", str(broken))
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and 'broken.py", line 3' in done.stderr, done.stderr
    assert f"error: importing {broken} failed: ZeroDivisionError" in done.stderr, done.stderr


# -- stackshift dev ---------------------------------------------------------------------------


def _demo_receipt(app: StackShift) -> Any:
    page = app.runs.list(idempotency_key="demo:receipt:order_1001")
    return page.items[0] if page.items else None


def _start_dev(db_url: str, cwd: Path, log_name: str) -> tuple[subprocess.Popen[str], Path]:
    log_path = cwd / log_name
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*STACKSHIFT, "dev", str(SHOP), "--db", db_url, "--concurrency", "4"],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=_env(None), cwd=cwd,
        )
    return process, log_path


def test_dev_runs_the_example_shop_and_exits_cleanly_on_ctrl_c(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    dev, log_path = _start_dev(db_url, tmp_path, "dev.log")
    try:
        receipt = eventually(
            lambda: (r := _demo_receipt(app)) is not None and r.status == "completed" and r,
            timeout=30, what="the demo sendReceipt run to complete",
        )
        # The simulated mail outage failed the first attempt; the retry completed.
        assert receipt.attempt == 2 and receipt.result["sent"] is True
        onboarding = eventually(
            lambda: (r := app.runs.list(idempotency_key="demo:onboarding:42").items)
            and r[0].status == "waiting" and r[0],
            what="the demo onboarding run to wait for its event",
        )
        sent = cli_json(db_url, "events", "send", "email.verified", '{"userId": "42"}',
                        "--correlation-key", "user:42")
        assert sent["resumed_run_ids"] == [onboarding.id]
        done = app.runs.wait(onboarding.id, timeout=30)
        assert (done.status, done.result) == ("completed", {"onboarded": True})
        assert _stop(dev, signal.SIGINT, timeout=20) == 0
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    output = log_path.read_text()
    assert "stackshift start sendReceipt" in output  # the banner's hint
    # The banner comes first: the worker starts, and logs, only after it.
    assert output.index("Stop with Ctrl-C") < output.index("loading order order_1001")
    # The handler's log line comes after the board's line for the attempt that logged it.
    assert (output.index(f"{receipt.id}  sendReceipt  running  attempt 1/5")
            < output.index("loading order order_1001")), output
    assert "events send email.verified" in output
    assert f"{receipt.id}  sendReceipt  completed" in output  # the board's change lines
    assert "Stopped." in output and "Traceback" not in output

    # A restart seeds nothing new: the demo runs carry idempotency keys.
    before = len(app.runs.list(limit=1000).items)
    again, again_log = _start_dev(db_url, tmp_path, "dev-again.log")
    _stop_after_banner(again, again_log, "Stop with Ctrl-C", "the dev banner")
    assert len(app.runs.list(limit=1000).items) == before
    assert len(app.runs.list(job="sendReceipt").items) == 1


def test_dev_ctrl_c_twice_hands_running_runs_back_at_once(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(WORKER_APP))
    log_path = tmp_path / "dev.log"
    with log_path.open("w") as log:
        dev = subprocess.Popen(
            [*STACKSHIFT, "dev", f"{app_file}:app", "--db", db_url, "--no-dashboard",
             "--no-seed"],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=_env(None), cwd=tmp_path,
        )
    try:
        eventually(lambda: "Stop with Ctrl-C" in log_path.read_text(), what="the dev banner")
        slow = app.start("slow", {"seconds": 60})
        eventually(lambda: app.runs.get(slow.id).status == "running", what="slow run to start")
        dev.send_signal(signal.SIGINT)
        eventually(lambda: "Ctrl-C again" in log_path.read_text(), what="the stopping notice")
        assert _stop(dev, signal.SIGINT, timeout=15) == 130
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    output = log_path.read_text()
    assert "Traceback" not in output, output
    assert "they were handed back to their queue" in output, output
    # Handed back, not left leased until its lease runs out (and then a lost attempt).
    released = app.runs.get(slow.id)
    assert (released.status, released.attempt) == ("queued", 1)


def test_a_database_file_that_cannot_be_opened_is_named_in_the_error(tmp_path: Path) -> None:
    """Its folder missing: a read command refuses it as bad input (2), one that would
    create it fails to open it (1); each names the file and the folder."""
    missing = tmp_path / "no-such-folder" / "app.db"
    done = cli(f"sqlite:///{missing}", "runs", "list")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"no database at {missing}" in done.stderr
    assert f"there is no folder {missing.parent}" in done.stderr
    done = cli(f"sqlite:///{missing}", "start", "report")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"unable to open database file: {missing}" in done.stderr
    assert f"there is no folder {missing.parent}" in done.stderr
    assert not missing.parent.exists()


def test_json_from_stdin_that_is_empty_or_not_utf8_is_refused_saying_so(db_url: str) -> None:
    def start(data: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*STACKSHIFT, "start", "fromStdin", "-"], input=data,
                              capture_output=True, timeout=60, env=_env(db_url))

    assert cli(db_url, "migrate").returncode == 0
    for data, said in [(b"", "PAYLOAD_JSON read from stdin is empty"),
                       (b"  \n", "PAYLOAD_JSON read from stdin is empty"),
                       (b'{"a": "caf\xe9"}', "PAYLOAD_JSON read from stdin is not UTF-8 text"
                                            " (byte 11 is 0xe9)")]:
        done = start(data)
        assert (done.returncode, said in done.stderr.decode()) == (2, True), done.stderr
    assert cli_json(db_url, "runs", "list", "--job", "fromStdin")["items"] == []
    started = start(b'\xef\xbb\xbf{"a": "caf\xc3\xa9"}')  # UTF-8, with a byte order mark
    assert started.returncode == 0, started.stderr
    assert [r["payload"] for r in cli_json(db_url, "runs", "list", "--job", "fromStdin")[
        "items"]] == [{"a": "café"}]


def test_a_file_that_is_not_a_database_is_named_in_the_error(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("not a database\n")
    done = cli(f"sqlite:///{other}", "runs", "list")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"file is not a database: {other}" in done.stderr
    assert other.read_text() == "not a database\n"


def test_a_command_that_reads_refuses_a_database_file_that_does_not_exist(
        tmp_path: Path) -> None:
    """A mistyped --db, or a command run in another folder, is said so: not an empty
    installation made on the spot and answered as if it had nothing yet."""
    missing = tmp_path / "typo.db"
    url = f"sqlite:///{missing}"
    for args in (["runs", "list"], ["runs", "show", "run_x"], ["runs", "cancel", "run_x"],
                 ["events", "list"], ["state", "get", "k"], ["queues", "list"],
                 ["schedules", "list"], ["keys", "list"], ["endpoints", "list"]):
        done = cli(url, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert f"no database at {missing} ({url})" in done.stderr
        assert "`stackshift migrate` creates a new one" in done.stderr
    assert list(tmp_path.iterdir()) == []
    # A command that makes something creates the file, as the SDK does.
    assert cli(url, "state", "set", "k", "1").returncode == 0
    assert cli(url, "state", "get", "k").stdout.strip() == "1"


def test_a_relative_sqlite_url_meant_as_absolute_gets_the_four_slash_form(tmp_path: Path) -> None:
    """sqlite:///tmp/x/app.db is tmp/x/app.db under the current folder: say so, a
    read command refusing it as bad input (2), one that would create it failing to
    (1), nothing created by either."""
    relative = str(tmp_path / "app.db").lstrip("/")
    for args, code in ((["runs", "list"], 2), (["start", "report"], 1)):
        done = subprocess.run(
            [*STACKSHIFT, *args],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env=_env(f"sqlite:///{relative}"))
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert f"there is no folder {tmp_path}/{Path(relative).parent}" in done.stderr
        assert f"write sqlite:////{relative}, with four slashes" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_stackshift_is_the_command(db_url: str) -> None:
    started = subprocess.run(
        [sys.executable, "-m", "stackshift", "start", "someJob", '{"n": 1}', "--json"],
        capture_output=True, text=True, timeout=60, env=_env(db_url))
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    assert cli_json(db_url, "runs", "show", run["id"])["status"] == "queued"


def _header_and_rows(shown: str) -> tuple[str, list[str]]:
    """A table's header (the lines above its rule, when a header wraps) and the
    lines below."""
    lines = shown.splitlines()
    rule = next(at for at, line in enumerate(lines) if line.strip() and set(line) <= {"─"})
    return " ".join(lines[:rule]), lines[rule + 1:]


def test_narrow_terminals_get_every_column_and_every_id_whole(
    db_url: str, app: StackShift
) -> None:
    """On a screen too narrow for a table, free text gives way (wrapped, or
    shortened with …), and ids, keys, names and URLs stay whole on one line,
    pushing the table past the screen's edge if they must; no column is left out."""
    long_job = "billing.reconcile-invoices-for-the-european-region"
    long_queue = "fulfilment-warehouse-priority-" + "q" * 20
    step_key = "charge-card-of-customer-0000000042-for-invoice-0000017"

    @app.job(long_job, queue=long_queue, max_attempts=1)
    def reconcile(ctx: Any) -> None:
        ctx.step.run(step_key, lambda: {"summary": "y" * 200})
        raise NonRetriableError("the card processor refused the charge: " + "details " * 12)

    run = app.start(long_job, {"customer": "c" * 80})
    run_until_idle(app)
    key_name = "billing-service-for-the-european-region-and-its-partners"
    assert cli(db_url, "keys", "create", "--name", key_name).returncode == 0
    [listed_key] = cli_json(db_url, "keys", "list")
    url = "https://app.example.com/api/stackshift/handlers/push/for/the/european/region/"
    assert cli(db_url, "endpoints", "add", url, "--jobs",
               f"{long_job},userOnboarding,sendReceipt").returncode == 0
    [endpoint] = cli_json(db_url, "endpoints", "list")
    schedule = cli_json(db_url, "schedules", "create", long_job, "--cron", "*/5 * * * *",
                        "--timezone", "America/Argentina/ComodRivadavia")
    state_key = "imports:customer-0000000042:progress:phase-two:batch-000017"
    assert cli(db_url, "state", "set", state_key, json.dumps({"note": "z" * 90})).returncode == 0
    event_name = "email.verified.for.the.european.region"
    correlation = "user:0000000000000000000000000000000042"
    sent = cli_json(db_url, "events", "send", event_name, json.dumps({"userId": "4" * 70}),
                    "--correlation-key", correlation)
    [attempt] = app.runs.attempts(run.id)
    tables: list[tuple[list[str], list[str], list[str]]] = [
        (["keys", "list"], ["ID", "NAME", "PREFIX", "CREATED", "LAST USED", "STATUS"],
         [listed_key["id"], listed_key["prefix"]]),
        (["endpoints", "list"], ["ID", "URL", "CONCURRENCY", "JOBS", "CREATED"],
         [endpoint["id"], url, long_job]),
        (["schedules", "list"], ["SCHEDULE", "JOB", "CRON", "TZ", "STATE", "NEXT RUN",
                                 "LAST RUN", "LAST", "LAST ERROR"],
         [schedule["id"], long_job, "*/5 * * * *", "America/Argentina/ComodRivadavia"]),
        (["state", "list"], ["KEY", "VALUE", "EXPIRES"], [state_key]),
        (["events", "list"], ["EVENT", "NAME", "CORRELATION KEY", "AGE", "PAYLOAD"],
         [sent["id"], event_name, correlation]),
        (["queues"], ["QUEUE", "STATE", "WORKERS", "LIMITS", "QUEUED", "RUNNING", "WAITING",
                      "FAILED", "PER MIN", "FAIL %", "OLDEST"], [long_queue]),
        (["runs", "timeline", run.id], ["OFFSET", "EVENT", "STEP", "ATTEMPT", "DETAILS"],
         [step_key]),
    ]
    with app.state.lock("lock:" + state_key, ttl="1h"):
        for columns in (80, 60):
            for args, headers, whole in [
                *tables, (["state", "locks"], ["KEY", "HELD BY", "EXPIRES"],
                          ["lock:" + state_key]),
            ]:
                shown = cli(db_url, *args, columns=columns)
                assert shown.returncode == 0, (args, shown.stderr)
                header, rows = _header_and_rows(shown.stdout)
                for name in headers:  # a header may wrap at its space
                    assert all(word in header.split() for word in name.split()), (
                        columns, args, name, shown.stdout)
                for text in whole:
                    assert any(text in row for row in rows), (columns, args, text,
                                                              shown.stdout)
            # runs show: the attempts and steps tables, with the worker's id whole.
            shown = cli(db_url, "runs", "show", run.id, columns=columns)
            assert shown.returncode == 0, shown.stderr
            for name in ("WORKER", "ERROR", "STEP", "RESULT", "/"):
                assert name in shown.stdout.split(), (columns, shown.stdout)
            assert step_key in shown.stdout, (columns, shown.stdout)
            assert attempt.worker_id and attempt.worker_id in shown.stdout, shown.stdout


def test_a_table_of_short_values_fits_80_columns_with_its_columns_closer(
    db_url: str, app: StackShift
) -> None:
    """The queues table's eleven columns of short values take 95 cells three
    apart: on 80 columns they stand closer rather than run past the edge, every
    header and value on its row; with room, they are three apart again."""
    app.start("report", queue_name="emails")
    app.queue("billing", concurrency=5)
    for columns, gap in ((80, " "), (100, "   ")):
        shown = cli(db_url, "queues", columns=columns)
        assert shown.returncode == 0, shown.stderr
        assert all(len(line) <= columns for line in shown.stdout.splitlines()), shown.stdout
        header, rows = _header_and_rows(shown.stdout)
        for name in ("QUEUE", "STATE", "WORKERS", "LIMITS", "QUEUED", "RUNNING", "WAITING",
                     "FAILED", "PER", "MIN", "FAIL", "%", "OLDEST"):
            assert name in header.split(), (columns, shown.stdout)
        assert f"WORKERS{gap}LIMITS" in header, (columns, shown.stdout)
        [emails] = [row for row in rows if row.startswith("emails ")]
        assert emails.split()[:8] == ["emails", "active", "0", "-", "1", "0", "0", "0"], emails
        assert any(row.split()[:4] == ["billing", "active", "0", "5"] for row in rows), rows


def test_a_terminal_too_narrow_for_the_ids_gets_them_whole_not_cut(db_url: str) -> None:
    """On a real terminal, a table wider than the screen runs past its edge (the
    terminal wraps the line) rather than have the id cut at the edge."""
    state_key = "imports:customer-0000000042:progress:phase-two:batch-000017"
    assert cli(db_url, "state", "set", state_key, '{"done": 17}').returncode == 0
    code, text = _output_on_terminal(db_url, 40, "state", "list")
    assert code == 0, text
    header, rows = _header_and_rows(text)
    assert header.split() == ["KEY", "VALUE", "EXPIRES"], text
    assert any(state_key in row for row in rows), text


def _output_on_terminal(db_url: str, columns: int, *args: str) -> tuple[int, str]:
    """Run ``stackshift ARGS`` with its output on a pseudo-terminal ``columns``
    wide; its exit code and the text shown (colours left out, lines ending in
    ``\\n``: a line break the program wrote, not the terminal's own wrapping)."""
    controller, terminal = pty.openpty()
    env = {**_env(db_url), "TERM": "xterm-256color", "COLUMNS": str(columns)}
    process = subprocess.Popen([*STACKSHIFT, *args], stdout=terminal,
                               stderr=subprocess.STDOUT, env=env)
    os.close(terminal)
    shown = bytearray()
    read_terminal(controller, shown)
    os.close(controller)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    return process.wait(timeout=60), text.replace("\r\n", "\n")


def test_the_next_page_command_is_one_line_on_a_narrow_terminal(
        db_url: str, app: StackShift) -> None:
    """Copied from an 80-column terminal, the command runs as printed: the
    program writes no line break into it (the terminal wraps it as it shows it)."""
    for n in range(3):
        app.start("narrowPagesOfAVeryLongJobName", {"n": n})
    args = ["runs", "list", "--limit", "1", "--job", "narrowPagesOfAVeryLongJobName",
            "--status", "queued"]
    code, text = _output_on_terminal(db_url, 80, *args)
    assert code == 0, text
    [hint] = [line for line in text.splitlines() if line.startswith("More: ")]
    assert len(hint) > 80, hint
    words = shlex.split(hint.removeprefix("More: stackshift "))
    assert "--cursor" in words and words[words.index("--cursor") + 1].startswith("run_"), hint
    second = cli(db_url, *words[words.index("runs"):])
    assert second.returncode == 0, second.stderr


RETRIED_ONCE_APP = """
    from stackshift import StackShift

    app = StackShift()

    @app.job("flaky", max_attempts=3, backoff={"base": "0.9s", "jitter": False})
    def flaky(ctx):
        if ctx.run.attempt == 1:
            raise ConnectionError("mail provider timed out")
        return "sent"
"""


QUICK_RETRY_APP = """
    import logging

    from stackshift import StackShift

    app = StackShift()

    @app.job("flaky", max_attempts=3, backoff={"base": "0.05s", "jitter": False})
    def flaky(ctx):
        logging.getLogger("tasks").info("sending, attempt %d", ctx.run.attempt)
        if ctx.run.attempt == 1:
            raise ConnectionError("mail provider timed out")
        ctx.step.sleep("pause", "0.05s")
        return "sent"
"""


def _listening(port: int) -> socket.socket | None:
    """A socket listening on 127.0.0.1:``port`` (0: any free port), as another
    program's server; None when the port is already taken by one."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", port))
    except OSError:
        holder.close()
        return None
    holder.listen()
    return holder


def test_dev_says_when_the_default_port_is_in_use_and_how_to_get_an_api_key(
    db_url: str, tmp_path: Path
) -> None:
    """Port 8000 busy: the banner says so beside the port dev took, and its
    command for an API key makes one the /v1 it prints accepts."""
    import httpx

    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(RETRIED_ONCE_APP))
    holder = _listening(8000)  # None: another program holds 8000 already
    try:
        dev = _Piped("dev", f"{app_file}:app", "--db", db_url, "--no-seed", cwd=tmp_path)
        try:
            dashboard = dev.line_with("stdout", "  dashboard ")
            moved = dev.line_with("stdout", "is in use")
            export = dev.line_with("stdout", "export STACKSHIFT_DATABASE_URL=")
            hint = dev.line_with("stdout", "keys create --name dev")
            dev.line_with("stdout", "Stop with Ctrl-C")
            port = int(re.fullmatch(r" +port 8000 is in use: serving on (\d+)\n",
                                    moved).group(1))  # type: ignore[union-attr]
            url = f"http://127.0.0.1:{port}"
            assert port != 8000
            assert dashboard == f"  dashboard {url}/  (API under {url}/v1)\n", dashboard
            assert httpx.get(f"{url}/", timeout=10).status_code == 200
            assert httpx.get(f"{url}/v1/runs", timeout=10).status_code == 401
            # The banner's command, run as printed after its export, gives a key.
            assert shlex.split(export) == ["export", f"STACKSHIFT_DATABASE_URL={db_url}"], export
            command, comment = hint.split("#", 1)
            assert comment.strip() == "a key for the /v1 API (Authorization: Bearer KEY)"
            made = subprocess.run(shlex.split(command), capture_output=True, text=True,
                                  timeout=60, env=_env(db_url), cwd=tmp_path)
            assert made.returncode == 0, made.stderr
            key = made.stdout.strip()
            listed = httpx.get(f"{url}/v1/runs", headers={"Authorization": f"Bearer {key}"},
                               timeout=10)
            assert listed.status_code == 200, listed.text
        finally:
            assert dev.stop(signal.SIGINT) == 0
    finally:
        if holder is not None:
            holder.close()


def test_dev_refuses_a_port_given_with_port_that_is_in_use(
    db_url: str, tmp_path: Path
) -> None:
    """A port asked for by name is not swapped for another: dev stops with exit 2
    before it migrates, seeds or serves anything."""
    holder = _listening(0)
    assert holder is not None
    port = holder.getsockname()[1]
    try:
        dev = subprocess.Popen(
            [*STACKSHIFT, "dev", str(SHOP), "--db", db_url, "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(None),
            cwd=tmp_path)
        try:
            out, err = dev.communicate(timeout=30)
        finally:
            if dev.poll() is None:
                dev.kill()
                dev.communicate()
    finally:
        holder.close()
    assert dev.returncode == 2, (out, err)
    assert err == (f"error: port {port} on 127.0.0.1 is in use: give another --port, "
                   "or leave it out to take a free one\n"), err
    assert out == ""
    untouched = StackShift(db_url, migrate=False)
    try:
        assert untouched._service.schema_version() == 0
    finally:
        untouched.close()


def test_piped_dev_prints_every_status_a_run_went_through(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """The run fails, waits 50 ms for its retry, sleeps 50 ms and completes,
    all between two looks of the board (0.3 s apart): each change still gets
    its line, in order, with the time it happened, and the handler's log
    records come between them, where they happened."""
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(QUICK_RETRY_APP))
    dev = _Piped("dev", f"{app_file}:app", "--db", db_url, "--no-dashboard", "--no-seed",
                 cwd=tmp_path)
    try:
        dev.line_with("stdout", "Stop with Ctrl-C")
        # A run of a job the worker does not have stays queued: once its line is
        # out, the board has had its first look, and prints changes from then on.
        parked = app.start("parked")
        dev.line_with("stdout", f"{parked.id}  parked  queued")
        run = app.start("flaky")
        dev.line_with("stdout", f"{run.id}  flaky  completed")
        # A run started again says which run it was started from.
        again = app.runs.start_again(parked.id)
        assert dev.line_with("stdout", f"{again.id}  parked  queued").rstrip("\n").endswith(
            f"  attempt 0/3  started again from {parked.id}")
    finally:
        assert dev.stop(signal.SIGINT) == 0
    lines = [line.rstrip("\n") for line in dev.lines["stdout"] if f"{run.id}  flaky  " in line]
    changes = [e for e in app.runs.timeline(run.id) if e.kind in STATUS_OF]
    assert [line.split("  ")[:4] for line in lines] == [
        [f"{e.at:%H:%M:%S}", run.id, "flaky", STATUS_OF[e.kind]] for e in changes]
    assert [STATUS_OF[e.kind] for e in changes] == [
        "queued", "running", "retrying", "queued", "running", "waiting", "queued", "running",
        "completed"]
    retry = changes[2]
    delay = _retry_delay(retry, retry.at)
    assert lines[2].endswith("  attempt 1/3  ConnectionError: mail provider timed out; "
                             f"next attempt in {delay * 1000:.0f}ms"), lines[2]
    assert lines[5].endswith("  attempt 2/3  sleeping (pause), wakes in 50ms"), lines[5]
    assert lines[7].endswith("  attempt 2/3  resumed"), lines[7]
    assert lines[8].endswith('  attempt 2/3  "sent"'), lines[8]
    told = [f"log {line.split(': ', 1)[1].split('  [')[0]}" if f"flaky {run.id}: " in line
            else line.split("  ")[3] for line in dev.lines["stdout"]
            if f"{run.id}  flaky  " in line or f"flaky {run.id}: " in line]
    assert told == [
        "queued", "running", "log sending, attempt 1", "retrying", "queued", "running",
        "log sending, attempt 2", "waiting", "queued", "running", "log sending, attempt 2",
        "completed"], told


def _retry_delay(retry: TimelineEntry, since: datetime) -> float:
    """The seconds from ``since`` to the next attempt ``retry`` recorded, with
    that time as an instant to the microsecond, as every time is shown (its
    float, to the nanosecond, can round to the other side of a millisecond)."""
    return (datetime.fromtimestamp(retry.data["next_attempt_at"], UTC) - since).total_seconds()


def test_dev_gives_the_delay_before_a_retry_not_what_was_left_of_it(
    db_url: str, app: StackShift, tmp_path: Path
) -> None:
    """The board's line for a retrying run gives the backoff the engine chose
    (0.9 s here), not the part of it left when the board read the run, which a
    short backoff made "next attempt now"."""
    app_file = tmp_path / "tasks.py"
    app_file.write_text(textwrap.dedent(RETRIED_ONCE_APP))
    dev = _Piped("dev", f"{app_file}:app", "--db", db_url, "--no-dashboard", "--no-seed",
                 cwd=tmp_path)
    try:
        dev.line_with("stdout", "Stop with Ctrl-C")
        run = app.start("flaky")
        retrying = dev.line_with("stdout", f"{run.id}  flaky  retrying")
        assert app.runs.wait(run.id, timeout=30).status == "completed"
    finally:
        assert dev.stop(signal.SIGINT) == 0
    # The delay from the failed attempt's end to the next attempt's due time.
    failed_at = app.runs.attempts(run.id)[0].finished_at
    retry = next(e for e in app.runs.timeline(run.id) if e.kind == "run.retrying")
    assert failed_at is not None
    delay = _retry_delay(retry, failed_at)
    assert 0.85 < delay <= 0.900001, delay  # both times shown to the microsecond
    assert retrying.rstrip("\n").endswith(
        f"ConnectionError: mail provider timed out; next attempt in {delay * 1000:.0f}ms"
    ), retrying
