"""Which shape a client takes: arguments, then the environment."""

from __future__ import annotations

from typing import Any

import pytest

from stackshift import AuthenticationError, StackShift, StackShiftError, ValidationError
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
