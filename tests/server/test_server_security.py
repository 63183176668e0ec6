"""Security and bad input against a real server: keys, limits, JSON errors, no 5xx."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverproc import admin_service, start_server, stop_server

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


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client


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


def _database_text(database_url: str) -> list[str]:
    """Every row of every table, as text, read through the database itself."""
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path)
        try:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
            return [repr(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')]
        finally:
            conn.close()
    import psycopg

    base, schema = database_url.split("?schema=")
    with psycopg.connect(base) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))]
        return [str(row[0]) for t in tables for row in conn.execute(
            f'SELECT row_to_json(t)::text FROM "{schema}"."{t}" t')]


def test_the_database_holds_no_plain_text_key(server: Any) -> None:
    service = admin_service(server.database_url)
    try:
        listed, key = service.create_api_key("secret-check")
    finally:
        service.close()
    with server.http(api_key=key) as http:
        assert http.get("/v1/runs").status_code == 200  # a use is recorded too
    secret = key[len(listed.prefix):]
    rows = _database_text(server.database_url)
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
    ("POST", "/v1/runs/run_x/cancel"),
])
@pytest.mark.parametrize("body", [b"{not json", b'{"job": "x",}', b"\xff\xfe", b"[1, 2"])
def test_malformed_json_is_400(http: httpx.Client, method: str, path: str, body: bytes) -> None:
    response = http.request(method, path, content=body,
                            headers={"content-type": "application/json"})
    assert_error(response, 400, "malformed_json")


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
    ("POST", "/v1/runs/run_x/cancel", {"reason": 5}),
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


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=1001", "status=bogus",
                                   "createdAfter=yesterday", "createdAfter=2026-01-01T00:00:00"])
def test_bad_list_queries_are_422(http: httpx.Client, query: str) -> None:
    assert_error(http.get(f"/v1/runs?{query}"), 422, "validation_error")


def test_wait_timeout_is_bounded(http: httpx.Client) -> None:
    run = http.post("/v1/runs", json={"job": "waitBound"}).json()
    for timeout in ("-1", "61", "soon"):
        assert_error(http.get(f"/v1/runs/{run['id']}/wait?timeout={timeout}"), 422,
                     "validation_error")


def test_a_2_mib_body_is_413(http: httpx.Client) -> None:
    body = json.dumps({"job": "big", "payload": "x" * (2 * MiB)}).encode()
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


def test_a_payload_over_the_limit_inside_a_small_enough_body(http: httpx.Client) -> None:
    # 1 MiB of payload plus the envelope is over the body limit as well: one error code
    response = http.post("/v1/runs", json={"job": "big", "payload": "x" * MiB})
    assert_error(response, 413, "body_too_large")
    ok = http.post("/v1/runs", json={"job": "big", "payload": "x" * (MiB - 1024)})
    assert ok.status_code == 201, ok.text


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
