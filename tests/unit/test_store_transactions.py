"""The store's transactions under failure (HARD-205): a failed COMMIT never wedges later
writes, and a failing ROLLBACK never hides the error that caused it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

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
