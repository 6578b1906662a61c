"""Where a paper book's rows live: the storage seam under `book.py`, which keeps every rule.

`Book` writes its SQL once, with `?` placeholders and a few markers (`{orders}`, `{and_account}`, ...) that each
store spells its own way. Two stores:

* `SqliteTables`: the account's own SQLite file (the default, one instance): markers vanish, the tables are the
  file's, a write is `BEGIN IMMEDIATE`.
* `PostgresTables` (`[journal] url` set, issue 20): tvbridge's PostgreSQL database, shared by every instance.
  The tables (`paper_orders`, `paper_positions`, `paper_brackets`, `paper_noops`) hold every paper account,
  keyed by `account` (tvbridge's migration 7 creates them); markers become the account's filter, and the
  account is passed as the trailing parameters. A write is one transaction that first takes a transaction-scoped
  advisory lock on the account, so place and cancel run one at a time per account across instances and matching
  sees a consistent book; `(account, client_order_id)` is unique besides, so one client order id can never
  become two orders. Order ids are numbered per account (`max(id) + 1` under that lock), as in the SQLite file,
  so a book imported from its file keeps the order ids the journal already names.

`Book` is synchronous and asyncpg is not: a `PostgresTables` owns one connection on a private event loop and
runs each statement to completion on it. It must be used from one thread only, the broker's worker thread, which
never is the server's event loop (`broker.py`). One connection per paper account per instance.

* `JournalTables` (the SQLite journal, issue 22): the tables of the PostgreSQL spelling (`paper_orders`, ...,
  keyed by `account`) in tvbridge's own journal file, on the journal's connection. Its `write()` is a SAVEPOINT
  inside the transaction the journal has open (a group commit, or `record_plan`'s: the alert and its order in one
  commit); the journal commits. There is no second process to lock out: one server per journal (`<journal>.lock`).
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import TYPE_CHECKING, Any, Final, Protocol

from tvbridge.broker import BrokerUnavailableError, BrokerUnknownOutcomeError, JoinedConnection

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator, Sequence
    from pathlib import Path

    import asyncpg

Row = Any
"""A result row: `sqlite3.Row` or `asyncpg.Record`, both indexable by column name and position."""

PAPER_LOCK_CLASS: Final = 0x7476_6270
"""The first key of the per-account advisory lock (`pg_advisory_xact_lock(class, hashtext(account))`)."""
PG_TIMEOUT_S: Final = 5.0
"""Longest one statement or a connect may take: inside every sane `broker_timeout_s` plus a retry."""
LOCK_WAIT_S: Final = 1.0
"""Longest a write waits for the account's lock (the server's `lock_timeout`): well inside the default
`broker_timeout_s` (2.5 s), so an order behind a frozen holder fails cleanly as not placed (nothing was done)
before the host's guard gives up and calls it an unknown outcome."""
IDLE_IN_TRANSACTION_S: Final = 5.0
"""A paper transaction is a few milliseconds of statements: one idle this long has a frozen holder, whose
account lock the server then frees (its COMMIT fails: an unknown outcome, resolved by `lookup()`). Below the
default `journal.leader_lease_s` (10 s): a frozen leader's account lock is gone before another takes over."""

SQLITE_MARKERS: Final = {
    "orders": "orders",
    "positions": "positions",
    "brackets": "brackets",
    "noops": "noops",
    "and_account": "",
    "and_b_account": "",
    "account_col": "",
    "account_val": "",
    "account_key": "",
    "join_account": "",
}
PG_MARKERS: Final = {
    "orders": "paper_orders",
    "positions": "paper_positions",
    "brackets": "paper_brackets",
    "noops": "paper_noops",
    "and_account": " AND account = ?",
    "and_b_account": " AND b.account = ?",
    "account_col": ", account",
    "account_val": ", ?",
    "account_key": "account, ",
    "join_account": " AND o.account = b.account",
}
_ORDER_ID_COLUMNS: Final = ", account, id"
_ORDER_ID_VALUES: Final = ", ?, (SELECT coalesce(max(id), 0) + 1 FROM paper_orders WHERE account = ?)"


