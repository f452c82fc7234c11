"""SQLite store (WAL): runs, feature statistics, example references into the cache, explanations, scores,
agent traces and LLM calls. All SQL of the project lives in this module.

One writer at a time (SQLite's rule); readers (e.g. a web page) keep working while it writes, thanks to WAL.
The schema is versioned: `PRAGMA user_version` holds the version and `_MIGRATIONS[i]` upgrades i → i+1."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saexplain.errors import NotFound, SaexplainError
from saexplain.status import Status

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
    # v5: a status per explanation and score (ok / degraded / failed; `error` holds the reason, NULL iff ok);
    # explanation ids are never reused (AUTOINCREMENT); each explanation keeps the hash of its text and each
    # score the hash of the text it judged; `redo_error` says why a later attempt did not replace a row;
    # runs carry a writer lease (one writing process per run)
    """
    CREATE TABLE explanations_v5 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id      INTEGER NOT NULL REFERENCES runs(id),
        feature     INTEGER NOT NULL,
        method      TEXT NOT NULL,
        description TEXT NOT NULL,
        labels      TEXT NOT NULL DEFAULT '[]',
        evidence    TEXT NOT NULL DEFAULT '{}',
        usage       TEXT NOT NULL DEFAULT '{}',
        created     REAL NOT NULL,
        error       TEXT,
        seconds     REAL NOT NULL DEFAULT 0,
        config_hash TEXT NOT NULL DEFAULT '',
        status      TEXT NOT NULL DEFAULT 'ok',
        text_hash   TEXT NOT NULL DEFAULT '',
        redo_error  TEXT,
        UNIQUE (run_id, feature, method)
    );
    INSERT INTO explanations_v5 (id, run_id, feature, method, description, labels, evidence, usage, created, error,
                                 seconds, config_hash, status, text_hash)
        SELECT id, run_id, feature, method, description, labels, evidence, usage, created, error, seconds,
               config_hash, CASE WHEN error IS NULL THEN 'ok' ELSE 'failed' END, saexplain_text_hash(description)
        FROM explanations;
    DROP TABLE explanations;
    ALTER TABLE explanations_v5 RENAME TO explanations;
    ALTER TABLE scores ADD COLUMN status TEXT NOT NULL DEFAULT 'ok';
    ALTER TABLE scores ADD COLUMN text_hash TEXT NOT NULL DEFAULT '';
    UPDATE scores SET status='failed' WHERE error IS NOT NULL;
    UPDATE scores SET status='degraded', error='no value' WHERE error IS NULL AND value IS NULL;
    UPDATE scores SET text_hash=(SELECT text_hash FROM explanations e WHERE e.id = scores.explanation_id);
    ALTER TABLE runs ADD COLUMN owner TEXT;
    ALTER TABLE runs ADD COLUMN lease_until REAL NOT NULL DEFAULT 0;
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)


def text_hash(text: str) -> str:
    """The identity of an explanation's text; a score carries the hash of the text it judged."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StaleScore(SaexplainError):
    """A score computed on an explanation text that is no longer the stored one (replaced meanwhile)."""


class RunBusy(SaexplainError):
    """Another live process holds the run's writer lease."""


