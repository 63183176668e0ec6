"""The HTTP API as a client in another language sees it: shapes, statuses, metrics."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from serverproc import assert_error, running_server

from stackshift import RetryAfterError, StackShift, ValidationError
from stackshift.engine.transitions import Status
from stackshift.store import open_store
from stackshift.testing import run_until_idle

POSTGRES_URL = os.environ.get(
    "STACKSHIFT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def tag(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:8]}"


def test_healthz_needs_no_key(server: Any) -> None:
    response = httpx.get(f"{server.url}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["schemaVersion"] >= 2


def test_healthz_answers_head_as_load_balancers_ask(server: Any) -> None:
    """Load balancers and uptime checks often ask with HEAD: the status alone."""
    response = httpx.head(f"{server.url}/healthz")
    assert response.status_code == 200
    assert response.content == b""


def test_start_and_enqueue_speak_camel_case(http: httpx.Client) -> None:
    job, key = tag("sendReceipt"), tag("receipt")
    body = {"job": job, "payload": {"orderId": "o_1"}, "queueName": "emails",
            "idempotencyKey": key, "idempotencyTtl": "30d", "maxAttempts": 5, "priority": 2,
            "concurrencyKey": "customer:1", "delay": 3600}
    created = http.post("/v1/runs", json=body)
    assert created.status_code == 201
    run = created.json()
    assert {"id", "job", "queueName", "status", "payload", "result", "error", "attempt",
            "maxAttempts", "idempotencyKey", "priority", "concurrencyKey", "createdAt",
            "scheduledAt", "startedAt", "finishedAt", "nextAttemptAt", "waitingFor",
            "created", "retryBase", "cancelRequested"} == set(run)
    assert (run["queueName"], run["status"], run["maxAttempts"], run["created"]) == (
        "emails", "scheduled", 5, True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", run["createdAt"])
    duplicate = http.post("/v1/runs", json=body)
    assert (duplicate.status_code, duplicate.json()["id"], duplicate.json()["created"]) == (
        200, run["id"], False)
    enqueued = http.post("/v1/queues/billing/runs", json={"job": job, "payload": [1]})
    assert enqueued.status_code == 201 and enqueued.json()["queueName"] == "billing"
    listed = http.get("/v1/runs", params={"job": job, "queueName": "billing"}).json()
    assert [r["id"] for r in listed["items"]] == [enqueued.json()["id"]]
    assert listed["nextCursor"] is None


def test_many_runs_start_in_one_request(http: httpx.Client) -> None:
    """``POST /v1/runs/many``: a run per payload, in their order (201), the runs
    the keys name when every one is a duplicate (200), and a key bound to other
    work (409) or lists that do not match (422) starting none."""
    job, key = tag("sendReceipt"), tag("receipt")
    body = {"job": job, "payloads": [{"n": 1}, {"n": 2}, {"n": 3}], "queueName": "emails",
            "idempotencyKeys": [key, None, None], "concurrencyKeys": ["c:1", "c:1", None],
            "maxAttempts": 4, "priority": 3, "delay": "1h"}
    created = http.post("/v1/runs/many", json=body)
    assert created.status_code == 201, created.text
    runs = created.json()["items"]
    assert [r["payload"] for r in runs] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [(r["queueName"], r["status"], r["maxAttempts"], r["priority"], r["created"])
            for r in runs] == [("emails", "scheduled", 4, 3, True)] * 3
    assert [r["idempotencyKey"] for r in runs] == [key, None, None]
    assert [r["concurrencyKey"] for r in runs] == ["c:1", "c:1", None]
    again = http.post("/v1/runs/many", json={"job": job, "payloads": [{"n": 1}],
                                            "idempotencyKeys": [key]})
    assert again.status_code == 200
    assert [(r["id"], r["created"]) for r in again.json()["items"]] == [(runs[0]["id"], False)]
    conflict = http.post("/v1/runs/many", json={"job": job, "payloads": [{"n": 5}, {"n": 6}],
                                               "idempotencyKeys": [tag("fresh"), key]})
    error = assert_error(conflict, 409, "idempotency_conflict")
    assert error["existingRunId"] == runs[0]["id"]
    for bad in ({"job": job, "payloads": [1, 2], "idempotencyKeys": ["a"]},
                {"job": job, "payloads": [1] * 1001},
                {"job": job, "payloads": [1], "idempotencyKeys": [""]},
                {"job": job, "payloads": {"n": 1}}):
        assert_error(http.post("/v1/runs/many", json=bad), 422, "validation_error")
    listed = http.get("/v1/runs", params={"job": job, "limit": 100}).json()["items"]
    assert sorted(r["id"] for r in listed) == sorted(r["id"] for r in runs)
    empty = http.post("/v1/runs/many", json={"job": job, "payloads": []})
    assert (empty.status_code, empty.json()) == (200, {"items": []})


def test_timeline_details_speak_camel_case_too(http: httpx.Client, server: Any,
                                              served_db: str) -> None:
    job = tag("flaky")
    engine = StackShift(served_db)

    @engine.job(job, max_attempts=2)
    def flaky(ctx: Any) -> None:
        raise RetryAfterError("1h")

    try:
        run = http.post("/v1/runs", json={"job": job, "delay": 3600}).json()
        assert http.post(f"/v1/runs/{run['id']}/cancel", json={"reason": "not now"}).is_success
        assert http.post(f"/v1/runs/{run['id']}/retry").is_success
        run_until_idle(engine)  # attempt 1 fails: retrying, with the next attempt's time
        entries = http.get(f"/v1/runs/{run['id']}/timeline").json()["items"]
        details = {e["kind"]: e["data"] for e in entries}
        assert "scheduledAt" in details["run.scheduled"], details
        assert details["run.queued"] == {"from": "cancelled", "manualRetry": True}, details
        assert not [k for data in details.values() for k in data if "_" in k], details
        # Their times are ISO-8601 like every other time in the API.
        embedded = engine.runs.timeline(run["id"])
        retrying = next(e for e in embedded if e.kind == "run.retrying")
        wire = details["run.retrying"]["nextAttemptAt"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", wire), details
        assert abs(datetime.fromisoformat(wire).timestamp()
                   - retrying.data["next_attempt_at"]) <= 1e-6
        assert re.fullmatch(r"\d{4}-.*Z", details["run.scheduled"]["scheduledAt"]), details
        # The remote client reads them back as the embedded one does: epoch
        # seconds, to the microsecond.
        remote = StackShift(api_key=server.api_key, base_url=server.url)
        try:
            assert _to_microseconds(remote.runs.timeline(run["id"])) == _to_microseconds(
                embedded)
        finally:
            remote.close()
    finally:
        engine.close()


def _to_microseconds(entries: list[Any]) -> list[Any]:
    return [replace(e, data={k: round(v, 6) if isinstance(v, float) else v
                             for k, v in e.data.items()}) for e in entries]


def test_wait_long_polls(http: httpx.Client, server: Any) -> None:
    job = tag("slowish")
    run = http.post("/v1/runs", json={"job": job}).json()
    started = time.monotonic()
    pending = http.get(f"/v1/runs/{run['id']}/wait", params={"timeout": 0.3})
    assert pending.status_code == 200 and pending.json()["status"] == "queued"
    assert time.monotonic() - started >= 0.3

    engine = StackShift(server.database_url)
    engine.job(job, lambda ctx: {"ok": True})

    def work_soon() -> None:
        time.sleep(0.3)
        run_until_idle(engine)

    worker = threading.Thread(target=work_soon)
    worker.start()
    try:
        started = time.monotonic()
        done = http.get(f"/v1/runs/{run['id']}/wait", params={"timeout": 20})
        waited = time.monotonic() - started
    finally:
        worker.join()
        engine.close()
    assert done.json()["status"] == "completed" and done.json()["result"] == {"ok": True}
    assert waited < 5  # answered when the run finished, not at the timeout


def test_a_manual_retry_over_http_names_the_budget_it_starts(
        http: httpx.Client, server: Any) -> None:
    job = tag("syncLedger")
    run = http.post("/v1/runs", json={"job": job, "maxAttempts": 1}).json()
    assert (run["attempt"], run["retryBase"]) == (0, 0)
    engine = StackShift(server.database_url)
    try:
        @engine.job(job, max_attempts=1)
        def sync_ledger(ctx: Any) -> None:
            raise ConnectionError("ledger down")

        run_until_idle(engine)
        failed = http.get(f"/v1/runs/{run['id']}").json()
        assert (failed["status"], failed["attempt"], failed["retryBase"]) == ("failed", 1, 0)
        assert failed["error"]["message"] == "ledger down"
        retried = http.post(f"/v1/runs/{run['id']}/retry")
        assert retried.status_code == 200
        assert (retried.json()["status"], retried.json()["attempt"],
                retried.json()["retryBase"], retried.json()["error"]) == ("queued", 1, 1, None)
        listed = http.get("/v1/runs", params={"job": job}).json()["items"]
        assert [(r["id"], r["retryBase"]) for r in listed] == [(run["id"], 1)]
    finally:
        engine.close()


def test_an_event_key_sent_by_the_sdk_is_the_same_key_over_http(
        server: Any, http: httpx.Client) -> None:
    name, key = tag("invoice.paid"), tag("ev")
    engine = StackShift(server.database_url)
    try:
        first = engine.events.send(name, {"b": 1, "a": [1.0]}, correlation_key="inv:1",
                                   idempotency_key=key)
    finally:
        engine.close()
    body = {"name": name, "payload": {"a": [1], "b": 1}, "correlationKey": "inv:1",
            "idempotencyKey": key}
    again = http.post("/v1/events", json=body)
    assert again.status_code == 200
    assert again.json() == {"id": first.id, "duplicate": True, "resumedRunIds": []}
    renamed = http.post("/v1/events", json={**body, "name": tag("invoice.voided")})
    assert renamed.status_code == 409
    assert renamed.json()["error"]["existingEventId"] == first.id


def test_events_and_state_over_http(http: httpx.Client) -> None:
    name, key = tag("order.paid"), tag("ev")
    first = http.post("/v1/events", json={"name": name, "payload": {"n": 1},
                                          "correlationKey": "order:1", "idempotencyKey": key})
    assert first.status_code == 201
    assert first.json() == {"id": first.json()["id"], "duplicate": False, "resumedRunIds": []}
    again = http.post("/v1/events", json={"name": name, "payload": {"n": 1},
                                          "correlationKey": "order:1", "idempotencyKey": key})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    # The key names that event: another payload (or name, or key) under it is a conflict.
    other = http.post("/v1/events", json={"name": name, "payload": {"n": 2},
                                          "correlationKey": "order:1", "idempotencyKey": key})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert other.json()["error"]["existingEventId"] == first.json()["id"]
    assert "existingRunId" not in other.json()["error"]
    event = http.get(f"/v1/events/{first.json()['id']}").json()
    assert (event["name"], event["correlationKey"], event["payload"]) == (name, "order:1",
                                                                         {"n": 1})
    state_key = tag("progress") + "/a.b"
    path = "/v1/state/" + state_key.replace("/", "%2F")
    assert http.put(path, json={"value": {"done": 1}, "ttl": "1h"}).status_code == 204
    assert http.get(path).json() == {"key": state_key, "value": {"done": 1}}
    assert http.post("/v1/state/increment", json={"key": state_key + "#n", "by": 3}
                     ).json() == {"key": state_key + "#n", "value": 3}
    entries = http.get("/v1/state", params={"prefix": state_key}).json()["items"]
    assert [e["key"] for e in entries] == [state_key, state_key + "#n"]
    assert entries[0]["expiresAt"] is not None
    assert http.delete(path).json() == {"key": state_key, "deleted": True}
    assert http.get(path).status_code == 404
    lock = {"key": tag("lock"), "owner": "a", "ttl": "30s"}
    for holder in ("", 5, "x" * 201, "a\x00b"):  # said, it is words of 1 to 200 characters
        assert_error(http.post("/v1/locks/acquire", json={**lock, "holder": holder}),
                     422, "validation_error")
    assert http.post("/v1/locks/acquire", json={**lock, "holder": "importer"}).json()["held"]

    def holders() -> list[Any]:
        return [e["holder"] for e in http.get("/v1/locks", params={"prefix": lock["key"]}
                                              ).json()["items"]]

    # Taken again by its owner: a holder said again replaces it, none keeps it.
    assert http.post("/v1/locks/acquire", json=lock).json()["held"] is True
    assert holders() == ["importer"]
    assert http.post("/v1/locks/acquire", json={**lock, "holder": "importer 2"}).json()["held"]
    assert holders() == ["importer 2"]
    assert http.post("/v1/locks/acquire", json={**lock, "owner": "b"}).json()["held"] is False
    assert holders() == ["importer 2"]
    assert http.post("/v1/locks/release", json={"key": lock["key"], "owner": "b"}
                     ).json()["held"] is False
    assert http.post("/v1/locks/release", json={"key": lock["key"], "owner": "a"}
                     ).json()["held"] is True


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.MULTILINE)
    assert found, f"no {name} {labels} in:\n{text}"
    return float(found.group(1))


def test_locks_are_extended_over_http_by_their_owner_only(http: httpx.Client) -> None:
    key = tag("lock")
    lock = {"key": key, "owner": "a", "ttl": 0.5}
    assert http.post("/v1/locks/acquire", json=lock).json()["held"] is True
    assert http.post("/v1/locks/extend", json={**lock, "ttl": "30s"}).json() == {
        "key": key, "held": True}
    time.sleep(0.6)  # past the first TTL: still held
    assert http.post("/v1/locks/acquire", json={**lock, "owner": "b"}).json()["held"] is False
    # Another owner's extend neither extends nor takes the lock.
    assert http.post("/v1/locks/extend", json={**lock, "owner": "b"}).json()["held"] is False
    assert http.post("/v1/locks/acquire", json={**lock, "owner": "b"}).json()["held"] is False
    for body in ({**lock, "ttl": 0}, {**lock, "ttl": -1}, {**lock, "ttl": "0s"},
                 {**lock, "ttl": "soon"}, {**lock, "ttl": None}, {"key": key, "owner": "a"},
                 {"key": key, "ttl": "1s"}, {**lock, "owner": ""}, {**lock, "key": ""},
                 {**lock, "ttl": "1s", "wait": 1}):
        assert_error(http.post("/v1/locks/extend", json=body), 422, "validation_error")
    # The refused bodies changed nothing: still a's, for its 30s.
    assert http.post("/v1/locks/acquire", json={**lock, "owner": "b"}).json()["held"] is False
    assert http.post("/v1/locks/release", json={"key": key, "owner": "a"}).json()["held"] is True
    assert http.post("/v1/locks/extend", json=lock).json()["held"] is False  # released

    late = {"key": tag("lock"), "owner": "a", "ttl": 0.2}
    assert http.post("/v1/locks/acquire", json=late).json()["held"] is True
    time.sleep(0.3)  # its TTL ran out: extend does not take it back
    assert http.post("/v1/locks/extend", json={**late, "ttl": "30s"}).json()["held"] is False
    assert http.post("/v1/locks/acquire", json={**late, "owner": "b"}).json()["held"] is True


def test_locks_are_listed_and_broken_over_http(http: httpx.Client) -> None:
    base = tag("locks")
    keys = [f"{base}/a.b", f"{base}/acquire", f"{base}/z"]  # "/" and "." in keys
    for key in keys:
        body = {"key": key, "owner": "stuck", "ttl": "1m", "holder": "importer (pid 7)"}
        assert http.post("/v1/locks/acquire", json=body).json()["held"] is True
    assert http.post("/v1/locks/acquire", json={"key": f"{base}/gone", "owner": "o",
                                                "ttl": 0.05}).json()["held"] is True
    time.sleep(0.1)  # its TTL ran out: no longer listed
    listed = http.get("/v1/locks", params={"prefix": base}).json()["items"]
    # Who holds each, as it said; the owner's token, which releases it, is not shown.
    assert [(e["key"], e["holder"]) for e in listed] == [(k, "importer (pid 7)") for k in keys]
    assert all("owner" not in e for e in listed)
    assert 50 < datetime.fromisoformat(listed[0]["expiresAt"]).timestamp() - time.time() <= 60
    page = http.get("/v1/locks", params={"prefix": base, "limit": 2}).json()["items"]
    assert [e["key"] for e in page] == keys[:2]
    rest = http.get("/v1/locks", params={"prefix": base, "after": keys[1]}).json()["items"]
    assert [e["key"] for e in rest] == keys[2:]
    for query in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"prefix": "a\x00"}):
        assert_error(http.get("/v1/locks", params=query), 422, "validation_error")

    # Broken whatever its owner; the key travels percent-encoded, "/" and "." too.
    path = "/v1/locks/" + keys[1].replace("/", "%2F").replace(".", "%2E")
    assert http.delete(path).json() == {"key": keys[1], "broken": True}
    assert http.delete(path).json() == {"key": keys[1], "broken": False}
    assert http.delete("/v1/locks/" + quote(keys[0], safe="")).json()["broken"] is True
    assert http.delete("/v1/locks/" + quote(f"{base}/gone", safe="")).json()["broken"] is False
    # The owner finds out: it no longer extends or releases the lock.
    stuck = {"key": keys[1], "owner": "stuck"}
    assert http.post("/v1/locks/extend", json={**stuck, "ttl": "1m"}).json()["held"] is False
    assert http.post("/v1/locks/release", json=stuck).json()["held"] is False
    assert http.post("/v1/locks/acquire", json={**stuck, "owner": "next", "ttl": "1m"}
                     ).json()["held"] is True
    left = http.get("/v1/locks", params={"prefix": base}).json()["items"]
    assert [(e["key"], e["holder"]) for e in left] == [(keys[1], None),
                                                       (keys[2], "importer (pid 7)")]
    assert_error(http.delete("/v1/locks/a%00b"), 422, "validation_error")
    # A key named like an action is a key: DELETE breaks the lock on "acquire".
    assert http.post("/v1/locks/acquire", json={"key": "acquire", "owner": "o", "ttl": "1m"}
                     ).json()["held"] is True
    assert http.delete("/v1/locks/acquire").json() == {"key": "acquire", "broken": True}
    assert [e["key"] for e in http.get("/v1/locks", params={"prefix": base}).json()["items"]
            ] == [keys[1], keys[2]]


def test_state_and_lock_listings_say_where_the_next_page_starts(
        http: httpx.Client, remote: StackShift) -> None:
    """As runs and events do, a page of keys or locks gives its ``nextCursor``: its
    last key when a live one follows it (pass it as ``after``), null on the last page,
    a full one included, so a client in any language pages to the end."""
    base = tag("paged")
    keys = [f"{base}/{name}" for name in ("a", "b c", "d/e", "f")]
    for key in keys:
        assert http.put("/v1/state/" + quote(key, safe=""), json={"value": key}
                        ).status_code == 204
        assert http.post("/v1/locks/acquire", json={"key": key, "owner": "o", "ttl": "1m"}
                         ).json()["held"] is True
    gone = f"{base}/z"  # expired, after every live key: it is no next page
    assert http.put("/v1/state/" + quote(gone, safe=""), json={"value": 0, "ttl": 0.05}
                    ).status_code == 204
    assert http.post("/v1/locks/acquire", json={"key": gone, "owner": "o", "ttl": 0.05}
                     ).json()["held"] is True
    time.sleep(0.1)

    def walk(path: str, limit: int) -> list[tuple[list[str], str | None]]:
        pages: list[tuple[list[str], str | None]] = []
        after = None
        while True:
            query = {"prefix": base, "limit": limit} | ({} if after is None else {"after": after})
            body = http.get(path, params=query).json()
            assert set(body) == {"items", "nextCursor"}
            pages.append(([e["key"] for e in body["items"]], body["nextCursor"]))
            if body["nextCursor"] is None:
                return pages
            after = body["nextCursor"]

    for path in ("/v1/state", "/v1/locks"):
        assert walk(path, 3) == [(keys[:3], keys[2]), (keys[3:], None)]
        assert walk(path, 2) == [(keys[:2], keys[1]), (keys[2:], None)]  # full last page
        assert walk(path, 4) == [(keys, None)]
        assert walk(path, 1000) == [(keys, None)]
        assert http.get(path, params={"prefix": tag("none")}).json() == {
            "items": [], "nextCursor": None}
    # The remote client pages through the server as the embedded one does.
    assert [e["key"] for e in remote.state.keys(base, 2)] == keys[:2]
    assert [e["key"] for e in remote.state.keys(base, 2, after=keys[1])] == keys[2:]
    assert [e["key"] for e in remote.state.locks(base, 3, after=keys[2])] == keys[3:]
    assert remote.state.keys(base, 2, after=keys[3]) == []


def test_metrics(http: httpx.Client, server: Any) -> None:
    queue = tag("metered")
    for _ in range(3):
        http.post("/v1/runs", json={"job": "metered", "queueName": queue})
    cancelled = http.post("/v1/runs", json={"job": "metered", "queueName": queue}).json()
    http.post(f"/v1/runs/{cancelled['id']}/cancel", json={"reason": "test"})
    events_before = _metric(http.get("/metrics").text, "stackshift_events")
    http.post("/v1/events", json={"name": tag("metered.event")})
    response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert _metric(text, "stackshift_runs", queue=queue, status="queued") == 3
    assert _metric(text, "stackshift_runs", queue=queue, status="cancelled") == 1
    assert _metric(text, "stackshift_runs", queue=queue, status="completed") == 0
    assert _metric(text, "stackshift_queue_depth", queue=queue) == 3
    assert _metric(text, "stackshift_events") == events_before + 1
    assert _metric(text, "stackshift_http_responses_total", method="POST", route="/v1/runs",
                   status="201") >= 4
    assert "# TYPE stackshift_runs gauge" in text
    assert httpx.get(f"{server.url}/metrics").status_code == 401


def _count(text: str, **labels: str) -> float:
    """``stackshift_http_responses_total`` for ``labels``; 0 when not counted yet."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search("^stackshift_http_responses_total" + re.escape("{" + want + "}")
                      + r" (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_request_refused_for_its_key_is_counted_under_its_route(
        http: httpx.Client, server: Any) -> None:
    """A 401 carries the route template the request was sent to, like any answered
    request; only a path that no route serves is ``unmatched``."""
    run = http.post("/v1/runs", json={"job": tag("keyless")}).json()
    refused = [
        ("GET", "/v1/runs/{run_id}", f"/v1/runs/{run['id']}", None),
        ("GET", "/v1/runs/{run_id}", "/v1/runs/run_does_not_matter", "ssk_not-a-real-key"),
        ("POST", "/v1/runs", "/v1/runs", None),
        ("POST", "/v1/state/increment", "/v1/state/increment", "ssk_not-a-real-key"),
        ("GET", "/v1/state/{key:text}", "/v1/state/a/b/c", None),
    ]
    before = http.get("/metrics").text
    for method, _, path, key in refused:
        with server.http(api_key=key or "") as stranger:
            assert stranger.request(method, path, json={} if method == "POST" else None
                                    ).status_code == 401
    with server.http(api_key="") as stranger:
        assert stranger.get(f"/v1/no-such-thing/{uuid.uuid4().hex}").status_code == 401
    after = http.get("/metrics").text
    expected: dict[tuple[str, str], int] = {}
    for method, route, _, _ in refused:
        expected[(method, route)] = expected.get((method, route), 0) + 1
    for (method, route), n in expected.items():
        labels = {"method": method, "route": route, "status": "401"}
        assert _count(after, **labels) - _count(before, **labels) == n, (method, route)
    unmatched = {"method": "GET", "route": "unmatched", "status": "401"}
    assert _count(after, **unmatched) - _count(before, **unmatched) == 1
    assert "no-such-thing" not in after and run["id"] not in after


