"""Hostile and careless input to every endpoint of docs/openapi.json, on every store.

Whatever a client sends -- NUL characters, lone surrogates, 600 kB strings, JSON
nested 10,000 levels deep, numbers past 64 bits, NaN and Infinity, wrong types,
bodies that are not JSON or not UTF-8, a key repeated in one object, odd path
segments and query strings, absurd times, malformed ``Authorization`` headers --
gets a 4xx with the documented shape, ``{"error": {"code", "message"}}``, and
leaves the database as it was: every row of every table is compared before and
after (API key use and worker heartbeats, which the server updates itself, by
their number of rows).

A few single cases live in ``test_server_security.py`` (malformed JSON, body
limits, 415s on ``POST /v1/runs``); here every field of every body and every
parameter of every endpoint is tried.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from serverproc import Server, assert_error, database_rows

#: Tables the server writes on its own: compared by their number of rows.
COUNTED = ("api_keys", "workers")

#: Raw JSON values a hostile or careless client sends.
V = {
    "nul": '"a\\u0000b"',
    "surrogate": '"a\\ud800b"',
    "low surrogate": '"\\udfff"',
    "600 kB": '"' + "k" * 600_000 + '"',
    "empty": '""',
    "10000 deep": "[" * 10_000 + "]" * 10_000,
    "2**70": str(2**70),
    "1e400": "1e400",
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "true": "true",
    "list": "[]",
    "object": "{}",
    "number": "5",
    "1.5": "1.5",
    "-1": "-1",
    "text number": '"5"',
    "null": "null",
}

#: What must be refused, by the kind of field.
KINDS: dict[str, list[str]] = {
    # job, queue and event names
    "name": ["nul", "surrogate", "600 kB", "empty", "10000 deep", "number", "true", "list",
             "object", "NaN", '"bad name"'],
    # keys, owners, worker ids, lease run ids, step keys and names
    "key": ["nul", "surrogate", "low surrogate", "600 kB", "empty", "10000 deep", "number",
            "true", "list", "object", "Infinity"],
    # text stored in a column that may be empty (a hostname, a log level)
    "text": ["nul", "surrogate", "600 kB", "10000 deep", "number", "true", "list"],
    # text kept as JSON (a cancel's reason becomes the run's error): NUL is kept
    "message": ["surrogate", "600 kB", "10000 deep", "number", "true", "list"],
    # job name to a number
    "limits": ['{"a\\u0000b": 1}', '{"\\ud800": 1}', '{"bad name": 1}', '{"j": 0}',
               '{"j": true}', '{"j": 1e400}', "list", "nul", "10000 deep"],
    "int": ["2**70", "1e400", "NaN", "Infinity", "-Infinity", "true", "text number", "1.5",
            "list", "object", "10000 deep", "nul"],
    # a count with no upper bound (more than there are is all of them)
    "count": ["1e400", "NaN", "Infinity", "true", "text number", "1.5", "0", "-1", "list"],
    "duration": ["nul", "surrogate", "1e400", "NaN", "Infinity", "-Infinity", "-1", "true",
                 "list", "object", "10000 deep", '"forever"', '"-5s"'],
    "time": ["nul", "surrogate", "empty", "number", "true", "list", "10000 deep",
             '"0000-01-01T00:00:00Z"', '"99999-01-01T00:00:00Z"', '"2026-05-06T09:00:00"',
             '"9999-12-31T23:59:59-14:00"', '"0001-01-01T00:00:00+14:00"',
             '"2026-13-45T00:00:00Z"'],
    # seconds since the epoch
    "instant": ["-1", "1e400", "NaN", "Infinity", "true", "text number", "nul", "list",
                "1e12"],
    # any JSON value
    "json": ["NaN", "Infinity", "-Infinity", "1e400", "10000 deep", "surrogate",
             '{"\\ud800": 1}', '[1, {"a": NaN}]'],
    # a JSON document as text (results)
    "json text": ['"{not json"', '"NaN"', '"[1e400]"', '"[-1e400]"', "number", "object",
                  "surrogate", '"\\"\\\\ud800\\""', '"' + "[" * 101 + "]" * 101 + '"'],
    "enum": ['"bogus"', "nul", "number", "true", "empty", "list"],
    # lists of names
    "names": ['["a\\u0000b"]', '["\\ud800"]', '[""]', "name", "[5]", "object", "10000 deep"],
}
V.update({raw: raw for values in KINDS.values() for raw in values if raw not in V})
V["name"] = '"sendReceipt"'
V["1e12"] = "1e12"

#: Whole bodies that are not what any endpoint reads.
BODIES = [b"", b" ", b"null", b"[]", b'"text"', b"5", b"NaN", b"\xff\xfe", b"\x00",
          b'{"a": "\xed\xa0\x80"}', b"{}{}", b"[" * 10_000 + b"]" * 10_000,
          b'{"\\u0000": 1}', b'{"\\ud800": 1}']

#: Statuses of a refusal of bad input (not a lookup: 404, 409 would mean it got through).
REFUSED = {400, 413, 415, 422}

LEASE_KEYS = {"lease.runId": "key", "lease.workerId": "key", "lease.attempt": "int"}
STEP = {"key": "a", "name": "a", "kind": "run", "status": "completed", "result": "1",
        "startedAt": 1.0, "finishedAt": 2.0}
STEP_KEYS = {"step.key": "key", "step.name": "key", "step.kind": "enum", "step.status": "enum",
             "step.result": "json text", "step.startedAt": "instant",
             "step.finishedAt": "instant", "step.function": "key"}
LOG = {"at": 1.0, "level": "INFO", "logger": "app", "message": "m", "step": "a", "attempt": 1}
LOG_KEYS = {"logs.0.at": "instant", "logs.0.level": "text", "logs.0.step": "key",
            "logs.0.attempt": "int"}


class World:
    """What the bodies refer to: a queued run, a claimed one and its lease."""

    def __init__(self, http: httpx.Client, unique: Callable[[str], str]) -> None:
        self.job = unique("hostile")
        self.queued = http.post("/v1/runs", json={"job": self.job}).json()["id"]
        claimed = unique("claimed")
        self.running = http.post("/v1/runs", json={"job": claimed}).json()["id"]
        items = http.post("/v1/worker/claim", json={
            "workerId": "wkr_hostile", "jobs": [claimed], "limit": 1,
            "leaseSeconds": 3600}).json()["items"]
        self.lease = {"runId": self.running, "workerId": "wkr_hostile",
                      "attempt": items[0]["attempt"]}


#: (method, path, base body, {field: kind}): each base body is valid and would
#: write; each field is replaced, in turn, by every value its kind refuses.
def endpoints(w: World) -> dict[str, tuple[str, str, dict[str, Any], dict[str, str]]]:
    lease = w.lease
    return {
        "start": ("POST", "/v1/runs", {
            "job": w.job, "payload": 1, "queueName": "q", "idempotencyKey": "k1",
            "idempotencyTtl": "1h", "maxAttempts": 2, "priority": 1, "concurrencyKey": "c"}, {
            "job": "name", "payload": "json", "queueName": "name", "idempotencyKey": "key",
            "idempotencyTtl": "duration", "maxAttempts": "int", "priority": "int",
            "concurrencyKey": "key"}),
        "start many": ("POST", "/v1/runs/many", {
            "job": w.job, "payloads": [1, 2], "queueName": "q", "idempotencyKeys": ["k9", None],
            "idempotencyTtl": "1h", "maxAttempts": 2, "priority": 1,
            "concurrencyKeys": [None, "c"]}, {
            "job": "name", "payloads.1": "json", "queueName": "name",
            "idempotencyKeys.0": "key", "idempotencyTtl": "duration", "maxAttempts": "int",
            "priority": "int", "concurrencyKeys.1": "key"}),
        "start later": ("POST", "/v1/runs", {"job": w.job, "scheduledAt": "2030-01-01T00:00:00Z"},
                        {"scheduledAt": "time"}),
        "enqueue": ("POST", "/v1/queues/hostile/runs", {"job": w.job, "delay": 5},
                    {"job": "name", "delay": "duration"}),
        "cancel": ("POST", f"/v1/runs/{w.queued}/cancel", {"reason": "r"}, {"reason": "message"}),
        "event": ("POST", "/v1/events", {
            "name": "hostile", "payload": 1, "correlationKey": "c", "idempotencyKey": "k"}, {
            "name": "name", "payload": "json", "correlationKey": "key",
            "idempotencyKey": "key"}),
        "set state": ("PUT", "/v1/state/hostile", {"value": 1, "ttl": "1h"},
                      {"value": "json", "ttl": "duration"}),
        "set state until": ("PUT", "/v1/state/hostile", {
            "value": 1, "expiresAt": "2030-01-01T00:00:00Z"}, {"expiresAt": "time"}),
        "increment": ("POST", "/v1/state/increment", {"key": "hostile", "by": 1},
                      {"key": "key", "by": "int"}),
        "acquire": ("POST", "/v1/locks/acquire", {"key": "hostile", "owner": "o", "ttl": 60},
                    {"key": "key", "owner": "key", "ttl": "duration"}),
        "extend": ("POST", "/v1/locks/extend", {"key": "hostile", "owner": "o", "ttl": 60},
                   {"key": "key", "owner": "key", "ttl": "duration"}),
        "configure queue": ("PATCH", "/v1/queues/hostile", {
            "concurrency": 2, "rateLimit": "10/s", "maxAttempts": 3}, {
            "concurrency": "int", "rateLimit": "name", "maxAttempts": "int"}),
        "retry many": ("POST", "/v1/runs/retry-many", {
            "queueName": "q", "job": w.job, "status": "failed",
            "createdAfter": "2020-01-01T00:00:00Z", "createdBefore": "2030-01-01T00:00:00Z",
            "limit": 5}, {
            "queueName": "name", "job": "name", "status": "enum", "createdAfter": "time",
            "createdBefore": "time", "limit": "count"}),
        "schedule": ("POST", "/v1/schedules", {
            "job": w.job, "cron": "@daily", "payload": 1, "timezone": "UTC", "queueName": "q"},
            {"job": "name", "cron": "name", "payload": "json", "timezone": "name",
             "queueName": "name"}),
        "endpoint": ("POST", "/v1/endpoints", {
            "url": "http://127.0.0.1:9/hostile", "jobs": [w.job], "concurrency": 1,
            "keyLimits": {w.job: 1}}, {
            "url": "name", "jobs": "names", "concurrency": "int", "keyLimits": "limits"}),
        "register": ("POST", "/v1/worker/register", {
            "workerId": "wkr_new", "hostname": "h", "pid": 1, "jobs": [w.job],
            "queues": ["q"], "concurrency": 1, "process": {"space": "s", "started": 1}}, {
            "workerId": "key", "hostname": "text", "pid": "int", "jobs": "names",
            "queues": "names", "concurrency": "int", "process.space": "key",
            "process.started": "int"}),
        "peers": ("POST", "/v1/worker/peers", {"workerId": "wkr_hostile", "space": "s"},
                  {"workerId": "key", "space": "key"}),
        "held": ("POST", "/v1/worker/held", {"workerId": "wkr_hostile"}, {"workerId": "key"}),
        "unregister": ("POST", "/v1/worker/unregister", {"workerId": "wkr_hostile"},
                       {"workerId": "key"}),
        "claim": ("POST", "/v1/worker/claim", {
            "workerId": "wkr_other", "jobs": [w.job], "limit": 1, "leaseSeconds": 60,
            "queues": ["default"], "keyLimits": {w.job: 1}, "waitSeconds": 0}, {
            "workerId": "key", "jobs": "names", "limit": "int", "leaseSeconds": "duration",
            "queues": "names", "keyLimits": "limits", "waitSeconds": "duration"}),
        "save step": ("POST", "/v1/worker/steps", {
            "lease": lease, "step": STEP, "logs": [LOG], "leaseSeconds": 60},
            {**LEASE_KEYS, **STEP_KEYS, **LOG_KEYS, "leaseSeconds": "duration"}),
        "sleep": ("POST", "/v1/worker/sleep", {"lease": lease, "step": STEP, "until": 5.0},
                  {**LEASE_KEYS, **STEP_KEYS, "until": "instant"}),
        "wait": ("POST", "/v1/worker/waits", {
            "lease": lease, "step": STEP, "name": "hostile", "correlationKey": "c",
            "timeoutAt": 5.0, "onTimeout": "fail", "since": 1.0, "leaseSeconds": 60}, {
            **LEASE_KEYS, **STEP_KEYS, "name": "name", "correlationKey": "text",
            "timeoutAt": "instant", "onTimeout": "enum", "since": "instant",
            "leaseSeconds": "duration"}),
        "finish": ("POST", "/v1/worker/finish", {
            "lease": lease, "outcome": {"status": "completed", "result": "1"}, "logs": [LOG]},
            {**LEASE_KEYS, **LOG_KEYS, "outcome.status": "enum",
             "outcome.result": "json text"}),
        "release": ("POST", "/v1/worker/release", {"lease": lease}, LEASE_KEYS),
        "renew": ("POST", "/v1/worker/renew", {
            "leases": [lease], "leaseSeconds": 60, "logs": {lease["runId"]: [LOG]}}, {
            "leases.0.runId": "key", "leases.0.workerId": "key", "leases.0.attempt": "int",
            "leaseSeconds": "duration",
            **{f"logs.{lease['runId']}.{key[len('logs.'):]}": kind
               for key, kind in LOG_KEYS.items()}}),
        "publish jobs": ("POST", "/v1/worker/jobs", {
            "jobs": [{"job": w.job, "queue": "q", "maxAttempts": 2}]}, {
            "jobs.0.job": "name", "jobs.0.queue": "name", "jobs.0.maxAttempts": "int"}),
        "sync schedules": ("POST", "/v1/worker/schedules", {
            "schedules": [{"job": w.job, "cron": "@daily", "timezone": "UTC", "queue": "q"}],
            "without": []}, {
            "schedules.0.job": "name", "schedules.0.cron": "name",
            "schedules.0.timezone": "name", "schedules.0.queue": "name", "without": "names"}),
        "accept delivery": ("POST", "/v1/worker/push/accept", {
            "deliveryId": "dlv_1", "lease": lease}, {"deliveryId": "key", **LEASE_KEYS}),
    }


ENDPOINT_NAMES = [
    "start", "start many", "start later", "enqueue", "cancel", "event", "set state",
    "set state until", "increment", "acquire", "extend", "configure queue", "retry many",
    "schedule", "endpoint",
    "register", "peers", "held", "unregister", "claim", "save step", "sleep", "wait", "finish",
    "release", "renew", "publish jobs", "sync schedules", "accept delivery"]


def with_value(body: dict[str, Any], field: str, raw: str) -> bytes:
    """``body`` as JSON with ``field`` (dotted) replaced by the raw JSON text ``raw``."""
    copy = json.loads(json.dumps(body))
    *parents, last = field.split(".")
    target: Any = copy
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    marker = "\u2063marker\u2063"
    if isinstance(target, list):
        target[int(last)] = marker
    else:
        target[last] = marker
    return json.dumps(copy).replace(json.dumps(marker), raw).encode("utf-8", "surrogatepass")


def snapshot(database_url: str) -> dict[str, Any]:
    rows: dict[str, Any] = database_rows(database_url)
    for table in COUNTED:
        rows[table] = len(rows[table])
    return {table: sorted(found) if isinstance(found, list) else found
            for table, found in rows.items()}


@pytest.fixture
def unchanged(server: Server) -> Iterator[None]:
    """The test's requests leave every table as it was."""
    before = snapshot(server.database_url)
    yield
    after = snapshot(server.database_url)
    changed = [table for table in before if before[table] != after.get(table)]
    assert not changed, f"written by refused requests: {changed}"