class Store:
    """A SQLite file. `Store(path)` creates or upgrades it; `readonly=True` opens it for reading only."""

    def __init__(self, path: str | Path, readonly: bool = False, timeout: float = 30.0):
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise SaexplainError(f"store not found: {self.path}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SaexplainError(f"{self.path}: cannot create the store's folder ({e.strerror})") from None
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                                        check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self.conn.create_function("saexplain_text_hash", 1, text_hash, deterministic=True)
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
                self.conn.execute("PRAGMA foreign_keys=ON")
            else:
                version = self.conn.execute("PRAGMA user_version").fetchone()[0]
                if version != SCHEMA_VERSION:
                    raise SaexplainError(f"{self.path}: schema version {version}, this saexplain reads "
                                         f"{SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise SaexplainError(_db_error(self.path, e)) from None

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
        # foreign keys are off while tables are rebuilt (v5); they are switched on after the upgrade
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

    def find_run(self, kind: str, config_hash: str) -> int | None:
        row = self.conn.execute("SELECT id FROM runs WHERE kind=? AND config_hash=?", (kind, config_hash)).fetchone()
        return None if row is None else int(row["id"])

    def set_run_hash(self, run_id: int, config_hash: str) -> None:
        """Record a run's identity as computed by this version (its stored config, read with today's defaults)."""
        with self.transaction() as c:
            c.execute("UPDATE runs SET config_hash=?, updated=? WHERE id=?", (config_hash, time.time(), run_id))

    def set_run_status(self, run_id: int, status: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    def set_run_config(self, run_id: int, config_json: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET config_json=?, updated=? WHERE id=?", (config_json, time.time(), run_id))

    def claim_run(self, run_id: int, owner: str | None = None, ttl: float = 60.0) -> str:
        """Take the run's writer lease (one writing process per run). Refused with RunBusy while another owner's
        lease is fresh and, on this host, its process alive. Returns the owner string (renew with `renew_run`)."""
        owner = owner or _owner()
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT owner, lease_until FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise NotFound(f"no run {run_id} in {self.path}")
            held = row["owner"]
            if held and held != owner and row["lease_until"] > now and _alive(held):
                raise RunBusy(f"run {run_id} is being written by another process ({held}); wait for it to finish "
                              f"or stop it (its lease lapses {row['lease_until'] - now:.0f}s after it stops)")
            c.execute("UPDATE runs SET owner=?, lease_until=? WHERE id=?", (owner, now + ttl, run_id))
        return owner

    def renew_run(self, run_id: int, owner: str, ttl: float = 60.0) -> bool:
        """Extend our lease; False when another process took the run over meanwhile."""
        with self.transaction() as c:
            cur = c.execute("UPDATE runs SET lease_until=? WHERE id=? AND owner=?", (time.time() + ttl, run_id, owner))
            return cur.rowcount == 1

    def release_run(self, run_id: int, owner: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET owner=NULL, lease_until=0 WHERE id=? AND owner=?", (run_id, owner))

    def run(self, run_id: int) -> dict[str, Any]:
        row = self.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id} in {self.path}")
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
                        error: str | None = None, seconds: float = 0.0, config_hash: str = "",
                        status: str | None = None) -> int | None:
        """Store the (run, feature, method) explanation with its trace, in one transaction; returns its id, or
        None when an existing row was kept. `status` is ok / degraded / failed (default: failed when `error` is
        given, else ok); `error` is the reason of a degraded or failed one. A row is replaced only by one at
        least as good (a failed redo never removes an ok explanation: the old row stays and `redo_error` says
        why it was not replaced). A replaced explanation's scores and trace are deleted (they judged another
        text); ids are never reused."""
        status = _status(status, error, "explanation")
        now = time.time()
        with self.transaction() as c:
            old = c.execute("SELECT id, status FROM explanations WHERE run_id=? AND feature=? AND method=?",
                            (run_id, feature, method)).fetchone()
            if old is not None:
                if status.worth < Status(old["status"]).worth:
                    c.execute("UPDATE explanations SET redo_error=? WHERE id=?", (f"{status}: {error}", old["id"]))
                    return None
                c.execute("DELETE FROM scores WHERE explanation_id=?", (old["id"],))
                c.execute("DELETE FROM traces WHERE explanation_id=?", (old["id"],))
                c.execute("DELETE FROM explanations WHERE id=?", (old["id"],))
            c.execute("DELETE FROM traces WHERE run_id=? AND feature=? AND method=?", (run_id, feature, method))
            cur = c.execute(
                "INSERT INTO explanations (run_id, feature, method, description, labels, evidence, usage, created, "
                "error, seconds, config_hash, status, text_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, feature, method, description, json.dumps(labels), json.dumps(evidence, default=_jsonable),
                 json.dumps(usage), now, None if status == Status.OK else error, seconds, config_hash, status,
                 text_hash(description)))
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
            q += " AND status='ok'"
        out = []
        for r in self.conn.execute(q + " ORDER BY feature, method", args):
            d = dict(r)
            for k in ("labels", "evidence", "usage"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out

    def traced_methods(self, run_id: int, feature: int) -> set[str]:
        """The methods of a run that stored a trace for the feature."""
        return {r[0] for r in self.conn.execute("SELECT DISTINCT method FROM traces WHERE run_id=? AND feature=?",
                                                (run_id, feature))}

    def run_version(self, run_id: int) -> tuple:
        """Changes whenever the run's row, an explanation or a score of it is written (for caches of what is read
        from it)."""
        return tuple(self.conn.execute(
            "SELECT (SELECT updated FROM runs WHERE id=?), (SELECT COUNT(*) FROM explanations WHERE run_id=?), (SELECT MAX(created) FROM explanations "
            "WHERE run_id=?), (SELECT COUNT(*) FROM scores s JOIN explanations e ON e.id = s.explanation_id "
            "WHERE e.run_id=?), (SELECT MAX(s.created) FROM scores s JOIN explanations e ON e.id = s.explanation_id "
            "WHERE e.run_id=?)", (run_id,) * 5).fetchone())

    def trace(self, run_id: int, feature: int, method: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT step, kind, content, created FROM traces WHERE run_id=? AND feature=? "
                                 "AND method=? ORDER BY step", (run_id, feature, method))
        return [{"step": r["step"], "kind": r["kind"], "content": json.loads(r["content"]), "time": r["created"]}
                for r in rows]

    # ------------------------------------------------------------------------------------------- scores
    def put_score(self, explanation_id: int, scorer: str, value: float | None, details: dict[str, Any],
                  usage: dict[str, Any], config_hash: str = "", error: str | None = None,
                  seconds: float = 0.0, *, text: str, status: str | None = None) -> bool:
        """Store a score of explanation `explanation_id`, computed on `text` (the description it judged). Raises
        StaleScore when that explanation is gone or now holds another text. Status as for explanations (an ok
        score has a value); a score is replaced only by one at least as good. Returns whether it was written."""
        status = _status(status, error, "score")
        if status == Status.OK and value is None:
            raise ValueError("an ok score has a value (a score without one is degraded, with why)")
        with self.transaction() as c:
            row = c.execute("SELECT text_hash FROM explanations WHERE id=?",
                            (explanation_id,)).fetchone()
            if row is None or row["text_hash"] != text_hash(text):
                raise StaleScore(f"explanation {explanation_id} was replaced while it was being scored by {scorer}; "
                                 "the score was not stored")
            old = c.execute("SELECT status FROM scores WHERE explanation_id=? AND scorer=?",
                            (explanation_id, scorer)).fetchone()
            if old is not None and status.worth < Status(old["status"]).worth:
                return False
            c.execute("INSERT OR REPLACE INTO scores (explanation_id, scorer, value, details, usage, created, error, "
                      "config_hash, seconds, status, text_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (explanation_id, scorer, value, json.dumps(details, default=_jsonable), json.dumps(usage),
                       time.time(), None if status == Status.OK else error, config_hash, seconds, status,
                       row["text_hash"]))
            return True

    def score(self, explanation_id: int, scorer: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM scores WHERE explanation_id=? AND scorer=?",
                                (explanation_id, scorer)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["details"], d["usage"] = json.loads(d["details"]), json.loads(d["usage"])
        return d

    def scores(self, run_id: int, feature: int | None = None) -> list[dict[str, Any]]:
        """Every score of a run's explanations (of one feature's, given `feature`), with the explanation's feature
        and method (only scores of the text the explanation holds now)."""
        q, args = ("SELECT s.*, e.feature, e.method FROM scores s JOIN explanations e ON e.id = s.explanation_id "
                   "WHERE e.run_id=? AND s.text_hash = e.text_hash"), [run_id]
        if feature is not None:
            q += " AND e.feature=?"
            args.append(feature)
        rows = self.conn.execute(q + " ORDER BY e.feature, e.method, s.scorer", args)
        out = []
        for r in rows:
            d = dict(r)
            d["details"], d["usage"] = json.loads(d["details"]), json.loads(d["usage"])
            out.append(d)
        return out


def _status(status: str | None, error: str | None, what: str) -> Status:
    """The row's status (default: failed with an error, else ok), checked: unless ok, it has its reason."""
    try:
        status = Status(status or (Status.FAILED if error else Status.OK))
    except ValueError:
        raise ValueError(f"unknown status {status!r}") from None
    if status != Status.OK and not error:
        raise ValueError(f"a {status} {what} needs its reason")
    return status


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    """Whether a lease's owner may still be running (a process on another host is assumed alive)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _db_error(path: Path, e: sqlite3.DatabaseError) -> str:
    """One line for a store that cannot be opened or written."""
    msg = str(e)
    if "file is not a database" in msg or "malformed" in msg:
        return f"{path}: not a saexplain store (not a SQLite database, or a damaged one): {msg}"
    if "readonly" in msg or "read-only" in msg:
        return f"{path}: the store is read-only here ({msg}); use a writable --store path"
    if "unable to open" in msg:
        return f"{path}: cannot open the store ({msg}); check that its folder exists and is writable"
    return f"{path}: {msg}"


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays inside details/evidence/traces."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} as JSON")
