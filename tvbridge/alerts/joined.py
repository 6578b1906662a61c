"""An in-process broker's order booked inside the alert's own commit (issue 22): `record_plan(entry, join=...)`.

`flow.accept` asks the executor to prepare the first leg of each account whose broker joined the SQLite journal
(`JournalJoiner.join_journal`, the paper book) BEFORE the alert is recorded: its contract and size (`sizing.py`), the
capabilities, the halts and the risk limits (`executor.Executor.prepare_joined`), exactly the checks a send runs.
A leg that passes becomes an `OrderRequest` here; `Joined` is then the `join` of `record_plan`: inside the
journal's transaction, BEFORE the alert's rows, it calls `place_joined(conn, request)` for each, each in a
SAVEPOINT of its own, and keeps the outcome; the journal then inserts the alert and its legs as the join settled
them (`records.SettlingJoin`: one INSERT per row, no UPDATE of a row just inserted). The commit holds the
alert, its plan and the book's order: both or neither. A refusal, by the checks or by the book, books nothing;
the alert is still recorded, the leg failed.

A leg the checks refused is recorded `failed`, with its reason, in that same commit (not `sending`): after a
crash before the alert's results, recovery settles it as refused (`recovery._planned_result`) instead of looking
it up and sending it, past the very limit that refused it. So is a leg the book refused (a `BrokerError` other
than an unknown outcome: nothing booked) and a leg a halt stopped inside the commit.

The executor reads the outcomes after the commit (`Executor.run(joined=...)`) as it reads a `place()` answer:
an `OrderResult`, a `BrokerError` (failed, nothing booked: its SAVEPOINT was rolled back) or anything else (an
unknown outcome, resolved by `lookup()`). The group commit may run the join twice (after another alert's write
failed, it runs every write again, each in a SAVEPOINT): the last run's outcomes are the committed ones.

The plugin gets the connection as `JoinedSql` (statements only); `JoinGuard`, SQLite's authorizer installed once
on the journal's connection, refuses while it runs any statement that would begin or end the transaction or touch
the host's savepoints, however spelled.

ONE commit in all: when every leg of the alert is one of these joined first legs (one leg, every account joined),
`prepare_joined` gives the join a `finish` (`Executor._finish_joined`, pure: no I/O, no metrics). After the
bookings it turns the outcomes into the legs' results, the status and the answer exactly as the executor would
after the commit, and the join returns them as a `Finished` (`alerts/records.py`): the journal writes them in this
same transaction and marks the alert "order log row pending". When one outcome is not definite (an unknown
outcome, a plugin bug: only `lookup()` can settle it) `finish` gives None and nothing changes: the executor
settles it after the commit and hands the results over (`record_results`) as for any alert. So for the common
paper alert the commit holds: the alert, its plan, the book's order, the leg's result, the final status and the
answer. The executor then writes the order log row, tells the journal (`order_log_written`: the mark is cleared
by the next write's transaction) and answers (`Executor._run`).

Crash point `in_join` (`tvbridge/crashpoints.py`): the book's rows are written, the transaction not committed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog

from tvbridge.alerts.records import Finished, SettlingJoin
from tvbridge.broker import (
    BrokerError,
    BrokerUnknownOutcomeError,
    JoinedRows,
    JournalJoiner,
    OrderRequest,
    OrderResult,
)
from tvbridge.crashpoints import crash_point
from tvbridge.models import LegResult, OrderLeg

if TYPE_CHECKING:
    from tvbridge.alerts.records import AlertEntry

log = structlog.get_logger()


HOST_SAVEPOINTS: Final = frozenset({"joined_leg", "job"})
"""The savepoints the host opens around a plugin's call (`Joined.__call__`) and around each write of a group
retried one by one (`sqlite.commit_group`): not the plugin's to release or roll back to."""
PLUGIN_MARK: Final = "\n-- place_joined"
"""Appended to every statement of a joining plugin (`JoinedSql`), so it is compiled apart from the host's own.
SQLite asks the authorizer only when it compiles a statement, and sqlite3's statement cache hands out a compiled
statement again for the same text: without the mark a plugin's `COMMIT` (or `RELEASE joined_leg`) would get the
host's own, compiled while allowed, and pass unchecked. The host never runs a statement ending so."""