def test_a_running_run_asked_to_cancel_says_so_over_http_and_on_its_dashboard_page(
        http: httpx.Client, server: Any, served_db: str) -> None:
    job = tag("longStep")
    run = http.post("/v1/runs", json={"job": job}).json()
    store = open_store(served_db)
    try:
        [claimed] = store.claim_runs("busy-worker", [job], 1, 60, time.time())
        assert http.get(f"/v1/runs/{run['id']}").json()["cancelRequested"] is False
        requested = http.post(f"/v1/runs/{run['id']}/cancel", json={"reason": "stop"})
        assert requested.status_code == 200, requested.text
        assert (requested.json()["status"], requested.json()["cancelRequested"]) == (
            "running", True)
        assert http.get(f"/v1/runs/{run['id']}").json()["cancelRequested"] is True
        with httpx.Client(base_url=server.url, timeout=30) as browser:
            login = browser.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
            assert csrf
            assert browser.post("/login", data={"csrf": csrf.group(1),
                                                "api_key": server.api_key}).status_code == 303
            page = browser.get(f"/runs/{run['id']}").text
            assert ('<span class="muted" id="run-cancel-requested">cancel requested: stops at'
                    ' its next step boundary</span>') in page
            assert store.release_run(claimed.lease, time.time())
            page = browser.get(f"/runs/{run['id']}").text
            assert 'id="run-cancel-requested"' not in page
        ended = http.get(f"/v1/runs/{run['id']}").json()
        assert (ended["status"], ended["cancelRequested"]) == ("cancelled", False)
    finally:
        store.close()


