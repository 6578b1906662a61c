"""`PaperBroker`: the plugin tvbridge talks to; it owns where the book runs and the lifecycle, `book.py` the rules.

Where the book runs depends on `synchronous`. With "normal" (the default) a commit only hands pages to the OS, a
few tens of microseconds, so the book runs on the event loop itself: cheaper than a hop to a thread and back, and
its automatic checkpoints (where "normal" fsyncs) are moved to a checkpointer thread of their own. With "full"
every commit fsyncs (milliseconds), so every database call runs on one dedicated `ThreadPoolExecutor(max_workers=1)`.
Either way calls run strictly one after another, which is what makes concurrent `place()` calls with one client
order id safe (the second one finds the first one's order inside its own transaction).

On the thread, if a caller stops waiting (its task is cancelled by a deadline), a call already running still
finishes and commits; tvbridge learns the outcome through `lookup()`, which is the contract for an unknown outcome.
On the event loop a call cannot be interrupted half-way at all.

With `[journal] url` set (PostgreSQL, several instances as one) the book is in that database instead
(`tables.PostgresTables`): asyncpg runs on a private loop of the worker thread, so that path always has the
thread, whatever `synchronous` says; the account's SQLite file, if any, is imported at the first start
(`importer.py`). There `health()` has a thread and connection of its own: queued behind orders waiting for an
account lock that a frozen instance holds, it would time out and pull this healthy instance out of rotation.

With the SQLite journal (the default) the book joins it (`join_journal`, issue 22): its tables move into the
journal's file (`tables.JournalTables`; the account's own file, if any, is imported once at start and renamed
`<db_path>.imported`, as for PostgreSQL), an alert's first order is booked inside the alert's own commit
(`place_joined`), and every other call runs on the journal's connection, its writes in the journal's group
commits. Why one file and not the book's file ATTACHed to the journal's connection: SQLite commits a
transaction across attached databases in WAL mode atomically in each file but not across them (sqlite.org,
"ATTACH DATABASE" and "Atomic Commit": the super-journal that makes it atomic is not used in WAL mode), so a
crash between the two files' commits could keep the order and lose its alert, which a resend then places again.
One file, one WAL, one commit record: both or neither. The journal's `synchronous` then applies to the book too;
an account asking for more (`synchronous = "full"` with a journal on "normal") keeps its own file.

The database file deleted or replaced under the running server is noticed before every call: orders written
into a file the next start never opens would be forgotten (and placed again by an alert's resend), so every call
fails unsent with `BrokerUnavailableError` and `health()` says why, until a restart opens the file anew.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Self, TypeVar

import attrs
import structlog

from tvbridge.broker import (
    BrokerError,
    BrokerUnavailableError,
    BrokerUnknownOutcomeError,
    BrokerUnsupportedError,
    Capabilities,
    Health,
    check_supported,
)
from tvbridge.fileid import FileIdentity
from tvbridge.sqlite import Checkpointer

from .book import Book
from .importer import Outcome, import_into_journal, import_sqlite_book
from .models import open_order_of, position_of
from .settings import PaperSettings, parse_settings
from .tables import JournalTables, PostgresTables, book_in_journal_file, create_journal_tables, holds_book

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from decimal import Decimal
    from pathlib import Path

    from tvbridge.broker import (
        BrokerContext,
        CancelRequest,
        InstrumentInfo,
        JoinedConnection,
        JournalDatabase,
        Listings,
        OpenOrder,
        OrderRequest,
        OrderResult,
        Position,
    )
    from tvbridge.models import OrderLeg

    from .master import DhanRules
    from .models import PaperOrder, PaperPosition

T = TypeVar("T")

log = structlog.get_logger()

CAPABILITIES: Final = Capabilities(
    live=False, positions=True, orders=True, brackets=True, funds=True, state_files=True, joins_journal=True
)
"""Every order type, product, exchange and instrument, positions and open orders through the interface (so
EXIT_ALL and flatten work as they do live), brackets and funds: paper is where a trader tries anything first."""
CAPABILITIES_WITH_MASTER: Final = attrs.evolve(CAPABILITIES, instrument_info=True, listings=True)

HEALTH_TIMEOUT_S: Final = 2.0
DURABILITY: Final = {"off": 0, "normal": 1, "full": 2, "extra": 3}
"""`synchronous` settings from weakest to strongest: the book joins a journal at least as durable as it asks."""


def _now() -> datetime:
    return datetime.now(UTC)


class PaperBroker:
    """Simulated fills and positions in a SQLite file (or tvbridge's PostgreSQL database); the default account
    and the test double."""

    api_version: int = 1

    def __init__(self, settings: PaperSettings, *, clock: Callable[[], datetime] = _now) -> None:
        self._settings = settings
        self._clock = clock
        self._rules: DhanRules | None = None
        """Dhan's master and rules when `instruments_path` is set (`master.py`), loaded by start()."""
        self._executor: ThreadPoolExecutor | None = None
        self._checkpointer: Checkpointer | None = None
        self._book: Book | None = None
        self._health: tuple[Book, ThreadPoolExecutor] | None = None
        """With PostgreSQL: the book `health()` reads, on its own thread and connection (see the docstring)."""
        self._identity: FileIdentity | None = None
        self._journal: JournalDatabase | None = None
        """The SQLite journal the book joined (`join_journal`): its tables are in the journal's file."""
        self._joined_started = False
        self._declined: JournalDatabase | None = None
        """The journal offered and declined (durability): `start()` refuses if it holds this account's book."""
        self._closed = False
        # start() and aclose() one at a time: two starts must not open two connections, and an aclose() that
        # arrives during start() must close what that start() opened
        self._lifecycle = asyncio.Lock()

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, object], context: BrokerContext, *, clock: Callable[[], datetime] = _now
    ) -> Self:
        """Build from `[accounts.NAME]` (minus `broker`); raise `ValueError` naming an unknown or bad key.
        `clock` (aware) picks the nearest unexpired future when an instrument master is set; for tests."""
        return cls(parse_settings(settings, context), clock=clock)

    @property
    def capabilities(self) -> Capabilities:
        """Everything; with an instrument master also `instrument_info` (lot sizes for `quantity_unit = "lots"`)."""
        return CAPABILITIES_WITH_MASTER if self._settings.instruments_path is not None else CAPABILITIES

    @property
    def settings(self) -> PaperSettings:
        return self._settings

    def join_journal(self, database: JournalDatabase) -> bool:
        """Keep the book in the journal's file (see the module docstring): yes unless the book is in PostgreSQL
        or the account asks for more durability than the journal gives. Before `start()`; no I/O."""
        if self._settings.database is not None or self._book is not None or self._joined_started:
            return False
        if DURABILITY.get(str(database.synchronous), 0) < DURABILITY[self._settings.synchronous]:
            log.info(
                "paper.own_file",
                account=self._settings.account,
                why=f"synchronous = {self._settings.synchronous!r} asks more than the journal's"
                f" {database.synchronous!r}: the book keeps its own file",
            )
            self._declined = database
            return False
        self._journal = database
        return True

    def place_joined(self, conn: JoinedConnection, request: OrderRequest) -> OrderResult:
        """`place()` on the journal's connection, inside the transaction that records the alert (tvbridge's
        `record_plan`): the order is committed with its alert or not at all."""
        if self._journal is None or not self._joined_started:
            raise BrokerUnavailableError("the paper book has not joined the journal: nothing was done")
        check_supported(self.capabilities, request.leg)
        if self._settings.instruments_path is not None:
            request = attrs.evolve(request, leg=self._require_rules().check(request))
        result = self._joined_book(conn).place(request)
        moved = result.details.get("moved_orders")
        if moved:
            log.info("paper.orders_moved", order_ids=moved, by_client_order_id=request.client_order_id)
        return result

    def _joined_book(self, conn: JoinedConnection) -> Book:
        return Book(JournalTables(conn, self._settings.account), self._settings.prices)

    async def _start_joined(self, journal: JournalDatabase) -> None:
        """The book's tables in the journal's file; the account's own file, if any, imported first."""
        try:
            await journal.write(create_journal_tables)
        except sqlite3.Error as e:
            raise BrokerUnavailableError(f"paper book cannot be created in the journal: {e}") from e
        account, path = self._settings.account, self._settings.db_path
        outcome = await import_into_journal(journal, account, path)
        self._log_import(outcome, path, into="the journal")
        self._joined_started = True

    async def _refuse_a_book_left_in(self, journal: JournalDatabase) -> None:
        """The book joined the journal on an earlier start and the settings now keep it in its own file (the
        journal's `synchronous` lowered, or the account's raised): the journal's file holds its orders and
        positions, its own file does not. Starting on the own file would show the account flat (EXIT_ALL sends
        nothing, recovery cannot find the order, a resend books it again): refuse, naming the settings."""
        account = self._settings.account

        try:
            held = await journal.read(functools.partial(holds_book, account=account))
        except sqlite3.Error as e:
            raise BrokerUnavailableError(f"paper book: cannot read the journal's file to find this book: {e}") from e
        if held:
            raise BrokerUnavailableError(
                f"paper account {account!r}: its book (orders, positions) is in the journal's file {journal.path}"
                f" (it joined the journal when its durability allowed), but synchronous = "
                f"{self._settings.synchronous!r} asks more than the journal's {journal.synchronous!r}, which would"
                " start it on an empty file of its own: set [journal] synchronous back to"
                f" {self._settings.synchronous!r}, or this account's synchronous to {journal.synchronous!r}"
            )

    async def _refuse_a_book_left_in_sqlite(self, path: Path) -> None:
        """The store is PostgreSQL now, and the book joined the SQLite journal on an earlier start: its orders and
        positions are in that file, not in the database. Starting on the database would show the account flat
        (EXIT_ALL sends nothing, recovery cannot find an order, a resend books it again): refuse, before
        connecting, naming the file and what to do. The own file (`db_path`) is imported as before."""
        account = self._settings.account
        try:
            held = await asyncio.to_thread(book_in_journal_file, path, account)
        except sqlite3.Error as e:
            raise BrokerUnavailableError(
                f"paper account {account!r}: cannot read the SQLite journal's file {path} to find whether this"
                f" account's book is there ({e}); move the file away if it is not tvbridge's journal"
            ) from e
        if held:
            raise BrokerUnavailableError(  # one line of at most 500 characters at the start: the path once
                f"paper account {account!r}: its book (orders, positions) is in the SQLite journal {path}, not in"
                " PostgreSQL ([journal] url), where it would start flat: remove [journal] url (and DATABASE_URL) to"
                " go on with the SQLite journal, or move that file away to start its paper accounts flat on"
                " PostgreSQL"
            )

    def _log_import(self, outcome: Outcome, path: Path, *, into: str) -> None:
        account = self._settings.account
        if outcome.copied:
            log.warning(
                "paper.sqlite_book_imported",
                account=account,
                path=str(path),
                into=into,
                renamed_to=str(outcome.renamed_to),
                orders=outcome.copied.get("orders", 0),
                positions=outcome.copied.get("positions", 0),
                brackets=outcome.copied.get("brackets", 0),
                noops=outcome.copied.get("noops", 0),
            )
        elif outcome.ignored:
            log.warning(
                "paper.sqlite_book_ignored",
                account=account,
                path=str(path),
                why=f"{into} already holds this paper account's book; the file is not merged",
                action="move the file away once you no longer need it",
            )

    async def start(self) -> None:
        """Open (or create) the database; raise `BrokerUnavailableError` if it cannot be used. Idempotent."""
        async with self._lifecycle:
            if self._closed:
                raise BrokerUnavailableError("the paper broker was closed; build a new one")
            if self._book is not None or self._joined_started:
                return
            if self._settings.instruments_path is not None and self._rules is None:
                from .master import DhanRules  # noqa: PLC0415 - the dhan modules load only for accounts with a master

                self._rules = await DhanRules.load(self._settings.instruments_path, self._clock)
                log.info("paper.instruments.loaded", path=str(self._settings.instruments_path), rows=len(self._rules))
            if self._settings.database is not None:
                if self._settings.sqlite_journal is not None:
                    await self._refuse_a_book_left_in_sqlite(self._settings.sqlite_journal)
                await self._start_shared(self._settings.database.url)
                return
            if self._journal is not None:
                await self._start_joined(self._journal)
                return
            if self._declined is not None:
                await self._refuse_a_book_left_in(self._declined)
            if self._settings.synchronous != "full":
                self._book = Book.open(self._settings.db_path, self._settings.prices, self._settings.synchronous)
                self._identity = FileIdentity.of(self._settings.db_path)
                self._checkpointer = Checkpointer(self._settings.db_path, "normal", name="tvbridge-paper-checkpoint")
                self._checkpointer.start()
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvbridge-paper")
            opening = executor.submit(
                Book.open, self._settings.db_path, self._settings.prices, self._settings.synchronous
            )
            try:
                book = await asyncio.wrap_future(opening)
            except BaseException:
                # cancelled while opening: the open still completes on the worker, so close it there, then let go
                executor.submit(_close_if_opened, opening)
                executor.shutdown(wait=False)
                raise
            self._book, self._executor = book, executor
            self._identity = FileIdentity.of(self._settings.db_path)

    async def _start_shared(self, url: str) -> None:
        """The book in tvbridge's PostgreSQL database, on a worker thread of its own (asyncpg runs there on a
        private loop: `tables.PostgresTables`); the account's SQLite book, if any, imported first."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvbridge-paper")
        account, path, prices = self._settings.account, self._settings.db_path, self._settings.prices
        opening = executor.submit(_open_shared, url, account, prices, path)
        try:
            book, outcome = await asyncio.wrap_future(opening)
        except BaseException:
            executor.submit(_close_if_opened, opening)
            executor.shutdown(wait=False)
            raise
        health_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvbridge-paper-health")
        # no I/O here: it connects at the first health check, on its thread (where its private loop runs)
        health_book = Book(PostgresTables(url, account), prices)
        self._book, self._executor, self._health = book, executor, (health_book, health_executor)
        self._log_import(outcome, path, into="the PostgreSQL database")

    async def aclose(self) -> None:
        """Close the database and stop the worker thread once the calls already queued have run. Idempotent."""
        self._closed = True  # at once, before waiting for a start() in progress: no new calls from here on
        async with self._lifecycle:
            self._joined_started = False  # the journal's connection is the journal's to close
            book, executor, checkpointer = self._book, self._executor, self._checkpointer
            self._book = self._executor = self._checkpointer = None
            health, self._health = self._health, None
            if health is not None:
                try:
                    await asyncio.wrap_future(health[1].submit(health[0].close))
                finally:
                    health[1].shutdown(wait=True)
            if checkpointer is not None:
                await asyncio.to_thread(checkpointer.stop)
            if executor is None:
                if book is not None:
                    book.close()
                return
            try:
                if book is not None:
                    await asyncio.wrap_future(executor.submit(book.close))
            finally:
                executor.shutdown(wait=True)

    async def place(self, request: OrderRequest) -> OrderResult:
        """Place `request.leg`, or return the order already placed under `request.client_order_id`.

        Raises `BrokerUnsupportedError` / `BrokerRejectedError` (nothing placed), `BrokerUnavailableError` (not
        running, or a database error before anything was written) or `BrokerUnknownOutcomeError` (a database error
        while committing: ask `lookup()`).
        """
        check_supported(self.capabilities, request.leg)
        if self._settings.instruments_path is not None:
            leg = self._require_rules().check(request)  # what Dhan would refuse, refused here with its message
            request = attrs.evolve(request, leg=leg)
        result = await self._call(lambda book: book.place(request), write=True)
        moved = result.details.get("moved_orders")
        if moved:  # fills of earlier orders happen on this alert's price, outside their own alert's log lines
            log.info("paper.orders_moved", order_ids=moved, by_client_order_id=request.client_order_id)
        return result

    async def instrument_info(self, leg: OrderLeg) -> InstrumentInfo:
        """The contract and lot size from the instrument master, as the dhan broker reads them. Declared (in
        `capabilities`) only with `instruments_path`; without one, `BrokerUnsupportedError`."""
        if self._settings.instruments_path is None:
            msg = "this paper account has no instrument master (instruments_path), so it knows no lot sizes"
            raise BrokerUnsupportedError(msg)
        return self._require_rules().info(leg)

    async def listings(self, leg: OrderLeg) -> Listings:
        """The expiries and strikes the instrument master lists (as the dhan broker reads them). Declared only
        with `instruments_path`; without one, `BrokerUnsupportedError`."""
        if self._settings.instruments_path is None:
            msg = "this paper account has no instrument master (instruments_path), so it lists no strikes or expiries"
            raise BrokerUnsupportedError(msg)
        return self._require_rules().listings(leg)

    async def funds(self) -> Decimal:
        """The paper account's `funds` setting (default 1,000,000 rupees), for `quantity_type: percent_of_funds`.
        A fixed figure, not the cash left after simulated trades: paper keeps no margin ledger."""
        return self._settings.funds

    def _require_rules(self) -> DhanRules:
        if self._rules is None:
            raise BrokerUnavailableError("the paper broker is not started: its instrument master is not loaded")
        return self._rules

    async def cancel(self, request: CancelRequest) -> list[OrderResult]:
        """Cancel by `leg.order_id`, or every resting order for `leg.symbol` (narrowed by exchange and side).

        Raises `BrokerRejectedError` for an unknown order id, an order that already filled, or a leg that names
        neither an order id nor a symbol. Nothing resting for the symbol: an empty list. With an instrument master
        the symbol is read as `place()` booked it (`NIFTY1!` names the NIFTY orders).
        """
        if self._settings.instruments_path is not None and request.leg.symbol:
            symbol = self._require_rules().booked_symbol(request.leg.symbol)
            request = attrs.evolve(request, leg=attrs.evolve(request.leg, symbol=symbol))
        return await self._call(lambda book: book.cancel(request), write=True)

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        return await self._call(lambda book: book.lookup(client_order_id))

    async def cancel_brackets(self, leg: OrderLeg) -> list[OrderResult]:
        """Cancel the parts still pending or resting of every bracket in `leg`'s contract (EXIT_ALL, first),
        the contract read as `positions(leg)` reads it."""
        why = f"cancelled: EXIT_ALL on {leg.exchange}:{leg.symbol} closes the position"
        return await self._call(lambda book: book.cancel_brackets(leg, why), write=True)

    async def health(self) -> Health:
        """Healthy when the database file answers a query within 2 s."""
        if self._book is None and not self._joined_started:
            return Health(ok=False, detail="paper broker is closed" if self._closed else "paper broker not started")
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                if self._health is not None:
                    health_book, health_executor = self._health
                    resting = await asyncio.wrap_future(health_executor.submit(health_book.count_resting))
                else:
                    resting = await self._call(Book.count_resting)
        except TimeoutError:
            return Health(ok=False, detail=f"paper database did not answer within {HEALTH_TIMEOUT_S:g} s")
        except BrokerError as e:
            return Health(ok=False, detail=str(e))
        where = "paper book in PostgreSQL" if self._settings.database else f"paper database {self._settings.db_path}"
        if self._journal is not None:
            where = f"paper book in the journal {self._journal.path}"
        return Health(ok=True, detail=f"{where}: {resting} resting order(s)")

    def state_files(self) -> list[Path]:
        """The book's database: tvbridge refuses alerts (503) once it is deleted or replaced under the server.
        None when the book is in PostgreSQL or in the journal's file (watched by tvbridge already); the account's
        own file, if any, is only imported at start."""
        if self._settings.database is not None or self._journal is not None:
            return []
        return [self._settings.db_path]

    async def positions(self, leg: OrderLeg | None = None) -> list[Position]:
        """The open positions (the interface's view); with `leg`, those in its exchange and contract."""
        found = await self._call(lambda book: book.positions(of=leg))
        return [position_of(p) for p in found]

    async def open_orders(self) -> list[OpenOrder]:
        """The resting orders (OPEN and TRIGGER_PENDING), oldest first."""
        return [open_order_of(o) for o in await self.orders(resting_only=True)]

    async def orders(self, *, resting_only: bool = False) -> list[PaperOrder]:
        """This paper account's orders, oldest first, with everything the book keeps (for tests and tools); with
        `resting_only`, just the OPEN and TRIGGER_PENDING ones."""
        return await self._call(lambda book: book.orders(resting_only=resting_only))

    async def book_positions(self, *, include_flat: bool = False) -> list[PaperPosition]:
        """Positions with everything the book keeps (realized P&L; with `include_flat`, closed ones too)."""
        return await self._call(lambda book: book.positions(include_flat=include_flat))

    async def _call(self, job: Callable[[Book], T], *, write: bool = False) -> T:
        if self._journal is not None:
            return await self._call_joined(self._journal, job, write=write)
        book, executor = self._book, self._executor
        if book is None:
            state = "closed" if self._closed else "not started"
            raise BrokerUnavailableError(f"the paper broker is {state}: nothing was done")
        problem = self._identity.problem() if self._identity is not None else ""
        if problem:
            raise BrokerUnavailableError(f"paper database {problem}: nothing was done; restart tvbridge")
        if executor is None:
            return job(book)
        return await asyncio.wrap_future(executor.submit(job, book))

    async def _call_joined(self, journal: JournalDatabase, job: Callable[[Book], T], *, write: bool) -> T:
        """On the journal's connection: a write in one of its group commits, a read at once."""
        if not self._joined_started:
            state = "closed" if self._closed else "not started"
            raise BrokerUnavailableError(f"the paper broker is {state}: nothing was done")

        def run(conn: sqlite3.Connection) -> T:
            return job(self._joined_book(conn))

        try:
            return await (journal.write(run) if write else journal.read(run))
        except sqlite3.ProgrammingError as e:  # the journal is closed: nothing ran
            raise BrokerUnavailableError(f"the journal is closed, nothing was done: {e}") from e
        except sqlite3.Error as e:
            if write:  # the book's writes ran; the journal's commit failed
                raise BrokerUnknownOutcomeError(f"paper book: the journal's commit failed: {e}") from e
            raise BrokerUnavailableError(f"paper book cannot be read from the journal: {e}") from e


def _close_if_opened(opening: Future[Book] | Future[tuple[Book, Outcome]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opened = opening.result()
        (opened[0] if isinstance(opened, tuple) else opened).close()


def _open_shared(url: str, account: str, prices: Mapping[str, Decimal], path: Path) -> tuple[Book, Outcome]:
    """On the book's worker thread: connect, import the SQLite book if it is the first start on PostgreSQL."""
    tables = PostgresTables.connect(url, account)
    try:
        outcome = import_sqlite_book(tables, path)
    except BaseException:
        tables.close()
        raise
    return Book(tables, prices), outcome
