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


async def test_a_write_that_rolls_back_the_transaction_fails_the_whole_batch(tmp_path: Path) -> None:
    """Disk full inside a batch: SQLite rolls the whole transaction back, so every write of the batch is
    reported failed and none of them is in the database (never 'failed' for a write that was committed)."""
    import threading  # noqa: PLC0415 - only here

    db = await make(tmp_path)
    await db.write(lambda conn: conn.execute("CREATE TABLE big (x TEXT)"))
    gate = threading.Event()
    blocker = asyncio.ensure_future(db.write(lambda _conn: gate.wait(10)))

    def before(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO big VALUES ('A')")

    def disk_full(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")
        conn.execute("INSERT INTO big VALUES (?)", ("x" * 100_000,))

    def after(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA max_page_count=1000000")
        conn.execute("INSERT INTO big VALUES ('D')")

    batch = asyncio.gather(db.write(before), db.write(disk_full), db.write(after), return_exceptions=True)
    for _ in range(5):  # let the three writes reach the queue while the blocker holds the worker
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(blocker, return_exceptions=True)  # it may share the failed batch: fine
    outcomes = await batch
    assert all(isinstance(o, sqlite3.Error) for o in outcomes), outcomes
    rows = await db.read(lambda conn: conn.execute("SELECT x FROM big WHERE length(x) < 10").fetchall())
    assert rows == []
    await db.close()


async def test_a_write_after_close_is_refused_not_left_hanging(tmp_path: Path) -> None:
    db = await make(tmp_path)
    closing = asyncio.ensure_future(db.close())
    with pytest.raises(sqlite3.ProgrammingError, match=r"not open|closed"):
        await asyncio.wait_for(db.write(insert(9)), timeout=5)
    await closing
