"""Paper brackets: the entry's target and stop as two linked orders, one-cancels-other, with a trailing stop.

A bracket leg is placed as three rows of the `orders` table: the entry (the leg itself, under its client order
id) and its two exits, a sell (for a long) limit at `target_price` and a sell SL-M triggered at
`stoploss_price`, under `<client order id>.T` and `<client order id>.S`. The `brackets` table links them.

* The exits wait (`pending`) until the entry fills; then the target rests (`open`) and the stop waits for its
  trigger (`trigger_pending`), and later alerts' prices move them as any resting order (`book.py`). The price
  that filled the entry does not also move its exits: they see prices from the next alert on.
* When one exit fills, the other is cancelled in the same transaction: a stop left behind a closed position
  would open it again the wrong way.
* Trailing: the best price since the entry filled is the bracket's `anchor` (first the fill price). Each time
  an alert's price beats the anchor by whole `trailing_jump` steps, the stop and the anchor move by those steps
  (up for a long, down for a short); the stop never moves back. This runs before the price fills anything.
* Cancelling any part (by order id or by symbol), and EXIT_ALL (`cancel_brackets()`), cancels every part still
  pending or resting.

`Book` owns the transaction; this module only reads and writes the bracket rows through its `tables.Tables`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.broker import OrderState
from tvbridge.models import Side

if TYPE_CHECKING:
    from .models import PaperOrder
    from .tables import Row, Tables

TARGET_SUFFIX: Final = ".T"
STOP_SUFFIX: Final = ".S"
LIVE_STATES: Final = (OrderState.PENDING, OrderState.OPEN, OrderState.TRIGGER_PENDING)
"""A part in one of these can still fill: cancelling the bracket cancels it."""

SCHEMA: Final = """
    CREATE TABLE IF NOT EXISTS brackets (
        entry_id INTEGER PRIMARY KEY REFERENCES orders (id),
        target_id INTEGER REFERENCES orders (id),
        stop_id INTEGER REFERENCES orders (id),
        trailing_jump TEXT,
        anchor TEXT          -- the best price since the entry filled (trailing); NULL until known
    )
    """


@attrs.frozen(kw_only=True)
class Bracket:
    entry_id: int
    target_id: int | None
    stop_id: int | None
    trailing_jump: Decimal | None
    anchor: Decimal | None

    def part_ids(self) -> list[tuple[str, int]]:
        parts = [("entry", self.entry_id)]
        if self.target_id is not None:
            parts.append(("target", self.target_id))
        if self.stop_id is not None:
            parts.append(("stop_loss", self.stop_id))
        return parts

    def sibling(self, row_id: int) -> int | None:
        """The other exit of exit `row_id`; None for the entry."""
        if row_id == self.target_id:
            return self.stop_id
        if row_id == self.stop_id:
            return self.target_id
        return None


def trailed(side: Side, trigger: Decimal, anchor: Decimal, jump: Decimal, market: Decimal) -> tuple[Decimal, Decimal]:
    """(stop trigger, anchor) after `market`: moved by the whole `jump` steps the price went past the anchor in
    the position's favour (`side` is the entry's), else unchanged."""
    gained = market - anchor if side is Side.BUY else anchor - market
    steps = int(gained // jump) if gained > 0 else 0
    if steps <= 0:
        return trigger, anchor
    move = steps * jump if side is Side.BUY else -steps * jump
    return trigger + move, anchor + move


class BracketStore:
    """The `brackets` rows on the book's connection (inside the book's transaction)."""

    def __init__(self, tables: Tables) -> None:
        self._t = tables

    def add(self, entry_id: int, target_id: int | None, stop_id: int | None, trailing_jump: Decimal | None) -> None:
        self._t.execute(
            "INSERT INTO {brackets} (entry_id, target_id, stop_id, trailing_jump{account_col})"
            " VALUES (?, ?, ?, ?{account_val})",
            (entry_id, target_id, stop_id, None if trailing_jump is None else str(trailing_jump)),
        )

    def of(self, row_id: int) -> Bracket | None:
        """The bracket order `row_id` is a part of (entry or exit), or None."""
        row = self._t.fetchone(
            "SELECT * FROM {brackets} WHERE (entry_id = ? OR target_id = ? OR stop_id = ?){and_account}",
            (row_id, row_id, row_id),
        )
        return None if row is None else _bracket(row)

    def set_anchor(self, entry_id: int, anchor: Decimal | None) -> None:
        self._t.execute(
            "UPDATE {brackets} SET anchor = ? WHERE entry_id = ?{and_account}",
            (None if anchor is None else str(anchor), entry_id),
        )

    def trailing_in(self, exchange: str, contract: str) -> list[tuple[Bracket, int]]:
        """Brackets in the contract whose stop is waiting for its trigger and trails: (bracket, stop id)."""
        rows = self._t.fetchall(
            "SELECT b.* FROM {brackets} b JOIN {orders} o ON o.id = b.stop_id{join_account}"
            " WHERE o.exchange = ? AND o.contract = ? AND o.state = ?"
            " AND b.trailing_jump IS NOT NULL{and_b_account} ORDER BY b.entry_id",
            (exchange, contract, str(OrderState.TRIGGER_PENDING)),
        )
        return [(b, b.stop_id) for b in map(_bracket, rows) if b.stop_id is not None]

    def live_in(self, exchange: str, contract: str) -> list[Bracket]:
        """Brackets in the contract with a part that can still fill."""
        rows = self._t.fetchall(
            "SELECT DISTINCT b.* FROM {brackets} b JOIN {orders} o ON o.id IN"
            " (b.entry_id, b.target_id, b.stop_id){join_account}"
            " WHERE o.exchange = ? AND o.contract = ? AND o.state IN (?, ?, ?){and_b_account}"
            " ORDER BY b.entry_id",
            (exchange, contract, *(str(s) for s in LIVE_STATES)),
        )
        return [_bracket(row) for row in rows]


def part_of(order: PaperOrder, part: str) -> dict[str, str | None]:
    """One part as `OrderResult.details["bracket"]` lists it (`tvbridge.brackets`)."""
    price = order.trigger_price if part == "stop_loss" else order.average_price or order.price
    return {
        "part": part,
        "order_id": order.order_id,
        "state": str(order.state),
        "price": None if price is None or price == 0 else format(price, "f"),
    }


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _bracket(row: Row) -> Bracket:
    return Bracket(
        entry_id=int(row["entry_id"]),
        target_id=None if row["target_id"] is None else int(row["target_id"]),
        stop_id=None if row["stop_id"] is None else int(row["stop_id"]),
        trailing_jump=_decimal(row["trailing_jump"]),
        anchor=_decimal(row["anchor"]),
    )
