"""``stackshift start --payloads`` on the database and through a real server
(``STACKSHIFT_URL``): the same runs start, and a line over the size limit is
refused before any starts, with the way to raise the limit that holds there."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from serverproc import STACKSHIFT

from stackshift import StackShift


def test_start_payloads_starts_a_run_per_line_through_either(
        cli_env: dict[str, str], db_url: str, tmp_path: Path) -> None:
    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"orderId": "a1"}\n{"orderId": "b2"}\n', encoding="utf-8")
    done = subprocess.run([*STACKSHIFT, "start", "importOrder", "--payloads", str(lines),
                           "--idempotency-key", "import:{orderId}", "--json"],
                          capture_output=True, text=True, timeout=60, env=cli_env)
    assert done.returncode == 0, done.stderr
    started = json.loads(done.stdout)
    assert [run["payload"] for run in started] == [{"orderId": "a1"}, {"orderId": "b2"}]
    app = StackShift(db_url)
    try:
        assert {app.runs.get(run["id"]).idempotency_key for run in started} == {
            "import:a1", "import:b2"}
    finally:
        app.close()


def test_a_line_over_the_limit_names_how_to_raise_it_where_it_holds(
        cli_env: dict[str, str], db_url: str, tmp_path: Path) -> None:
    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"n": 1}\n' + json.dumps({"x": "p" * (1 << 20)}) + "\n",
                     encoding="utf-8")
    refused = subprocess.run([*STACKSHIFT, "start", "importOrder", "--payloads", str(lines)],
                             capture_output=True, text=True, timeout=60, env=cli_env)
    assert refused.returncode == 2, refused.stderr
    raise_it = ("the server's --setting max_payload_bytes=..." if "STACKSHIFT_URL" in cli_env
                else "stackshift --setting max_payload_bytes=...")
    assert refused.stderr.startswith(
        "error: the payload of line 2 is 1048584 bytes as JSON, over the limit of 1048576"
        " bytes"), refused.stderr
    assert raise_it in refused.stderr
    app = StackShift(db_url)
    try:
        assert app.runs.list(job="importOrder").items == []
    finally:
        app.close()