def refusals(responses: list[tuple[str, httpx.Response]],
             statuses: set[int] = REFUSED) -> list[str]:
    """What is wrong with each response that is not a refusal of the documented shape."""
    wrong = []
    for what, response in responses:
        try:
            error = response.json()["error"]
            shaped = isinstance(error["code"], str) and isinstance(error["message"], str) and \
                bool(error["message"])
        except (ValueError, KeyError, TypeError):
            shaped = False
        if response.status_code not in statuses or not shaped:
            wrong.append(f"{what}: {response.status_code} {response.text[:200]}")
    return wrong


# -- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINT_NAMES)
def test_every_hostile_field_value_is_refused_and_writes_nothing(
        server: Server, http: httpx.Client, unique: Callable[[str], str], endpoint: str) -> None:
    method, path, body, fields = endpoints(World(http, unique))[endpoint]
    before = snapshot(server.database_url)
    responses = []
    for field, kind in fields.items():
        for value in KINDS[kind]:
            content = with_value(body, field, V[value])
            response = http.request(method, path, content=content,
                                    headers={"content-type": "application/json"})
            responses.append((f"{field}={value[:40]}", response))
    for content in BODIES:
        if content in (b"", b"null") and endpoint == "cancel":
            continue  # no body: a cancel without a reason
        response = http.request(method, path, content=content,
                                headers={"content-type": "application/json"})
        responses.append((f"body {content[:20]!r}", response))
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "application/json-seq"):
        response = http.request(method, path, content=json.dumps(body).encode(),
                                headers={"content-type": content_type})
        responses.append((f"Content-Type: {content_type}", response))
    assert refusals(responses) == []
    assert snapshot(server.database_url) == before


