"""Security and bad input against a real server: keys, limits, JSON errors, no 5xx."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverproc import (
    admin_service,
    assert_error,
    database_rows,
    start_server,
    stop_server,
)

from stackshift.serialization import MiB

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
PATH_VALUES = {"run_id": "run_00000000000000000000000000", "name": "emails",
               "event_id": "evt_00000000000000000000000000", "key": "some:key",
               "schedule_id": "sch_00000000000000000000000000",
               "endpoint_id": "ep_00000000000000000000000000"}


def endpoints() -> list[tuple[str, str]]:
    """Every (method, path) of the API, path parameters filled in."""
    doc = json.loads(DOC.read_text())
    found = []
    for path, operations in doc["paths"].items():
        filled = path
        for name, value in PATH_VALUES.items():
            filled = filled.replace("{" + name + "}", value)
        assert "{" not in filled, f"add a value for the parameters of {path}"
        found += [(method.upper(), filled) for method in operations]
    return found


ENDPOINTS = endpoints()
PROTECTED = [(m, p) for m, p in ENDPOINTS if p != "/healthz"]


# -- API keys ------------------------------------------------------------------------------


def test_every_endpoint_but_healthz_needs_a_key(server: Any) -> None:
    assert len(PROTECTED) >= 20
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        for method, path in PROTECTED:
            response = anonymous.request(method, path, content=b"{not json")
            error = assert_error(response, 401, "unauthorized")
            assert "Authorization" in error["message"], (method, path)
            assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", [
    "Bearer ssk_thisKeyWasNeverCreatedAnywhere0000000000000",
    "Bearer not-even-a-key",
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "",
])
def test_wrong_keys_get_401(server: Any, header: str) -> None:
    with httpx.Client(base_url=server.url, headers={"Authorization": header}) as http:
        for method, path in PROTECTED:
            assert_error(http.request(method, path, json={}), 401, "unauthorized")


def test_a_revoked_key_gets_401_at_once(server: Any) -> None:
    service = admin_service(server.database_url)
    try:
        listed, key = service.create_api_key("to-revoke")
        with server.http(api_key=key) as http:
            assert http.get("/v1/runs").status_code == 200
            service.revoke_api_key(listed.prefix)
            for method, path in PROTECTED:
                assert_error(http.request(method, path, json={}), 401, "unauthorized")
        with server.http() as http:  # other keys still work
            assert http.get("/v1/runs").status_code == 200
    finally:
        service.close()


@contextmanager
def dashboard_login(server: Any, key: str) -> Iterator[httpx.Client]:
    """A browser's cookie jar logged in to the server's dashboard with ``key``."""
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/login").text)
        assert csrf
        logged_in = browser.post("/login", data={"csrf": csrf.group(1), "api_key": key})
        assert logged_in.status_code == 303, logged_in.text
        yield browser


def test_revoking_a_key_ends_its_dashboard_sessions_at_once(server: Any) -> None:
    """Right after `keys revoke` (another process, on the database), the session made
    with that key is refused on its next request: the page, the live poll and an
    action (which does nothing); a session made with another key goes on."""
    service = admin_service(server.database_url)
    try:
        listed, key = service.create_api_key("dashboard-revoke")
        with server.http() as http:
            run_id = http.post("/v1/runs", json={"job": "revoke-check"}).json()["id"]
        with dashboard_login(server, key) as revoked, \
                dashboard_login(server, server.api_key) as other:
            page = revoked.get(f"/runs/{run_id}")
            assert page.status_code == 200
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf
            assert revoked.get("/api/live").status_code == 200
            service.revoke_api_key(listed.id)

            # Back to the page the form was on after the login (not to the action's
            # address, which has no page), or to the runs list when it is not known.
            cancel = revoked.post(f"/runs/{run_id}/cancel", data={"csrf": csrf.group(1)},
                                  headers={"referer": f"{server.url}/runs/{run_id}?x=1"})
            assert cancel.status_code == 303
            assert cancel.headers["location"] == f"/login?next=%2Fruns%2F{run_id}%3Fx%3D1"
            for referer in ({}, {"referer": "https://elsewhere.example/runs/x"}):
                cancel = revoked.post(f"/runs/{run_id}/cancel", data={"csrf": csrf.group(1)},
                                      headers=referer)
                assert cancel.headers["location"] == "/login?next=%2F", referer
            assert revoked.get("/api/live").status_code == 401
            shown = revoked.get(f"/runs/{run_id}")
            assert shown.status_code == 303 and shown.headers["location"].startswith("/login?")
            assert service.get_run(run_id).status == "queued"  # the cancel did nothing

            assert other.get(f"/runs/{run_id}").status_code == 200
            assert other.get("/api/live").status_code == 200
    finally:
        service.close()


def set_cookies(response: httpx.Response) -> dict[str, tuple[str, set[str]]]:
    """The cookies a response sets: name to (value, its attributes in lower case)."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        first, *attributes = header.split("; ")
        name, _, value = first.partition("=")
        found[name] = (value.strip('"'), {a.lower() for a in attributes})
    return found