_CONNECTION_WIDE: Final = frozenset({sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH})
"""Statements whose effect stays on the journal's connection after the plugin's call (another file attached to
every later alert's transaction); with a PRAGMA that sets a value (`locking_mode`, `query_only`, `busy_timeout`,
`writable_schema`...: later writes of every alert fail or change meaning), refused while a plugin runs. A PRAGMA
without a value (`PRAGMA busy_timeout` reads it) and those whose argument names what to read
(`_PRAGMAS_THAT_READ`) stay allowed."""
_PRAGMAS_THAT_READ: Final = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list", "foreign_key_list"}
)


class JoinGuard:
    """sqlite3's authorizer on the journal's connection (`Connection.set_authorizer`), installed once, with a flag
    its callback reads: while a joining plugin runs (`enter()` to `leave()`), SQLite refuses to compile a statement
    that begins or ends a transaction (BEGIN, COMMIT, END, ROLLBACK: `SQLITE_TRANSACTION`) or that touches the
    host's own savepoints (`HOST_SAVEPOINTS`), whatever its spelling: comments, a leading `;`, a byte-order mark.
    The plugin's own SAVEPOINT, RELEASE and ROLLBACK TO stay allowed (the paper book writes in one). The rest of
    the time it allows everything.

    Installed once rather than around each call: setting an authorizer expires every compiled statement of the
    connection (each is compiled again at its next use, the host's included), which per alert cost more than the
    check itself (see docs/plugins.md). One guard per executor, one connection: a guard seeing another
    connection (a journal opened again) installs itself there too."""

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._plugin = False
        self._lent: JoinedSql | None = None

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None) -> int:
        if not self._plugin:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_TRANSACTION:
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_SAVEPOINT and (arg2 or "").lower() in HOST_SAVEPOINTS:
            return sqlite3.SQLITE_DENY
        if action in _CONNECTION_WIDE or (
            action == sqlite3.SQLITE_PRAGMA and arg2 is not None and (arg1 or "").lower() not in _PRAGMAS_THAT_READ
        ):
            return sqlite3.SQLITE_DENY  # settings that outlive the call: the host's connection, not the plugin's
        return sqlite3.SQLITE_OK

    def enter(self, conn: sqlite3.Connection) -> JoinedSql:
        """The connection as the plugin gets it, checked until `leave()` (a try/finally around the plugin's call:
        cheaper than a context manager, on every joined alert)."""
        if self._conn is not conn:
            conn.set_authorizer(self._authorize)
            self._conn = conn
        self._plugin = True
        self._lent = JoinedSql(conn)
        return self._lent

    def leave(self) -> None:
        self._plugin = False
        if self._lent is not None:
            self._lent.end()  # kept by the plugin, it would run statements unchecked from anywhere, any time
            self._lent = None