def test_an_integer_too_long_to_read_is_422_and_says_so(
        http: httpx.Client, unchanged: None) -> None:
    """Valid JSON all the same: not called malformed."""
    for method, path, body in [("POST", "/v1/runs", '{"job": "x", "payload": 1%s}'),
                               ("POST", "/v1/runs", '{"job": "x", "priority": -1%s}'),
                               ("PUT", "/v1/state/long", '{"value": [1%s]}'),
                               ("POST", "/v1/state/increment", '{"key": "k", "by": 1%s}')]:
        response = http.request(method, path, content=body % ("0" * 5000),
                                headers={"content-type": "application/json"})
        error = assert_error(response, 422, "invalid_type")
        assert error["message"] == "body: an integer of more than 4,300 digits"


# -- path parameters ------------------------------------------------------------------------

RUN = "run_00000000000000000000000000"
# The long id stays under the HTTP parser's 16 KiB for a request line and
# headers that arrive in pieces: past it the parser answers a plain-text 400
# (docs/server.md, Errors) or the API a JSON one, by how the bytes arrive.
IDS = ["%00", "a%00b", "run_%00", "%2F", "a%2Fb", "%20", "k" * 12_000]
NOT_UTF8 = ["%FF", "%ED%A0%80", "%C0%80", "caf%E9"]  # 400 bad_path

