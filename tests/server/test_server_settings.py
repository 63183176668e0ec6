"""A server started with its own settings (``--setting NAME=VALUE``) is the judge
of sizes: a remote client refuses what that server refuses, in the embedded words,
and sends what it accepts, whatever the client's own defaults."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import Server, raise_with, start_server, stop_server

from stackshift import PayloadTooLargeError, Settings, StackShift, ValidationError
from stackshift.serialization import MiB

#: Over the defaults (1 MiB of payload, 256 KiB of state value), under the body limit.
LIMITS: dict[str, Any] = {
    "max_payload_bytes": 2 * MiB, "max_event_payload_bytes": 2 * MiB,
    "max_state_value_bytes": 2 * MiB, "max_step_result_bytes": 2 * MiB,
    # under the defaults
    "max_state_key_length": 64, "max_idempotency_key_length": 64,
    "max_idempotency_ttl": "2d",
}


@pytest.fixture(scope="module")
def server(served_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    flags = [f"--setting={name}={value}" for name, value in LIMITS.items()]
    running = start_server(served_db, tmp_path_factory.mktemp("log") / "server.log",
                           "--max-body-bytes", str(4 * MiB), *flags)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(params=["embedded", "remote"])
def client(request: pytest.FixtureRequest, served_db: str) -> Iterator[StackShift]:
    """Embedded with the server's settings, or remote (its own settings left default)."""
    if request.param == "embedded":
        app = StackShift(served_db, settings=Settings(**LIMITS))
    else:
        server = request.getfixturevalue("server")
        app = StackShift(api_key=server.api_key, base_url=server.url)
    yield app
    app.close()


