"""A user's app with the dashboard mounted beside the API (as docs/dashboard.md's
Mounting shows), over the database in ``STACKSHIFT_DATABASE_URL``, with a fixed
cookie secret: every process serving it, and the same app restarted, takes the
sessions of the others.

Served by uvicorn in ``test_dashboard_logout.py``.
"""

from __future__ import annotations

import os

from stackshift.dashboard import beside_api, create_dashboard
from stackshift.server.app import app_from_url

SECRET = b"the same secret in every process of this app"

api = app_from_url(os.environ["STACKSHIFT_DATABASE_URL"], migrate=False)
app = beside_api(api, create_dashboard(api.state.service, auth="api_key", secret=SECRET))