PATHS = [  # (method, path with {} for the parameter, body, segments refused)
    ("GET", "/v1/runs/{}", None, IDS),
    ("GET", "/v1/runs/{}/wait?timeout=0", None, IDS),
    ("POST", "/v1/runs/{}/cancel", None, IDS),
    ("POST", "/v1/runs/{}/retry", None, IDS),
    ("GET", "/v1/runs/{}/timeline", None, IDS),
    ("GET", "/v1/runs/{}/logs", None, IDS),
    ("GET", "/v1/runs/{}/attempts", None, IDS),
    ("GET", "/v1/runs/{}/steps", None, IDS),
    ("GET", "/v1/events/{}", None, IDS),
    ("GET", "/v1/schedules/{}", None, IDS),
    ("DELETE", "/v1/schedules/{}", None, IDS),
    ("POST", "/v1/schedules/{}/pause", None, IDS),
    ("POST", "/v1/schedules/{}/resume", None, IDS),
    ("DELETE", "/v1/endpoints/{}", None, IDS),
    ("GET", "/v1/state/{}", None, ["%00", "a%00b", "k" * 600]),
    ("PUT", "/v1/state/{}", {"value": 1}, ["%00", "a%00b", "k" * 600]),
    ("DELETE", "/v1/state/{}", None, ["%00", "a%00b", "k" * 600]),
    ("DELETE", "/v1/locks/{}", None, ["%00", "a%00b", "k" * 600]),
    ("GET", "/v1/queues/{}", None, ["%00", "a%2Fb", "a%20b", "k" * 300]),
    ("PATCH", "/v1/queues/{}", {"concurrency": 2}, ["%00", "a%2Fb", "a%20b", "k" * 300]),
    ("POST", "/v1/queues/{}/pause", None, ["%00", "a%2Fb", "a%20b", "k" * 300]),
    ("POST", "/v1/queues/{}/resume", None, ["%00", "a%2Fb", "a%20b", "k" * 300]),
    ("GET", "/v1/queues/{}/dead-letters", None, ["%00", "a%2Fb", "a%20b", "k" * 300]),
    ("POST", "/v1/queues/{}/runs", {"job": "hostile"}, ["%00", "a%2Fb", "a%20b", "k" * 300]),
]