def test_dashboard_cookies_are_secure_when_it_is_served_over_https(server: Any) -> None:
    """Behind a TLS proxy (here on the same host, which the server trusts for
    X-Forwarded-Proto), every cookie the dashboard sets or clears, the flash of an
    action included, is Secure, so that a browser never sends it over plain http."""
    https = {"X-Forwarded-Proto": "https"}
    with server.http() as http:
        run_id = http.post("/v1/runs", json={"job": "https-flash"}).json()["id"]
    with httpx.Client(base_url=server.url, headers=https, timeout=30) as browser:
        # Secure cookies are not sent back over the test's plain http: by hand instead.
        def send(method: str, path: str, cookies: dict[str, str], **extra: Any
                 ) -> httpx.Response:
            browser.cookies.clear()
            cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
            return browser.request(method, path, headers={"Cookie": cookie}, **extra)

        login = send("GET", "/login", {})
        session = set_cookies(login)["stackshift_session"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert csrf
        logged_in = send("POST", "/login", {"stackshift_session": session[0]},
                         data={"csrf": csrf.group(1), "api_key": server.api_key})
        assert logged_in.status_code == 303
        session = set_cookies(logged_in)["stackshift_session"]
        page = send("GET", f"/runs/{run_id}", {"stackshift_session": session[0]})
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        cancelled = send("POST", f"/runs/{run_id}/cancel", {"stackshift_session": session[0]},
                         data={"csrf": csrf.group(1)})
        assert cancelled.status_code == 303
        flash = set_cookies(cancelled)["stackshift_flash"]
        shown = send("GET", f"/runs/{run_id}", {"stackshift_session": session[0],
                                                "stackshift_flash": flash[0]})
        assert "Run cancelled." in shown.text
        cleared = set_cookies(shown)["stackshift_flash"]
        for _, attributes in (session, flash, cleared):
            assert {"secure", "httponly", "samesite=strict"} <= attributes, attributes
    # Over plain http (a dashboard on 127.0.0.1) the cookies are not Secure, or the
    # browser would drop them.
    with httpx.Client(base_url=server.url, timeout=30) as plain:
        assert "secure" not in set_cookies(plain.get("/login"))["stackshift_session"][1]


def test_the_database_holds_no_plain_text_key(server: Any) -> None:
    service = admin_service(server.database_url)
    try:
        listed, key = service.create_api_key("secret-check")
    finally:
        service.close()
    with server.http(api_key=key) as http:
        assert http.get("/v1/runs").status_code == 200  # a use is recorded too
    secret = key[len(listed.prefix):]
    rows = [row for table in database_rows(server.database_url).values() for row in table]
    assert any(listed.prefix in row for row in rows)  # the listed prefix is there
    assert not any(secret in row for row in rows)
    if server.database_url.startswith("sqlite"):
        # nor anywhere in the files, pages and write-ahead log included
        path = Path(server.database_url.removeprefix("sqlite:///"))
        for file in path.parent.glob(path.name + "*"):
            assert secret.encode() not in file.read_bytes(), file


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/runs"), ("POST", "/v1/queues/emails/runs"), ("POST", "/v1/events"),
    ("PUT", "/v1/state/k"), ("POST", "/v1/state/increment"), ("POST", "/v1/locks/acquire"),
    ("POST", "/v1/locks/extend"), ("POST", "/v1/runs/run_x/cancel"),
])
@pytest.mark.parametrize("body", [b"{not json", b'{"job": "x",}', b"\xff\xfe", b"[1, 2"])
def test_malformed_json_is_400(http: httpx.Client, method: str, path: str, body: bytes) -> None:
    response = http.request(method, path, content=body,
                            headers={"content-type": "application/json"})
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize("body", [
    b'{"job": "\x80"}',
    # Valid JSON in another Unicode encoding is not UTF-8 either: not read, nothing started.
    *('{"job": "utf16job", "payload": "\u00e9"}'.encode(codec)
      for codec in ("utf-16", "utf-16-le", "utf-16-be", "utf-32")),
])
def test_a_body_that_is_not_utf8_is_400_and_says_so(http: httpx.Client, body: bytes) -> None:
    response = http.post("/v1/runs", content=body, headers={"content-type": "application/json"})
    error = assert_error(response, 400, "malformed_json")
    assert error["message"] == "the request body is not UTF-8 text"
    assert http.get("/v1/runs", params={"job": "utf16job"}).json()["items"] == []


def test_a_utf8_body_may_start_with_a_byte_order_mark(
        http: httpx.Client, unique: Callable[[str], str]) -> None:
    job = unique("bom")
    response = http.post("/v1/runs", content=b"\xef\xbb\xbf" + json.dumps({"job": job}).encode(),
                         headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text
    assert response.json()["job"] == job


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/runs", {"job": 5}),
    ("POST", "/v1/runs", {"job": "x", "maxAttempts": "5"}),
    ("POST", "/v1/runs", {"job": "x", "maxAttempts": 0}),
    ("POST", "/v1/runs", {"job": "x", "priority": True}),
    ("POST", "/v1/runs", {"job": "x", "priority": 10**40}),
    ("POST", "/v1/runs", {"job": "x", "delay": [1]}),
    ("POST", "/v1/runs", {"job": "x", "queue_name": "snake"}),
    ("POST", "/v1/runs", {"payload": {}}),
    ("POST", "/v1/runs", [1, 2]),
    ("POST", "/v1/runs", "job"),
    ("POST", "/v1/runs", None),
    ("POST", "/v1/queues/emails/runs", {"job": "x", "queueName": "other"}),
    ("POST", "/v1/queues/bad%20queue/runs", {"job": "x"}),
    ("POST", "/v1/events", {"name": ["x"]}),
    ("POST", "/v1/events", {"name": "x", "correlationKey": ""}),
    ("POST", "/v1/state/increment", {"key": "n", "by": "2"}),
    ("POST", "/v1/state/increment", {"key": "n", "by": 2**70}),
    ("PUT", "/v1/state/k", {"value": 1, "ttl": "forever"}),
    ("PUT", "/v1/state/k", {}),
    ("POST", "/v1/locks/acquire", {"key": "l", "owner": "me", "ttl": -1}),
    ("POST", "/v1/locks/extend", {"key": "l", "owner": "me", "ttl": 0}),
    ("POST", "/v1/locks/extend", {"key": "l", "owner": "me"}),
    ("POST", "/v1/runs/run_x/cancel", {"reason": 5}),
    # An empty list of payloads starts nothing, and its options are checked all the same.
    ("POST", "/v1/runs/many", {"job": "x", "payloads": [], "scheduledAt": "AAA"}),
    ("POST", "/v1/runs/many", {"job": "x", "payloads": [], "queueName": "a b"}),
    ("POST", "/v1/endpoints", {"url": "ftp://app.example.com/", "jobs": ["x"]}),
    ("POST", "/v1/endpoints", {"url": "/stackshift", "jobs": ["x"]}),
    ("POST", "/v1/endpoints", {"url": "http://app.example.com/", "jobs": []}),
    ("POST", "/v1/endpoints", {"url": "http://app.example.com/", "jobs": ["x"],
                               "concurrency": 0}),
    ("POST", "/v1/worker/push/accept", {"deliveryId": "dlv_x"}),
])
def test_wrong_types_and_values_are_422(http: httpx.Client, method: str, path: str,
                                        body: Any) -> None:
    assert_error(http.request(method, path, json=body), 422, "validation_error")


