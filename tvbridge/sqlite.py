"""SQLite with group commit, in two flavours chosen by `synchronous`.

`InlineSqlite` (synchronous "normal" or "off"): the connection lives on the event loop's thread. A commit there
only hands pages to the OS (no fsync), tens of microseconds, which is cheaper than a hop to a worker thread and
back. Writes issued during one turn of the event loop run together in one transaction at the end of that turn
(group commit), so under load many alerts share a commit while a lone alert still commits at once. The fsyncs
that `normal` does make (at checkpoints) happen on a checkpointer thread with its own connection, never on the
event loop: the loop's connection has automatic checkpoints turned off.

`SqliteWorker` (synchronous "full" or "extra"): every commit fsyncs, milliseconds that must not block the event
loop, so the connection lives on a dedicated thread. Writes that arrive while a commit is under way are batched
into the next transaction (group commit): one fsync covers many alerts.

Either way each write of a group runs in its own SAVEPOINT, so one failing write fails only its own caller, and
a write returns only once its transaction is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, TypeVar

from tvbridge.filemode import create_private

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

T = TypeVar("T")
Synchronous = Literal["off", "normal", "full", "extra"]
MAX_BATCH: Final = 256

CHECKPOINT_EVERY_S: Final = 0.1
"""How often the checkpointer moves the WAL's pages into the database file (and fsyncs, with `normal`). Often
enough that each pass has little to copy and fsync: the disk flush of a whole second's pages slowed the event
loop's own writes (p99 at concurrency 1 in the benchmark: 9.5-12.5 ms every 1 s, 3.8-4.2 ms every 0.1 s, no
better every 0.02 s). An idle pass finds nothing to copy: no disk I/O, and ~0.5% of a core for the journal's
and the paper book's checkpointers together (0.05% every 1 s)."""

WAL_RESTART_FRAMES: Final = 2048
"""WAL frames (pages, 4 KiB each) beyond which the checkpointer restarts the WAL from its beginning. A PASSIVE
checkpoint never catches up with a writer that never pauses, and SQLite starts the WAL over only once it has
caught up: under sustained load the WAL grew without end (hundreds of MB in a minute's benchmark), and every
read and write slowed with it, searching a longer WAL index."""

WAL_SIZE_LIMIT_BYTES: Final = 16 * 1024 * 1024
"""`journal_size_limit`: a WAL that grew past this (a burst) is truncated back to it when it restarts."""

_Future: TypeAlias = "asyncio.Future[object]"
_Job: TypeAlias = tuple["Callable[[sqlite3.Connection], object]", _Future, bool]
_Outcome: TypeAlias = tuple[_Future, object, "BaseException | None"]
INLINE: Final = frozenset({"off", "normal"})
"""The `synchronous` settings whose commits do not fsync, so they may run on the event loop (`InlineSqlite`)."""


def connect(path: Path, synchronous: Synchronous, *, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """A WAL connection in autocommit mode (we say BEGIN and COMMIT ourselves), rows as `sqlite3.Row`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    create_private(path)  # 0600 whatever the umask; SQLite gives -wal and -shm the same mode
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    except BaseException:
        conn.close()
        raise
    return conn


def open_database(path: Path, *, synchronous: Synchronous, name: str) -> InlineSqlite | SqliteWorker:
    """The flavour `synchronous` calls for (see the module docstring)."""
    if synchronous in INLINE:
        return InlineSqlite(path, synchronous=synchronous, name=name)
    return SqliteWorker(path, synchronous=synchronous, name=name)


class InlineSqlite:
    """A connection on the event loop's thread; `write()` calls of one loop turn share a transaction."""

    def __init__(self, path: Path, *, synchronous: Synchronous = "normal", name: str = "sqlite") -> None:
        if synchronous not in INLINE:
            raise ValueError(f"synchronous={synchronous!r} fsyncs every commit: use SqliteWorker")
        self._path = path
        self._synchronous = synchronous
        self._name = name
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], object], _Future]] = []
        self._checkpointer: Checkpointer | None = None
        self.batches = 0
        """Transactions committed (for the benchmark's group-commit figure)."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        conn = connect(self._path, self._synchronous)
        try:
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it, off the event loop
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._checkpointer = Checkpointer(self._path, self._synchronous, name=f"{self._name}-checkpoint")
        self._checkpointer.start()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        pending, self._pending = self._pending, []
        if pending:  # writes queued in this very turn: committed, not dropped
            self._settle(commit_group(conn, pending))
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
        conn.close()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def synchronous(self) -> Synchronous:
        return self._synchronous

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self._open())

    def ensure_open(self) -> None:
        """Raise as `read()` would when the database is closed (an answer given without a query must not be
        given by a closed database)."""
        self._open()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` inside a transaction at the end of this loop turn; returns once it is committed."""
        self._open()
        assert self._loop is not None  # noqa: S101 - set in start()
        future: _Future = self._loop.create_future()
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append((fn, future))
        return await future  # type: ignore[return-value]  # the future holds fn's result

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError(f"{self._path}: the database is not open")
        return self._conn

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        if self._conn is None:
            closed = sqlite3.ProgrammingError(f"{self._path}: the database was closed")
            self._settle([(future, None, closed) for _, future in pending])
            return
        for start in range(0, len(pending), MAX_BATCH):
            self._settle(commit_group(self._conn, pending[start : start + MAX_BATCH]))

    def _settle(self, outcomes: list[_Outcome]) -> None:
        if any(error is None for _, _, error in outcomes):
            self.batches += 1
        for future, result, error in outcomes:
            if future.done():  # its caller was cancelled; the write itself stands (or failed) all the same
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)


