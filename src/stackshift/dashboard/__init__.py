"""The web dashboard: runs, timelines, logs, events, queues, jobs, workers and state."""

from .app import beside_api, create_dashboard

__all__ = ["beside_api", "create_dashboard"]
