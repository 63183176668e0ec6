"""The API as a server from before ``GET /v1/limits`` serves it: the real app over
the database in ``STACKSHIFT_DATABASE_URL``, built without that one route.

Served by uvicorn in ``test_older_server.py`` (its own process: the route is
taken out of the module's router before the app is built).
"""

from __future__ import annotations

import os

from stackshift.server import routes
from stackshift.server.app import app_from_url

routes.router.routes[:] = [route for route in routes.router.routes
                           if getattr(route, "path", None) != "/v1/limits"]
app = app_from_url(os.environ["STACKSHIFT_DATABASE_URL"], migrate=False)
