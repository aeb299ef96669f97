"""The durable store: one SQLite database under ``state_dir`` (HOME-702, FR-CP-001).

WAL journal with ``synchronous=FULL``: a write is on disk when its transaction commits, so
anything acknowledged to a client (its 201/202 is sent after the commit) survives a SIGKILL
or a power cut. One writer: every statement runs on the store's single thread, in order, so
the event loop never blocks on disk and no two writes interleave. The schema is versioned
(``PRAGMA user_version``) and migrated forward at open, each migration in its own
transaction; a database from a newer orchestratord is refused rather than guessed at.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("orchestratord.store")

T = TypeVar("T")

# Append only: a released migration never changes; the next schema is a new entry.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE artifacts (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        parent TEXT REFERENCES artifacts(id),
        signed INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE artifact_tags (
        artifact_id TEXT NOT NULL REFERENCES artifacts(id),
        tag TEXT NOT NULL,
        PRIMARY KEY (tag, artifact_id)
    );
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        entry TEXT NOT NULL,
        state TEXT NOT NULL,
        verification TEXT,
        pull TEXT,
        local_path TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE model_tags (
        model_id TEXT NOT NULL REFERENCES models(id),
        tag TEXT NOT NULL,
        PRIMARY KEY (tag, model_id)
    );
    """,
)


class StoreError(Exception):
    """The database cannot be opened or migrated."""


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        # One thread: the one writer (and reader). check_same_thread is off because the
        # connection is made on this thread and then only ever used on the executor's.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llorch-store")
        try:
            self._conn = self._executor.submit(self._open).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreError(
                f"schema version {version} is newer than this orchestratord knows "
                f"({len(MIGRATIONS)}); upgrade orchestratord"
            )
        for number in range(version, len(MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[number]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("store %s: schema migrated to version %d", self.path, number + 1)

    @property
    def schema_version(self) -> int:
        return len(MIGRATIONS)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """One transaction. A failed COMMIT is rolled back, so no transaction is ever left
        open to wedge the next write; a ROLLBACK that fails too is logged, and the caller
        sees the error that caused it (a 409 stays a 409)."""
        conn = self._conn
        if conn.in_transaction:  # an earlier ROLLBACK failed: try again before anything else
            conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._roll_back(conn, exc)
            raise
        return result

    def _roll_back(self, conn: sqlite3.Connection, cause: BaseException) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("store %s: ROLLBACK after %r failed", self.path, cause)

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one transaction on the writer thread; committed when this returns."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, work)

    def run_now(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the store's thread and wait (start-up, before the loop serves)."""
        return self._executor.submit(work, self._conn).result()

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, work, self._conn)

    def integrity_check(self) -> str:
        return str(self.run_now(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._conn.close).result()
        self._executor.shutdown()


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit on its own)."""
    return [s.strip() for s in script.split(";") if s.strip()]
