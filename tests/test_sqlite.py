"""The journal's SQLite flavours (on the event loop, or on a worker thread): group commit, one bad write failing
alone, a transaction that fails failing all its writes, nothing left hanging at close."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING

import pytest

from tvbridge.sqlite import (
    WAL_RESTART_FRAMES,
    WAL_SIZE_LIMIT_BYTES,
    Checkpointer,
    InlineSqlite,
    SqliteWorker,
    connect,
    open_database,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def insert(value: int) -> Callable[[sqlite3.Connection], int]:
    def fn(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        return value

    return fn


Database = InlineSqlite | SqliteWorker


@pytest.fixture(params=["inline", "thread"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def make(tmp_path: Path, flavour: str = "thread") -> Database:
    path = tmp_path / "w.sqlite3"
    db: Database = InlineSqlite(path, synchronous="normal") if flavour == "inline" else SqliteWorker(path)
    await db.start()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
    return db


async def test_concurrent_writes_share_commits(tmp_path: Path, flavour: str) -> None:
    """200 writes issued at once are all committed, in far fewer transactions than writes."""
    db = await make(tmp_path, flavour)
    before = db.batches
    results = await asyncio.gather(*(db.write(insert(i)) for i in range(200)))
    assert results == list(range(200))
    assert db.batches - before < 50
    assert await db.read(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == 200
    await db.close()


async def test_a_failing_write_fails_alone(tmp_path: Path, flavour: str) -> None:
    """In one batch, a write that violates a constraint raises to its caller; the others are committed."""
    db = await make(tmp_path, flavour)
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


async def test_a_write_after_close_is_refused_not_left_hanging(tmp_path: Path, flavour: str) -> None:
    db = await make(tmp_path, flavour)
    closing = asyncio.ensure_future(db.close())
    with pytest.raises(sqlite3.ProgrammingError, match=r"not open|closed"):
        await asyncio.wait_for(db.write(insert(9)), timeout=5)
    await closing


async def test_on_the_loop_a_failed_transaction_fails_every_write_of_its_group(tmp_path: Path) -> None:
    """The same promise as the worker's: writes issued in one loop turn share a transaction, and when SQLite
    rolls it back (disk full) every one of them is reported failed and none is in the database."""
    db = await make(tmp_path, "inline")
    await db.write(lambda conn: conn.execute("CREATE TABLE big (x TEXT)"))

    def before(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO big VALUES ('A')")

    def disk_full(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")
        conn.execute("INSERT INTO big VALUES (?)", ("x" * 100_000,))

    def after(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA max_page_count=1000000")
        conn.execute("INSERT INTO big VALUES ('D')")

    outcomes = await asyncio.gather(db.write(before), db.write(disk_full), db.write(after), return_exceptions=True)
    assert all(isinstance(o, sqlite3.Error) for o in outcomes), outcomes
    assert await db.read(lambda conn: conn.execute("SELECT x FROM big WHERE length(x) < 10").fetchall()) == []
    await db.close()


async def test_on_the_loop_a_returned_write_is_committed_and_close_checkpoints(tmp_path: Path) -> None:
    """A write that returned is visible to another connection at once (committed, not buffered); after close
    the checkpointer has moved everything into the database file and emptied the WAL."""
    path = tmp_path / "w.sqlite3"
    db = InlineSqlite(path, synchronous="normal")
    await db.start()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
    await asyncio.gather(*(db.write(insert(i)) for i in range(300)))
    other = sqlite3.connect(path)
    try:
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 300
    finally:
        other.close()
    await db.close()
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    reopened = sqlite3.connect(path)
    try:
        assert reopened.execute("SELECT count(*) FROM t").fetchone()[0] == 300
    finally:
        reopened.close()


def test_the_setting_chooses_the_flavour(tmp_path: Path) -> None:
    """Commits that fsync (full) must not block the event loop: they get the worker thread."""
    assert isinstance(open_database(tmp_path / "a", synchronous="normal", name="j"), InlineSqlite)
    assert isinstance(open_database(tmp_path / "b", synchronous="full", name="j"), SqliteWorker)
    with pytest.raises(ValueError, match="fsyncs every commit"):
        InlineSqlite(tmp_path / "c", synchronous="full")


def test_a_writer_that_never_pauses_does_not_grow_the_wal_without_end(tmp_path: Path) -> None:
    """Sustained load: the event loop's connection commits back to back and never checkpoints itself. A PASSIVE
    checkpoint alone never catches up with it, and SQLite starts a WAL over only once it has; the checkpointer
    must restart it, or the WAL (and every lookup in it) grows for as long as the load lasts."""
    path = tmp_path / "w.sqlite3"
    writer = connect(path, "normal")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # as InlineSqlite's connection
    writer.execute("CREATE TABLE t (v BLOB)")
    checkpointer = Checkpointer(path, "normal", name="test-checkpoint", every_s=0.01)
    checkpointer.start()
    page = b"x" * 4000  # about one WAL frame a row
    written = 0
    cap = 20 * WAL_RESTART_FRAMES  # far past the point where the WAL must have started over
    try:
        while checkpointer.restarts < 3 and written < cap:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("INSERT INTO t (v) VALUES (?)", (page,))
            writer.execute("COMMIT")
            written += 1
    finally:
        checkpointer.stop()
    wal = path.with_name(path.name + "-wal")
    try:
        assert checkpointer.restarts >= 3, f"no WAL restart in {written} commits"
        assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == written  # nothing lost by a restart
    finally:
        writer.close()
    assert not wal.exists() or wal.stat().st_size <= WAL_SIZE_LIMIT_BYTES