class JoinedSql:
    """The journal's connection as `place_joined` gets it (`broker.JoinedConnection`): statements, never the
    transaction, which holds the alert and is the journal's to commit. A plugin's `conn.commit()` (a habit of
    sqlite3 code) would commit the alert half-written and make the host answer 503 "not recorded" for an alert
    that is; here there is no `commit()`, `rollback()` nor `executescript()`, and SQLite itself refuses a statement
    that would begin or end the transaction (`JoinGuard`): `sqlite3.ProgrammingError`, before anything runs."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn

    def end(self) -> None:
        """The plugin's call is over (`JoinGuard.leave`): every later statement raises. Kept and used from
        `health()` or a task, it ran outside any check (a `PRAGMA query_only = 1` failed every later alert), and
        a COMMIT it ran there would be compiled unchecked and then reused, checked never, inside the next call."""
        self._conn = None

    def _lent(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the journal's connection is the plugin's only during its place_joined call")
        return self._conn

    def execute(self, sql: str, parameters: Any = (), /) -> JoinedRows:
        try:
            return _Rows(self._lent().execute(sql + PLUGIN_MARK, parameters))
        except sqlite3.DatabaseError as e:
            _say_refused(e)
            raise

    def executemany(self, sql: str, parameters: Any, /) -> JoinedRows:
        try:
            return _Rows(self._lent().executemany(sql + PLUGIN_MARK, parameters))
        except sqlite3.DatabaseError as e:
            _say_refused(e)
            raise


class _Rows:
    """A plugin statement's answer (`broker.JoinedRows`): its rows and counts only. The cursor itself would let
    the plugin run statements past the guard: `cursor.execute("COMMIT")` or `cursor.connection.execute(...)` get
    the host's own compiled COMMIT (or RELEASE) from sqlite3's statement cache, which the authorizer never sees
    again."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def fetchmany(self, size: int = 1, /) -> list[Any]:
        return self._cursor.fetchmany(size)

    def __iter__(self) -> Iterator[Any]:
        yield from self._cursor  # a generator: `iter(cursor)` is the cursor itself, `execute()` and all

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def description(self) -> Any:
        return self._cursor.description


def _say_refused(error: sqlite3.DatabaseError) -> None:
    """The authorizer's refusal ("not authorized") in words; any other error is left to go on as it was."""
    if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_AUTH:
        raise sqlite3.ProgrammingError(
            "refused inside the journal's transaction: beginning or ending it, the journal's own savepoints, ATTACH,"
            " DETACH and a PRAGMA that sets a value are not the plugin's"
        ) from error


class JoinEndedTransactionError(Exception):
    """A joining plugin ended the journal's transaction (reaching past `JoinedSql`): the alert's write fails."""


class HaltedError(Exception):
    """A joined leg the kill switch (or its strategy's halt) stopped inside the commit: nothing booked."""


@attrs.frozen(kw_only=True)
class JoinedLeg:
    """One account's first leg, checked: the request to book, or the refusal (nothing booked)."""

    account: str
    number: int
    leg: OrderLeg
    """The leg as checked (sized for the account)."""
    request: OrderRequest | None
    refused: LegResult | None = None
    contract: str | None = None
    """The contract `contracts.py` chose, for the leg's message (as `executor.Prepared`)."""
    note: str | None = None
    """How the quantity was sized (`sizing.py`), for the leg's message."""


