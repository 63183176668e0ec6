"""Schemathesis against a running server with a valid key: no 5xx, and every
response matches the OpenAPI document (status, content type, headers, schema).

Bounded in time (``STACKSHIFT_FUZZ_SECONDS``, default 30 per store) with a
fixed seed, so a run is repeatable. Left out:

- the ``positive_data_acceptance`` check: some schema-valid requests are refused
  on purpose by rules the schema cannot state (an idempotency TTL written as a
  string over 365 days, an increment of a key that holds text, ...);
- ``/wait``: a long-poll legitimately takes up to its ``timeout`` (60 s), which
  only costs time here; its behaviour is tested in ``test_server_api.py``;
- ``/worker/claim``, the remote workers' long-poll (up to 30 s), likewise;
  tested in ``test_remote_worker.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SECONDS = os.environ.get("STACKSHIFT_FUZZ_SECONDS", "30")


@pytest.mark.slow
def test_schemathesis_finds_nothing(server: Any, tmp_path: Path) -> None:
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "run", f"{server.url}/openapi.json",
         "-H", f"Authorization: Bearer {server.api_key}",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--exclude-path-regex", "/wait$|/worker/claim$",
         "--max-examples", "15", "--workers", "1", "--max-time", SECONDS,
         "--request-timeout", "30", "--seed", "2", "--generation-database", "none",
         "--no-color"],
        capture_output=True, text=True, timeout=float(SECONDS) + 240, cwd=tmp_path,
    )
    summary = result.stdout[result.stdout.find("=== SUMMARY"):]
    assert result.returncode == 0, result.stdout[-6000:]
    assert "passed" in summary and "failure" not in summary and "error" not in summary, summary