DURATION_HINT = "is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"
NAME_HINT = "is invalid: use 1-200 ASCII letters, digits, '.', '_', ':' or '-'"


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("POST", "/v1/runs", {"job": "x", "delay": "5 minutes"}, f"delay: '5 minutes' {DURATION_HINT}"),
    ("POST", "/v1/runs", {"job": "x", "idempotencyKey": "k", "idempotencyTtl": "soon"},
     f"idempotencyTtl: 'soon' {DURATION_HINT}"),
    ("POST", "/v1/runs", {"job": "x", "idempotencyKey": "k", "idempotencyTtl": "0s"},
     "idempotencyTtl: '0s' must be more than 0"),
    ("POST", "/v1/runs", {"job": "x", "delay": -1},
     "delay: Input should be greater than or equal to 0"),
    ("POST", "/v1/runs", {"job": "x", "delay": "-5m"},
     "delay: '-5m' must be a finite, non-negative duration"),
    ("PUT", "/v1/state/k", {"value": 1, "ttl": "-5s"},
     "ttl: '-5s' must be a finite, non-negative duration"),
    ("POST", "/v1/runs", {"job": "bad name"}, f"job: job name 'bad name' {NAME_HINT}"),
    ("POST", "/v1/runs", {"job": "x", "queueName": ""},
     f"queueName: queue name '' {NAME_HINT}"),
    ("POST", "/v1/events", {"name": "email verified"},
     f"name: event name 'email verified' {NAME_HINT}"),
    ("PUT", "/v1/state/k", {"value": 1, "ttl": "forever"}, f"ttl: 'forever' {DURATION_HINT}"),
    ("POST", "/v1/locks/acquire", {"key": "l", "owner": "me", "ttl": "1 minute"},
     f"ttl: '1 minute' {DURATION_HINT}"),
    ("POST", "/v1/locks/extend", {"key": "l", "owner": "me", "ttl": "1 minute"},
     f"ttl: '1 minute' {DURATION_HINT}"),
    ("POST", "/v1/locks/extend", {"key": "l", "owner": "me", "ttl": "0s"},
     "ttl: '0s' must be more than 0"),
    # Digits of another script (Arabic-Indic, full-width) are not a duration's digits.
    ("POST", "/v1/runs", {"job": "zzz", "delay": "\u0661\u0662s"},
     f"delay: '\u0661\u0662s' {DURATION_HINT}"),
    ("PUT", "/v1/state/t1", {"value": 1, "ttl": "\u0661\u0662s"},
     f"ttl: '\u0661\u0662s' {DURATION_HINT}"),
    ("POST", "/v1/locks/acquire", {"key": "l", "owner": "me", "ttl": "\uff11\uff12s"},
     f"ttl: '\uff11\uff12s' {DURATION_HINT}"),
    ("POST", "/v1/runs/many", {"job": "zzz", "payloads": [1], "delay": "1h\u0663m"},
     f"delay: '1h\u0663m' {DURATION_HINT}"),
])
def test_bad_names_and_durations_are_explained_as_the_sdk_explains_them(
        http: httpx.Client, method: str, path: str, body: Any, message: str) -> None:
    error = assert_error(http.request(method, path, json=body), 422, "validation_error")
    assert error["message"] == message


@pytest.mark.parametrize("reason", ["", "   ", "\n\t"])
def test_a_blank_cancel_reason_is_422_and_the_run_is_not_cancelled(
        http: httpx.Client, reason: str) -> None:
    """As the SDK refuses it: a reason that says nothing is left out, not recorded."""
    run = http.post("/v1/runs", json={"job": "cancelLater", "delay": 3600}).json()
    error = assert_error(http.post(f"/v1/runs/{run['id']}/cancel", json={"reason": reason}),
                         422, "validation_error")
    assert error["message"] == (f"reason must not be blank, got {reason!r}: "
                                "leave it out for no reason")
    assert http.get(f"/v1/runs/{run['id']}").json()["status"] == "scheduled"
    kinds = [e["kind"] for e in http.get(f"/v1/runs/{run['id']}/timeline").json()["items"]]
    assert kinds == ["run.scheduled"]


