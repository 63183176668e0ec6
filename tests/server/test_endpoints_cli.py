"""``stackshift endpoints add|list|remove``: register push routes, directly on the database."""

from __future__ import annotations

import json
from datetime import datetime

from click.testing import CliRunner
from serverproc import admin_service

from stackshift.cli.render import when
from stackshift.cli.server_commands import endpoints


def test_endpoints_cli(db_url: str) -> None:
    runner = CliRunner()
    url = "https://app.example.com/api/stackshift"
    added = runner.invoke(endpoints, ["add", url, "--jobs", "userOnboarding, sendReceipt",
                                      "--database-url", db_url])
    assert added.exit_code == 0, added.output
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and len(secret) > 40
    assert "STACKSHIFT_SIGNING_SECRET" in added.stderr

    listed = runner.invoke(endpoints, ["list", "--json", "--database-url", db_url])
    [shown] = json.loads(listed.stdout)
    assert (shown["url"], shown["jobs"], shown["concurrency"]) == (
        url, ["sendReceipt", "userOnboarding"], 10)
    assert set(shown) == {"id", "url", "jobs", "concurrency", "created_at", "updated_at"}
    assert secret not in listed.stdout

    # Without --json, a table like the other lists (keys list, runs list).
    table = runner.invoke(endpoints, ["list", "--database-url", db_url])
    assert table.exit_code == 0, table.output
    header, rule, row, *more = table.stdout.splitlines()
    assert header.split() == ["ID", "URL", "CONCURRENCY", "JOBS", "CREATED"], table.stdout
    assert set(rule) == {"─"} and not more, table.stdout
    created = datetime.fromisoformat(shown["created_at"])
    assert row.split() == [shown["id"], url, "10", "sendReceipt,", "userOnboarding",
                           *when(created).split()], table.stdout
    assert secret not in table.stdout

    # The application registers its route with rules of its own.
    service = admin_service(db_url)
    try:
        registered = service.register_endpoint(
            url, ["sendReceipt", "userOnboarding"], concurrency=7,
            key_limits={"sendReceipt": 2, "userOnboarding": 1},
            on_failure={"sendReceipt": "alertOps", "userOnboarding": "alertOps"})
        assert (registered.id, registered.secret, registered.created) == (
            shown["id"], secret, False)
    finally:
        service.close()
    # Adding the URL again sets what it serves and keeps its id and secret, its
    # concurrency unless given, and the rules of the jobs it keeps.
    for args, concurrency in (([], 7), (["--concurrency", "3"], 3)):
        again = runner.invoke(endpoints, ["add", url, "--jobs", "sendReceipt", *args,
                                          "--json", "--database-url", db_url])
        assert again.exit_code == 0, again.output
        updated = json.loads(again.stdout)
        assert (updated["id"], updated["secret"], updated["jobs"], updated["concurrency"]) == (
            shown["id"], secret, ["sendReceipt"], concurrency)
        service = admin_service(db_url)
        try:
            [kept] = service.list_endpoints()
        finally:
            service.close()
        assert (kept.key_limits, kept.on_failure) == ({"sendReceipt": 2},
                                                      {"sendReceipt": "alertOps"})

    # Bad input: a clear error, exit code 2, nothing written.
    for bad in (["add", "ftp://app.example.com/", "--jobs", "x"],
                ["add", "app.example.com/stackshift", "--jobs", "x"],
                ["add", "https://other.example.com/", "--jobs", "bad name"],
                ["add", "https://other.example.com/", "--jobs", " , "]):
        refused = runner.invoke(endpoints, [*bad, "--database-url", db_url])
        assert refused.exit_code == 2, (bad, refused.output)
        assert refused.stderr.startswith("error: ")
    # A URL the server could never post to: named, with what is wrong with it.
    for bad_url, said in (
            ("http://127.0.0.1:abc/x", "is not a URL the server can call: Invalid port: 'abc'"),
            ("http://127.0.0.1:99999/x", "has port 99999: a port is from 1 to 65535"),
            ("http://x y/", "has ' ' at position 8: a URL has no whitespace or control"),
            ("http://h/a\nb", "has '\\n' at position 10: a URL has no whitespace or control")):
        refused = runner.invoke(endpoints, ["add", bad_url, "--jobs", "x",
                                            "--database-url", db_url])
        assert refused.exit_code == 2, (bad_url, refused.output)
        assert refused.stderr.startswith(f"error: url: {bad_url!r} {said}"), refused.stderr
    service = admin_service(db_url)
    try:
        assert [e.url for e in service.list_endpoints()] == [url]
    finally:
        service.close()

    removed = runner.invoke(endpoints, ["remove", shown["id"], "--json", "--database-url",
                                        db_url])
    assert removed.exit_code == 0, removed.output
    assert (json.loads(removed.stdout)["id"], json.loads(removed.stdout)["url"]) == (
        shown["id"], url)
    assert runner.invoke(endpoints, ["list", "--database-url", db_url]).stdout.startswith(
        "No endpoints")
    unknown = runner.invoke(endpoints, ["remove", shown["id"], "--database-url", db_url])
    assert unknown.exit_code == 3 and "no endpoint" in unknown.stderr