def test_methods_http_does_not_define_count_as_other(http: httpx.Client, server: Any) -> None:
    """A client may send any word as its method, with a key or without: each is
    answered (405, 401), and all are counted under ``method="other"``, so the
    series stay as few as HTTP's methods whatever clients send."""
    words = [f"X{uuid.uuid4().hex[:8].upper()}" for _ in range(3)]
    before = http.get("/metrics").text
    for word in words:
        assert http.request(word, "/v1/runs").status_code == 405
    with server.http(api_key="") as stranger:
        assert stranger.request(words[0], "/v1/runs").status_code == 401
    assert http.request("PROPFIND", "/metrics").status_code == 405
    assert http.request("OPTIONS", "/v1/runs").status_code == 405
    after = http.get("/metrics").text

    def counted(method: str, route: str, status: int) -> float:
        labels = {"method": method, "route": route, "status": str(status)}
        return _count(after, **labels) - _count(before, **labels)

    assert counted("other", "/v1/runs", 405) == 3
    assert counted("other", "/v1/runs", 401) == 1
    assert counted("other", "/metrics", 405) == 1
    assert counted("OPTIONS", "/v1/runs", 405) == 1  # a method of HTTP keeps its name
    for word in [*words, "PROPFIND"]:
        assert word not in after


def test_dashboard_requests_are_counted_under_their_route_templates(
        http: httpx.Client, server: Any) -> None:
    """The dashboard served by the server counts in the same request metrics, by
    route template (never the run id or queue name in the path)."""
    runs = [http.post("/v1/runs", json={"job": tag("shown"), "queueName": tag("shown")}).json()
            for _ in range(2)]
    before = http.get("/metrics").text
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        assert browser.get("/").status_code == 303  # not logged in yet: to the login page
        login = browser.get("/login")
        assert login.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert csrf
        logged_in = browser.post("/login", data={"csrf": csrf.group(1),
                                                 "api_key": server.api_key})
        assert logged_in.status_code == 303
        for run in runs:
            assert browser.get(f"/runs/{run['id']}").status_code == 200
            assert browser.get(f"/queues/{run['queueName']}").status_code == 200
        assert browser.get("/runs/run_not_there").status_code == 404
        assert browser.get("/static/dashboard.css").status_code == 200
        nowhere = f"/no-such-page-{uuid.uuid4().hex}"
        missing = browser.get(nowhere)
        # The dashboard's own page, with its menu, naming the path it has no page at.
        assert missing.status_code == 404
        assert f"There is no dashboard page at {nowhere}." in missing.text
        assert 'href="/jobs"' in missing.text
        no_file = browser.get("/static/no-such-file.css")
        assert (no_file.status_code, no_file.text) == (404, "Not Found")
    after = http.get("/metrics").text

    def counted(method: str, route: str, status: int) -> float:
        labels = {"method": method, "route": route, "status": str(status)}
        return _count(after, **labels) - _count(before, **labels)

    assert counted("GET", "/", 303) == 1
    assert counted("GET", "/login", 200) == 1
    assert counted("POST", "/login", 303) == 1
    assert counted("GET", "/runs/{run_id}", 200) == 2
    assert counted("GET", "/runs/{run_id}", 404) == 1
    assert counted("GET", "/queues/{name}", 200) == 2
    assert counted("GET", "/static/{path}", 200) == 1
    assert counted("GET", "/static/{path}", 404) == 1
    assert counted("GET", "unmatched", 404) == 1
    for run in runs:
        assert run["id"] not in after and run["queueName"] not in after.replace(
            f'queue="{run["queueName"]}"', "")


