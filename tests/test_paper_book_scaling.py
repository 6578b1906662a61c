"""The paper book in the journal's file does per alert the same work with a thousand orders behind it as with none.

Every priced leg (a TradingView alert's `{{close}}`) looks for the resting orders its price crosses in its
contract, and a cancel by symbol for that symbol's resting orders. In the journal's tables (keyed by account, then
id) SQLite chose the primary key for the queries' `ORDER BY id` and read every order the account ever had,
filled ones included, to find the few resting in one contract: a cost growing with the book, on the event loop,
for each alert. Measured here as SQLite's own work (virtual machine steps, `set_progress_handler`) for one alert,
on a real file, with an empty book and with 1,500 filled orders in other contracts.
"""

from __future__ import annotations

import functools
import sqlite3
from decimal import Decimal
from typing import TYPE_CHECKING, TypeVar

import attrs
from helpers import typed_leg

from tvbridge.broker import CancelRequest, OrderRequest, OrderState
from tvbridge.models import CancelLeg, OrderLeg, OrderType
from tvbridge_brokers.paper.book import Book
from tvbridge_brokers.paper.tables import JournalTables, create_journal_tables

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

T = TypeVar("T")
STEPS_PER_CALL = 10
"""SQLite calls the progress handler every this many virtual machine steps."""


def order_leg(symbol: str, order_type: OrderType = OrderType.MARKET, price: str = "0") -> OrderLeg:
    """A buy of 1 on NSE, intraday."""
    return typed_leg(symbol=symbol, order_type=order_type, quantity=1, price=Decimal(price))


def journal_book(path: Path, filled: int) -> tuple[sqlite3.Connection, Book]:
    """A journal's file with the paper tables, `filled` filled orders in other contracts, and two resting limit
    orders in RELIANCE, buy limits at 80 and 85 (what a priced RELIANCE leg must look at)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row  # as the journal's connection
    conn.execute("PRAGMA journal_mode=WAL")
    create_journal_tables(conn)
    book = Book(JournalTables(conn, "paper"), {})
    conn.execute("BEGIN")
    for i in range(filled):
        book.place(OrderRequest(client_order_id=f"f{i}", alert_id=f"f{i}", leg_number=1, leg=order_leg(f"S{i % 7}")))
    for i, limit in enumerate(("80", "85")):  # the second's price (85) does not cross the first's limit
        rests = order_leg("RELIANCE", OrderType.LIMIT, limit)
        book.place(OrderRequest(client_order_id=f"r{i}", alert_id=f"r{i}", leg_number=1, leg=rests))
    conn.execute("COMMIT")
    return conn, book


def steps(conn: sqlite3.Connection, call: Callable[[], T]) -> tuple[int, T]:
    """SQLite's virtual machine steps (to `STEPS_PER_CALL`) that `call` ran on `conn`, and what it returned."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0  # go on

    conn.set_progress_handler(count, STEPS_PER_CALL)
    try:
        returned = call()
    finally:
        conn.set_progress_handler(None, STEPS_PER_CALL)
    return counted[0] * STEPS_PER_CALL, returned


def test_a_priced_leg_does_not_read_the_whole_book(tmp_path: Path) -> None:
    """A priced RELIANCE leg's booking (the resting orders its price crosses, then the order) costs about the same
    with 1,500 filled orders behind it as with none; it fills the RELIANCE limit orders its price crosses."""
    work = {}
    for filled in (0, 1500):
        conn, book = journal_book(tmp_path / f"journal-{filled}.sqlite3", filled)
        request = OrderRequest(client_order_id="p", alert_id="p", leg_number=1, leg=order_leg("RELIANCE", price="79"))
        conn.execute("BEGIN")
        work[filled], result = steps(conn, functools.partial(book.place, request))
        conn.execute("COMMIT")
        assert result.details["moved_orders"] == [f"PAPER-{filled + 1:06d}", f"PAPER-{filled + 2:06d}"]
        conn.close()
    assert work[1500] < work[0] + 500, work  # reading every order of the account was ~10,000 steps more


def test_a_cancel_by_symbol_does_not_read_the_whole_book(tmp_path: Path) -> None:
    """A cancel of RELIANCE's resting orders costs about the same with 1,500 filled orders behind it as with none,
    and cancels both."""
    work = {}
    for filled in (0, 1500):
        conn, book = journal_book(tmp_path / f"journal-{filled}.sqlite3", filled)
        request = CancelRequest(alert_id="c", leg_number=1, leg=CancelLeg(symbol="RELIANCE"))
        conn.execute("BEGIN")
        work[filled], cancelled = steps(conn, functools.partial(book.cancel, request))
        conn.execute("COMMIT")
        assert [(r.order_id, r.state) for r in cancelled] == [
            (f"PAPER-{filled + n:06d}", OrderState.CANCELLED) for n in (1, 2)
        ]
        conn.close()
    assert work[1500] < work[0] + 500, work


def test_a_plain_order_asks_nothing_of_the_brackets(tmp_path: Path) -> None:
    """A new order that is not a bracket is part of none: its booking (filled at once) runs no bracket query; a
    bracket entry's still links and lists its exits."""
    conn, book = journal_book(tmp_path / "journal.sqlite3", 3)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    conn.execute("BEGIN")
    plain = book.place(OrderRequest(client_order_id="p", alert_id="p", leg_number=1, leg=order_leg("INFY")))
    conn.execute("COMMIT")
    assert plain.state is OrderState.FILLED
    assert "bracket" not in plain.details
    assert statements
    assert [s for s in statements if "paper_brackets" in s] == []
    entry = attrs.evolve(order_leg("INFY"), target_price=Decimal(120), stoploss_price=Decimal(90))
    conn.execute("BEGIN")
    bracket = book.place(OrderRequest(client_order_id="b", alert_id="b", leg_number=1, leg=entry))
    conn.execute("COMMIT")
    conn.set_trace_callback(None)
    assert [(part["part"], part["state"]) for part in bracket.details["bracket"]] == [  # type: ignore[attr-defined]
        ("entry", "filled"),
        ("target", "open"),
        ("stop_loss", "trigger_pending"),
    ]
    conn.close()
