"""The rules of every route, against a real server: the server's own routes
(``/healthz``, ``/metrics``, ``/openapi.json``) take bodies and query strings as
``/v1`` does, a duration in a query string may be a bare number of seconds, and a
refusal names the field at fault as the request spelt it."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverproc import assert_error

from stackshift.errors import ValidationError
from stackshift.jobs import check_name

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SERVER_ROUTES = ["/healthz", "/metrics", "/openapi.json"]


def tag(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:8]}"


def name_error(value: str, noun: str) -> str:
    """The service's words for a name in the wrong form."""
    with pytest.raises(ValidationError) as refused:
        check_name(value, noun)
    return str(refused.value)


# -- /healthz, /metrics and /openapi.json ---------------------------------------------------


@pytest.mark.parametrize("path", [*SERVER_ROUTES, "/v1/limits"])
@pytest.mark.parametrize("query", ["x=1", "job=", "job=emails&limit=5"])
def test_the_server_routes_refuse_query_parameters_as_v1_does(
        http: httpx.Client, path: str, query: str) -> None:
    """None of them takes one: ``/metrics?job=`` is not the metrics of everything."""
    error = assert_error(http.get(f"{path}?{query}"), 422, "validation_error")
    name = query.split("=")[0]
    assert error["message"] == f"query parameter {name!r} is unknown here (it takes none)"


@pytest.mark.parametrize("path", [*SERVER_ROUTES, "/v1/limits"])
def test_the_server_routes_take_bodies_as_v1_gets_do(http: httpx.Client, path: str) -> None:
    """No body, ``{}`` and ``null`` are fine; anything else is refused, as by a
    ``GET`` of ``/v1``."""
    as_json = {"content-type": "application/json"}
    for body in (b"", b"{}", b"null"):
        assert http.request("GET", path, content=body, headers=as_json).status_code == 200
    error = assert_error(http.request("GET", path, content=b"{", headers=as_json),
                         400, "malformed_json")
    assert error["message"] == "the request body is not valid JSON"
    error = assert_error(http.request("GET", path, content=b'{"job": "x"}', headers=as_json),
                         422, "validation_error")
    assert error["message"] == "this endpoint takes no request body: 'job' not permitted"
    error = assert_error(http.request("GET", path, content=b"{}",
                                      headers={"content-type": "text/plain"}),
                         415, "unsupported_media_type")
    assert "Content-Type: application/json" in error["message"]


def test_healthz_answers_what_load_balancers_send_and_refuses_the_rest_without_a_key(
        server: Any) -> None:
    """A plain ``GET`` or ``HEAD``, with the headers probes send, needs no key; a
    query parameter or a body is refused as on any route, still without one."""
    probe = {"user-agent": "kube-probe/1.30", "accept": "*/*", "connection": "close"}
    with httpx.Client(base_url=server.url, headers=probe) as balancer:
        response = balancer.get("/healthz")
        assert response.status_code == 200 and response.json()["status"] == "ok"
        response = balancer.head("/healthz")
        assert (response.status_code, response.content) == (200, b"")
        assert_error(balancer.get("/healthz?verbose=1"), 422, "validation_error")
        assert balancer.head("/healthz?verbose=1").status_code == 422
        assert_error(balancer.request("GET", "/healthz", content=b"{",
                                      headers={"content-type": "application/json"}),
                     400, "malformed_json")
        assert_error(balancer.get("/metrics"), 401, "unauthorized")
        assert_error(balancer.get("/openapi.json"), 401, "unauthorized")


