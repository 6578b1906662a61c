"""One SQLite connection on one thread, with group commit.

SQLite connections are not for sharing across threads and its calls block, so every statement runs on a
dedicated thread. Writes that arrive while a commit is under way are batched into the next transaction (group
commit): under load one fsync covers many alerts, while a lone alert still commits at once. Each write runs in
its own SAVEPOINT, so one failing write fails only its own caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from typing import TYPE_CHECKING, Final, Literal, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

T = TypeVar("T")
Synchronous = Literal["off", "normal", "full", "extra"]
MAX_BATCH: Final = 256

_Job = tuple["Callable[[sqlite3.Connection], object]", "asyncio.Future[object]", bool]


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

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(fn, write=False)

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

    def _resolve_all(self, outcomes: list[tuple[asyncio.Future[object], object, BaseException | None]]) -> None:
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
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

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
        leftovers: list[tuple[asyncio.Future[object], object, BaseException | None]] = []
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
        outcomes: list[tuple[asyncio.Future[object], object, BaseException | None]] = []
        for fn, future, write in batch:
            if write:
                continue
            try:
                outcomes.append((future, fn(conn), None))
            except Exception as e:  # noqa: BLE001 - handed to the caller, who decides
                outcomes.append((future, None, e))
        writes = [job for job in batch if job[2]]
        if writes:
            outcomes.extend(self._commit(conn, writes))
        self._resolve_all(outcomes)

    def _commit(
        self, conn: sqlite3.Connection, writes: list[_Job]
    ) -> list[tuple[asyncio.Future[object], object, BaseException | None]]:
        """All writes in one transaction; each in a SAVEPOINT when there are several, so one failing write
        fails alone (a lone write needs none: its failure rolls the transaction back)."""
        outcomes: list[tuple[asyncio.Future[object], object, BaseException | None]] = []
        alone = len(writes) == 1
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future, _ in writes:
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
            self.batches += 1
        except Exception as e:  # noqa: BLE001 - the transaction failed: every write in it failed
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return [(future, None, e) for _, future, _ in writes]
        return outcomes