@pytest.mark.parametrize("holder", ["   ", "\n\t", "\u3000"])
def test_a_blank_lock_holder_is_422_and_the_lock_is_not_taken(
        http: httpx.Client, holder: str) -> None:
    """As a blank cancel reason is: a holder that says nothing is left out, not listed."""
    key = f"blank-holder-{len(holder)}-{ord(holder[0])}"
    lock = {"key": key, "owner": "a", "ttl": "30s"}
    error = assert_error(http.post("/v1/locks/acquire", json={**lock, "holder": holder}),
                         422, "validation_error")
    assert error["message"] == (f"holder must not be blank, got {holder!r}: "
                                "leave it out when the owner does not say")
    assert http.get("/v1/locks", params={"prefix": key}).json()["items"] == []
    # Free: another owner takes it.
    assert http.post("/v1/locks/acquire", json={**lock, "owner": "b"}).json()["held"] is True
    assert http.post("/v1/locks/release", json={"key": key, "owner": "b"}).json()["held"]


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=1001", "status=bogus",
                                   "createdAfter=yesterday", "createdAfter=2026-01-01T00:00:00"])
def test_bad_list_queries_are_422(http: httpx.Client, query: str) -> None:
    assert_error(http.get(f"/v1/runs?{query}"), 422, "validation_error")


@pytest.mark.parametrize("typed", ["1.0", "1_0", "%205", "%2B5", "1e1", "0x10", "", "\uff15"])
@pytest.mark.parametrize("path", ["/v1/runs?limit=", "/v1/state?limit=", "/v1/events?limit=",
                                  "/v1/runs/run_x/logs?after=", "/v1/runs/run_x/logs?last="])
def test_a_whole_number_in_a_query_is_digits_only(http: httpx.Client, path: str,
                                                   typed: str) -> None:
    """``int()`` would read ``1_0`` as 10 and `` 5`` as 5; the API takes digits (and a
    minus sign), so that a typo is refused, not read as another number."""
    name = path.split("?")[1].removesuffix("=")
    shown = typed.replace("%20", " ").replace("%2B", "+")
    error = assert_error(http.get(path + typed), 422, "validation_error")
    assert error["message"] == f"{name}: must be a whole number written in digits, got {shown!r}"


def test_a_time_whose_plus_was_left_unescaped_in_the_query_is_422_saying_so(
        http: httpx.Client) -> None:
    """``?createdAfter=...+02:00`` as typed: the query string reads its ``+`` as a
    space. The error says so, and the same time with ``%2B`` lists the run."""
    run = http.post("/v1/runs", json={"job": "plusOffset"}).json()
    when = datetime.fromisoformat(run["createdAt"].replace("Z", "+00:00"))
    typed = when.astimezone(timezone(timedelta(hours=2))).isoformat()  # ...+02:00
    error = assert_error(http.get(f"/v1/runs?job=plusOffset&createdAfter={typed}"), 422,
                         "validation_error")
    assert error["message"] == (
        f"createdAfter: {typed.replace('+', ' ')!r} is not an ISO-8601 time (e.g. "
        "'2026-05-06T09:00:00Z'); a space stands where its offset's '+' goes: in a URL's "
        "query string '+' reads as a space, so write it %2B (or give the time in UTC with 'Z')")
    escaped = http.get(f"/v1/runs?job=plusOffset&createdAfter={typed.replace('+', '%2B')}")
    assert [r["id"] for r in escaped.json()["items"]] == [run["id"]]


@pytest.mark.parametrize(("path", "message"), [
    ("/v1/runs?job=", f"job: job name '' {NAME_HINT}"),
    ("/v1/runs?job=%20", f"job: job name ' ' {NAME_HINT}"),
    ("/v1/runs?queueName=", f"queueName: queue name '' {NAME_HINT}"),
    ("/v1/runs?queueName=a%20b&status=failed", f"queueName: queue name 'a b' {NAME_HINT}"),
    ("/v1/runs?idempotencyKey=", "idempotencyKey must be a non-empty string, got ''"),
    ("/v1/runs?correlationKey=", "correlationKey must be a non-empty string, got ''"),
    ("/v1/runs?search=", "search must be a non-empty string, got ''"),
    ("/v1/events?name=", f"name: event name '' {NAME_HINT}"),
    ("/v1/events?correlationKey=", "correlationKey must be a non-empty string, got ''"),
    ("/v1/queues/filtered/dead-letters?job=", f"job: job name '' {NAME_HINT}"),
])
def test_a_list_filter_no_run_or_event_can_have_is_422(
        http: httpx.Client, path: str, message: str) -> None:
    """``?job=`` is a filter sent empty: refused as the SDK refuses it, not answered
    with an empty list while runs and events exist; the message names the query
    parameter, as it names a body's field."""
    assert http.post("/v1/runs", json={"job": "filtered", "queueName": "filtered",
                                       "idempotencyKey": "filtered"}).status_code in (200, 201)
    assert http.post("/v1/events", json={"name": "filtered"}).status_code in (200, 201)
    error = assert_error(http.get(path), 422, "validation_error")
    assert error["message"] == message