def test_a_timezone_that_is_a_region_or_too_long_is_refused_not_a_server_error(
        http: httpx.Client) -> None:
    """``Europe`` (a region, not a zone) and a name too long for a file name are
    unknown time zones, 422, wherever the zones are read from (the tzdata
    package reads them as paths): not a 500; a longer one is refused for its
    length. No schedule is made."""
    job = tag("zoned")
    too_long = {"job": job, "cron": "@daily", "timezone": "k" * 300}
    error = assert_error(http.post("/v1/schedules", json=too_long), 422, "validation_error")
    assert error["message"] == "timezone is 300 characters long; at most 200 are taken"
    for zone in ("Europe", "America", "Etc", "k" * 200):
        for body in ({"job": job, "cron": "0 9 * * *", "timezone": zone},
                     {"job": job, "cron": "@daily", "timezone": zone,
                      "scheduleId": tag("zoned")}):
            error = assert_error(http.post("/v1/schedules", json=body), 422,
                                 "validation_error")
            assert error["message"] == (f"timezone: unknown timezone {zone!r}: use an IANA "
                                        "name such as 'UTC' or 'Europe/Paris'")
    assert [x for x in http.get("/v1/schedules").json()["items"] if x["job"] == job] == []
    made = http.post("/v1/schedules", json={"job": job, "cron": "0 9 * * *",
                                            "timezone": "Europe/Paris"})
    assert made.status_code == 201 and made.json()["timezone"] == "Europe/Paris"
    assert http.delete(f"/v1/schedules/{made.json()['id']}").json()["deleted"] is True


