"""The committed OpenAPI document is the one the server serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from stackshift.server.openapi import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_document_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/openapi.json is stale: run "
        "`.venv/bin/python -m stackshift.server.openapi docs/openapi.json` and commit it"
    )


def test_the_server_serves_the_committed_document(server: Any) -> None:
    with server.http() as http:
        served = http.get("/openapi.json").json()
    assert served == json.loads(DOC.read_text())
    assert httpx.get(f"{server.url}/openapi.json").status_code == 401


def test_document_covers_the_api_in_camel_case() -> None:
    doc = json.loads(DOC.read_text())
    paths = doc["paths"]
    for path in ("/v1/runs", "/v1/queues/{name}/runs", "/v1/runs/{run_id}/wait",
                 "/v1/runs/{run_id}/cancel", "/v1/runs/{run_id}/retry", "/v1/events",
                 "/v1/state/{key}", "/v1/state/increment", "/v1/locks", "/v1/locks/{key}",
                 "/healthz", "/metrics"):
        assert path in paths, path
    start = doc["components"]["schemas"]["StartRun"]["properties"]
    assert {"queueName", "idempotencyKey", "idempotencyTtl", "maxAttempts", "scheduledAt",
            "concurrencyKey"} <= set(start)
    assert not any("_" in name for name in start)
    # HEAD too, as load balancers ask: a client made from the document can call it.
    assert paths["/healthz"]["get"]["security"] == paths["/healthz"]["head"]["security"] == []
    assert doc["security"] == [{"apiKey": []}]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path != "/healthz":
                assert "401" in operation["responses"], (method, path)
