"""SQLite store (WAL): runs, feature statistics, example references into the cache, explanations, scores,
agent traces and LLM calls. All SQL of the project lives in this module.

One writer at a time (SQLite's rule); readers (e.g. a web page) keep working while it writes, thanks to WAL.
The schema is versioned: `PRAGMA user_version` holds the version and `_MIGRATIONS[i]` upgrades i → i+1."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saexplain.errors import SaexplainError

_MIGRATIONS: list[str] = [
    # 0 → 1
    """
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL,              -- 'cache', 'explain', 'score', 'run', ...
        config_hash TEXT NOT NULL,
        config_json TEXT NOT NULL,
        status      TEXT NOT NULL DEFAULT 'running',
        created     REAL NOT NULL,
        updated     REAL NOT NULL,
        UNIQUE (kind, config_hash)
    );
    CREATE TABLE features (
        run_id        INTEGER NOT NULL REFERENCES runs(id),
        feature       INTEGER NOT NULL,
        max_act       REAL NOT NULL,
        frequency     REAL NOT NULL,             -- share of tokens where the feature is non-zero
        mean_nonzero  REAL NOT NULL,
        n_nonzero     INTEGER NOT NULL,
        histogram     TEXT NOT NULL,             -- JSON {"edges": [...], "counts": [...]}
        dead          INTEGER NOT NULL,
        top_tokens    TEXT NOT NULL DEFAULT '[]', -- JSON list of display strings
        PRIMARY KEY (run_id, feature)
    );
    CREATE TABLE examples (
        run_id      INTEGER NOT NULL REFERENCES runs(id),
        feature     INTEGER NOT NULL,
        pool        TEXT NOT NULL,               -- 'explain' | 'score'
        kind        TEXT NOT NULL,               -- 'top' | 'quantile' | 'random' | 'hard_negative'
        rank        INTEGER NOT NULL,            -- order within (pool, kind)
        context     INTEGER NOT NULL,            -- context index in the cached corpus
        start       INTEGER NOT NULL,            -- window [start, end) in tokens within the context
        "end"       INTEGER NOT NULL,
        max_act     REAL NOT NULL,
        decile      INTEGER,                     -- for quantile samples
        PRIMARY KEY (run_id, feature, pool, kind, rank)
    );
    CREATE INDEX examples_context ON examples (run_id, feature, context);
    CREATE TABLE explanations (
        id          INTEGER PRIMARY KEY,
        run_id      INTEGER NOT NULL REFERENCES runs(id),
        feature     INTEGER NOT NULL,
        method      TEXT NOT NULL,
        description TEXT NOT NULL,
        labels      TEXT NOT NULL DEFAULT '[]',  -- JSON list
        evidence    TEXT NOT NULL DEFAULT '{}',  -- JSON
        usage       TEXT NOT NULL DEFAULT '{}',  -- JSON
        created     REAL NOT NULL,
        UNIQUE (run_id, feature, method)
    );
    CREATE TABLE scores (
        explanation_id INTEGER NOT NULL REFERENCES explanations(id),
        scorer         TEXT NOT NULL,
        value          REAL,
        details        TEXT NOT NULL DEFAULT '{}',
        usage          TEXT NOT NULL DEFAULT '{}',
        created        REAL NOT NULL,
        PRIMARY KEY (explanation_id, scorer)
    );
    CREATE TABLE traces (
        explanation_id INTEGER REFERENCES explanations(id),
        run_id         INTEGER NOT NULL REFERENCES runs(id),
        feature        INTEGER NOT NULL,
        method         TEXT NOT NULL,
        step           INTEGER NOT NULL,
        kind           TEXT NOT NULL,            -- 'prompt', 'reply', 'probe', 'status', ...
        content        TEXT NOT NULL,            -- JSON
        created        REAL NOT NULL,
        PRIMARY KEY (run_id, feature, method, step)
    );
    CREATE TABLE llm_calls (
        id          INTEGER PRIMARY KEY,
        run_id      INTEGER REFERENCES runs(id),
        feature     INTEGER,
        backend     TEXT NOT NULL,
        model       TEXT NOT NULL,
        request_key TEXT NOT NULL,
        request     TEXT NOT NULL,               -- JSON
        response    TEXT,                        -- JSON, NULL on failure
        error       TEXT,
        tokens_in   INTEGER NOT NULL DEFAULT 0,
        tokens_out  INTEGER NOT NULL DEFAULT 0,
        seconds     REAL NOT NULL DEFAULT 0,
        created     REAL NOT NULL
    );
    CREATE INDEX llm_calls_key ON llm_calls (request_key);
    """,
    # 1 → 2: the LLM request cache, and attempts per logged call
    """
    CREATE TABLE llm_cache (
        key      TEXT PRIMARY KEY,               -- sha256 of (backend, model, request)
        backend  TEXT NOT NULL,
        model    TEXT NOT NULL,
        response TEXT NOT NULL,                  -- JSON Completion
        created  REAL NOT NULL
    );
    ALTER TABLE llm_calls ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    """,
    # v3: failures are rows too (error set, retried by the next run); scores remember their scorer's config
    """
    ALTER TABLE explanations ADD COLUMN error TEXT;
    ALTER TABLE explanations ADD COLUMN seconds REAL NOT NULL DEFAULT 0;
    ALTER TABLE scores ADD COLUMN error TEXT;
    ALTER TABLE scores ADD COLUMN config_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE scores ADD COLUMN seconds REAL NOT NULL DEFAULT 0;
    """,
    # v4: explanations remember what made them (explainer config, prompt files, trained weights): '' = unknown
    """
    ALTER TABLE explanations ADD COLUMN config_hash TEXT NOT NULL DEFAULT '';
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)


