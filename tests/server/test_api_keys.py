"""API keys: created once, stored as hashes, listed, revoked (service and CLI)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from serverproc import admin_service

from processes import stop_processes
from stackshift.cli.main import cli
from stackshift.cli.server_commands import endpoints, keys


def test_keys_verify_until_revoked(db_url: str) -> None:
    service = admin_service(db_url)
    service.migrate()
    try:
        listed, key = service.create_api_key("billing-service")
        other, other_key = service.create_api_key("reports")
        assert key.startswith("ssk_") and len(key) >= 40 and key != other_key
        assert key.startswith(listed.prefix) and len(listed.prefix) == 12
        found = service.verify_api_key(key)
        assert found is not None and found.id == listed.id
        assert service.list_api_keys()[0].last_used_at is not None  # the use is recorded
        assert service.verify_api_key(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert service.verify_api_key(listed.prefix) is None
        assert service.verify_api_key("") is None
        revoked = service.revoke_api_key(listed.id)
        assert revoked.revoked_at is not None and not revoked.active
        assert service.verify_api_key(key) is None
        assert service.verify_api_key(other_key) is not None
        assert [(k.name, k.active) for k in service.list_api_keys()] == [
            ("billing-service", False), ("reports", True)]
        assert service.revoke_api_key(other.prefix).id == other.id  # by the listed prefix
    finally:
        service.close()


def test_only_the_hash_is_stored(db_url: str) -> None:
    service = admin_service(db_url)
    service.migrate()
    try:
        _, key = service.create_api_key("ci")
        with service.store.db.read() as tx:
            row = tx.raw("SELECT * FROM api_keys", {})[0]
        assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
        assert key not in [str(v) for v in dict(row).values()]
    finally:
        service.close()


def test_keys_cli(db_url: str) -> None:
    runner = CliRunner()
    created = runner.invoke(keys, ["create", "--name", "billing", "--database-url", db_url])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("ssk_") and "\n" not in key
    assert "cannot be shown again" in created.stderr

    listed = runner.invoke(keys, ["list", "--database-url", db_url])
    assert listed.exit_code == 0
    assert "billing" in listed.stdout and key[:12] in listed.stdout
    assert key not in listed.stdout

    as_json = json.loads(runner.invoke(keys, ["list", "--json", "--database-url", db_url]).stdout)
    assert [(k["name"], k["prefix"], k["active"]) for k in as_json] == [
        ("billing", key[:12], True)]
    assert key not in json.dumps(as_json)

    revoked = runner.invoke(keys, ["revoke", key[:12], "--database-url", db_url])
    assert revoked.exit_code == 0, revoked.output
    as_json = json.loads(runner.invoke(keys, ["list", "--json", "--database-url", db_url]).stdout)
    # snake_case, like the JSON of every other command.
    assert as_json[0]["active"] is False and as_json[0]["revoked_at"]
    service = admin_service(db_url)
    try:
        assert service.verify_api_key(key) is None
    finally:
        service.close()

    unknown = runner.invoke(keys, ["revoke", "key_nope", "--database-url", db_url])
    assert unknown.exit_code == 3 and "no API key" in unknown.stderr
    # A whole key pasted revokes the key it is; one that is no key is not repeated.
    other = runner.invoke(keys, ["create", "--name", "other", "--database-url", db_url])
    other_key = other.stdout.strip()
    whole = runner.invoke(keys, ["revoke", other_key, "--json", "--database-url", db_url])
    assert whole.exit_code == 0, whole.output
    assert json.loads(whole.stdout)["prefix"] == other_key[:12]
    assert other_key not in whole.output
    forged = other_key[:12] + "x" * (len(other_key) - 12)
    wrong = runner.invoke(keys, ["revoke", forged, "--database-url", db_url])
    assert wrong.exit_code == 3 and forged not in wrong.output
    assert f"no API key is {other_key[:12]}... (the whole key given, not shown)" in wrong.stderr
    nameless = runner.invoke(keys, ["create", "--name", "   ", "--database-url", db_url])
    assert nameless.exit_code == 2
    assert "key name must not be blank, got '   '" in nameless.stderr
    too_long = runner.invoke(keys, ["create", "--name", "k" * 201, "--database-url", db_url])
    assert too_long.exit_code == 2
    assert "key name must be 1-200 characters, got 201" in too_long.stderr
    assert [k["name"] for k in json.loads(
        runner.invoke(keys, ["list", "--json", "--database-url", db_url]).stdout)] == [
        "billing", "other"]


def test_keys_and_endpoints_refuse_a_server_url_in_place_of_the_database(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only STACKSHIFT_URL set, the commands that work on the database stop
    with exit code 2 instead of writing a key or an endpoint into a stray
    stackshift.db in the current folder, unknown to that server; ``migrate``
    likewise (it said so with exit code 1, in the SDK's words)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    runner = CliRunner()
    server_env: dict[str, str | None] = {
        "STACKSHIFT_DATABASE_URL": None, "STACKSHIFT_URL": "http://127.0.0.1:9/",
        "STACKSHIFT_API_KEY": "ssk_x"}
    for group, args in ((keys, ["create", "--name", "billing"]), (keys, ["list"]),
                        (keys, ["revoke", "key_x"]),
                        (endpoints, ["add", "https://app.example.com/ss/", "--jobs", "a"]),
                        (endpoints, ["list"]), (endpoints, ["remove", "ep_x"]),
                        (cli, ["migrate"]), (cli, ["migrate", "--json"])):
        done = runner.invoke(group, args, env=server_env)
        assert done.exit_code == 2, (args, done.output)
        assert "STACKSHIFT_URL names a server (http://127.0.0.1:9/)" in done.stderr
        assert "--database-url or STACKSHIFT_DATABASE_URL" in done.stderr
    assert list(work.iterdir()) == []

    # The database, when named, is used (as StackShift() prefers it too).
    created = runner.invoke(keys, ["create", "--name", "billing"],
                            env={**server_env, "STACKSHIFT_DATABASE_URL": db_url})
    assert created.exit_code == 0, created.output
    listed = runner.invoke(keys, ["list", "--json", "--database-url", db_url], env=server_env)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["billing"]
    assert list(work.iterdir()) == []


def test_revoking_a_key_revoked_already_says_so_and_exits_1(db_url: str) -> None:
    """A second ``keys revoke`` names the key and when it was revoked, on stderr,
    and exits 1 (the operation was refused, as ``runs retry`` of a run that is not
    failed): a script tells it from a revocation. The first time stays."""
    runner = CliRunner()
    key = runner.invoke(keys, ["create", "--name", "ops", "--database-url", db_url]).stdout.strip()
    first = runner.invoke(keys, ["revoke", key[:12], "--json", "--database-url", db_url])
    assert first.exit_code == 0, first.output
    revoked_at = json.loads(first.stdout)["revoked_at"]
    key_id = json.loads(first.stdout)["id"]
    for by in (key[:12], key_id):
        for extra in ([], ["--json"]):
            again = runner.invoke(keys, ["revoke", by, *extra, "--database-url", db_url])
            assert again.exit_code == 1, again.output
            assert again.stdout == ""
            assert again.stderr == (f"error: key {key_id} ('ops', prefix {key[:12]}) was "
                                    f"already revoked at {revoked_at}\n")
    listed = json.loads(runner.invoke(keys, ["list", "--json", "--database-url", db_url]).stdout)
    assert [(k["id"], k["active"], k["revoked_at"]) for k in listed] == [
        (key_id, False, revoked_at)]


def _banner(database_url: str, log: Path) -> tuple[str, int]:
    """What ``stackshift server --port 0`` prints on stderr once it listens (up to the
    end of its banner), and the status of ``GET /v1/runs`` without a key at the
    address the banner gives."""
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stackshift.server", "--db", database_url,
                                 "--port", "0", "--log-level", "warning"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while "Stop with Ctrl-C" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.2)  # a warning line follows at once, if any
        url = re.search(r"server at (http://\S+/) ", log.read_text())
        assert url is not None, log.read_text()
        answer = httpx.get(f"{url[1]}v1/runs", timeout=10).status_code
    finally:
        stop_processes([proc])
    return log.read_text(), answer


def test_the_server_says_where_it_listens_and_warns_when_no_key_lets_anyone_in(
    db_url: str, tmp_path: Path
) -> None:
    shown, answer = _banner(db_url, tmp_path / "first.log")
    assert answer == 401
    assert re.match(r"StackShift server at http://127\.0\.0\.1:(\d+)/ \(API http://127\.0\.0\.1:"
                    r"\1/v1, dashboard http://127\.0\.0\.1:\1/\), database "
                    rf"{re.escape(db_url)} \(schema version \d+\), 0 active API key\(s\)\. "
                    r"Stop with Ctrl-C or SIGTERM\.\n", shown), shown
    assert ("warning: no active API key: every request but /healthz is refused (401) and the"
            " dashboard lets no one in; make one with `stackshift keys create --name NAME` on"
            " this database\n") in shown, shown

    service = admin_service(db_url)
    try:
        service.create_api_key("billing")
        revoked, _ = service.create_api_key("old")
        service.revoke_api_key(revoked.id)
    finally:
        service.close()
    shown, _ = _banner(db_url, tmp_path / "second.log")
    assert "), 1 active API key(s). Stop with Ctrl-C" in shown and "warning" not in shown, shown