class Checkpointer(threading.Thread):
    """Moves the WAL's pages into the database file every `every_s`, with a connection of its own.

    A PASSIVE checkpoint never waits for the writer, and the writer never waits for it; with `normal` it is
    where the fsyncs happen. When the WAL has grown past `WAL_RESTART_FRAMES` anyway (the writer never paused),
    a RESTART checkpoint follows: it copies the few frames written since and makes the next write start the WAL
    over; writers wait (their busy timeout) only for that short tail and one fsync. A last, full checkpoint at
    `stop()` leaves a short WAL behind."""

    def __init__(self, path: Path, synchronous: Synchronous, *, name: str, every_s: float = CHECKPOINT_EVERY_S) -> None:
        super().__init__(name=name, daemon=True)
        self._path = path
        self._synchronous = synchronous
        self._every_s = every_s
        self._stopping = threading.Event()
        self.failures = 0
        self.restarts = 0
        """RESTART checkpoints that succeeded (for tests and the benchmark)."""

    def run(self) -> None:
        try:
            conn = connect(self._path, self._synchronous, busy_timeout_ms=100)
        except (sqlite3.Error, OSError):
            self.failures += 1
            return
        try:
            while not self._stopping.wait(self._every_s):
                # the frame count is the WAL's when the pass began: the writer appends while it runs, so "all
                # copied" in its answer does not mean the WAL may start over
                passive = self._checkpoint(conn, "PASSIVE")
                if passive is not None and passive[1] > WAL_RESTART_FRAMES:
                    restart = self._checkpoint(conn, "RESTART")
                    if restart is not None and restart[0] == 0:
                        self.restarts += 1
            self._checkpoint(conn, "TRUNCATE")
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> tuple[int, int, int] | None:
        """SQLite's answer (busy, frames in the WAL, frames copied); None when the checkpoint failed."""
        try:
            busy, frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:  # a busy or failing disk: the journal's own writes report it; try again later
            self.failures += 1
            return None
        return int(busy), int(frames), int(copied)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join()


