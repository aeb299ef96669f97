"""The store under failure and across versions (HARD-205, ORCH-3066): a failed COMMIT never
wedges later writes, a failing ROLLBACK never hides the error that caused it, and the
database is WAL with full sync and migrates forward only."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from orchestratord.store import db
from orchestratord.store.db import Store


class FlakyConnection:
    """Passes everything to a real connection, failing the statements it is told to."""

    def __init__(self, conn: sqlite3.Connection, fail: dict[str, int]) -> None:
        self.conn = conn
        self.fail = fail  # statement -> how many more times it fails

    def execute(self, sql: str, *args: Any) -> Any:
        if self.fail.get(sql, 0) > 0:
            self.fail[sql] -= 1
            raise sqlite3.OperationalError(f"{sql} failed (injected)")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def insert(value: str) -> Any:
    def work(conn: Any) -> None:
        conn.execute(
            "INSERT INTO artifacts (id, kind, body, parent, signed, created_ms) "
            "VALUES (?, 'other', '{}', NULL, 0, 0)",
            (value,),
        )

    return work


def ids(store: Store) -> list[str]:
    return [r[0] for r in store.run_now(lambda c: c.execute("SELECT id FROM artifacts").fetchall())]


@pytest.mark.req("HARD-205")
async def test_a_failed_commit_rolls_back_and_the_next_write_works(tmp_path: Path) -> None:
    store = Store(tmp_path / "llorch.db")
    real = store._conn
    store._conn = FlakyConnection(real, {"COMMIT": 1})  # type: ignore[assignment]
    try:
        with pytest.raises(sqlite3.OperationalError, match="COMMIT failed"):
            await store.write(insert("a"))
        assert not real.in_transaction  # nothing left open to wedge the next write
        await store.write(insert("b"))
        assert ids(store) == ["b"]
    finally:
        store._conn = real
        store.close()


@pytest.mark.req("HARD-205")
async def test_a_failing_rollback_does_not_mask_the_first_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "llorch.db")
    await store.write(insert("dup"))
    real = store._conn
    store._conn = FlakyConnection(real, {"ROLLBACK": 1})  # type: ignore[assignment]
    try:
        with pytest.raises(sqlite3.IntegrityError):  # the duplicate, not the ROLLBACK
            await store.write(insert("dup"))
        await store.write(insert("next"))  # and the transaction left open is cleared first
        assert sorted(ids(store)) == ["dup", "next"]
    finally:
        store._conn = real
        store.close()


@pytest.mark.req("ORCH-3066", "HOME-702")
async def test_the_store_is_wal_with_full_sync_and_migrates_forward_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "llorch.db"
    store = Store(path)
    await store.write(insert("kept"))

    def pragmas(conn: sqlite3.Connection) -> tuple[Any, ...]:
        return tuple(
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "synchronous", "user_version")
        )

    assert store.run_now(pragmas) == ("wal", 2, len(db.MIGRATIONS))  # 2 is FULL
    store.close()
    released = db.MIGRATIONS
    monkeypatch.setattr(db, "MIGRATIONS", (*released, "ALTER TABLE artifacts ADD COLUMN note TEXT"))
    upgraded = Store(path)  # the next orchestratord opens the older database
    assert upgraded.run_now(pragmas)[2] == len(released) + 1
    rows = upgraded.run_now(lambda c: c.execute("SELECT id, note FROM artifacts").fetchall())
    assert rows == [("kept", None)]  # migrated in place, nothing lost
    upgraded.close()
    monkeypatch.setattr(db, "MIGRATIONS", released)
    with pytest.raises(db.StoreError, match="newer than this orchestratord knows"):
        Store(path)  # an older orchestratord refuses a newer database