BIG = "x" * (3 * MiB // 2)  # over the default limits, under the server's


@pytest.mark.parametrize(
    ("call", "read"),
    [
        (lambda c, n: c.start(n, BIG), lambda c, n: c.runs.list(job=n).items[0].payload),
        (lambda c, n: c.events.send(n, BIG), lambda c, n: c.events.list(name=n).items[0].payload),
        (lambda c, n: c.state.set(n, BIG), lambda c, n: c.state.get(n)),
    ],
    ids=["payload", "event payload", "state value"],
)
def test_values_over_the_default_limits_are_kept_when_the_server_allows_them(
    client: StackShift, call: Callable[[StackShift, str], Any],
    read: Callable[[StackShift, str], Any]
) -> None:
    name = f"big-{uuid.uuid4().hex[:8]}"
    call(client, name)
    assert read(client, name) == BIG


def test_a_worker_keeps_step_results_up_to_the_servers_limit(client: StackShift) -> None:
    """A remote worker sizes step and job results against the server's limit,
    as an embedded one does against its settings: over the default, under the
    server's, a result is kept; over the server's, the step fails in the same words."""
    name = f"results-{uuid.uuid4().hex[:8]}"

    @client.job(name, max_attempts=1)
    def results(ctx: Any) -> str:
        kept = ctx.step.run("big", lambda: BIG)
        if ctx.payload["over"]:
            ctx.step.run("too-big", lambda: "x" * (2 * MiB))
        return str(kept)

    kept, refused = client.start(name, {"over": False}), client.start(name, {"over": True})
    with client.worker(concurrency=2):
        done = client.runs.wait(kept.id, timeout="30s")
        failed = client.runs.wait(refused.id, timeout="30s")
    assert (done.status, done.result == BIG) == ("completed", True)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "StepResultTooLargeError"
    assert failed.error.message.startswith(
        "result of step 'too-big' is 2097154 bytes as JSON, over the limit of 2097152 bytes")


@pytest.mark.parametrize(
    ("call", "message", "setting"),
    [
        (lambda c, n: c.start(n, "x" * (2 * MiB)),
         "payload is 2097154 bytes as JSON, over the limit of 2097152 bytes",
         "max_payload_bytes"),
        (lambda c, n: c.events.send(n, "x" * (2 * MiB)),
         "event payload is 2097154 bytes as JSON, over the limit of 2097152 bytes",
         "max_event_payload_bytes"),
        (lambda c, n: c.state.set(n, "x" * (2 * MiB)),
         "state value for '{name}' is 2097154 bytes as JSON, over the limit of 2097152 bytes",
         "max_state_value_bytes"),
    ],
    ids=["payload", "event payload", "state value"],
)
def test_values_over_the_servers_limits_are_refused_in_the_same_words(
    client: StackShift, call: Callable[[StackShift, str], Any], message: str, setting: str
) -> None:
    name = f"big-{uuid.uuid4().hex[:8]}"
    with pytest.raises(PayloadTooLargeError) as raised:
        call(client, name)
    assert str(raised.value) == message.format(name=name) + raise_with(client, setting)
    assert len(client.runs.list(job=name)) == 0
    assert client.events.list(name=name).items == []
    assert client.state.get(name, default="missing") == "missing"


@pytest.mark.parametrize(
    ("call", "message", "setting"),
    [
        (lambda c, n: c.state.set(n + "k" * 64, 1),
         "state key is {size} characters, over the limit of 64", "max_state_key_length"),
        (lambda c, n: c.events.send(n, idempotency_key=n + "k" * 64),
         "idempotency_key is {size} characters, over the limit of 64",
         "max_idempotency_key_length"),
        (lambda c, n: c.start(n, idempotency_key=n, idempotency_ttl="3d"),
         "idempotency_ttl must be more than 0 and at most 2d", None),
    ],
    ids=["state key", "idempotency key", "idempotency ttl"],
)
def test_keys_and_ttls_over_the_servers_limits_are_refused_in_the_same_words(
    client: StackShift, call: Callable[[StackShift, str], Any], message: str,
    setting: str | None,
) -> None:
    name = f"keyed-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ValidationError) as raised:
        call(client, name)
    assert str(raised.value) == message.format(size=len(name) + 64) + (
        "" if setting is None else raise_with(client, setting))
    assert len(client.runs.list(job=name)) == 0
    assert client.events.list(name=name).items == []
    assert client.state.keys(prefix=name) == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_state_value_bytes=-1", "Settings.max_state_value_bytes must be 1 or more"),
        ("max_payload_bytes=lots", "Settings.max_payload_bytes: expected a whole number"),
        ("max_payload_bytes=1_000_000", "Settings.max_payload_bytes: expected a whole number"),
        ("event_retention=0", "Settings.event_retention must be more than 0"),
        ("run_retention=soon", "Settings.run_retention: 'soon' is not a duration"),
        ("max_lease=30s", "'max_lease=30s' is not NAME=VALUE"),
        # Seconds in digits, as every other option of the command line takes them.
        ("event_retention=1_000", "Settings.event_retention: seconds are written in digits"),
        ("event_retention=1e3", "Settings.event_retention: seconds are written in digits"),
        ("starvation_limit=1e400", "Settings.starvation_limit: '1e400' must be a finite"),
        # A SQL LIMIT: over a 64-bit integer, retention failed every round.
        ("retention_batch=99999999999999999999",
         "Settings.retention_batch must be 1 or more and at most 1000000"),
    ],
)
def test_a_bad_setting_stops_the_server_before_it_opens_the_database(
    tmp_path: Path, setting: str, message: str
) -> None:
    database = tmp_path / "never.db"
    done = subprocess.run(
        [sys.executable, "-m", "stackshift.server", "--database-url", f"sqlite:///{database}",
         "--port", "0", "--setting", setting],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --setting: {message}")
    assert not database.exists()


def test_a_port_in_use_ends_the_server_with_a_failure_that_names_it(tmp_path: Path) -> None:
    with socket.socket() as holder:  # another program's server on the port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "stackshift.server", "--db",
             f"sqlite:///{tmp_path / 'jobs.db'}", "--port", str(port), "--log-level", "warning"],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 1, done.stderr  # 3 would say "not found"
    assert "address already in use" in done.stderr, done.stderr
    assert done.stderr.endswith(
        f"error: the server did not start on 127.0.0.1:{port} (see the error above)\n"
    ), done.stderr
    assert "StackShift server at" not in done.stderr, done.stderr
