"""The journal's SQLite worker: group commit, and one bad write failing alone."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING

import pytest

from tvbridge.sqlite import SqliteWorker

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def insert(value: int) -> Callable[[sqlite3.Connection], int]:
    def fn(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        return value

    return fn


async def make(tmp_path: Path) -> SqliteWorker:
    db = SqliteWorker(tmp_path / "w.sqlite3", synchronous="normal")
    await db.start()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
    return db


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    """200 writes issued at once are all committed, in far fewer transactions than writes."""
    db = await make(tmp_path)
    before = db.batches
    results = await asyncio.gather(*(db.write(insert(i)) for i in range(200)))
    assert results == list(range(200))
    assert db.batches - before < 50
    assert await db.read(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == 200
    await db.close()


async def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    """In one batch, a write that violates a constraint raises to its caller; the others are committed."""
    db = await make(tmp_path)
    await db.write(insert(1))
    outcomes: tuple[object, ...] = await asyncio.gather(
        db.write(insert(2)),
        db.write(insert(1)),
        db.write(insert(3)),
        return_exceptions=True,
    )
    assert outcomes[0] == 2
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert outcomes[2] == 3
    rows = await db.read(lambda conn: [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")])
    assert rows == [1, 2, 3]
    with pytest.raises(sqlite3.IntegrityError):
        await db.write(insert(3))
    await db.close()
