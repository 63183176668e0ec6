"""Helpers for the tests that run several worker processes against one database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from processes import stop_processes

APP = Path(__file__).with_name("cluster_app.py")


POSTGRES_URL = os.environ.get(
    "STACKSHIFT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextmanager
def postgres_schema(config: pytest.Config) -> Iterator[str]:
    """A URL for a fresh schema on the test PostgreSQL, dropped afterwards.

    For tests that only make sense on PostgreSQL; they are skipped when
    ``--stores`` leaves PostgreSQL out (and, outside CI, when it is unreachable).
    """
    import psycopg

    if "postgres" not in config.getoption("--stores"):
        pytest.skip("PostgreSQL is not among --stores")
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is unreachable at {POSTGRES_URL}: {exc}")
        pytest.skip(f"PostgreSQL is unreachable at {POSTGRES_URL}: {exc}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        try:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        except psycopg.OperationalError:  # the server restarted under this connection
            with psycopg.connect(POSTGRES_URL, autocommit=True) as again:
                again.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


class Processes:
    """``cluster_app.py`` processes of one test; whatever is left is killed at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        log = open(self.logs / f"proc-{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, str(APP), *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        self.procs.append(proc)
        return proc

    def wait_for(self, proc: subprocess.Popen[str], word: str, timeout: float = 30) -> None:
        """Block until ``proc`` prints a line starting with ``word``."""
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith(word):
                return
            if not line and proc.poll() is not None:
                break
        raise AssertionError(f"process {proc.pid} never said {word!r}: {self.log_of(proc)}")

    def send(self, proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def log_of(self, proc: subprocess.Popen[str]) -> str:
        return (self.logs / f"proc-{self.procs.index(proc)}.log").read_text()[-3000:]

    def kill(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        stop_processes(self.procs)


@contextmanager
def cluster_processes(logs: Path) -> Iterator[Processes]:
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop_all()