class Store:
    """A SQLite file. `Store(path)` creates or upgrades it; `readonly=True` opens it for reading only."""

    def __init__(self, path: str | Path, readonly: bool = False, timeout: float = 30.0):
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise SaexplainError(f"store not found: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        self.conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                                    check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        if not readonly:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        else:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise SaexplainError(f"{self.path}: schema version {version}, this saexplain reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SaexplainError(f"{self.path}: schema version {version} is newer than this saexplain "
                                 f"({SCHEMA_VERSION}); upgrade saexplain")
        for v in range(version, SCHEMA_VERSION):
            with self.transaction() as c:  # one transaction per step: a failed upgrade leaves version v
                for statement in _MIGRATIONS[v].split(";"):  # (the schema text has no ';' inside statements)
                    if statement.strip():
                        c.execute(statement)
                c.execute(f"PRAGMA user_version={v + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # --------------------------------------------------------------------------------------------- runs
    def get_or_create_run(self, kind: str, config_hash: str, config_json: str) -> int:
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT id FROM runs WHERE kind=? AND config_hash=?", (kind, config_hash)).fetchone()
            if row:
                return int(row["id"])
            cur = c.execute("INSERT INTO runs (kind, config_hash, config_json, created, updated) VALUES (?,?,?,?,?)",
                            (kind, config_hash, config_json, now, now))
            return int(cur.lastrowid)

    def set_run_status(self, run_id: int, status: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    def set_run_config(self, run_id: int, config_json: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET config_json=?, updated=? WHERE id=?", (config_json, time.time(), run_id))

    def run(self, run_id: int) -> dict[str, Any]:
        row = self.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise SaexplainError(f"no run {run_id} in {self.path}")
        return dict(row)

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM runs", ()
        if kind:
            q, args = q + " WHERE kind=?", (kind,)
        return [dict(r) for r in self.conn.execute(q + " ORDER BY id", args)]

    # ----------------------------------------------------------------------------------------- features
    def put_feature_stats(self, run_id: int, rows: Iterable[dict[str, Any]]) -> None:
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO features (run_id, feature, max_act, frequency, mean_nonzero, n_nonzero, "
                "histogram, dead, top_tokens) VALUES (:run_id, :feature, :max_act, :frequency, :mean_nonzero, "
                ":n_nonzero, :histogram, :dead, :top_tokens)",
                [{**r, "run_id": run_id, "histogram": json.dumps(r["histogram"]), "dead": int(r["dead"]),
                  "top_tokens": json.dumps(r.get("top_tokens", []))} for r in rows])

    def feature_stats(self, run_id: int, feature: int | None = None, order_by: str = "feature",
                      limit: int | None = None, alive_only: bool = False) -> list[dict[str, Any]]:
        orders = {"feature": "feature", "density": "frequency DESC", "max": "max_act DESC"}
        if order_by not in orders:
            raise SaexplainError(f"cannot order features by {order_by!r} (use {', '.join(orders)})")
        q = "SELECT * FROM features WHERE run_id=?"
        args: list[Any] = [run_id]
        if feature is not None:
            q += " AND feature=?"
            args.append(feature)
        if alive_only:
            q += " AND dead=0"
        q += f" ORDER BY {orders[order_by]}"
        if limit:
            q += " LIMIT ?"
            args.append(limit)
        out = []
        for r in self.conn.execute(q, args):
            d = dict(r)
            d["histogram"] = json.loads(d["histogram"])
            d["top_tokens"] = json.loads(d["top_tokens"])
            d["dead"] = bool(d["dead"])
            out.append(d)
        return out

    # ----------------------------------------------------------------------------------------- examples
    def put_examples(self, run_id: int, feature: int, rows: Iterable[dict[str, Any]]) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM examples WHERE run_id=? AND feature=?", (run_id, feature))
            c.executemany(
                'INSERT INTO examples (run_id, feature, pool, kind, rank, context, start, "end", max_act, decile) '
                "VALUES (:run_id, :feature, :pool, :kind, :rank, :context, :start, :end, :max_act, :decile)",
                [{"decile": None, **r, "run_id": run_id, "feature": feature} for r in rows])

    # --------------------------------------------------------------------------------------------- LLM
    def llm_cache_get(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT response FROM llm_cache WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row["response"])

    def llm_cache_put(self, key: str, backend: str, model: str, response: dict[str, Any]) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO llm_cache (key, backend, model, response, created) VALUES (?,?,?,?,?)",
                      (key, backend, model, json.dumps(response, default=_jsonable), time.time()))

    def llm_cache_delete(self, key: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM llm_cache WHERE key=?", (key,))

    def log_llm_call(self, run_id: int | None, feature: int | None, backend: str, model: str, key: str,
                     request: dict[str, Any], response: dict[str, Any] | None, error: str | None,
                     tokens_in: int, tokens_out: int, seconds: float, attempts: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO llm_calls (run_id, feature, backend, model, request_key, request, response, "
                      "error, tokens_in, tokens_out, seconds, attempts, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (run_id, feature, backend, model, key, json.dumps(request, default=_jsonable),
                       None if response is None else json.dumps(response, default=_jsonable), error, tokens_in,
                       tokens_out, seconds,
                       attempts, time.time()))

    def llm_calls(self, run_id: int | None = None, failed_only: bool = False) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM llm_calls WHERE 1=1", []
        if run_id is not None:
            q += " AND run_id=?"
            args.append(run_id)
        if failed_only:
            q += " AND error IS NOT NULL"
        return [dict(r) for r in self.conn.execute(q + " ORDER BY id", args)]

    def llm_usage(self, run_id: int) -> dict[int | None, dict[str, Any]]:
        """Per feature (None: not tied to one): calls, failures, tokens in/out, seconds."""
        rows = self.conn.execute(
            "SELECT feature, COUNT(*) AS calls, SUM(error IS NOT NULL) AS failures, SUM(tokens_in) AS tokens_in, "
            "SUM(tokens_out) AS tokens_out, SUM(seconds) AS seconds FROM llm_calls WHERE run_id=? GROUP BY feature",
            (run_id,))
        return {r["feature"]: dict(r) for r in rows}

    def examples(self, run_id: int, feature: int, pool: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM examples WHERE run_id=? AND feature=?"
        args: list[Any] = [run_id, feature]
        if pool:
            q += " AND pool=?"
            args.append(pool)
        return [dict(r) for r in self.conn.execute(q + " ORDER BY pool, kind, rank", args)]

    # ------------------------------------------------------------------------------------- explanations
    def put_explanation(self, run_id: int, feature: int, method: str, description: str, labels: list[str],
                        evidence: dict[str, Any], usage: dict[str, Any], trace: list[dict[str, Any]],
                        error: str | None = None, seconds: float = 0.0, config_hash: str = "") -> int:
        """Insert or replace the (run, feature, method) explanation with its trace, in one transaction. A
        replaced explanation's scores and trace are deleted (they judged another text)."""
        now = time.time()
        with self.transaction() as c:
            old = c.execute("SELECT id FROM explanations WHERE run_id=? AND feature=? AND method=?",
                            (run_id, feature, method)).fetchone()
            if old is not None:
                c.execute("DELETE FROM scores WHERE explanation_id=?", (old["id"],))
                c.execute("DELETE FROM traces WHERE explanation_id=?", (old["id"],))
                c.execute("DELETE FROM explanations WHERE id=?", (old["id"],))
            c.execute("DELETE FROM traces WHERE run_id=? AND feature=? AND method=?", (run_id, feature, method))
            cur = c.execute(
                "INSERT INTO explanations (run_id, feature, method, description, labels, evidence, usage, created, "
                "error, seconds, config_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, feature, method, description, json.dumps(labels), json.dumps(evidence, default=_jsonable),
                 json.dumps(usage), now, error, seconds, config_hash))
            eid = int(cur.lastrowid)
            c.executemany("INSERT INTO traces (explanation_id, run_id, feature, method, step, kind, content, created) "
                          "VALUES (?,?,?,?,?,?,?,?)",
                          [(eid, run_id, feature, method, i, step["kind"],
                            json.dumps(step.get("content"), default=_jsonable), step.get("time", now))
                           for i, step in enumerate(trace)])
            return eid

    def explanations(self, run_id: int, feature: int | None = None, method: str | None = None,
                     ok_only: bool = False) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM explanations WHERE run_id=?", [run_id]
        if feature is not None:
            q += " AND feature=?"
            args.append(feature)
        if method is not None:
            q += " AND method=?"
            args.append(method)
        if ok_only:
            q += " AND error IS NULL"
        out = []
        for r in self.conn.execute(q + " ORDER BY feature, method", args):
            d = dict(r)
            for k in ("labels", "evidence", "usage"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out

    def trace(self, run_id: int, feature: int, method: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT step, kind, content, created FROM traces WHERE run_id=? AND feature=? "
                                 "AND method=? ORDER BY step", (run_id, feature, method))
        return [{"step": r["step"], "kind": r["kind"], "content": json.loads(r["content"]), "time": r["created"]}
                for r in rows]

    # ------------------------------------------------------------------------------------------- scores
    def put_score(self, explanation_id: int, scorer: str, value: float | None, details: dict[str, Any],
                  usage: dict[str, Any], config_hash: str = "", error: str | None = None,
                  seconds: float = 0.0) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO scores (explanation_id, scorer, value, details, usage, created, error, "
                      "config_hash, seconds) VALUES (?,?,?,?,?,?,?,?,?)",
                      (explanation_id, scorer, value, json.dumps(details, default=_jsonable), json.dumps(usage),
                       time.time(), error, config_hash, seconds))

    def score(self, explanation_id: int, scorer: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM scores WHERE explanation_id=? AND scorer=?",
                                (explanation_id, scorer)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["details"], d["usage"] = json.loads(d["details"]), json.loads(d["usage"])
        return d

    def scores(self, run_id: int) -> list[dict[str, Any]]:
        """Every score of a run's explanations, with the explanation's feature and method."""
        rows = self.conn.execute(
            "SELECT s.*, e.feature, e.method FROM scores s JOIN explanations e ON e.id = s.explanation_id "
            "WHERE e.run_id=? ORDER BY e.feature, e.method, s.scorer", (run_id,))
        out = []
        for r in rows:
            d = dict(r)
            d["details"], d["usage"] = json.loads(d["details"]), json.loads(d["usage"])
            out.append(d)
        return out


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays inside details/evidence/traces."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} as JSON")