@pytest.mark.parametrize(("method", "path", "body", "segments"), PATHS,
                         ids=[f"{m} {p}" for m, p, _, _ in PATHS])
def test_hostile_path_segments_are_refused_and_write_nothing(
        http: httpx.Client, unchanged: None, method: str, path: str, body: Any,
        segments: list[str]) -> None:
    def send(segment: str) -> httpx.Response:
        # Sent as written: httpx would encode a '%' again.
        url = httpx.URL(str(http.base_url).rstrip("/") + path.format(segment))
        return http.request(method, url, json=body)

    assert refusals([(f"{s[:20]}", send(s)) for s in segments], {404, 422}) == []
    for segment in NOT_UTF8:
        assert_error(send(segment), 400, "bad_path")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/runs/{}"), ("GET", "/v1/events/{}"), ("GET", "/v1/schedules/{}"),
    ("DELETE", "/v1/schedules/{}"), ("DELETE", "/v1/endpoints/{}")])
def test_an_id_holding_nul_is_an_unknown_id(http: httpx.Client, unchanged: None, method: str,
                                             path: str) -> None:
    """No row can have such an id: 404, as docs/server.md says, on every store."""
    for segment in ["%00", "ep_%00", "a%00b"]:
        url = httpx.URL(str(http.base_url).rstrip("/") + path.format(segment))
        response = http.request(method, url)
        assert response.status_code == 404, (segment, response.text)
        assert response.json()["error"]["code"].endswith("_not_found")


# -- query parameters -----------------------------------------------------------------------

FILTER = ["%00", "a%00b"]
LIMIT = ["-1", "0", "1001", "1" + "0" * 30, "1e400", "NaN", "Infinity", "true", "", "1.5",
         "%00", "5%00"]
TIME = ["0000-01-01T00:00:00Z", "99999-01-01T00:00:00Z", "2026-05-06T09:00:00",
        "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00%2B14:00", "", "%00", "yesterday",
        "1e400"]
CURSOR = ["garbage", "%00", "run_%00", "k" * 12_000]
WINDOW = ["0", "-1", "NaN", "Infinity", "1e400", "forever", "", "%00"]

QUERIES = [  # (path, {parameter: values refused})
    ("/v1/runs", {"status": ["bogus", "%00", ""], "job": FILTER, "queueName": FILTER,
                  "idempotencyKey": FILTER, "correlationKey": FILTER, "search": FILTER,
                  "createdAfter": TIME, "createdBefore": TIME, "limit": LIMIT,
                  "cursor": [*CURSOR, "evt_0123456789abcdef0123456789"]}),
    (f"/v1/runs/{RUN}/wait", {"timeout": ["-1", "61", "NaN", "Infinity", "1e400", "%00"]}),
    (f"/v1/runs/{RUN}/logs", {"after": ["-1", "9223372036854775808", "1e400", "NaN", "true",
                                        "", "1.5", "%00", "last"],
                              "limit": [*LIMIT[:2], "10001", *LIMIT[3:]],
                              "last": [*LIMIT[:2], "10001", *LIMIT[3:], "5&after=0",
                                       "5&limit=5"]}),
    ("/v1/events", {"name": FILTER, "correlationKey": FILTER, "limit": LIMIT,
                    "cursor": [*CURSOR, "run_0123456789abcdef0123456789"]}),
    ("/v1/state", {"prefix": FILTER, "after": FILTER, "limit": LIMIT}),
    ("/v1/locks", {"prefix": FILTER, "after": FILTER, "limit": LIMIT}),
    ("/v1/queues", {"window": WINDOW}),
    ("/v1/queues/emails", {"window": WINDOW}),
    ("/v1/queues/emails/dead-letters", {"job": FILTER, "limit": LIMIT,
                                        "cursor": [*CURSOR, "evt_0123456789abcdef0123456789"]}),
]


