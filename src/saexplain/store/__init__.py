"""The SQLite store: one module (db.py) owns all SQL."""

from saexplain.store.db import RunBusy, StaleScore, Store, text_hash

__all__ = ["RunBusy", "StaleScore", "Store", "text_hash"]
