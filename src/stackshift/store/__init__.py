"""Storage: the seam (base), the shared store (sqlstore), one Database per dialect."""

from .sqlstore import SqlStore, open_store

__all__ = ["SqlStore", "open_store"]