@pytest.mark.parametrize(("method", "path", "body", "status", "said"), [
    ("GET", "/v1/runs?cursor=" + "x" * 10_000, None, 422, "cursor 'xxx"),
    ("GET", "/v1/runs/run_" + "a" * 5_000, None, 404, "no run with id 'run_aaa"),
    ("GET", "/v1/events/evt_" + "a" * 5_000, None, 404, "no event with id 'evt_aaa"),
    ("GET", "/v1/schedules/sch_" + "a" * 290, None, 404, "no schedule with id 'sch_aaa"),
    ("POST", "/v1/runs", {"job": "bad name" * 1_000}, 422, "job: job name 'bad namebad"),
])
def test_an_error_quotes_a_long_input_in_part_with_its_length(
        http: httpx.Client, method: str, path: str, body: Any, status: int, said: str) -> None:
    response = http.request(method, path, json=body)
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert message.startswith(said), message
    assert len(message) < 300, message
    length = len(body["job"]) if body else len(path.rpartition("/")[2].rpartition("=")[2])
    assert f"… ({length:,} characters)" in message


@pytest.mark.parametrize("body", [{"job": ""}, {"job": " "}, {"queueName": ""}])
def test_a_bulk_retry_by_a_filter_nothing_can_have_is_422_and_retries_nothing(
        http: httpx.Client, body: dict[str, str]) -> None:
    run = http.post("/v1/runs", json={"job": "retryFiltered", "delay": 3600}).json()
    assert http.post(f"/v1/runs/{run['id']}/cancel").json()["status"] == "cancelled"
    error = assert_error(http.post("/v1/runs/retry-many", json={**body, "status": "cancelled"}),
                         422, "validation_error")
    assert NAME_HINT in error["message"]
    assert http.get(f"/v1/runs/{run['id']}").json()["status"] == "cancelled"


def test_wait_timeout_is_bounded(http: httpx.Client) -> None:
    run = http.post("/v1/runs", json={"job": "waitBound"}).json()
    for timeout in ("-1", "61", "soon"):
        assert_error(http.get(f"/v1/runs/{run['id']}/wait?timeout={timeout}"), 422,
                     "validation_error")


def test_a_body_over_the_default_limit_is_413(http: httpx.Client) -> None:
    # The default limit: three times the largest value limit (1 MiB) plus 1 MiB.
    body = json.dumps({"job": "big", "payload": "x" * (4 * MiB)}).encode()
    assert_error(http.post("/v1/runs", content=body,
                           headers={"content-type": "application/json"}),
                 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(body), 64 * 1024):
            yield body[i:i + 64 * 1024]

    assert_error(http.post("/v1/runs", content=chunks(),
                           headers={"content-type": "application/json"}),
                 413, "body_too_large")
    # a false, small Content-Length does not let a large body through
    assert http.post("/v1/runs", json={"job": "small"}).status_code == 201


