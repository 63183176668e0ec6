"""Which shape a client takes: arguments, then the environment."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stackshift import (
    AsyncStackShift,
    AuthenticationError,
    StackShift,
    StackShiftError,
    ValidationError,
)
from stackshift.cli.main import cli
from stackshift.testing import FakeClock


def test_environment_selects_the_server(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STACKSHIFT_DATABASE_URL", raising=False)
    monkeypatch.setenv("STACKSHIFT_URL", server.url)
    monkeypatch.setenv("STACKSHIFT_API_KEY", server.api_key)
    with StackShift() as app:
        assert (app.database_url, app.base_url) == (None, server.url)
        run = app.start("fromEnvironment", {"a": 1})
        assert app.runs.get(run.id).payload == {"a": 1}
    # the database URL wins over the server's
    monkeypatch.setenv("STACKSHIFT_DATABASE_URL", server.database_url)
    with StackShift() as app:
        assert (app.database_url, app.base_url) == (server.database_url, None)
        assert app.runs.get(run.id).id == run.id


def test_an_api_key_in_the_environment_without_its_server_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``STACKSHIFT_API_KEY`` alone, as ``api_key=`` alone: a server was meant, and
    is not named. Refused, rather than a new SQLite file taking the run; with
    ``STACKSHIFT_DATABASE_URL`` set, the database is used as before."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STACKSHIFT_DATABASE_URL", raising=False)
    monkeypatch.delenv("STACKSHIFT_URL", raising=False)
    monkeypatch.setenv("STACKSHIFT_API_KEY", "ssk_anything")
    with pytest.raises(ValidationError, match="STACKSHIFT_API_KEY is set but STACKSHIFT_URL"):
        StackShift()
    done = CliRunner().invoke(cli, ["start", "sendReceipt", "{}"])
    assert done.exit_code == 2, done.output
    assert "STACKSHIFT_API_KEY is set but STACKSHIFT_URL is not" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no stackshift.db
    monkeypatch.setenv("STACKSHIFT_DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    with StackShift() as app:
        assert app.base_url is None and app.start("sendReceipt").status == "queued"


def test_a_server_needs_both_url_and_key(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STACKSHIFT_DATABASE_URL", raising=False)
    monkeypatch.delenv("STACKSHIFT_URL", raising=False)
    monkeypatch.delenv("STACKSHIFT_API_KEY", raising=False)
    with pytest.raises(ValidationError, match="base_url"):
        StackShift(api_key=server.api_key)
    with pytest.raises(ValidationError, match="api_key"):
        StackShift(base_url=server.url)
    with pytest.raises(ValidationError, match="not both"):
        StackShift(server.database_url, api_key=server.api_key, base_url=server.url)
    with pytest.raises(ValidationError, match="clock"):
        StackShift(api_key=server.api_key, base_url=server.url, clock=FakeClock())
    with pytest.raises(ValidationError, match="http"):
        StackShift(api_key=server.api_key, base_url="ftp://example.com")


def test_a_wrong_key_raises_authentication_error(server: Any) -> None:
    with StackShift(api_key="ssk_wrong", base_url=server.url) as app:
        with pytest.raises(AuthenticationError):
            app.runs.list()
        with pytest.raises(StackShiftError):
            app.start("x")


def test_a_remote_client_gives_a_remote_worker(server: Any) -> None:
    """Its worker claims through the server (see test_remote_worker.py)."""
    from stackshift.remote_worker import RemoteWorkerStore

    with StackShift(api_key=server.api_key, base_url=server.url) as app:
        app.job("remoteJob", lambda ctx: None)
        worker = app.worker()
        assert worker.jobs == ["remoteJob"]
        assert isinstance(worker.service.store, RemoteWorkerStore)
        assert app.migrate() >= 2  # the server's schema version


@pytest.mark.parametrize("pasted", ["{key}\n", " {key} ", "\t{key}\r\n"])
def test_a_key_pasted_with_surrounding_whitespace_is_the_key(server: Any, pasted: str) -> None:
    """As the server and the dashboard's login take it: a key read from a file keeps
    its newline, which used to make every request fail."""
    key = pasted.format(key=server.api_key)
    with StackShift(api_key=key, base_url=server.url) as app:
        run = app.start("pastedKey")
        assert app.runs.get(run.id).id == run.id
    env = {"STACKSHIFT_DATABASE_URL": None, "STACKSHIFT_URL": server.url,
           "STACKSHIFT_API_KEY": key}
    listed = CliRunner().invoke(cli, ["runs", "show", run.id, "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert run.id in listed.stdout


def _broken_keys(key: str) -> list[str]:
    return [key[:20] + "\n" + key[20:], key[:20] + " " + key[20:], key + "\x00",
            key + "\u00e9", "\n" + key + "\x7f"]


def test_a_key_no_header_can_carry_is_refused_without_being_shown(server: Any) -> None:
    """The HTTP library's own error for such a key printed the whole Authorization
    header: the key, in the caller's logs (and a worker's, a route's, the server's)."""
    key = server.api_key
    for broken in _broken_keys(key):
        with pytest.raises(ValidationError, match="how it was copied") as refused:
            StackShift(api_key=broken, base_url=server.url)
        message = str(refused.value)
        assert key[12:20] not in message and key[20:] not in message, message


def test_the_cli_refuses_such_a_key_with_exit_code_2_and_does_not_show_it(
        server: Any) -> None:
    key = server.api_key
    for broken in (k for k in _broken_keys(key) if "\x00" not in k):  # no NUL in os.environ
        env = {"STACKSHIFT_DATABASE_URL": None, "STACKSHIFT_URL": server.url,
               "STACKSHIFT_API_KEY": broken}
        result = CliRunner().invoke(cli, ["runs", "list"], env=env)
        assert result.exit_code == 2, result.output
        assert "how it was copied" in result.output
        assert key[12:20] not in result.output and key[20:] not in result.output


def test_a_closed_async_client_refuses_a_wait_as_every_other_call(server: Any) -> None:
    """``await runs.wait()`` talks to the server through a client of its own: once
    the client is closed it is refused as ``runs.get`` is, instead of polling on."""
    async def scenario() -> list[str]:
        app = AsyncStackShift(api_key=server.api_key, base_url=server.url)
        run = await app.start("neverRuns")
        await app.close()
        said = []
        for call in (app.runs.get(run.id), app.runs.wait(run.id, timeout="5s")):
            with pytest.raises(RuntimeError) as refused:
                await call
            said.append(str(refused.value))
        return said

    assert asyncio.run(scenario()) == [
        "Cannot send a request, as the client has been closed."] * 2
