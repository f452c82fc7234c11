"""The SQLite store: one module (db.py) owns all SQL."""

from saexplain.store.db import Store

__all__ = ["Store"]