def test_metrics_answer_a_prometheus_scrape(http: httpx.Client) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = http.get("/metrics", headers={"accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE stackshift_runs gauge" in response.text


def test_refusals_of_the_server_routes_are_counted_under_their_routes(
        http: httpx.Client) -> None:
    def counted(text: str, route: str) -> int:
        found = re.search(rf'stackshift_http_responses_total\{{method="GET",route="{route}",'
                          r'status="422"\} (\d+)', text)
        return int(found[1]) if found else 0

    before = http.get("/metrics").text
    for path in SERVER_ROUTES:
        assert http.get(f"{path}?x=1").status_code == 422
    after = http.get("/metrics").text
    for path in SERVER_ROUTES:
        assert counted(after, path) - counted(before, path) == 1, path


def test_the_document_lists_the_refusals_of_the_server_routes() -> None:
    paths = json.loads(DOC.read_text())["paths"]
    for path in ("/healthz", "/metrics"):
        responses = paths[path]["get"]["responses"]
        assert {"400", "413", "415", "422", "503"} <= set(responses), path
        assert "parameters" not in paths[path]["get"]
    assert "401" not in paths["/healthz"]["get"]["responses"]


# -- a queue's window -----------------------------------------------------------------------


@pytest.mark.parametrize(("window", "seconds"), [
    ("60", 60.0), ("1.5", 1.5), ("3600", 3600.0), ("7776000", 90 * 86400.0), (" 60 ", 60.0),
    ("15m", 900.0), ("1h30m", 5400.0), ("1", 1.0), ("90d", 90 * 86400.0),
])
def test_a_queue_window_is_seconds_or_a_duration(http: httpx.Client, window: str,
                                                 seconds: float) -> None:
    """Every value of a query string is text: a bare number is seconds, as in a body."""
    name = tag("windowed")
    assert http.patch(f"/v1/queues/{name}", json={"concurrency": 2}).status_code == 200
    answer = http.get(f"/v1/queues/{name}", params={"window": window})
    assert answer.status_code == 200, answer.text
    assert answer.json()["window"] == seconds
    listed = http.get("/v1/queues", params={"window": window})
    assert listed.status_code == 200, listed.text
    assert {q["window"] for q in listed.json()["items"]} == {seconds}


@pytest.mark.parametrize(("window", "message"), [
    ("0", "window: must be from 1s to 90d"),
    ("0.5", "window: must be from 1s to 90d"),
    ("0s", "window: must be from 1s to 90d"),
    ("7776001", "window: must be from 1s to 90d"),
    ("400d", "window: must be from 1s to 90d"),
    ("99999999999", "window: '99999999999' is longer than 100 years"),
    ("-5", "window: '-5' must be a finite, non-negative duration"),
    ("NaN", "window: 'NaN' must be a finite, non-negative duration"),
    ("1e3", "window: seconds are written in digits (e.g. '60', '1.5'), got '1e3'"),
    ("1_000", "window: seconds are written in digits (e.g. '60', '1.5'), got '1_000'"),
    ("60.", "window: seconds are written in digits (e.g. '60', '1.5'), got '60.'"),
    ("", "window: '' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"),
    ("an hour", "window: 'an hour' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"),
])
def test_a_queue_window_out_of_form_or_range_is_422(http: httpx.Client, window: str,
                                                    message: str) -> None:
    name = tag("windowed")
    assert http.patch(f"/v1/queues/{name}", json={"concurrency": 2}).status_code == 200
    for path in (f"/v1/queues/{name}", "/v1/queues"):
        error = assert_error(http.get(path, params={"window": window}), 422,
                             "validation_error")
        assert error["message"] == message, path


def test_the_document_states_the_form_and_range_of_a_window() -> None:
    paths = json.loads(DOC.read_text())["paths"]
    for path in ("/v1/queues", "/v1/queues/{name}"):
        window = next(p for p in paths[path]["get"]["parameters"] if p["name"] == "window")
        assert "from 1s to 90d" in window["description"]
        pattern = window["schema"]["pattern"]
        for taken in ("60", "1.5", "15m", "1h30m", "250ms", " 3600 "):
            assert re.search(pattern, taken), taken
        for refused in ("", "1e3", "-5", "+5", "NaN", "1_000", "an hour", "60."):
            assert not re.search(pattern, refused), refused


# -- refusals name the field ----------------------------------------------------------------


NUL = "o\x00"


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("POST", "/v1/queues/a%20b/runs", {"job": "{tag}"}, "name: {queue}"),
    ("GET", "/v1/queues/a%20b", None, "name: {queue}"),
    ("PATCH", "/v1/queues/a%20b", {"concurrency": 2}, "name: {queue}"),
    ("POST", "/v1/queues/a%20b/pause", None, "name: {queue}"),
    ("POST", "/v1/queues/a%20b/resume", None, "name: {queue}"),
    ("GET", "/v1/queues/a%20b/dead-letters", None, "name: {queue}"),
    ("POST", "/v1/schedules", {"job": "{tag}", "cron": "bogus"},
     "cron: invalid cron expression 'bogus': expected 5 fields (minute hour day-of-month "
     "month day-of-week), got 1"),
    ("POST", "/v1/schedules", {"job": "{tag}", "cron": "@every 0s"},
     "cron: invalid cron expression '@every 0s': @every needs at least 1s"),
    ("POST", "/v1/schedules", {"job": "{tag}", "cron": "@daily", "timezone": "Mars/Olympus"},
     "timezone: unknown timezone 'Mars/Olympus': use an IANA name such as 'UTC' or "
     "'Europe/Paris'"),
    ("POST", "/v1/schedules", {"job": "{tag}", "cron": "bogus", "timezone": "Mars/Olympus"},
     "cron: invalid cron expression 'bogus': expected 5 fields (minute hour day-of-month "
     "month day-of-week), got 1; timezone: unknown timezone 'Mars/Olympus': use an IANA "
     "name such as 'UTC' or 'Europe/Paris'"),
    ("POST", "/v1/schedules", {"job": "{tag}", "cron": "@daily", "scheduleId": "job:{tag}"},
     "scheduleId: schedule id 'job:{tag}' is invalid: ids starting with 'job:' are those of "
     "@job(cron=...) schedules"),
    ("POST", "/v1/locks/acquire", {"key": "{tag}", "owner": NUL, "ttl": "1m"},
     "owner: lock owner must not contain the NUL character (U+0000)"),
    ("POST", "/v1/locks/extend", {"key": "{tag}", "owner": NUL, "ttl": "1m"},
     "owner: lock owner must not contain the NUL character (U+0000)"),
    ("POST", "/v1/locks/release", {"key": "{tag}", "owner": NUL},
     "owner: lock owner must not contain the NUL character (U+0000)"),
    ("POST", "/v1/locks/acquire", {"key": "{tag}\x00", "owner": "o", "ttl": "1m"},
     "key: state key must not contain the NUL character (U+0000)"),
    ("POST", "/v1/state/increment", {"key": "{tag}\x00", "by": 1},
     "key: state key must not contain the NUL character (U+0000)"),
    ("GET", "/v1/state/{tag}%00", None,
     "key: state key must not contain the NUL character (U+0000)"),
    ("PUT", "/v1/state/{tag}%00", {"value": 1},
     "key: state key must not contain the NUL character (U+0000)"),
    ("DELETE", "/v1/state/{tag}%00", None,
     "key: state key must not contain the NUL character (U+0000)"),
    ("DELETE", "/v1/locks/{tag}%00", None,
     "key: state key must not contain the NUL character (U+0000)"),
    ("POST", "/v1/runs/retry-many", {"job": "{tag}", "status": "running"},
     "status: only failed or cancelled runs can be retried, not running"),
    ("POST", "/v1/runs/retry-many", {"job": "{tag}", "status": "bogus"},
     "status: unknown status 'bogus'; expected one of: scheduled, queued, running, waiting, "
     "retrying, completed, failed, cancelled"),
])
def test_a_refusal_names_the_field_as_the_request_spelt_it(
        http: httpx.Client, method: str, path: str, body: Any, message: str) -> None:
    """The service's words (``queue name 'a b' is invalid``), after the field sent:
    a path parameter (``name``) as a body field. Nothing is written."""
    name = tag("named")

    def filled(value: Any) -> Any:
        return value.replace("{tag}", name) if isinstance(value, str) else value

    if body is not None:
        body = {field: filled(value) for field, value in body.items()}
    error = assert_error(http.request(method, filled(path), json=body), 422,
                         "validation_error")
    assert error["message"] == filled(message).replace(
        "{queue}", name_error("a b", "queue name"))
    assert [s for s in http.get("/v1/schedules").json()["items"] if s["job"] == name] == []
    assert http.get("/v1/locks", params={"prefix": name}).json()["items"] == []
    assert http.get("/v1/state", params={"prefix": name}).json()["items"] == []
    assert http.get("/v1/runs", params={"job": name}).json()["items"] == []