class Tables(Protocol):
    """A book's storage. `write()` is one transaction: a database error inside it rolls back and raises
    `BrokerUnavailableError` (nothing happened), one at COMMIT `BrokerUnknownOutcomeError` (ask `lookup()`)."""

    def write(self) -> AbstractContextManager[None]: ...

    def reading(self) -> AbstractContextManager[None]: ...

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]: ...

    def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None: ...

    def execute(self, sql: str, params: Sequence[object] = ()) -> None: ...

    def insert_order(self, sql: str, params: Sequence[object]) -> int:
        """Run an `INSERT INTO {orders}` and return the new order's row id (per account)."""
        ...

    def close(self) -> None: ...


class SqliteTables:
    """The account's SQLite file (`book.Book.open` opens and migrates it)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @contextmanager
    def write(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise BrokerUnavailableError(f"paper database is busy or unavailable, nothing was done: {e}") from e
        try:
            yield
        except sqlite3.Error as e:
            self._rollback()
            raise BrokerUnavailableError(f"paper database error, nothing was done: {e}") from e
        except BaseException:
            self._rollback()
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise BrokerUnknownOutcomeError(f"paper database error while committing: {e}") from e

    @contextmanager
    def reading(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise BrokerUnavailableError(f"paper database cannot be read: {e}") from e

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self._db.execute(_sqlite(sql), params).fetchall()

    def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        return self._db.execute(_sqlite(sql), params).fetchone()

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self._db.execute(_sqlite(sql), params)

    def insert_order(self, sql: str, params: Sequence[object]) -> int:
        row_id = self._db.execute(_sqlite(sql), params).lastrowid
        if row_id is None:  # cannot happen after a successful INSERT; never report an order we cannot identify
            raise BrokerUnknownOutcomeError("paper database did not return the new order's id")
        return row_id

    def close(self) -> None:
        self._db.close()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            # the error that got us here is the one to report; if even ROLLBACK fails, SQLite discards the
            # uncommitted transaction when the connection closes or the file is next opened
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


@functools.lru_cache(maxsize=256)
def _sqlite(sql: str) -> str:
    """The statement in the file's spelling; cached: the book's statements are a few dozen fixed strings, and
    this runs for every statement of every order (on the event loop)."""
    return sql.format_map(SQLITE_MARKERS)


_PLACEHOLDER: Final = re.compile(r"\?")


class PostgresTables:
    """Every paper account's rows in tvbridge's PostgreSQL database, this account's selected by the markers.

    Build with `connect()` on the thread that will use it; `close()` there too."""

    def __init__(self, url: str, account: str) -> None:
        self._url = url
        self.account = account
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection | None = None
        self._cache: dict[str, str] = {}

    @classmethod
    def connect(cls, url: str, account: str) -> PostgresTables:
        """Connect and check the schema has the paper tables; `BrokerUnavailableError` when it cannot be used."""
        tables = cls(url, account)
        try:
            with tables.reading():
                found = tables._run(tables._connection_then("SELECT to_regclass('paper_orders') IS NOT NULL"))
        except BaseException:
            tables.close()
            raise
        if not found:
            tables.close()
            raise BrokerUnavailableError(
                "the PostgreSQL database has no paper tables: run `tvbridge db migrate` (or start tvbridge, which"
                " migrates) with this release"
            )
        return tables

    # -- the Tables interface -----------------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[None]:
        reused = self._conn is not None
        try:
            try:
                self._run(self._begin())
            except _db_errors() as e:
                if not (reused and _connection_lost(e)):
                    raise
                # a connection the server dropped (a restart) is only seen when used: no statement of this
                # transaction ran, so nothing was done and one retry on a new connection is safe
                self._drop()
                self._run(self._begin())
        except _db_errors() as e:
            self._rollback() if self._in_transaction() else self._drop()
            raise BrokerUnavailableError(f"paper database unavailable, nothing was done: {_safe(e)}") from e
        try:
            yield
        except _db_errors() as e:
            self._rollback()
            raise BrokerUnavailableError(f"paper database error, nothing was done: {_safe(e)}") from e
        except BaseException:
            self._rollback()
            raise
        try:
            self._run(self._conn_or_fail().execute("COMMIT"))
        except _db_errors() as e:
            self._drop()  # the connection's state is unknown: the next call reconnects
            raise BrokerUnknownOutcomeError(f"paper database error while committing: {_safe(e)}") from e

    @contextmanager
    def reading(self) -> Iterator[None]:
        try:
            yield
        except _db_errors() as e:
            if not self._in_transaction():
                self._drop()
            raise BrokerUnavailableError(f"paper database cannot be read: {_safe(e)}") from e

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        text, args = self._prepare(sql, params)
        if self._conn is None or self._in_transaction():
            return list(self._run(self._connection_then_fetch(text, args)))
        try:  # a read outside a transaction (`reading()`): on a dropped connection, read again on a new one
            return list(self._run(self._connection_then_fetch(text, args)))
        except _db_errors() as e:
            if not _connection_lost(e):
                raise
            self._drop()
            return list(self._run(self._connection_then_fetch(text, args)))

    def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        text, args = self._prepare(sql, params)  # never retried: a statement that may write runs once
        self._run(self._connection_then_fetch(text, args))

    def insert_order(self, sql: str, params: Sequence[object]) -> int:
        text = sql.replace("{account_col}", _ORDER_ID_COLUMNS).replace("{account_val}", _ORDER_ID_VALUES)
        row = self.fetchone(text + " RETURNING id", params)
        if row is None:
            raise BrokerUnknownOutcomeError("paper database did not return the new order's id")
        return int(row[0])

    def close(self) -> None:
        self._drop()
        self._loop.close()

    # -- for the one-time import (`importer.py`) ----------------------------------------------------------------

    def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Insert `rows` (values of `columns`, as the SQLite file holds them) into `paper_<table>` for this
        account, inside the current `write()`. Table and column names are the importer's constants."""
        names = ", ".join([*columns, "account"])
        marks = ", ".join(f"${i}" for i in range(1, len(columns) + 2))
        statement = f"INSERT INTO paper_{table} ({names}) VALUES ({marks})"  # noqa: S608 - constant names
        conn = self._conn_or_fail()
        self._run(conn.executemany(statement, [(*row, self.account) for row in rows]))

    # -- internals ----------------------------------------------------------------------------------------------

    def _prepare(self, sql: str, params: Sequence[object]) -> tuple[str, list[object]]:
        text = self._cache.get(sql)
        if text is None:
            spelled = sql.format_map(PG_MARKERS)
            counter = iter(range(1, spelled.count("?") + 1))
            text = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", spelled)
            self._cache[sql] = text
        wanted = text.count("$")  # no `$` in the book's SQL but the placeholders
        extra = wanted - len(params)
        if extra < 0:  # a bug in the book's SQL, not a database problem
            msg = f"paper SQL has {wanted} placeholders for {len(params)} parameters"
            raise AssertionError(msg)
        return text, [_plain(p) for p in params] + [self.account] * extra

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self._loop.run_until_complete(asyncio.wait_for(coro, PG_TIMEOUT_S))

    async def _ensure(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            import asyncpg  # noqa: PLC0415 - the optional extra, loaded only with a PostgreSQL store

            self._conn = await asyncpg.connect(
                self._url,
                timeout=PG_TIMEOUT_S,
                server_settings={
                    "application_name": f"tvbridge paper {self.account}"[:63],
                    # the account's lock goes with a frozen or vanished holder within seconds, not hours: the
                    # server ends a transaction left idle (SIGSTOP, a stalled VM) and probes a silent peer
                    "idle_in_transaction_session_timeout": str(int(IDLE_IN_TRANSACTION_S * 1000)),
                    "lock_timeout": str(int(LOCK_WAIT_S * 1000)),
                    "tcp_keepalives_idle": "2",
                    "tcp_keepalives_interval": "2",
                    "tcp_keepalives_count": "2",
                },
            )
        return self._conn

    async def _connection_then(self, sql: str) -> Any:
        conn = await self._ensure()
        return await conn.fetchval(sql)

    async def _connection_then_fetch(self, sql: str, args: list[object]) -> list[Row]:
        conn = await self._ensure()
        return list(await conn.fetch(sql, *args))

    async def _begin(self) -> None:
        conn = await self._ensure()
        await conn.execute("BEGIN")
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", PAPER_LOCK_CLASS, self.account)

    def _conn_or_fail(self) -> asyncpg.Connection:
        if self._conn is None:
            raise BrokerUnavailableError("paper database connection lost")
        return self._conn

    def _in_transaction(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and self._conn.is_in_transaction()

    def _rollback(self) -> None:
        if self._in_transaction() and self._conn is not None:
            try:
                self._run(self._conn.execute("ROLLBACK"))
            except _db_errors():
                self._drop()  # closing the connection ends the transaction on the server

    def _drop(self) -> None:
        """Forget the connection; the next call connects anew (the server rolls back what it left open)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with suppress(*_db_errors()):
                self._run(conn.close(timeout=PG_TIMEOUT_S))
            if not conn.is_closed():
                conn.terminate()


def _plain(value: object) -> object:
    """asyncpg checks types: a `StrEnum` member (an order state) goes as its text."""
    return str(value) if isinstance(value, str) and type(value) is not str else value


def _safe(error: BaseException) -> str:
    """The error as an operator may read it: never the URL's password (`tvbridge.store.connect_failure`)."""
    from tvbridge.store import connect_failure  # noqa: PLC0415 - keeps the SQLite-only import path light

    return connect_failure(error)


def _connection_lost(error: BaseException) -> bool:
    """The connection was gone before the statement ran (the server restarted or dropped the session): not a
    statement's error, not a timeout (which may mean the server is slow, and retrying would double the wait)."""
    import asyncpg  # noqa: PLC0415 - only called once asyncpg raised

    lost = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.AdminShutdownError, ConnectionError)
    return isinstance(error, lost)


@functools.cache
def _db_errors() -> tuple[type[BaseException], ...]:
    """What a database call may raise; asyncpg is imported only when a PostgreSQL book first needs it."""
    try:
        import asyncpg  # noqa: PLC0415 - the optional extra
    except ImportError:
        return (OSError, TimeoutError)
    # InternalClientError: the driver's protocol state after the server ended the session under a statement
    return (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


JOURNAL_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS paper_orders (
        account          TEXT NOT NULL,
        id               INTEGER NOT NULL,      -- numbered per account, as in the account's own file
        client_order_id  TEXT NOT NULL,
        alert_id         TEXT NOT NULL,
        leg_number       INTEGER NOT NULL,
        exchange         TEXT NOT NULL,
        symbol           TEXT NOT NULL,
        contract         TEXT NOT NULL,
        instrument       TEXT NOT NULL,
        option_type      TEXT,
        strike_price     TEXT,
        expiry_date      TEXT,
        product          TEXT NOT NULL,
        side             TEXT NOT NULL,
        order_type       TEXT NOT NULL,
        quantity         INTEGER NOT NULL CHECK (quantity > 0),
        price            TEXT NOT NULL,
        trigger_price    TEXT,
        state            TEXT NOT NULL,
        filled_quantity  INTEGER NOT NULL,
        average_price    TEXT,
        message          TEXT NOT NULL,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        PRIMARY KEY (account, id),
        UNIQUE (account, client_order_id)       -- one order per client order id
    )
    """,
    "CREATE INDEX IF NOT EXISTS paper_orders_by_contract ON paper_orders (account, exchange, contract, state)",
    "CREATE INDEX IF NOT EXISTS paper_orders_by_symbol ON paper_orders (account, symbol, state)",
    """
    CREATE TABLE IF NOT EXISTS paper_noops (
        account          TEXT NOT NULL,
        client_order_id  TEXT NOT NULL,
        alert_id         TEXT NOT NULL,
        leg_number       INTEGER NOT NULL,
        message          TEXT NOT NULL,
        created_at       TEXT NOT NULL,
        PRIMARY KEY (account, client_order_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS paper_positions (
        account          TEXT NOT NULL,
        exchange         TEXT NOT NULL,
        contract         TEXT NOT NULL,
        product          TEXT NOT NULL,
        symbol           TEXT NOT NULL,
        instrument       TEXT NOT NULL,
        option_type      TEXT,
        strike_price     TEXT,
        expiry_date      TEXT,
        net_quantity     INTEGER NOT NULL,
        average_price    TEXT,
        realized_pnl     TEXT,
        updated_at       TEXT NOT NULL,
        PRIMARY KEY (account, exchange, contract, product)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS paper_brackets (
        account          TEXT NOT NULL,
        entry_id         INTEGER NOT NULL,
        target_id        INTEGER,
        stop_id          INTEGER,
        trailing_jump    TEXT,
        anchor           TEXT,
        PRIMARY KEY (account, entry_id)
    )
    """,
)
"""The paper tables in the journal's file: the PostgreSQL migration 8's, spelled for SQLite (`CREATE ... IF NOT
EXISTS`: the paper plugin creates them when it joins, so the journal's own schema knows nothing of paper)."""


def holds_book(conn: sqlite3.Connection, account: str) -> bool:
    """Whether the journal's file on `conn` holds `account`'s book (an order or a position of it)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return any(
        table in tables
        and conn.execute(f"SELECT 1 FROM {table} WHERE account = ? LIMIT 1", (account,)).fetchone() is not None  # noqa: S608 - constant names
        for table in ("paper_orders", "paper_positions")
    )


def book_in_journal_file(path: Path, account: str) -> bool:
    """`holds_book` on the SQLite journal's file at `path`, opened read-only (False when there is no file)."""
    if not path.exists():
        return False
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return holds_book(conn, account)
    finally:
        conn.close()


def create_journal_tables(conn: sqlite3.Connection) -> None:
    """The paper tables in the journal's file (idempotent); runs inside a journal write."""
    for statement in JOURNAL_SCHEMA:
        conn.execute(statement)


class JournalTables:
    """This account's rows in the journal's SQLite file, on the journal's connection, inside its transaction.

    Built per call with the connection the journal hands to a write or read (`JournalJoiner.place_joined`, or the
    paper broker's calls through `JournalDatabase.write`/`read`). `write()` is a SAVEPOINT: a database error, or
    the book's refusal, rolls back the book's writes only (the alert around it stays), and nothing is committed
    here: the journal commits the whole transaction, and a failure there fails the caller's write."""

    def __init__(self, conn: JoinedConnection, account: str) -> None:
        self._db = conn
        self.account = account

    @contextmanager
    def write(self) -> Iterator[None]:
        try:
            self._db.execute("SAVEPOINT paper_book")
        except sqlite3.Error as e:
            raise BrokerUnavailableError(f"paper book unavailable in the journal, nothing was done: {e}") from e
        try:
            yield
        except BaseException as e:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK TO paper_book")
                self._db.execute("RELEASE paper_book")
            if isinstance(e, sqlite3.Error):
                raise BrokerUnavailableError(f"paper book error in the journal, nothing was done: {e}") from e
            raise
        try:
            self._db.execute("RELEASE paper_book")
        except sqlite3.Error as e:
            raise BrokerUnknownOutcomeError(f"paper book error in the journal while releasing: {e}") from e

    @contextmanager
    def reading(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise BrokerUnavailableError(f"paper book cannot be read from the journal: {e}") from e

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        text, extra = _journal_sql(sql)
        return self._db.execute(text, (*params, *(self.account,) * extra)).fetchall()

    def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        text, extra = _journal_sql(sql)
        return self._db.execute(text, (*params, *(self.account,) * extra)).fetchone()

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        text, extra = _journal_sql(sql)
        self._db.execute(text, (*params, *(self.account,) * extra))

    def insert_order(self, sql: str, params: Sequence[object]) -> int:
        text = sql.replace("{account_col}", _ORDER_ID_COLUMNS).replace("{account_val}", _ORDER_ID_VALUES)
        spelled, _ = _journal_sql(text + " RETURNING id")
        row = self._db.execute(spelled, (*params, self.account, self.account)).fetchone()  # the two of the id
        if row is None:  # cannot happen after a successful INSERT; never report an order we cannot identify
            raise BrokerUnknownOutcomeError("paper book did not return the new order's id")
        return int(row[0])

    def close(self) -> None:
        """Nothing: the connection is the journal's."""

    def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Insert `rows` (values of `columns`, as the account's own file holds them) into `paper_<table>` for this
        account, inside the current `write()` (the one-time import, `importer.py`)."""
        names = ", ".join([*columns, "account"])
        marks = ", ".join("?" for _ in range(len(columns) + 1))
        statement = f"INSERT INTO paper_{table} ({names}) VALUES ({marks})"  # noqa: S608 - constant names
        self._db.executemany(statement, [(*row, self.account) for row in rows])


@functools.lru_cache(maxsize=256)
def _journal_sql(sql: str) -> tuple[str, int]:
    """The statement in the journal file's spelling and how many account parameters trail the caller's (the
    markers' `?`s come after every `?` of the book's own, as for PostgreSQL)."""
    spelled = sql.format_map(PG_MARKERS)
    return spelled, spelled.count("?") - sql.count("?")