def test_a_run_started_again_over_http(http: httpx.Client) -> None:
    """``POST /v1/runs/{id}/again`` answers ``201`` with the new run; it takes no
    options (the new run has the run's), so a body with fields is refused, as is
    an unknown run, and neither starts anything."""
    job = tag("again")
    run = http.post("/v1/runs", json={"job": job, "payload": {"n": 1}, "priority": 2,
                                      "idempotencyKey": tag("again")}).json()
    assert_error(http.post(f"/v1/runs/{run['id']}/again", json={"payload": {"n": 2}}),
                 422, "validation_error")
    assert_error(http.post("/v1/runs/run_00000000000000000000000000/again"),
                 404, "run_not_found")
    assert [r["id"] for r in http.get("/v1/runs", params={"job": job}).json()["items"]] == [
        run["id"]]
    again = http.post(f"/v1/runs/{run['id']}/again")
    assert again.status_code == 201, again.text
    new = again.json()
    assert (new["job"], new["payload"], new["priority"], new["idempotencyKey"],
            new["status"]) == (job, {"n": 1}, 2, None, "queued")
    created = http.get(f"/v1/runs/{new['id']}/timeline").json()["items"]
    assert [e["data"] for e in created] == [{"againOf": run["id"]}]
    noted = http.get(f"/v1/runs/{run['id']}/timeline").json()["items"][-1]
    assert (noted["kind"], noted["data"]) == ("run.started_again", {"newRunId": new["id"]})


