"""The SQLite store: one module (db.py) owns all SQL."""

from saexplain.store.db import STATUSES, RunBusy, StaleScore, Store, text_hash

__all__ = ["STATUSES", "RunBusy", "StaleScore", "Store", "text_hash"]