class SqliteWorker:
    """Runs functions of a connection on its own thread; `write()` calls are group-committed."""

    def __init__(self, path: Path, *, synchronous: Synchronous = "full", name: str = "sqlite") -> None:
        self._path = path
        self._synchronous = synchronous
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.batches = 0
        """Transactions committed (for the benchmark's group-commit figure)."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._thread.start()
        await self._ready

    async def close(self) -> None:
        self._closing = True
        if self._thread.is_alive():
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def synchronous(self) -> Synchronous:
        return self._synchronous

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(fn, write=False)

    def ensure_open(self) -> None:
        """Raise as `read()` would when the database is closed (see `InlineSqlite.ensure_open`)."""
        if self._loop is None or self._closing or not self._thread.is_alive():
            raise sqlite3.ProgrammingError(f"{self._path}: the database is not open")

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` inside a transaction; returns once it is committed (durable per `synchronous`)."""
        return await self._submit(fn, write=True)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if self._loop is None or self._closing or not self._thread.is_alive():
            raise sqlite3.ProgrammingError(f"{self._path}: the database is not open")
        future: asyncio.Future[object] = self._loop.create_future()
        self._jobs.put((fn, future, write))
        return await future  # type: ignore[return-value]  # the future holds fn's result

    def _resolve(self, future: asyncio.Future[object], result: object, error: BaseException | None) -> None:
        self._resolve_all([(future, result, error)])

    def _resolve_all(self, outcomes: list[_Outcome]) -> None:
        """Settle a batch's futures with one wake-up of the event loop (one self-pipe write, not one each)."""
        assert self._loop is not None  # noqa: S101 - set in start()

        def settle() -> None:
            for future, result, error in outcomes:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop closed while we worked: nobody is waiting
            self._loop.call_soon_threadsafe(settle)

    def _connect(self) -> sqlite3.Connection:
        return connect(self._path, self._synchronous)

    def _run(self) -> None:
        try:
            conn = self._connect()
        except (sqlite3.Error, OSError) as e:
            assert self._ready is not None  # noqa: S101 - set in start()
            self._resolve(self._ready, None, e)  # type: ignore[arg-type]  # a Future[None] is a Future[object]
            return
        assert self._ready is not None  # noqa: S101 - set in start()
        self._resolve(self._ready, None, None)  # type: ignore[arg-type]  # a Future[None] is a Future[object]
        try:
            self._serve(conn)
        finally:
            conn.close()
            self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        """Jobs that raced close() and landed behind the sentinel: answered, never left hanging."""
        closed = sqlite3.ProgrammingError(f"{self._path}: the database was closed")
        leftovers: list[_Outcome] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                leftovers.append((job[1], None, closed))
        if leftovers:
            self._resolve_all(leftovers)

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._jobs.put(None)
                    break
                batch.append(nxt)
            self._run_batch(conn, batch)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[_Outcome] = []
        for fn, future, write in batch:
            if write:
                continue
            try:
                outcomes.append((future, fn(conn), None))
            except Exception as e:  # noqa: BLE001 - handed to the caller, who decides
                outcomes.append((future, None, e))
        writes = [(fn, future) for fn, future, write in batch if write]
        if writes:
            committed = commit_group(conn, writes)
            if any(error is None for _, _, error in committed):
                self.batches += 1
            outcomes.extend(committed)
        self._resolve_all(outcomes)


def commit_group(
    conn: sqlite3.Connection, writes: Sequence[tuple[Callable[[sqlite3.Connection], object], _Future]]
) -> list[_Outcome]:
    """All writes in one transaction. Optimistic: they run back to back; if any raises, the transaction is rolled
    back and the group runs again with each write in a SAVEPOINT, so one failing write fails alone (writes are
    SQL only, so running one again after a rollback is safe). Failures are rare; SAVEPOINTs on every write were
    two statements more per write, a tenth of the journal's cost."""
    if len(writes) > 1:
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [fn(conn) for fn, _ in writes]
            conn.execute("COMMIT")
        except Exception:  # noqa: BLE001 - sorted out write by write below
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        else:
            return [(future, result, None) for (_, future), result in zip(writes, results, strict=True)]
    return _commit_one_by_one(conn, writes)


def _commit_one_by_one(
    conn: sqlite3.Connection, writes: Sequence[tuple[Callable[[sqlite3.Connection], object], _Future]]
) -> list[_Outcome]:
    """All writes in one transaction; each in a SAVEPOINT when there are several, so one failing write fails
    alone (a lone write needs none: its failure rolls the transaction back)."""
    outcomes: list[_Outcome] = []
    alone = len(writes) == 1
    try:
        conn.execute("BEGIN IMMEDIATE")
        for fn, future in writes:
            try:
                if not alone:
                    conn.execute("SAVEPOINT job")
                result = fn(conn)
                if not alone:
                    conn.execute("RELEASE job")
                outcomes.append((future, result, None))
            except Exception as e:
                if alone or not conn.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O error): the writes before
                    # this one are gone too, and the ones after must not run in autocommit. All failed.
                    raise
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                if not conn.in_transaction:
                    raise
                outcomes.append((future, None, e))
        conn.execute("COMMIT")
    except Exception as e:  # noqa: BLE001 - the transaction failed: every write in it failed
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        return [(future, None, e) for _, future in writes]
    return outcomes
