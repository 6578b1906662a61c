"""An in-process broker's order booked inside the alert's own commit (issue 22): `record_plan(entry, join=...)`.

`flow.accept` asks the executor to prepare the first leg of each account whose broker joined the SQLite journal
(`JournalJoiner.join_journal`, the paper book) BEFORE the alert is recorded: its contract and size (`sizing.py`), the
capabilities, the halts and the risk limits (`executor.Executor.prepare_joined`), exactly the checks a send runs.
A leg that passes becomes an `OrderRequest` here; `Joined` is then the `join` of `record_plan`: inside the
journal's transaction, after the alert's rows, it calls `place_joined(conn, request)` for each, each in a
SAVEPOINT of its own, and keeps the outcome. The commit holds the alert, its plan and the book's order: both or
neither. A refusal, by the checks or by the book, books nothing; the alert is still recorded, the leg failed.

A leg the checks refused is recorded `failed`, with its reason, in that same commit (not `sending`): after a
crash before the alert's results, recovery settles it as refused (`recovery._planned_result`) instead of looking
it up and sending it, past the very limit that refused it.

The executor reads the outcomes after the commit (`Executor.run(joined=...)`) as it reads a `place()` answer:
an `OrderResult`, a `BrokerError` (failed, nothing booked: its SAVEPOINT was rolled back) or anything else (an
unknown outcome, resolved by `lookup()`). The group commit may run the join twice (after another alert's write
failed, it runs every write again, each in a SAVEPOINT): the last run's outcomes are the committed ones.

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

import functools
import re
import sqlite3
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from tvbridge.alerts.records import Finished
from tvbridge.broker import JournalJoiner, OrderRequest, OrderResult
from tvbridge.crashpoints import crash_point
from tvbridge.models import LegResult, OrderLeg

if TYPE_CHECKING:
    from tvbridge.alerts.records import AlertEntry

log = structlog.get_logger()


_FIRST_WORDS = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?(?:\*/|\Z))*(\w*)\s*(\w*)\s*(\w*)", re.DOTALL)


@functools.lru_cache(maxsize=256)
def _ends_transaction(sql: str) -> bool:
    """Whether `sql` begins or ends a transaction (COMMIT, END, BEGIN, ROLLBACK but ROLLBACK [TRANSACTION] TO)."""
    match = _FIRST_WORDS.match(sql)
    words = [w.upper() for w in match.groups()] if match else []
    if not words or words[0] in {"COMMIT", "END", "BEGIN"}:
        return bool(words)
    if words[0] != "ROLLBACK":
        return False
    rest = words[1:] if words[1] != "TRANSACTION" else words[2:]
    return rest[0] != "TO"


class JoinedSql:
    """The journal's connection as `place_joined` gets it (`broker.JoinedConnection`): statements, never the
    transaction, which holds the alert and is the journal's to commit. A plugin's `conn.commit()` (a habit of
    sqlite3 code) would commit the alert half-written and make the host answer 503 "not recorded" for an alert
    that is; here there is no `commit()` and a COMMIT statement raises before it runs."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if _ends_transaction(sql):
            raise sqlite3.ProgrammingError("the journal's transaction is not the plugin's to begin or end")
        return self._conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        if _ends_transaction(sql):
            raise sqlite3.ProgrammingError("the journal's transaction is not the plugin's to begin or end")
        return self._conn.executemany(sql, parameters)


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
class Joined:
    """The `join` of `record_plan` for the joined legs of one alert; `outcomes` (and `finished`) once it has run.
    Not frozen: it keeps what its run inside the commit decided, for the executor to read after the commit."""

    legs: tuple[JoinedLeg, ...]
    plugins: Mapping[str, JournalJoiner]
    """Per account, the plugin itself (not the host's guard around it: `place_joined` is synchronous SQL)."""
    halted: Callable[[], str | None] | None = None
    """The kill switch and the running strategy's halt, asked again inside the commit (`RiskGuard.halted`): the
    refusal, or None."""
    outcomes: dict[tuple[str, int], OrderResult | Exception] = attrs.field(factory=dict)
    finish: Callable[[Joined], Finished | None] | None = None
    """The whole alert's outcome from `outcomes` when every leg is joined (`Executor._finish_joined`): None when
    one is not definite. Runs inside the commit: pure."""
    finished: Finished | None = None
    """What `finish` gave on the join's last run: written in the alert's commit (`record_plan`)."""

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

    def __call__(self, conn: sqlite3.Connection) -> Finished | None:
        """Inside the journal's transaction: book each request in a SAVEPOINT of its own, so whatever a plugin
        leaves half-written when it raises is undone here, whatever it does itself.

        The halts are read again first: the checks ran before the alert waited for its commit (behind another
        writer, a slow fsync), and a halt set meanwhile must stop it as it stops a send. A halted leg is recorded
        `failed` with the halt's reason in this same commit (recovery settles it as refused, never sends it).

        Returns `finish`'s `Finished` (the journal writes it in this transaction), or None."""
        halted = self.halted() if self.halted is not None else None
        for leg in self.legs:
            if leg.request is None:
                continue
            outcome: OrderResult | Exception
            if halted is not None:
                conn.execute(
                    "UPDATE legs SET state = 'failed', message = ?"
                    " WHERE alert_id = ? AND account = ? AND leg_number = ?",
                    (halted, leg.request.alert_id, leg.account, leg.number),
                )
                self.outcomes[leg.account, leg.number] = HaltedError(halted)
                continue
            conn.execute("SAVEPOINT joined_leg")
            try:
                outcome = self.plugins[leg.account].place_joined(JoinedSql(conn), leg.request)
            except Exception as e:  # noqa: BLE001 - the executor maps it as it maps place()'s errors
                outcome = e
            if not conn.in_transaction:  # whatever it did is on disk or gone: never answer for it
                raise JoinEndedTransactionError(f"the {leg.account} plugin ended the journal's transaction")
            if isinstance(outcome, Exception):
                conn.execute("ROLLBACK TO joined_leg")
            conn.execute("RELEASE joined_leg")
            self.outcomes[leg.account, leg.number] = outcome
        self.finished = None
        if self.finish is not None:
            try:
                self.finished = self.finish(self)
            except Exception:  # a bug there must not cost the alert its commit: the executor settles it after
                log.exception("joined.finish_failed")
        crash_point("in_join")
        return self.finished