def test_an_endpoint_that_takes_no_body_refuses_one_with_fields(http: httpx.Client) -> None:
    """Options an endpoint does not have are refused, as unknown fields are in
    bodies: ``{"until": ...}`` on a pause would otherwise pause for good, and
    ``{"maxAttempts": ...}`` on a retry be dropped. Nothing is changed. No body,
    ``{}`` and ``null`` are still fine."""
    queue = tag("no-body")
    refused = http.post(f"/v1/queues/{queue}/pause", json={"until": "2030-01-01T00:00:00Z"})
    error = assert_error(refused, 422, "validation_error")
    assert "'until'" in error["message"]
    # Not paused: no setting stored, so no queue of that name.
    assert_error(http.get(f"/v1/queues/{queue}"), 404, "queue_not_found")
    run = http.post("/v1/runs", json={"job": tag("no-body"), "queueName": queue}).json()
    http.post(f"/v1/runs/{run['id']}/cancel")
    assert_error(http.post(f"/v1/runs/{run['id']}/retry", json={"maxAttempts": 10}),
                 422, "validation_error")
    assert http.get(f"/v1/runs/{run['id']}").json()["status"] == "cancelled"
    http.put("/v1/state/" + queue, json={"value": 1})
    assert_error(http.request("DELETE", f"/v1/state/{queue}", json={"ifValue": 2}),
                 422, "validation_error")
    assert http.get(f"/v1/state/{queue}").json()["value"] == 1
    assert_error(http.post(f"/v1/queues/{queue}/pause", json=[1]), 422, "validation_error")
    assert_error(http.post(f"/v1/queues/{queue}/pause", content=b"{oops",
                           headers={"Content-Type": "application/json"}), 400, "malformed_json")
    assert http.get(f"/v1/queues/{queue}").json()["paused"] is False
    # No body, {} and null: as before.
    assert http.post(f"/v1/queues/{queue}/pause", json={}).json()["paused"] is True
    assert http.post(f"/v1/queues/{queue}/resume").json()["paused"] is False
    assert http.post(f"/v1/queues/{queue}/pause", content=b"null",
                     headers={"Content-Type": "application/json"}).json()["paused"] is True
    retried = http.post(f"/v1/runs/{run['id']}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"


def test_a_client_that_leaves_before_its_body_ends_is_no_server_error(
        http: httpx.Client, server: Any) -> None:
    """A client that closes its connection before sending the body its
    ``Content-Length`` announced gets no answer, and the server served none: it
    is not counted as a ``500`` (an alert on 5xx would page for a fault that
    never happened), while answered requests still count."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    before = http.get("/metrics").text
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\n"
                         f"Authorization: Bearer {server.api_key}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                         '{"name": "half'.encode())
            time.sleep(0.2)
    time.sleep(0.5)  # the server sees the connections closed
    assert http.post("/v1/events", json={"name": tag("whole")}).status_code == 201
    after = http.get("/metrics").text
    sent = {"method": "POST", "route": "/v1/events"}
    assert _count(after, **sent, status="201") - _count(before, **sent, status="201") == 1
    assert _count(after, **sent, status="500") == _count(before, **sent, status="500") == 0


def test_metrics_count_the_live_workers_that_take_each_queue(
        http: httpx.Client, engine: StackShift) -> None:
    """``stackshift_queue_live_workers`` per queue (an alert on 0 beside a depth
    finds runs no worker will take) and ``stackshift_workers_live`` in all."""
    emails, reports = tag("emails"), tag("reports")
    http.post(f"/v1/queues/{emails}/runs", json={"job": tag("unknown")})
    assert http.patch(f"/v1/queues/{reports}", json={"concurrency": 2}).status_code == 200
    engine.job(tag("noop"), lambda ctx: None)

    def gauges() -> tuple[float, float, float]:
        text = http.get("/metrics").text
        return (_metric(text, "stackshift_queue_live_workers", queue=emails),
                _metric(text, "stackshift_queue_live_workers", queue=reports),
                _metric(text, "stackshift_workers_live"))

    # Counted from what runs before: a worker of another test on the server's
    # database that takes every queue takes these too.
    before = gauges()
    others = before[2]
    with engine.worker(concurrency=1, queues=[emails]):
        emails_only = gauges()
        with engine.worker(concurrency=1, queues=[reports, emails]):
            both = gauges()
    after = gauges()
    assert after == before
    assert emails_only[2] == others + 1 and both[2] == others + 2
    assert emails_only[:2] == (after[0] + 1, after[1])
    assert both[:2] == (after[0] + 2, after[1] + 1)
    assert "# TYPE stackshift_queue_live_workers gauge" in http.get("/metrics").text


def test_a_configured_queue_without_runs_is_in_the_runs_gauge(http: httpx.Client) -> None:
    """A paused queue, or one with a concurrency limit, shows in ``stackshift_runs``
    and ``stackshift_queue_depth`` with zero counts before it holds any run."""
    paused, limited = tag("paused-empty"), tag("limited-empty")
    assert http.post(f"/v1/queues/{paused}/pause").status_code == 200
    assert http.patch(f"/v1/queues/{limited}", json={"concurrency": 2}).status_code == 200
    text = http.get("/metrics").text
    for queue in (paused, limited):
        for status in Status:
            assert _metric(text, "stackshift_runs", queue=queue, status=status.value) == 0
        assert _metric(text, "stackshift_queue_depth", queue=queue) == 0
    http.post(f"/v1/queues/{paused}/runs", json={"job": tag("held")})
    text = http.get("/metrics").text
    assert _metric(text, "stackshift_runs", queue=paused, status="queued") == 1
    assert _metric(text, "stackshift_runs", queue=limited, status="queued") == 0


def test_a_stopping_server_answers_its_long_polls_at_once(db_url: str, tmp_path: Path) -> None:
    """SIGTERM ends the long-polls open at that moment (a client waiting for a run,
    a remote worker's claim) with their usual answers, so that the server stops in
    seconds rather than once they time out (up to a minute)."""
    with running_server(db_url, tmp_path / "server.log") as server:
        with server.http() as http:
            run = http.post("/v1/runs", json={"job": tag("nobody-serves-this")}).json()
        answers: dict[str, httpx.Response] = {}

        def ask(name: str, method: str, path: str, **options: Any) -> None:
            with server.http() as client:
                answers[name] = client.request(method, path, timeout=90, **options)

        asks = [
            threading.Thread(target=ask, args=("wait", "GET", f"/v1/runs/{run['id']}/wait"),
                             kwargs={"params": {"timeout": 60}}),
            threading.Thread(target=ask, args=("claim", "POST", "/v1/worker/claim"), kwargs={
                "json": {"workerId": "wkr_stopping", "jobs": ["nobody-serves-this"],
                         "limit": 1, "leaseSeconds": 30, "waitSeconds": 30}}),
        ]
        for thread in asks:
            thread.start()
        time.sleep(1.0)  # both are held open by now
        started = time.monotonic()
        server.process.terminate()
        server.process.wait(timeout=60)
        stopped_in = time.monotonic() - started
        for thread in asks:
            thread.join()
    assert answers["wait"].status_code == 200 and answers["wait"].json()["status"] == "queued"
    assert answers["claim"].status_code == 200 and answers["claim"].json() == {"items": []}
    assert stopped_in < 15, stopped_in


def test_a_database_out_of_reach_is_a_503_not_an_internal_error(
        store_kind: str, db_url: str, tmp_path: Path) -> None:
    """While the database cannot be reached or answer in time (SQLite: another
    process holds the write lock past the busy timeout; PostgreSQL: no connection
    can be made), requests get 503 ``database_unavailable``, which says "retry",
    rather than the 500 ``internal_error`` that stands for a bug."""
    import sqlite3

    import psycopg

    store = open_store(db_url)
    store.migrate()
    store.close()
    if store_kind == "sqlite":
        served = f"{db_url}?busy_timeout=0.3"
        lock_file = db_url.removeprefix("sqlite:///")
    else:
        role = f"r_{uuid.uuid4().hex[:12]}"
        admin = psycopg.connect(POSTGRES_URL, autocommit=True)
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
        served = db_url.replace("://postgres@", f"://{role}@") + "&pool_timeout=1"
    try:
        with running_server(served, tmp_path / "server.log") as server, server.http() as http:
            assert http.put("/v1/state/k", json={"value": 1}).status_code == 204
            if store_kind == "sqlite":
                holder = sqlite3.connect(lock_file, isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")
            else:
                admin.execute(f"ALTER ROLE {role} NOLOGIN")
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE usename = %s", (role,))
            try:
                refused = http.put("/v1/state/k", json={"value": 2})
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "database_unavailable"
            finally:
                if store_kind == "sqlite":
                    holder.execute("ROLLBACK")
                    holder.close()
                else:
                    admin.execute(f"ALTER ROLE {role} LOGIN")
            deadline = time.monotonic() + 20
            while (answer := http.put("/v1/state/k", json={"value": 3})).status_code != 204:
                assert answer.status_code == 503 and time.monotonic() < deadline, answer.text
                time.sleep(0.2)
            assert http.get("/v1/state/k").json()["value"] == 3
            assert "internal_error" not in server.log.read_text()
    finally:
        if store_kind == "postgres":
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE usename = %s", (role,))
            admin.execute(f"DROP ROLE IF EXISTS {role}")
            admin.close()


TIME_HINT = "is not an ISO-8601 time (e.g. '2026-05-06T09:00:00Z')"
NAME_HINT = "is invalid: use 1-200 ASCII letters, digits, '.', '_', ':' or '-'"


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("POST", "/v1/runs", {"scheduledAt": "soon"}, f"scheduledAt: 'soon' {TIME_HINT}"),
    ("POST", "/v1/runs", {"scheduledAt": "2030-01-01T00:00:00Z", "delay": "1h"},
     "give scheduledAt or delay, not both"),
    ("POST", "/v1/runs", {"idempotencyTtl": "1h"}, "idempotencyTtl needs an idempotencyKey"),
    ("GET", "/v1/runs?createdAfter=yesterday", None, f"createdAfter: 'yesterday' {TIME_HINT}"),
    ("GET", "/v1/runs?idempotencyKey=", None,
     "idempotencyKey must be a non-empty string, got ''"),
    ("GET", "/v1/runs?limit=0", None, "limit: Input should be greater than or equal to 1"),
    ("GET", "/v1/runs/run_x/wait?timeout=61", None,
     "timeout: must be a number of seconds from 0 to 60, got 61"),
    ("GET", "/v1/runs/run_x/wait?timeout=nan", None,
     "timeout: must be a number of seconds from 0 to 60 written in digits (e.g. '10', '1.5'),"
     " got 'nan'"),
    # Numbers Python's float() reads, which no other number of the API takes.
    *[("GET", f"/v1/runs/run_x/wait?timeout={typed}", None,
       "timeout: must be a number of seconds from 0 to 60 written in digits (e.g. '10', '1.5'),"
       f" got {shown!r}") for typed, shown in (("1_0", "1_0"), ("%2B1", "+1"), ("%202", " 2"),
                                              ("1e1", "1e1"))],
    ("GET", "/v1/runs/run_x/wait?timeout=-0.5", None,
     "timeout: must be a number of seconds from 0 to 60, got -0.5"),
    ("GET", "/v1/events?cursor=nope", None,
     "cursor 'nope' is not one a list returned (an evt_... id)"),
    ("GET", "/v1/queues/{tag}?window=0s", None, "window: must be from 1s to 90d"),
    ("GET", "/v1/queues?window=91d", None, "window: must be from 1s to 90d"),
    ("GET", "/v1/queues/{tag}?window=999999d", None,
     "window: '999999d' is longer than 100 years"),
    ("GET", "/v1/events?correlationKey=", None,
     "correlationKey must be a non-empty string, got ''"),
    ("GET", "/v1/runs?idempotencyKey=" + "k" * 513, None,
     "idempotencyKey is 513 characters, longer than any key or id can be (512 at most)"),
    ("GET", "/v1/events?correlationKey=" + "k" * 600, None,
     "correlationKey is 600 characters, longer than any key or id can be (512 at most)"),
    ("POST", "/v1/runs/retry-many", {"createdBefore": "later"},
     f"createdBefore: 'later' {TIME_HINT}"),
    ("PATCH", "/v1/queues/{tag}", {"rateLimit": "often"},
     "rateLimit 'often' is invalid: use COUNT/PERIOD such as '100/m', '10/s', '1000/h' or "
     "'20/30s'"),
    # The count in ASCII digits, as every other number (int() reads Arabic-Indic and fullwidth).
    ("PATCH", "/v1/queues/{tag}", {"rateLimit": "\u0663/m"},
     "rateLimit '\u0663/m' is invalid: use COUNT/PERIOD such as '100/m', '10/s', '1000/h' or "
     "'20/30s'"),
    ("PATCH", "/v1/queues/{tag}", {"rateLimit": "\uff11\uff10\uff10/m"},
     "rateLimit '\uff11\uff10\uff10/m' is invalid: use COUNT/PERIOD such as '100/m', '10/s',"
     " '1000/h' or '20/30s'"),
    ("PUT", "/v1/state/{tag}", {"value": 1, "expiresAt": "never"},
     f"expiresAt: 'never' {TIME_HINT}"),
    ("PUT", "/v1/state/{tag}", {"value": 1, "ttl": "1h", "expiresAt": "2030-01-01T00:00:00Z"},
     "give ttl or expiresAt, not both"),
    ("PUT", "/v1/state/{tag}", {"value": 1, "expiresAt": "2001-01-01T00:00:00Z"},
     "expiresAt must be in the future, got 2001-01-01T00:00:00+00:00"),
    ("GET", "/v1/state/" + "k" * 513, None,
     "key: String should have at most 512 characters"),
    # A field the body does not have keeps the name it was sent with, beside
    # the names the body takes.
    ("POST", "/v1/runs", {"idempotency_key": "k"},
     "idempotency_key: Extra inputs are not permitted (the body takes concurrencyKey, delay, "
     "idempotencyKey, idempotencyTtl, job, maxAttempts, payload, priority, queueName, "
     "scheduledAt)"),
    ("POST", "/v1/runs/{tag}/cancel", {"why": "x"},
     "why: Extra inputs are not permitted (the body takes reason)"),
])
def test_refusals_name_fields_as_the_request_spelt_them(
        http: httpx.Client, method: str, path: str, body: Any, message: str) -> None:
    """A client in another language sent ``scheduledAt`` or ``?createdAfter=``: the
    message names that, not the SDK's Python keyword nor where FastAPI found it
    (``query.limit``). Nothing is written."""
    name = tag("wording")
    path = path.replace("{tag}", name)
    if method == "POST" and path == "/v1/runs":
        body = {"job": name, **body}
    error = assert_error(http.request(method, path, json=body), 422, "validation_error")
    assert error["message"] == message
    assert http.get("/v1/runs", params={"job": name}).json()["items"] == []
    assert http.get("/v1/state", params={"prefix": name}).json()["items"] == []
    assert http.get(f"/v1/queues/{name}").status_code == 404  # no queue was made


@pytest.mark.parametrize(("body", "message"), [
    ({"payloads": [1, 2], "idempotencyKeys": ["a"]},
     "idempotencyKeys has 1 key for 2 payloads: give one per payload (null for a run "
     "without one)"),
    ({"payloads": [1], "concurrencyKeys": ["a", None]},
     "concurrencyKeys has 2 keys for 1 payload: give one per payload (null for a run "
     "without one)"),
    ({"payloads": [1], "idempotencyTtl": "5s"},
     "idempotencyTtl needs idempotencyKeys with at least one key"),
    ({"payloads": [1, 2], "idempotencyKeys": [None, None], "idempotencyTtl": "5s"},
     "idempotencyTtl needs idempotencyKeys with at least one key"),
    ({"payloads": [1, 2], "idempotencyKeys": ["m1", "m1"]},
     "idempotencyKeys[1] repeats idempotencyKeys[0] ('m1') with another payload: a key"
     " names one run, so nothing was started"),
])
def test_start_many_refusals_name_its_fields_and_json_values(
        http: httpx.Client, body: dict[str, Any], message: str) -> None:
    """``/v1/runs/many`` says ``idempotencyKeys`` (not the one start's field) and
    ``null`` (not Python's ``None``); the SDK says ``None``. Nothing is started."""
    job = tag("many")
    error = assert_error(http.post("/v1/runs/many", json={"job": job, **body}), 422,
                         "validation_error")
    assert error["message"] == message
    assert http.get("/v1/runs", params={"job": job}).json()["items"] == []


def test_the_remote_client_says_none_where_the_api_says_null(remote: StackShift) -> None:
    """The server's refusal in the SDK's words: ``idempotency_keys`` and ``None``."""
    job = tag("many")
    with pytest.raises(ValidationError) as refused:
        remote._api._call(  # type: ignore[union-attr]
            "POST", "/v1/runs/many", json={"job": job, "payloads": [1, 2],
                                           "idempotencyKeys": ["a"]})
    assert str(refused.value) == ("idempotency_keys has 1 key for 2 payloads: give one per "
                                  "payload (None for a run without one)")
    with pytest.raises(ValidationError) as refused:
        remote.start_many(job, [1, 2], idempotency_keys=["a"])
    assert str(refused.value) == ("idempotency_keys has 1 key for 2 payloads: give one per "
                                  "payload (None for a run without one)")
    assert remote.runs.list(job=job).items == []


def test_a_value_sent_keeps_its_spelling_in_a_refusal(http: httpx.Client) -> None:
    """Only names are respelt: a value quoted in the message is the one sent."""
    job = tag("wording")
    for value in ("scheduled_at", "created_after 'x'", 'say "expires_at"'):
        error = assert_error(http.post("/v1/runs", json={"job": job, "scheduledAt": value}),
                             422, "validation_error")
        assert error["message"] == f"scheduledAt: {value!r} {TIME_HINT}"
    error = assert_error(http.get("/v1/runs", params={"createdBefore": "queue_name"}),
                         422, "validation_error")
    assert error["message"] == f"createdBefore: 'queue_name' {TIME_HINT}"
    assert http.get("/v1/runs", params={"job": job}).json()["items"] == []


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/v1/events", {"name": "email verified"}, f"name: event name 'email verified' {NAME_HINT}"),
    ("/v1/runs", {"job": "send receipt"}, f"job: job name 'send receipt' {NAME_HINT}"),
    ("/v1/runs", {"job": "ok", "queueName": "e mails"},
     f"queueName: queue name 'e mails' {NAME_HINT}"),
    ("/v1/schedules", {"job": "ok", "cron": "@daily", "scheduleId": "daily report"},
     f"scheduleId: schedule id 'daily report' {NAME_HINT}"),
])
def test_a_bad_name_is_explained_with_the_field_and_what_it_names(
        http: httpx.Client, path: str, body: dict[str, Any], message: str) -> None:
    """As the SDK says ``event name 'x' is invalid``, and naming the field sent."""
    before = http.get(path).json()["items"]
    error = assert_error(http.post(path, json=body), 422, "validation_error")
    assert error["message"] == message
    assert http.get(path).json()["items"] == before


def test_the_remote_client_names_fields_as_its_keywords(
        http: httpx.Client, remote: StackShift) -> None:
    """The server says ``expiresAt`` (the client cannot judge the server's clock);
    the remote client raises it as the SDK words it, ``expires_at``."""
    key, past = tag("past"), "2001-01-01T00:00:00Z"
    error = assert_error(http.put(f"/v1/state/{key}", json={"value": 1, "expiresAt": past}),
                         422, "validation_error")
    assert error["message"] == "expiresAt must be in the future, got 2001-01-01T00:00:00+00:00"
    with pytest.raises(ValidationError) as refused:
        remote.state.set(key, 1, expires_at=past)
    assert str(refused.value) == "expires_at must be in the future, got 2001-01-01T00:00:00+00:00"
    assert remote.state.get(key, default="unset") == "unset"


def test_a_change_to_a_schedule_answers_200_and_a_new_one_201(
        http: httpx.Client, remote: StackShift) -> None:
    job, sid = tag("report"), tag("daily")
    body = {"job": job, "cron": "0 9 * * *", "scheduleId": sid}
    made = http.post("/v1/schedules", json=body)
    assert (made.status_code, made.json()["id"], made.json()["cron"]) == (201, sid, "0 9 * * *")
    same = http.post("/v1/schedules", json=body)
    assert (same.status_code, same.json()) == (200, made.json())
    changed = http.post("/v1/schedules", json={**body, "cron": "0 18 * * *"})
    assert (changed.status_code, changed.json()["id"]) == (200, sid)
    assert http.get(f"/v1/schedules/{sid}").json()["cron"] == "0 18 * * *"
    # Without an id, each is a new schedule.
    fresh = [http.post("/v1/schedules", json={"job": job, "cron": "@hourly"}) for _ in range(2)]
    assert [r.status_code for r in fresh] == [201, 201]
    assert fresh[0].json()["id"] != fresh[1].json()["id"]
    # The remote client reads either answer as the schedule.
    assert remote.schedules.create(job, cron="@daily", schedule_id=sid).cron == "@daily"
    other = tag("weekly")
    assert remote.schedules.create(job, cron="@weekly", schedule_id=other).id == other
    mine = sorted(s["id"] for s in http.get("/v1/schedules").json()["items"] if s["job"] == job)
    assert mine == sorted([sid, other, fresh[0].json()["id"], fresh[1].json()["id"]])


def test_worker_registration_refuses_the_concurrency_the_sdk_refuses(
        http: httpx.Client, served_db: str) -> None:
    """``POST /v1/worker/register`` takes a ``concurrency`` from 1 to 100,000, as
    ``Worker(concurrency=...)`` does, and refuses the rest in the SDK's words
    under the API's field name (it took up to 2**31 - 1 slots)."""
    app = StackShift(served_db)
    job = tag("registered")
    app.job(job, lambda ctx: None)

    def register(concurrency: int) -> httpx.Response:
        return http.post("/v1/worker/register", json={
            "workerId": f"wkr_{uuid.uuid4().hex[:12]}", "hostname": "h", "pid": 1,
            "jobs": [job], "concurrency": concurrency})

    try:
        for bad in (100_001, 2**31 - 1, 0):
            with pytest.raises(ValidationError) as refused:
                app.worker(concurrency=bad)
            said = str(refused.value)
            assert said == f"concurrency must be an integer from 1 to 100000, got {bad}"
            error = assert_error(register(bad), 422, "validation_error")
            assert error["message"] == said
            # As a queue's concurrency is refused.
            queue = assert_error(http.patch(f"/v1/queues/{tag('q')}", json={
                "concurrency": bad}), 422, "validation_error")
            assert queue["message"] == said
        assert register(100_000).status_code == 200
    finally:
        app.close()


def test_the_worker_api_refuses_a_name_ending_in_a_newline(
        http: httpx.Client, served_db: str) -> None:
    """The document's name pattern ends at the name's end: ``"emails\\n"`` is no
    name. Taken by the worker API, such a job or queue was listed by the server
    but could be neither read nor filtered on."""
    job, queue = f"{tag('nl')}\n", f"{tag('q')}\n"
    worker = f"wkr_{uuid.uuid4().hex[:12]}"
    for path, body in (
            ("/v1/worker/jobs", {"jobs": [{"job": job, "queue": "default", "maxAttempts": 7}]}),
            ("/v1/worker/jobs", {"jobs": [{"job": "ok", "queue": queue, "maxAttempts": 7}]}),
            ("/v1/worker/register", {"workerId": worker, "hostname": "h", "pid": 1,
                                     "jobs": [job], "concurrency": 1}),
            ("/v1/worker/schedules", {"schedules": [{"job": job, "cron": "@every 1s"}],
                                      "without": []})):
        error = assert_error(http.post(path, json=body), 422, "validation_error")
        assert "is invalid: use 1-200 ASCII letters" in error["message"], (path, error)
    names = [j["name"] for j in http.get("/v1/jobs").json()["items"]]
    assert job not in names and "ok" not in names


def test_a_long_log_is_read_in_pages_through_the_server(
        http: httpx.Client, remote: StackShift, served_db: str) -> None:
    """``GET /v1/runs/{id}/logs?limit=`` gives the first records after ``after``,
    ``?last=`` the latest; the remote client reads a whole log in pages of
    10,000 (two requests for 10,050 records), not in one answer."""
    from stackshift.store.base import LogWrite
    from stackshift.store.execution import write_logs

    count = 10_050
    with StackShift(served_db) as engine:
        engine.job("quiet", lambda ctx: None)
        run = engine.start("quiet")
        with engine._service.store.db.write() as tx:
            write_logs(tx, run.id, [LogWrite(1.0, "INFO", "app", f"line {n}", None, None)
                                    for n in range(count)])
    page = http.get(f"/v1/runs/{run.id}/logs", params={"limit": 3}).json()["items"]
    assert [e["message"] for e in page] == ["line 0", "line 1", "line 2"]
    rest = http.get(f"/v1/runs/{run.id}/logs",
                    params={"after": page[-1]["id"], "limit": 2}).json()["items"]
    assert [e["message"] for e in rest] == ["line 3", "line 4"]
    assert_error(http.get(f"/v1/runs/{run.id}/logs", params={"limit": 10_001}), 422,
                 "validation_error")
    latest = http.get(f"/v1/runs/{run.id}/logs", params={"last": 2}).json()["items"]
    assert [e["message"] for e in latest] == [f"line {count - 2}", f"line {count - 1}"]
    error = assert_error(http.get(f"/v1/runs/{run.id}/logs", params={"last": 2, "limit": 2}),
                         422, "validation_error")
    assert error["message"].endswith("not both")

    route = {"method": "GET", "route": "/v1/runs/{run_id}/logs", "status": "200"}
    before = _count(http.get("/metrics").text, **route)
    entries = remote.runs.logs(run.id)
    assert [e.message for e in entries] == [f"line {n}" for n in range(count)]
    assert _count(http.get("/metrics").text, **route) - before == 2