@pytest.mark.parametrize(("path", "parameters"), QUERIES, ids=[p for p, _ in QUERIES])
def test_hostile_query_values_are_refused(http: httpx.Client, unchanged: None, path: str,
                                          parameters: dict[str, list[str]]) -> None:
    def get(query: str) -> httpx.Response:
        return http.get(httpx.URL(f"{str(http.base_url).rstrip('/')}{path}?{query}"))

    responses = [(f"{name}={value[:30]}", get(f"{name}={value}"))
                 for name, values in parameters.items() for value in values]
    assert refusals(responses, {404, 422}) == []
    for name in parameters:
        # Not UTF-8 once percent-decoded: not quietly read as replacement characters.
        for value in ("%FF", "caf%E9", "%ED%A0%80"):
            error = assert_error(get(f"{name}={value}"), 400, "bad_query")
            assert error["message"] == "the request query string is not UTF-8 once percent-decoded"
        # Given twice: neither value is quietly dropped.
        first = parameters[name][0]
        error = assert_error(get(f"{name}={first}&{name}={first}"), 422, "validation_error")
        assert error["message"] == f"query parameter {name!r} is given more than once"


@pytest.mark.parametrize(("path", "misspelt", "takes"), [
    ("/v1/runs", "queue", "correlationKey, createdAfter, createdBefore, cursor, "
                          "idempotencyKey, job, limit, queueName, search, status"),
    ("/v1/runs", "queue_name", None),
    ("/v1/events", "correlation_key", "correlationKey, cursor, limit, name"),
    ("/v1/state", "cursor", "after, limit, prefix"),
    ("/v1/locks", "cursor", "after, limit, prefix"),
    (f"/v1/runs/{RUN}", "timeout", "none"),
    (f"/v1/runs/{RUN}/logs", "since", "after, last, limit"),
])
def test_a_query_parameter_the_endpoint_does_not_take_is_422(
        http: httpx.Client, unchanged: None, path: str, misspelt: str, takes: str | None) -> None:
    """A misspelt filter is not ignored (which would list everything)."""
    error = assert_error(http.get(f"{path}?{misspelt}=emails"), 422, "validation_error")
    assert error["message"].startswith(f"query parameter {misspelt!r} is unknown here")
    if takes is not None:
        assert error["message"].endswith(f"(it takes {takes})")


# -- the Authorization header ---------------------------------------------------------------


@pytest.mark.parametrize("header", [
    "Token {key}", "{key}", "Bearer {key} extra", "Bearer{key}", "Bearer: {key}",
    "Bearer {key}x", "Bearer {short}", "Bearer " + "x" * 12_000, "Bearer \u00e9",
    "Bearer {key},Bearer {key}",
])
def test_a_malformed_authorization_header_is_401_and_writes_nothing(
        server: Server, unchanged: None, header: str) -> None:
    value = header.format(key=server.api_key, short=server.api_key[:-1])
    with httpx.Client(base_url=server.url,
                      headers={"Authorization": value.encode("utf-8")}) as anonymous:
        response = anonymous.post("/v1/runs", json={"job": "unauthorised"})
        error = assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == 'Bearer realm="stackshift"'
        assert "Bearer" in error["message"] or "unknown or revoked" in error["message"]


# -- NUL: refused in keys and names, kept in JSON, alike on every store -------------------------


NUL_IN_COLUMNS = [
    ("/v1/worker/register", "workerId"), ("/v1/worker/register", "hostname"),
    ("/v1/worker/register", "process.space"), ("/v1/worker/peers", "space"),
    ("/v1/worker/held", "workerId"), ("/v1/worker/unregister", "workerId"),
    ("/v1/worker/steps", "step.key"), ("/v1/worker/steps", "step.name"),
    ("/v1/worker/steps", "logs.0.level"), ("/v1/worker/steps", "lease.runId"),
    ("/v1/worker/sleep", "step.key"), ("/v1/worker/waits", "correlationKey"),
    ("/v1/worker/finish", "lease.workerId"), ("/v1/worker/release", "lease.runId"),
    ("/v1/worker/renew", "leases.0.runId"), ("/v1/worker/push/accept", "deliveryId"),
]


