"""Logging out of the dashboard ends that session on the server, against real server
processes on 127.0.0.1: a copy of the session cookie taken before the logout is
refused afterwards (login page, 401, actions that do nothing), by every process on
the database and after a restart, while another session of the same key goes on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from serverproc import Server, admin_service, start_server, stop_server

from stackshift.store import open_store

COOKIE = "stackshift_session"


@contextmanager
def browser(url: str, key: str) -> Iterator[httpx.Client]:
    """A browser's cookie jar logged in to the dashboard at ``url`` with ``key``."""
    with httpx.Client(base_url=url, timeout=30) as client:
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
        assert csrf
        logged_in = client.post("/login", data={"csrf": csrf.group(1), "api_key": key})
        assert logged_in.status_code == 303, logged_in.text
        yield client


def page_csrf(client: httpx.Client, path: str) -> str:
    """The CSRF token of the page at ``path``, which must open (200)."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found
    return found.group(1)


def log_out(client: httpx.Client) -> None:
    """Press "Log out" on the Queues page."""
    answer = client.post("/logout", data={"csrf": page_csrf(client, "/queues")})
    assert answer.status_code == 303 and answer.headers["location"] == "/login"


def with_cookie(url: str, method: str, path: str, cookie: str, **options: Any
                ) -> httpx.Response:
    """One request carrying exactly the session cookie ``cookie`` (a copy kept
    elsewhere: whatever cookie the answer sets is not kept)."""
    return httpx.request(method, url + path, headers={"cookie": f"{COOKIE}={cookie}"},
                         timeout=30, **options)


def assert_signed_out(url: str, cookie: str) -> None:
    """Requests with ``cookie`` get what a browser without a session gets."""
    shown = with_cookie(url, "GET", "/queues", cookie)
    assert shown.status_code == 303, shown.text
    assert shown.headers["location"] == "/login?next=%2Fqueues"
    assert with_cookie(url, "GET", "/api/live", cookie).status_code == 401
    login = with_cookie(url, "GET", "/login", cookie)  # the login form, not a way in
    assert login.status_code == 200 and 'name="api_key"' in login.text


def migrated_with_key(db_url: str, name: str) -> str:
    """Migrate the database at ``db_url`` and return a new API key named ``name``."""
    store = open_store(db_url)
    store.migrate()
    store.close()
    service = admin_service(db_url)
    try:
        return service.create_api_key(name)[1]
    finally:
        service.close()


def assert_signed_in(url: str, cookie: str) -> None:
    shown = with_cookie(url, "GET", "/queues", cookie)
    assert shown.status_code == 200, shown.headers.get("location")
    assert with_cookie(url, "GET", "/api/live", cookie).status_code == 200


def test_a_copy_of_the_cookie_is_refused_after_logout_and_another_session_goes_on(
    server: Server,
) -> None:
    service = admin_service(server.database_url)
    try:
        listed, key = service.create_api_key("logout-copy")
        with server.http() as http:
            run_id = http.post("/v1/runs", json={"job": "logout-check"}).json()["id"]
        with browser(server.url, key) as tab, browser(server.url, key) as other:
            copied = tab.cookies[COOKIE]
            assert copied != other.cookies[COOKIE]
            csrf = page_csrf(tab, f"/runs/{run_id}")
            assert_signed_in(server.url, copied)

            log_out(tab)
            assert tab.get("/queues").headers["location"] == "/login?next=%2Fqueues"
            assert_signed_out(server.url, copied)
            # An action with the copy and the page's token does nothing.
            cancel = with_cookie(server.url, "POST", f"/runs/{run_id}/cancel", copied,
                                 data={"csrf": csrf})
            assert cancel.status_code == 303
            assert cancel.headers["location"].startswith("/login?")
            assert service.get_run(run_id).status == "queued"

            # The same key's other session, and the key itself, go on.
            assert_signed_in(server.url, other.cookies[COOKIE])
            assert service.api_key_active(listed.id)
            # Logging in again with the key opens a new session.
            with browser(server.url, key) as again:
                assert again.get("/queues").status_code == 200
    finally:
        service.close()


def test_every_process_on_the_database_refuses_it_and_a_restart_too(
    db_url: str, tmp_path: Path
) -> None:
    """Two processes of a user's app with the dashboard mounted and one cookie
    secret (dashboard_app.py): a logout on one is refused by the other, and by
    the app restarted; the other session of the key outlives the restart."""
    key = migrated_with_key(db_url, "logout-restart")

    def serve(name: str) -> Server:
        return start_server(db_url, tmp_path / f"{name}.log", asgi="dashboard_app:app")

    first, second = serve("first"), serve("second")
    try:
        with browser(first.url, key) as tab, browser(first.url, key) as other:
            copied, kept = tab.cookies[COOKIE], other.cookies[COOKIE]
        assert_signed_in(second.url, copied)  # the processes take each other's sessions
        with httpx.Client(base_url=first.url, cookies={COOKIE: copied}, timeout=30) as tab:
            log_out(tab)
        assert_signed_out(second.url, copied)
        assert_signed_out(first.url, copied)
        assert_signed_in(second.url, kept)
    finally:
        stop_server(first)
        stop_server(second)

    restarted = serve("restarted")
    try:
        assert_signed_out(restarted.url, copied)
        assert_signed_in(restarted.url, kept)
    finally:
        stop_server(restarted)


SECRET = "a-session-secret-of-forty-characters-xyz"


def test_servers_given_one_session_secret_take_each_others_sessions_and_keep_them(
    db_url: str, tmp_path: Path
) -> None:
    """``stackshift server`` with ``STACKSHIFT_SESSION_SECRET``: a session signed in
    on one server is signed in on another with the same secret and on a restart
    with it; a server without it, or with another, signs it out."""
    key = migrated_with_key(db_url, "session-secret")

    def serve(name: str, secret: str | None) -> Server:
        env = {} if secret is None else {"STACKSHIFT_SESSION_SECRET": f"{secret}\n"}
        return start_server(db_url, tmp_path / f"{name}.log", env=env)

    first, second = serve("first", SECRET), serve("second", SECRET)
    try:
        with browser(first.url, key) as tab:
            cookie = tab.cookies[COOKIE]
        assert_signed_in(second.url, cookie)
    finally:
        stop_server(first)
        stop_server(second)
    for name, secret, signed_in in [("restarted", SECRET, True), ("random", None, False),
                                    ("another", SECRET[::-1], False)]:
        server = serve(name, secret)
        try:
            (assert_signed_in if signed_in else assert_signed_out)(server.url, cookie)
        finally:
            stop_server(server)


def test_a_short_session_secret_is_refused_before_anything_is_opened(tmp_path: Path) -> None:
    database = tmp_path / "never.db"
    done = subprocess.run(
        [sys.executable, "-m", "stackshift.server", "--database-url",
         f"sqlite:///{database}", "--port", "0"],
        env={**os.environ, "STACKSHIFT_SESSION_SECRET": "  too-short  "},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "error: --session-secret (STACKSHIFT_SESSION_SECRET) must have at least 32"
        " characters, got 9;"), done.stderr
    assert not database.exists()
