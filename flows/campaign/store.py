"""The campaign's results store: one SQLite row per task, written in one transaction.

Why SQLite: a row is committed atomically (journal + fsync), so a campaign killed at any point
keeps every result it finished and none half-written; the task key is the primary key, so a
result can never be counted twice. Only the scheduler process writes; workers return their
results to it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    key      TEXT PRIMARY KEY,
    stage    TEXT NOT NULL,
    label    TEXT NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    attempts INTEGER NOT NULL,
    seconds  REAL,
    result   TEXT,
    error    TEXT,
    finished TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ResultStore:
    """Finished and failed tasks of one campaign (``<campaign>/results.sqlite``)."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        """``read_only``: for readers (``mcel report``), which must not create the tables in a
        file they were given: an empty or foreign file is reported, not turned into a store.
        A file that is not an SQLite database (or a damaged one) raises
        :class:`sqlite3.DatabaseError` here, not at the first query."""
        self.path = Path(path)
        if read_only:
            self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            try:
                names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                self.conn.execute("PRAGMA quick_check").fetchall()
            except sqlite3.DatabaseError:
                self.conn.close()
                raise
            if not {"tasks", "meta"} <= names:
                self.conn.close()
                raise sqlite3.DatabaseError("it holds no campaign tables")
            return
        self.conn = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions only
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def _write(self, key: str, stage: str, label: str, status: str, attempts: int, seconds: float | None,
               result: dict | None, error: str | None) -> None:
        with self.conn:  # BEGIN ... COMMIT, or ROLLBACK on error
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, stage, label, status, attempts, seconds,
                 None if result is None else json.dumps(result, sort_keys=True), error,
                 time.strftime("%Y-%m-%dT%H:%M:%S")),
            )

    def record_done(self, key: str, stage: str, label: str, attempts: int, seconds: float, result: dict) -> None:
        self._write(key, stage, label, "done", attempts, seconds, result, None)

    def record_failed(self, key: str, stage: str, label: str, attempts: int, error: str) -> None:
        self._write(key, stage, label, "failed", attempts, None, None, error)

    def done(self) -> dict[str, dict]:
        """Results of every finished task, by key."""
        rows = self.conn.execute("SELECT key, result FROM tasks WHERE status = 'done'").fetchall()
        return {key: json.loads(result) for key, result in rows}

    def failed(self) -> dict[str, dict]:
        rows = self.conn.execute("SELECT key, label, attempts, error FROM tasks WHERE status = 'failed'")
        return {k: {"label": lab, "attempts": a, "error": e} for k, lab, a, e in rows.fetchall()}

    def rows(self) -> list[dict]:
        cur = self.conn.execute("SELECT key, stage, label, status, attempts, seconds, error FROM tasks ORDER BY key")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def done_rows(self) -> list[dict]:
        """Every finished row, whole (what :mod:`flows.campaign.archive` carries to another folder)."""
        cur = self.conn.execute("SELECT key, stage, label, attempts, seconds, result, finished FROM tasks "
                                "WHERE status = 'done' ORDER BY key")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) | {"result": json.loads(row[5])} for row in cur.fetchall()]

    def insert_rows(self, rows: list[dict]) -> None:
        """Finished rows from elsewhere, in one transaction (all or none)."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, 'done', ?, ?, ?, NULL, ?)",
                [(r["key"], r["stage"], r["label"], r["attempts"], r["seconds"],
                  json.dumps(r["result"], sort_keys=True), r["finished"]) for r in rows])

    def forget(self, keys: set[str]) -> None:
        """Drop the rows of ``keys`` (results whose inputs were redone differently)."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("DELETE FROM tasks WHERE key = ?", [(k,) for k in sorted(keys)])

    def set_meta(self, name: str, value: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None