def test_nul_in_what_a_worker_stores_as_a_column_is_the_same_422_on_every_store(
        server: Server, http: httpx.Client, unique: Callable[[str], str]) -> None:
    """PostgreSQL's text cannot hold NUL; SQLite's can. A worker's ids, step keys and
    names, log levels and correlation keys are refused alike, naming the field, and
    the run keeps running with nothing recorded."""
    world = World(http, unique)
    bodies = {path: body for method, path, body, _ in endpoints(world).values()
              if method == "POST" and path.startswith("/v1/worker/")}
    before = snapshot(server.database_url)
    for path, field in NUL_IN_COLUMNS:
        response = http.post(path, content=with_value(bodies[path], field, V["nul"]),
                             headers={"content-type": "application/json"})
        error = assert_error(response, 422, "validation_error")
        assert error["message"] == f"{field}: must not contain the NUL character (U+0000)"
    assert snapshot(server.database_url) == before
    assert http.get(f"/v1/runs/{world.running}").json()["status"] == "running"
    assert http.get(f"/v1/runs/{world.running}/steps").json()["items"] == []


def test_nul_in_a_workers_error_result_and_log_line_is_kept(
        http: httpx.Client, unique: Callable[[str], str]) -> None:
    """Errors and results are stored as JSON and keep NUL; a log line has it replaced."""
    world = World(http, unique)
    log = {**LOG, "message": "odd \x00 input", "attempt": world.lease["attempt"]}
    finished = http.post("/v1/worker/finish", json={
        "lease": world.lease, "logs": [log],
        "outcome": {"status": "failed", "result": json.dumps({"partial": "a\x00b"}),
                    "error": {"type": "Boom", "message": "bad \x00 byte",
                              "traceback": "line \x00 1"}}})
    assert finished.status_code == 200, finished.text
    assert finished.json() == {"recorded": True, "status": "failed"}, finished.text
    run = http.get(f"/v1/runs/{world.running}").json()
    assert run["status"] == "failed"
    assert run["error"] == {"type": "Boom", "message": "bad \x00 byte", "traceback": "line \x00 1"}
    logs = http.get(f"/v1/runs/{world.running}/logs").json()["items"]
    assert [entry["message"] for entry in logs] == ["odd \ufffd input"]


def test_nul_in_json_values_round_trips_through_every_client(
        client: Any, unique: Callable[[str], str]) -> None:
    """Payloads, state values and event payloads keep NUL, in strings and in object
    keys, embedded and through the server, on every store."""
    value = {"a": "x\x00y", "\x00": ["\x00", 2**70, -0.0], "k\x00": {"\x00\x00": None}}
    job, key, event = unique("nul"), unique("nul"), unique("nul")
    run = client.start(job, value)
    assert client.runs.get(run.id).payload == value
    client.state.set(key, value)
    assert client.state.get(key) == value
    sent = client.events.send(event, value)
    assert client.events.get(sent.id).payload == value


# -- a key repeated in one object -----------------------------------------------------------


def repeating_first_key(body: dict[str, Any]) -> tuple[bytes, str]:
    """``body`` as JSON with its first key given twice (the copy first, with the same
    value), and that key."""
    key, value = next(iter(body.items()))
    text = json.dumps(body)
    return ("{" + json.dumps(key) + ": " + json.dumps(value) + ", " + text[1:]).encode(), key


def test_a_key_repeated_in_a_body_is_422_on_every_endpoint_and_writes_nothing(
        server: Server, http: httpx.Client, unique: Callable[[str], str]) -> None:
    """``{"job": "a", "job": "a"}`` is refused, not read as its last value, even when
    both values are the same; the message names the key."""
    bodies = endpoints(World(http, unique))
    before = snapshot(server.database_url)
    wrong = []
    for endpoint in ENDPOINT_NAMES:
        method, path, body, _ = bodies[endpoint]
        content, key = repeating_first_key(body)
        response = http.request(method, path, content=content,
                                headers={"content-type": "application/json"})
        expected = {"code": "validation_error",
                    "message": f"duplicate key {key!r} in the JSON body"}
        if response.status_code != 422 or response.json() != {"error": expected}:
            wrong.append(f"{endpoint}: {response.status_code} {response.text[:200]}")
    assert wrong == []
    assert snapshot(server.database_url) == before


