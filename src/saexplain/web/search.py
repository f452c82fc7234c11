"""Full-text search over explanations: an SQLite FTS5 index kept in memory (the store stays read-only),
rebuilt when the store's explanations change."""

from __future__ import annotations

import re
import sqlite3
import threading

from saexplain.store import Store
from saexplain.web.read import SearchHit

_START, _END = "\x02", "\x03"  # match markers: never in stored text, turned into (text, matched) parts


class SearchIndex:
    def __init__(self, open_store):
        self._open = open_store
        self._lock = threading.Lock()
        self._version: tuple | None = None
        self._conn = sqlite3.connect(":memory:", check_same_thread=False)
        self._conn.execute("CREATE VIRTUAL TABLE ex USING fts5(description, labels, run_id UNINDEXED, "
                           "feature UNINDEXED, method UNINDEXED, tokenize='unicode61 remove_diacritics 2')")

    def _refresh(self, db: Store) -> None:
        version = db.conn.execute("SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(LENGTH(description)), 0) "
                                  "FROM explanations").fetchone()
        version = tuple(version)
        if version == self._version:
            return
        rows = db.conn.execute("SELECT e.description, e.labels, e.run_id, e.feature, e.method FROM explanations e "
                               "JOIN runs r ON r.id = e.run_id WHERE r.kind = 'run' AND e.status = 'ok'").fetchall()
        with self._conn:
            self._conn.execute("DELETE FROM ex")
            self._conn.executemany("INSERT INTO ex VALUES (?, ?, ?, ?, ?)", [tuple(r) for r in rows])
        self._version = version

    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        terms = re.findall(r"\w+", query, flags=re.UNICODE)
        if not terms:
            return []
        match = " ".join('"' + t.replace('"', '""') + '"*' for t in terms[:12])  # every term, as a prefix
        with self._lock, self._open() as db:
            self._refresh(db)
            rows = self._conn.execute(
                f"SELECT snippet(ex, 0, '{_START}', '{_END}', '…', 24), description, run_id, feature, method "
                f"FROM ex WHERE ex MATCH ? ORDER BY rank LIMIT ?", (match, limit)).fetchall()
        return [SearchHit(run_id=r[2], feature=r[3], method=r[4], description=r[1], snippet=_parts(r[0]))
                for r in rows]


def _parts(snippet: str) -> list[tuple[str, bool]]:
    out = []
    for i, chunk in enumerate(re.split(f"[{_START}{_END}]", snippet)):
        if chunk:
            out.append((chunk, i % 2 == 1))
    return out
