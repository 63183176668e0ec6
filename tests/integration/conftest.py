"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster import postgres_schema


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL schema for a test that only makes sense on PostgreSQL."""
    with postgres_schema(request.config) as url:
        yield url