@attrs.define(kw_only=True)
class Joined(SettlingJoin):
    """The `join` of `record_plan` for the joined legs of one alert; `outcomes` (and `finished`) once it has run.
    Not frozen: it keeps what its run inside the commit decided, for the executor to read after the commit.
    A `SettlingJoin`: it runs before the alert's rows, which are then inserted as it settled them."""

    legs: tuple[JoinedLeg, ...]
    plugins: Mapping[str, JournalJoiner]
    """Per account, the plugin itself (not the host's guard around it: `place_joined` is synchronous SQL)."""
    halted: Callable[[], str | None] | None = None
    """The kill switch and the running strategy's halt, asked again inside the commit (`RiskGuard.halted`): the
    refusal, or None."""
    guard: JoinGuard
    """What the plugins may do with the journal's connection (`JoinGuard`): the executor's one guard, so the
    authorizer is installed once, not per alert."""
    outcomes: dict[tuple[str, int], OrderResult | Exception] = attrs.field(factory=dict)
    booked_s: dict[tuple[str, int], float] = attrs.field(factory=dict)
    """Seconds each `place_joined` call took (the booking, not the commit), as `outcomes`: the broker-call
    histogram's figure for a joined leg (`Executor._observe_bookings`, after the commit)."""
    finish: Callable[[Joined], Finished | None] | None = None
    """The whole alert's outcome from `outcomes` when every leg is joined (`Executor._finish_joined`): None when
    one is not definite. Runs inside the commit: pure."""
    finished: Finished | None = None
    """What `finish` gave on the join's last run: written in the alert's commit (`record_plan`)."""
    failed: dict[tuple[str, int], str] = attrs.field(factory=dict)
    """The legs the join's last run refused (a halt read inside the commit, the book's refusal), with the reason:
    recorded `failed` by `settled`, in the same commit."""

    def leg(self, account: str, number: int) -> JoinedLeg | None:
        for leg in self.legs:
            if leg.account == account and leg.number == number:
                return leg
        return None

    def recorded(self, entry: AlertEntry) -> AlertEntry:
        """`entry` with each leg the checks refused recorded `failed` with its reason instead of `sending`."""
        refused = {(leg.account, leg.number): leg.refused for leg in self.legs if leg.refused is not None}
        if not refused:
            return entry
        legs = tuple(
            attrs.evolve(leg, state="failed", message=result.message)
            if (result := refused.get((leg.account, leg.leg_number))) is not None
            else leg
            for leg in entry.legs
        )
        return attrs.evolve(entry, legs=legs)

    def settled(self, entry: AlertEntry) -> AlertEntry:
        """`entry` with each leg the last run refused (`failed`) recorded `failed` with its reason: the journal
        inserts the legs after the join has run (`SettlingJoin`), so they are written so at once."""
        if not self.failed:
            return entry
        legs = tuple(
            attrs.evolve(leg, state="failed", message=message)
            if (message := self.failed.get((leg.account, leg.leg_number))) is not None
            else leg
            for leg in entry.legs
        )
        return attrs.evolve(entry, legs=legs)

    def __call__(self, conn: sqlite3.Connection) -> Finished | None:
        """Inside the journal's transaction, before the alert's rows (`SettlingJoin`): book each request in a
        SAVEPOINT of its own, so whatever a plugin leaves half-written when it raises is undone here, whatever it
        does itself.

        The halts are read again first: the checks ran before the alert waited for its commit (behind another
        writer, a slow fsync), and a halt set meanwhile must stop it as it stops a send. A halted leg is recorded
        `failed` with the halt's reason in this same commit (`settled`: recovery settles it as refused, never
        sends it).

        Returns `finish`'s `Finished` (the journal writes it in this transaction), or None."""
        self.failed = {}  # a second run (the group commit's one by one) decides afresh
        halted = self.halted() if self.halted is not None else None
        for leg in self.legs:
            if leg.request is None:
                continue
            outcome: OrderResult | Exception
            if halted is not None:
                self.failed[leg.account, leg.number] = halted
                self.outcomes[leg.account, leg.number] = HaltedError(halted)
                continue
            conn.execute("SAVEPOINT joined_leg")
            started = time.perf_counter()
            try:
                outcome = self.plugins[leg.account].place_joined(self.guard.enter(conn), leg.request)
            except Exception as e:  # noqa: BLE001 - the executor maps it as it maps place()'s errors
                outcome = e
            finally:
                self.guard.leave()
                self.booked_s[leg.account, leg.number] = time.perf_counter() - started
            if not conn.in_transaction:  # whatever it did is on disk or gone: never answer for it
                raise JoinEndedTransactionError(f"the {leg.account} plugin ended the journal's transaction")
            if isinstance(outcome, Exception):
                conn.execute("ROLLBACK TO joined_leg")
            conn.execute("RELEASE joined_leg")
            if isinstance(outcome, BrokerError) and not isinstance(outcome, BrokerUnknownOutcomeError):
                # refused by the book, nothing booked: `failed` in this commit, as a refusal by the checks or a
                # halt (left `sending`, a crash before the results would have recovery look it up, not find it,
                # and send it: the order of a leg answered refused)
                self.failed[leg.account, leg.number] = str(outcome)
            self.outcomes[leg.account, leg.number] = outcome
        self.finished = None
        if self.finish is not None:
            try:
                self.finished = self.finish(self)
            except Exception:  # a bug there must not cost the alert its commit: the executor settles it after
                log.exception("joined.finish_failed")
        crash_point("in_join")
        return self.finished