def test_a_payload_over_its_limit_inside_a_body_within_the_default_limit(
        http: httpx.Client) -> None:
    response = http.post("/v1/runs", json={"job": "big", "payload": "x" * MiB})
    error = assert_error(response, 413, "payload_too_large")
    assert error["message"] == (
        "payload is 1048578 bytes as JSON, over the limit of 1048576 bytes; raise the limit"
        " with the server's --setting max_payload_bytes=...")
    assert http.get("/v1/runs?job=big").json()["items"] == []
    # At the limit exactly, with the envelope around it: the body limit leaves it room.
    ok = http.post("/v1/runs", json={"job": "big", "payload": "x" * (MiB - 2)})
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize("character", ["é", "😀"])
def test_a_payload_at_its_limit_gets_through_with_every_character_escaped(
        http: httpx.Client, character: str) -> None:
    """Python's json.dumps escapes every character outside ASCII by default: a
    payload at its limit (counted as UTF-8) takes three times its size then."""
    payload = {"s": character * ((MiB - 8) // len(character.encode()))}
    assert len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()) == MiB
    body = json.dumps({"job": "escaped", "payload": payload})  # ensure_ascii=True
    assert len(body) > 3 * MiB
    response = http.post("/v1/runs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text
    assert http.get(f"/v1/runs/{response.json()['id']}").json()["payload"] == payload


def test_the_body_limit_is_configurable(served_db: str, tmp_path: Path) -> None:
    small = start_server(served_db, tmp_path / "server.log", "--max-body-bytes", "2000")
    try:
        with small.http() as http:
            assert http.post("/v1/runs", json={"job": "x", "payload": "y" * 1500}
                             ).status_code == 201
            assert_error(http.post("/v1/runs", json={"job": "x", "payload": "y" * 2500}),
                         413, "body_too_large")
    finally:
        stop_server(small)


@pytest.mark.parametrize("suffix", ["", "/wait?timeout=0", "/cancel", "/retry", "/timeline",
                                    "/logs", "/attempts", "/steps"])
def test_unknown_run_ids_are_404(http: httpx.Client, suffix: str) -> None:
    method = "POST" if suffix in ("/cancel", "/retry") else "GET"
    response = http.request(method, f"/v1/runs/run_00000000000000000000000000{suffix}")
    assert_error(response, 404, "run_not_found")


def test_other_unknowns_are_404(http: httpx.Client) -> None:
    assert_error(http.get("/v1/events/evt_00000000000000000000000000"), 404, "event_not_found")
    assert_error(http.get("/v1/state/never:set"), 404, "state_key_not_found")
    assert_error(http.delete("/v1/endpoints/ep_00000000000000000000000000"), 404,
                 "endpoint_not_found")
    assert_error(http.get("/v1/nothing/here"), 404, "not_found")
    assert_error(http.get("/v1/runs/"), 404, "not_found")
    assert_error(http.delete("/v1/runs"), 405, "method_not_allowed")


def test_idempotency_conflict_is_409_with_the_existing_run(http: httpx.Client) -> None:
    first = http.post("/v1/runs", json={"job": "charge", "payload": {"amount": 1},
                                        "idempotencyKey": "sec:charge:1"})
    assert first.status_code == 201
    again = http.post("/v1/runs", json={"job": "charge", "payload": {"amount": 1},
                                        "idempotencyKey": "sec:charge:1"})
    assert (again.status_code, again.json()["id"], again.json()["created"]) == (
        200, first.json()["id"], False)
    error = assert_error(
        http.post("/v1/runs", json={"job": "charge", "payload": {"amount": 2},
                                    "idempotencyKey": "sec:charge:1"}),
        409, "idempotency_conflict")
    assert error["existingRunId"] == first.json()["id"]


def test_a_refused_transition_is_409(http: httpx.Client) -> None:
    run = http.post("/v1/runs", json={"job": "neverRetried"}).json()
    assert_error(http.post(f"/v1/runs/{run['id']}/retry"), 409, "invalid_transition")


@pytest.mark.parametrize(("method", "path", "body"), [
    # values a database may refuse: NUL characters, lone surrogates, huge numbers
    ("POST", "/v1/runs", '{"job": "x", "idempotencyKey": "a\\u0000b"}'),
    ("POST", "/v1/runs", '{"job": "x", "concurrencyKey": "\\ud800"}'),
    ("POST", "/v1/runs", '{"job": "x", "payload": {"k": "\\ud800"}}'),
    ("POST", "/v1/runs", '{"job": "x", "payload": {"k": "a\\u0000b"}}'),
    ("POST", "/v1/runs", '{"job": "x", "payload": NaN}'),
    ("POST", "/v1/runs", '{"job": "x", "payload": 1e999}'),
    ("POST", "/v1/runs", '{"job": "x", "payload": 123456789012345678901234567890}'),
    ("POST", "/v1/runs", '{"job": "x", "delay": 1e308}'),
    ("POST", "/v1/runs", '{"job": "x", "scheduledAt": "9999-12-31T23:59:59Z"}'),
    ("POST", "/v1/runs", '{"job": "x", "payload": ' + "[" * 5000 + "]" * 5000 + "}"),
    ("POST", "/v1/events", '{"name": "x", "correlationKey": "a\\u0000b"}'),
    ("POST", "/v1/events", '{"name": "x", "idempotencyKey": "\\udfff"}'),
    ("PUT", "/v1/state/nul%00key", '{"value": 1}'),
    ("PUT", "/v1/state/k", '{"value": "\\ud800"}'),
    ("POST", "/v1/state/increment", '{"key": "' + "k" * 600 + '"}'),
    ("POST", "/v1/locks/acquire", '{"key": "l", "owner": "\\u0000", "ttl": 1e308}'),
    ("GET", "/v1/runs?cursor=%00&search=%ED%A0%80", None),
    ("GET", "/v1/events?name=%00&correlationKey=x", None),
])
def test_odd_input_never_gets_a_5xx(http: httpx.Client, method: str, path: str,
                                    body: str | None) -> None:
    response = http.request(method, path, content=body,
                            headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message"}


# -- input that used to get through ---------------------------------------------------------


def run_count(served_db: str) -> int:
    service = admin_service(served_db)
    try:
        return len(service.list_runs(limit=1000).items)
    finally:
        service.store.close()


def test_a_payload_nested_too_deeply_is_422_and_writes_nothing(
        http: httpx.Client, served_db: str) -> None:
    before = run_count(served_db)
    deep = "[" * 500 + "]" * 500
    deeper = "[" * 5000 + "]" * 5000  # past what the JSON parser itself reads
    for method, path, body in [
        ("POST", "/v1/runs", '{"job": "deep", "payload": ' + deep + "}"),
        ("POST", "/v1/events", '{"name": "deep", "payload": ' + deep + "}"),
        ("PUT", "/v1/state/deep", '{"value": ' + deep + "}"),
        ("POST", "/v1/runs", '{"job": "deep", "payload": ' + deeper + "}"),
        ("PUT", "/v1/state/deep", '{"value": ' + deeper + "}"),
    ]:
        response = http.request(method, path, content=body,
                                headers={"content-type": "application/json"})
        error = assert_error(response, 422, "invalid_type")
        assert "nested more than 100 levels deep" in error["message"]
    assert run_count(served_db) == before
    assert_error(http.get("/v1/state/deep"), 404, "state_key_not_found")


def test_a_time_past_the_year_9999_in_utc_is_422_and_writes_nothing(
        http: httpx.Client, served_db: str) -> None:
    before = run_count(served_db)
    late = "9999-12-31T23:59:59-14:00"  # the year 10000 in UTC
    error = assert_error(http.post("/v1/runs", json={"job": "late", "scheduledAt": late}),
                         422, "validation_error")
    assert "outside the years 1 to 9999 in UTC" in error["message"]
    assert_error(http.put("/v1/state/late", json={"value": 1, "expiresAt": late}),
                 422, "validation_error")
    last = "9999-12-31T23:59:59.999999Z"  # rounds up into the year 10000 as stored
    error = assert_error(http.post("/v1/runs", json={"job": "late", "scheduledAt": last}),
                         422, "validation_error")
    assert "scheduledAt" in error["message"] and "end of the year 9999" in error["message"]
    assert run_count(served_db) == before
    assert http.get("/v1/runs").status_code == 200
    assert http.get("/v1/state").status_code == 200
    assert_error(http.get("/v1/state/late"), 404, "state_key_not_found")


@pytest.mark.parametrize("path", ["/v1/runs?cursor=garbage", "/v1/runs?cursor=zzz",
                                  "/v1/runs?cursor=evt_0123456789abcdef0123456789",
                                  "/v1/events?cursor=garbage",
                                  "/v1/queues/emails/dead-letters?cursor=garbage"])
def test_a_cursor_no_list_returned_is_422(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 422, "validation_error")


def test_cursors_a_list_returned_page_through_it(http: httpx.Client) -> None:
    for n in range(3):
        assert http.post("/v1/runs", json={"job": "paged", "payload": n}).status_code == 201
    first = http.get("/v1/runs?job=paged&limit=2").json()
    rest = http.get(f"/v1/runs?job=paged&limit=2&cursor={first['nextCursor']}").json()
    assert len(first["items"]) == 2 and len(rest["items"]) == 1
    assert rest["nextCursor"] is None


def test_405_lists_the_methods_the_path_serves(http: httpx.Client) -> None:
    for path, allowed in [("/v1/runs", "GET, POST"), ("/v1/state/k", "DELETE, GET, PUT"),
                          ("/v1/events", "GET, POST"), ("/healthz", "GET, HEAD"),
                          # literal paths that a template (/v1/state/{key}) also matches
                          ("/v1/state/increment", "POST"), ("/v1/runs/retry-many", "POST"),
                          ("/v1/locks", "GET"), ("/v1/locks/k", "DELETE"),
                          ("/v1/locks/acquire", "POST")]:
        response = http.patch(path, json={})
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == allowed, path


def test_a_path_that_is_not_utf8_is_400_and_writes_nothing(http: httpx.Client) -> None:
    assert_error(http.put("/v1/state/caf%E9", json={"value": "x"}), 400, "bad_path")
    assert_error(http.get("/v1/state/caf%E8"), 400, "bad_path")
    assert http.get("/v1/state?prefix=caf").json()["items"] == []
    # Percent-encoded UTF-8 is a key like any other.
    assert http.put("/v1/state/caf%C3%A9", json={"value": "x"}).status_code == 204
    assert http.get("/v1/state/caf%C3%A9").json() == {"key": "café", "value": "x"}


def test_a_body_not_said_to_be_json_is_415(http: httpx.Client, served_db: str) -> None:
    before = run_count(served_db)
    for content_type in (None, "application/x-www-form-urlencoded", "text/plain",
                         "application/json; charset=latin-1", "application/json;charset=UTF-16"):
        headers = {"content-type": content_type} if content_type else {}
        response = http.post("/v1/runs", content=b'{"job": "x"}', headers=headers)
        error = assert_error(response, 415, "unsupported_media_type")
        assert "Content-Type: application/json" in error["message"]
    assert run_count(served_db) == before
    for content_type in ("application/json; charset=utf-8", 'application/json;charset="UTF-8"',
                         "application/vnd.api+json"):
        ok = http.post("/v1/runs", content=b'{"job": "x"}', headers={"content-type": content_type})
        assert ok.status_code == 201, (content_type, ok.text)


def claim_one(http: httpx.Client, job: str, **extra: Any) -> httpx.Response:
    return http.post("/v1/worker/claim", json={"workerId": "wkr_sec", "jobs": [job],
                                               "limit": 1, "leaseSeconds": 30, **extra})


def leased_run(http: httpx.Client, job: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new run of ``job``, claimed as a remote worker claims it, and its lease."""
    run = http.post("/v1/runs", json={"job": job}).json()
    claimed = claim_one(http, job)
    return run, {"runId": run["id"], "workerId": "wkr_sec",
                 "attempt": claimed.json()["items"][0]["attempt"]}


@pytest.mark.parametrize("handler", [
    '{"x": 1}', "{bad json", '"text"',
    '{"job": "h", "queue": "default", "max_attempts": null}',
    '{"job": "bad name!", "queue": "default", "max_attempts": null, "default_max_attempts": 3}',
    '{"job": "h", "queue": "default", "max_attempts": 0, "default_max_attempts": 3}',
])
def test_a_malformed_failure_handler_is_422_and_claims_nothing(
        http: httpx.Client, unique: Any, handler: str) -> None:
    job = unique("handled")
    run = http.post("/v1/runs", json={"job": job, "maxAttempts": 1}).json()
    assert_error(claim_one(http, job, onFailure={job: handler}), 422, "validation_error")
    assert http.get(f"/v1/runs/{run['id']}").json()["status"] == "queued"


def test_a_well_formed_failure_handler_starts_the_handler(
        http: httpx.Client, unique: Any) -> None:
    job, handler = unique("handled"), unique("handler")
    run = http.post("/v1/runs", json={"job": job, "maxAttempts": 1}).json()
    spec = json.dumps({"job": handler, "queue": "default", "max_attempts": 2,
                       "default_max_attempts": 3})
    claimed = claim_one(http, job, onFailure={job: spec})
    assert claimed.status_code == 200, claimed.text
    attempt = claimed.json()["items"][0]["attempt"]
    finished = http.post("/v1/worker/finish", json={
        "lease": {"runId": run["id"], "workerId": "wkr_sec", "attempt": attempt},
        "outcome": {"status": "failed", "error": {"type": "Boom", "message": "boom"}}})
    assert finished.status_code == 200, finished.text
    handlers = http.get(f"/v1/runs?job={handler}").json()["items"]
    assert [(h["job"], h["maxAttempts"]) for h in handlers] == [(handler, 2)]


def test_a_result_that_is_not_json_is_422_and_the_run_stays_readable(
        http: httpx.Client, unique: Any) -> None:
    job = unique("results")
    run, lease = leased_run(http, job)
    step = {"key": "a", "name": "a", "kind": "run", "status": "completed",
            "result": "{not json", "startedAt": 1.0, "finishedAt": 2.0}
    assert_error(http.post("/v1/worker/steps", json={"lease": lease, "step": step,
                                                     "leaseSeconds": 30}),
                 422, "validation_error")
    assert_error(http.post("/v1/worker/finish", json={
        "lease": lease, "outcome": {"status": "completed", "result": "{not json"}}),
        422, "validation_error")
    assert http.get(f"/v1/runs/{run['id']}/steps").json()["items"] == []
    assert http.get(f"/v1/runs/{run['id']}").json()["status"] == "running"
    done = http.post("/v1/worker/finish", json={
        "lease": lease, "outcome": {"status": "completed", "result": '{"ok": true}'}})
    assert done.status_code == 200, done.text
    assert http.get(f"/v1/runs/{run['id']}").json()["result"] == {"ok": True}


def test_a_completed_step_keeps_its_result_whatever_a_worker_sends_again(
        http: httpx.Client, unique: Any) -> None:
    job = unique("steady")
    run, lease = leased_run(http, job)

    def save(step: dict[str, Any]) -> None:
        answer = http.post("/v1/worker/steps", json={"lease": lease, "step": {
            "key": "a", "name": "a", "kind": "run", "startedAt": 1.0, "finishedAt": 2.0,
            **step}, "leaseSeconds": 30})
        assert answer.status_code == 200, answer.text

    save({"status": "failed", "error": {"type": "Boom", "message": "boom"}})
    save({"status": "completed", "result": "1"})  # a failed step is replaced
    save({"status": "completed", "result": "2"})  # a completed one is not
    save({"status": "waiting"})
    steps = http.get(f"/v1/runs/{run['id']}/steps").json()["items"]
    assert [(s["key"], s["status"], s["result"]) for s in steps] == [("a", "completed", 1)]
    timeline = http.get(f"/v1/runs/{run['id']}/timeline").json()["items"]
    assert [t["kind"] for t in timeline if t["step"] == "a"] == ["step.failed", "step.completed"]


def test_a_step_that_finished_before_it_started_is_422_and_nothing_is_saved(
        http: httpx.Client, unique: Any) -> None:
    job = unique("backwards")
    run, lease = leased_run(http, job)
    error = assert_error(http.post("/v1/worker/steps", json={"lease": lease, "step": {
        "key": "a", "name": "a", "kind": "run", "status": "completed", "result": "1",
        "startedAt": 2.0, "finishedAt": 1.0}, "leaseSeconds": 30}), 422, "validation_error")
    assert "finishedAt must not be before startedAt" in error["message"]
    assert http.get(f"/v1/runs/{run['id']}/steps").json()["items"] == []
    assert http.get(f"/v1/runs/{run['id']}").json()["status"] == "running"


@pytest.mark.parametrize("status", ["failed", "retrying"])
def test_a_failed_ending_without_its_error_is_422_and_the_run_goes_on(
        http: httpx.Client, unique: Any, status: str) -> None:
    job = unique("errorless")
    run, lease = leased_run(http, job)
    error = assert_error(http.post("/v1/worker/finish", json={
        "lease": lease, "outcome": {"status": status, "retryAt": 4e9}}), 422, "validation_error")
    assert f"error is required when status is {status}" in error["message"]
    assert http.get(f"/v1/runs/{run['id']}").json()["status"] == "running"


def test_runs_started_over_http_get_the_defaults_the_jobs_workers_recorded(
        http: httpx.Client, unique: Any) -> None:
    job = unique("published")
    plain = http.post("/v1/runs", json={"job": job}).json()
    assert (plain["queueName"], plain["maxAttempts"]) == ("default", 3)
    assert_error(http.post("/v1/worker/jobs", json={"jobs": [{"job": job, "maxAttempts": 0}]}),
                 422, "validation_error")
    recorded = http.post("/v1/worker/jobs", json={"jobs": [
        {"job": job, "queue": "emails", "maxAttempts": 5}]})
    assert recorded.status_code == 200, recorded.text
    run = http.post("/v1/runs", json={"job": job}).json()
    assert (run["queueName"], run["maxAttempts"]) == ("emails", 5)
    chosen = http.post("/v1/runs", json={"job": job, "queueName": "other"}).json()
    assert (chosen["queueName"], chosen["maxAttempts"]) == ("other", 5)


def test_a_retry_without_its_time_is_422_and_the_run_keeps_running(
        http: httpx.Client, unique: Any) -> None:
    job = unique("retried")
    run, lease = leased_run(http, job)
    error = assert_error(http.post("/v1/worker/finish", json={
        "lease": lease, "outcome": {"status": "retrying"}}), 422, "validation_error")
    assert "retryAt is required" in error["message"]
    assert http.get(f"/v1/runs/{run['id']}").json()["status"] == "running"
    # With its time, the retry is recorded.
    retried = http.post("/v1/worker/finish", json={
        "lease": lease, "outcome": {"status": "retrying", "retryAt": 1.0,
                                    "error": {"type": "Boom", "message": "boom"}}})
    assert retried.status_code == 200, retried.text
    assert retried.json() == {"recorded": True, "status": "retrying"}, retried.text
    assert http.get(f"/v1/runs/{run['id']}").json()["status"] in ("retrying", "queued")