def test_a_field_a_body_does_not_have_is_named_with_the_fields_it_takes(
        server: Server, http: httpx.Client, unique: Callable[[str], str]) -> None:
    """On every endpoint, and inside a body's objects: the unknown field keeps the
    name it was sent with (``idempotency_key``, not respelt as ``idempotencyKey``)
    and the message lists the fields taken there, the ones the body sent among
    them. Nothing is written."""
    bodies = endpoints(World(http, unique))
    before = snapshot(server.database_url)
    wrong = []
    for endpoint in ENDPOINT_NAMES:
        method, path, body, _ = bodies[endpoint]
        response = http.request(method, path, json={**body, "idempotency_key": "k"})
        said = "idempotency_key: Extra inputs are not permitted (the body takes "
        message = response.json().get("error", {}).get("message", "")
        taken = message[len(said):-1].split(", ")
        if (response.status_code != 422 or not message.startswith(said)
                or not set(body) <= set(taken)):
            wrong.append(f"{endpoint}: {response.status_code} {message[:200]}")
    assert wrong == []
    method, path, body, _ = bodies["finish"]
    nested = {**body, "lease": {**body["lease"], "colour": "red"},
              "logs": [{**LOG, "colour": "red"}]}
    error = assert_error(http.request(method, path, json=nested), 422, "validation_error")
    assert error["message"] == (
        "lease.colour: Extra inputs are not permitted (lease takes attempt, runId, workerId); "
        "logs.0.colour: Extra inputs are not permitted (logs.0 takes "
        "at, attempt, fields, level, logger, message, step)")
    assert snapshot(server.database_url) == before


def test_a_key_repeated_deep_inside_a_body_is_422_and_writes_nothing(
        server: Server, http: httpx.Client, unique: Callable[[str], str]) -> None:
    """At any depth: in a run's or an event's payload, a state value, a lease."""
    world = World(http, unique)
    lease = json.dumps(world.lease)[:-1] + f', "attempt": {world.lease["attempt"]}}}'
    cases = [
        ("POST", "/v1/runs",
         f'{{"job": "{world.job}", "payload": {{"order": {{"id": 1, "total": 5, "id": 2}}}}}}',
         "id"),
        ("POST", "/v1/events",
         '{"name": "dupEvent", "payload": [{"sku": "a"}, {"sku": "b", "sku": "b"}]}', "sku"),
        ("PUT", "/v1/state/dupValue", '{"value": {"a": {"b": {"": 1, "": 2}}}}', ""),
        ("POST", "/v1/schedules",
         f'{{"job": "{world.job}", "cron": "@daily", "payload": {{"to": 1, "to": 2}}}}', "to"),
        ("POST", "/v1/worker/release", f'{{"lease": {lease}}}', "attempt"),
    ]
    before = snapshot(server.database_url)
    for method, path, content, key in cases:
        response = http.request(method, path, content=content,
                                headers={"content-type": "application/json"})
        error = assert_error(response, 422, "validation_error")
        assert error["message"] == f"duplicate key {key!r} in the JSON body", path
    assert snapshot(server.database_url) == before
    assert http.get("/v1/events", params={"name": "dupEvent"}).json()["items"] == []
    assert http.get("/v1/runs", params={"job": world.job}).json()["items"] == [
        http.get(f"/v1/runs/{world.queued}").json()]
    assert_error(http.get("/v1/state/dupValue"), 404, "state_key_not_found")


def test_a_step_result_that_repeats_a_key_is_422_and_the_run_records_nothing(
        server: Server, http: httpx.Client, unique: Callable[[str], str]) -> None:
    """A result is JSON text inside the body: held to the same rule."""
    world = World(http, unique)
    before = snapshot(server.database_url)
    for path, body, key in [
            ("/v1/worker/steps", {"lease": world.lease, "leaseSeconds": 60,
                                  "step": {**STEP, "result": '{"n": 1, "n": 2}'}}, "n"),
            ("/v1/worker/finish", {"lease": world.lease, "outcome": {
                "status": "completed", "result": '[{"n": 1, "m": {"k": 1, "k": 1}}]'}}, "k")]:
        error = assert_error(http.post(path, json=body), 422, "validation_error")
        field = "step.result" if path.endswith("steps") else "outcome.result"
        assert error["message"] == (
            f"{field}: must be JSON text without a repeated key (duplicate key {key!r})"), error
    assert snapshot(server.database_url) == before
    assert http.get(f"/v1/runs/{world.running}").json()["status"] == "running"


def test_the_same_key_in_different_objects_is_kept(
        http: httpx.Client, unique: Callable[[str], str]) -> None:
    """Only a key repeated within one object is refused; bodies that name a key once
    per object are read as before."""
    value = {"id": 1, "child": {"id": 2, "child": {"id": 3}}, "items": [{"id": 4}, {"id": 5}]}
    job, name, key = unique("dupFree"), unique("dupFree"), unique("dupFree")
    run = http.post("/v1/runs", json={"job": job, "payload": value})
    assert run.status_code == 201, run.text
    assert http.get(f"/v1/runs/{run.json()['id']}").json()["payload"] == value
    event = http.post("/v1/events", json={"name": name, "payload": value})
    assert event.status_code == 201, event.text
    assert http.get(f"/v1/events/{event.json()['id']}").json()["payload"] == value
    assert http.put(f"/v1/state/{key}", json={"value": value}).status_code == 204
    assert http.get(f"/v1/state/{key}").json()["value"] == value
