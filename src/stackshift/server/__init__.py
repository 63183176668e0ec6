"""``stackshift server``: the HTTP API over one installation's database.

The web framework is imported only when an app is built, so the remote client
can use :mod:`stackshift.server.schemas` without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["app_from_url", "create_app"]


def create_app(*args: Any, **kwargs: Any) -> FastAPI:
    """See :func:`stackshift.server.app.create_app`."""
    from .app import create_app as build

    return build(*args, **kwargs)


def app_from_url(*args: Any, **kwargs: Any) -> FastAPI:
    """See :func:`stackshift.server.app.app_from_url`."""
    from .app import app_from_url as build

    return build(*args, **kwargs)
