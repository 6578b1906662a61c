"""The paper account's order book: order matching and positions, over a storage seam. Synchronous by design.

The rules live here, once; where the rows live is `tables.py`: the account's SQLite file (the default), or
tvbridge's PostgreSQL database shared by every instance (`[journal] url`). The SQL is written once, with markers
each store spells its own way.

`Book` runs on one thread only, the event loop's or the broker's single worker thread (`broker.py` decides); the
connection is created on that thread and sqlite3's `check_same_thread` keeps it there. Each
`place()` / `cancel()` is one write transaction (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: under the account's
advisory lock): the duplicate check, the fills the leg's price causes and the new order commit together or not
at all, and the lock also serialises a second process (or instance) writing the same book, so one client order id
can never become two orders.

Durability: WAL, with the account's `synchronous` setting. "normal" (the default) survives a crash of the process
(kill -9) but may lose the last commits on a power cut or OS crash; then `lookup()` would answer "no such order"
for an order tvbridge already reported as placed, and a retry would place it a second time (a simulated order,
on paper). "full" closes that gap at one fsync per order (about 3.5 ms on the machines we measured), which would
dominate the webhook's latency.

How the simulation decides (paper has no market feed; it knows the configured reference prices and the prices
that alerts carry):

* MKT fills at once, whole: at the leg's price if > 0, else at the contract's reference price, else at an
  unknown price (`average_price` None, and the message says so).
* Every leg whose price is > 0 (any order type) is taken as the contract's latest market price for the orders
  already resting on it (same exchange and contract, any product). Before the new order is handled, the resting
  orders that price crosses fill or trigger, oldest first: a buy limit when price <= limit, a sell limit when
  price >= limit; a buy stop when price >= trigger, a sell stop when price <= trigger. The price is not stored:
  only alerts move resting orders.
* A new LMT, SL or SL-M is checked against the reference price only, never against its own price: that price is
  the level the trader chose, and taking it as the market would fill every limit order on arrival. Without a
  reference price a new limit rests (OPEN) and a new stop waits (TRIGGER_PENDING).
* Fill prices: an order that is marketable on arrival fills at the reference price (at least as good as its
  limit). A resting limit fills at its limit price, a triggered SL-M at the price that triggered it: we saw a price
  cross the order, not what the book held, so we take the price less favourable to the trader; practice results
  must not flatter a strategy. A triggered SL becomes a limit at its price (OPEN) and fills at once if the
  triggering price also crosses that limit.
* `manage_position = EXIT_ALL` is not handled here: tvbridge reads the position through `positions()` and sends
  the plain closing order, exactly as for a live broker (`tvbridge/positions.py`). So the exit's size is the
  position before this leg's price moves resting orders. A leg that still carries `manage_position` is refused.
  (`noops` rows, written by older versions for an EXIT_ALL that found nothing, are still answered by `lookup()`.)
* Orders fill whole or not at all; there are no partial fills, fees or slippage.
* A bracket leg (`target_price` / `stoploss_price` / `trailing_jump`) is the entry plus two linked exits,
  one-cancels-other, the stop trailing: see `brackets.py`.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.brackets import is_bracket
from tvbridge.broker import (
    BrokerRejectedError,
    BrokerUnavailableError,
    BrokerUnsupportedError,
    OrderResult,
    OrderState,
)
from tvbridge.filemode import create_private
from tvbridge.models import (
    Exchange,
    Instrument,
    OptionType,
    OrderType,
    Product,
    Side,
)
from tvbridge.sqlite import WAL_SIZE_LIMIT_BYTES

from .brackets import SCHEMA as BRACKETS_SCHEMA
from .brackets import STOP_SUFFIX, TARGET_SUFFIX, Bracket, BracketStore, part_of, trailed
from .models import PaperOrder, PaperPosition
from .tables import Row, SqliteTables, Tables

if TYPE_CHECKING:
    from collections.abc import Mapping
    from contextlib import AbstractContextManager
    from pathlib import Path

    from tvbridge.broker import CancelRequest, OrderRequest
    from tvbridge.models import OrderLeg

SCHEMA_VERSION: Final = 2
"""2: the `brackets` table (a version 1 file gets it when opened)."""
ORDER_ID_PREFIX: Final = "PAPER-"
BUSY_TIMEOUT_S: Final = 1.0
"""How long a write waits for another process holding the file; well inside TradingView's 3 s."""

RESTING: Final = (OrderState.OPEN, OrderState.TRIGGER_PENDING)
RESTING_IN_CONTRACT: Final = (
    "SELECT * FROM {orders} WHERE exchange = ? AND contract = ? AND state IN (?, ?){and_account} ORDER BY +id"
)
"""The resting orders a priced leg may cross, oldest first. `+id`, not `id`: in the journal's file the orders are
keyed (account, id), and to return them in that order without sorting SQLite read every order the account ever
had (filled ones included) instead of the few resting in the contract (`orders_by_contract`): a cost per priced
alert that grew with the book. The expression makes it search the contract's index and sort what it found."""

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS orders (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an order id is never handed out twice
        client_order_id TEXT NOT NULL UNIQUE,  -- the idempotency key: one order per client order id
        alert_id TEXT NOT NULL,
        leg_number INTEGER NOT NULL,
        exchange TEXT NOT NULL,
        symbol TEXT NOT NULL,
        contract TEXT NOT NULL,
        instrument TEXT NOT NULL,
        option_type TEXT,
        strike_price TEXT,
        expiry_date TEXT,
        product TEXT NOT NULL,
        side TEXT NOT NULL,
        order_type TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity > 0),
        price TEXT NOT NULL,                   -- Decimal as text: exact, unlike REAL
        trigger_price TEXT,
        state TEXT NOT NULL,
        filled_quantity INTEGER NOT NULL,
        average_price TEXT,
        message TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS orders_by_contract ON orders (exchange, contract, state)",
    "CREATE INDEX IF NOT EXISTS orders_by_symbol ON orders (symbol, state)",
    """
    CREATE TABLE IF NOT EXISTS noops (          -- EXIT_ALL legs that found nothing to close
        client_order_id TEXT PRIMARY KEY,
        alert_id TEXT NOT NULL,
        leg_number INTEGER NOT NULL,
        message TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS positions (
        exchange TEXT NOT NULL,
        contract TEXT NOT NULL,
        product TEXT NOT NULL,
        symbol TEXT NOT NULL,
        instrument TEXT NOT NULL,
        option_type TEXT,
        strike_price TEXT,
        expiry_date TEXT,
        net_quantity INTEGER NOT NULL,
        average_price TEXT,
        realized_pnl TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (exchange, contract, product)
    )
    """,
    BRACKETS_SCHEMA,
)


def contract_key(leg: OrderLeg) -> str:
    """The contract a leg trades, as one readable string: `RELIANCE`, `NIFTY FUT 2026-11-27`,
    `NIFTY 2026-11-27 24000 CE`. Also the name reference prices are configured under."""
    parts = [leg.symbol]
    if leg.instrument is Instrument.FUTURE:
        parts.append("FUT")
    if leg.expiry_date is not None:
        parts.append(leg.expiry_date.isoformat())
    if leg.strike_price is not None:
        parts.append(_fmt(leg.strike_price.normalize()))
    if leg.option_type is not None:
        parts.append(str(leg.option_type))
    elif leg.instrument in (Instrument.CALL, Instrument.PUT):
        parts.append(str(leg.instrument))
    return " ".join(parts)


def format_order_id(row_id: int) -> str:
    return f"{ORDER_ID_PREFIX}{row_id:06d}"


def parse_order_id(order_id: str) -> int | None:
    number = order_id.strip().upper().removeprefix(ORDER_ID_PREFIX)
    return int(number) if number.isdigit() and number.isascii() else None


def net_fill(
    net: int, average: Decimal | None, pnl: Decimal | None, signed_quantity: int, price: Decimal | None
) -> tuple[int, Decimal | None, Decimal | None]:
    """A position after one fill: (net quantity, average entry price, realized P&L).

    Adding to a position (or opening one) moves the average; reducing it books P&L at the old average; going
    through zero opens the remainder at the fill's price. An unknown price makes what it touches unknown (None).
    """
    new_net = net + signed_quantity
    if net == 0 or (net > 0) == (signed_quantity > 0):
        if price is None or (net != 0 and average is None):
            return new_net, None, pnl
        held = abs(net) * average if average is not None else Decimal(0)
        return new_net, (held + abs(signed_quantity) * price) / abs(new_net), pnl
    closed = min(abs(net), abs(signed_quantity))
    direction = 1 if net > 0 else -1
    if pnl is not None and price is not None and average is not None:
        pnl += closed * (price - average) * direction
    else:
        pnl = None
    if new_net == 0:
        return 0, None, pnl
    if (new_net > 0) == (net > 0):
        return new_net, average, pnl
    return new_net, price, pnl


def _limit_crossed(side: Side, market: Decimal, limit: Decimal) -> bool:
    return market <= limit if side is Side.BUY else market >= limit


def _stop_triggered(side: Side, market: Decimal, trigger: Decimal) -> bool:
    return market >= trigger if side is Side.BUY else market <= trigger


def _fmt(value: Decimal) -> str:
    return format(value, "f")


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _now() -> datetime:
    return datetime.now(UTC)


def _side_word(side: Side) -> str:
    return "buy" if side is Side.BUY else "sell"


@attrs.frozen(kw_only=True)
class _Decision:
    """What happens to a new order on arrival: its side and size (EXIT_ALL changes them), state and fill."""

    side: Side
    quantity: int
    state: OrderState
    fill_price: Decimal | None
    message: str


class Book:
    """The paper account's orders and positions, in its SQLite file or the shared database (`tables.Tables`).
    Not thread-safe: one thread only."""

    def __init__(self, tables: Tables, prices: Mapping[str, Decimal]) -> None:
        self._t = tables
        self._prices = prices
        self._brackets = BracketStore(tables)

    @classmethod
    def open(cls, path: Path, prices: Mapping[str, Decimal], synchronous: str = "normal") -> Book:
        """Open (creating if needed) the database; raise `BrokerUnavailableError` if it cannot be used."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so a transaction is exactly
            # what the code says, never sqlite3's implicit deferred one
            create_private(path)  # 0600 whatever the umask; SQLite gives -wal and -shm the same mode
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise BrokerUnavailableError(f"paper database {path} cannot be opened: {e}") from e
        try:
            db.row_factory = sqlite3.Row
            _use_wal(db, path)
            db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            if synchronous != "full":  # on the event loop: checkpoints (the fsyncs) run on a thread of their own
                db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
            _migrate(db, path)
        except sqlite3.Error as e:
            db.close()
            raise BrokerUnavailableError(f"paper database {path} cannot be opened: {e}") from e
        except BaseException:
            db.close()
            raise
        return cls(SqliteTables(db), prices)

    def close(self) -> None:
        self._t.close()

    # -- writes -------------------------------------------------------------------------------------------------

    def place(self, request: OrderRequest) -> OrderResult:
        with self._write():
            existing = self._find(request.client_order_id)
            if existing is not None:
                return _as_duplicate(existing)
            leg = request.leg
            _check_leg(leg)
            if leg.manage_position is not None:
                raise BrokerUnsupportedError(
                    f"manage_position {leg.manage_position} reached the paper broker: tvbridge turns it into the"
                    " closing order before place(); nothing was placed"
                )
            now = _now()
            contract = contract_key(leg)
            moved = self._cross(leg, contract, request, now) if leg.price > 0 else []
            _check_stop_limit(leg, leg.side)
            decision = self._decide(leg, leg.side, leg.quantity, contract)
            order = self._insert(request, contract, decision, now)
            bracket = is_bracket(leg)
            if bracket:
                self._add_bracket(request, contract, order, now)
            if order.state is OrderState.FILLED:
                self._apply_to_position(order, order.average_price, now)
                if bracket:  # a new order is part of no bracket but its own: no look-up (two queries per order)
                    self._on_filled(order, order.average_price, now)
            result = self._result(order) if bracket else order.to_result()
            return _with_moved(result, leg, moved, self._entries_of(moved))

    def cancel(self, request: CancelRequest) -> list[OrderResult]:
        leg = request.leg
        with self._write():
            now = _now()
            why = f"cancelled by alert {request.alert_id} leg {request.leg_number}"
            if leg.order_id:
                return self._cancel_one(request, now, why)
            if not leg.symbol:
                raise BrokerRejectedError("cancel needs an order_id or a symbol: nothing was cancelled")
            sql = "SELECT * FROM {orders} WHERE symbol = ? AND state IN (?, ?)"
            params: list[object] = [leg.symbol, *RESTING]
            if leg.exchange is not None:
                sql += " AND exchange = ?"
                params.append(str(leg.exchange))
            if leg.side is not None:
                sql += " AND side = ?"
                params.append(str(leg.side))
            rows = self._t.fetchall(sql + "{and_account} ORDER BY +id", params)  # +id: see RESTING_IN_CONTRACT
            done: set[str] = set()
            results: list[OrderResult] = []
            for row in rows:
                order = _order(row)
                if order.order_id in done:
                    continue
                bracket = self._brackets.of(_row_id(order))
                cancelled = [self._set_cancelled(order, why, now)] if bracket is None else self._end(bracket, why, now)
                done.update(c.order_id for c in cancelled)
                results.extend(c.to_result() for c in cancelled)
            return results

    def cancel_brackets(self, leg: OrderLeg, why: str) -> list[OrderResult]:
        """Cancel every part still pending or resting of the brackets in `leg`'s contract (EXIT_ALL first)."""
        with self._write():
            now = _now()
            results: list[OrderResult] = []
            for bracket in self._brackets.live_in(str(leg.exchange), contract_key(leg)):
                results.extend(c.to_result() for c in self._end(bracket, why, now))
            return results

    # -- reads --------------------------------------------------------------------------------------------------

    def lookup(self, client_order_id: str) -> OrderResult | None:
        with self._t.reading():
            order = self._find_order(client_order_id)
            if order is not None:
                return self._result(order)
            return self._find_noop(client_order_id)

    def orders(self, *, resting_only: bool = False) -> list[PaperOrder]:
        sql = "SELECT * FROM {orders} WHERE 1 = 1"
        params: tuple[str, ...] = ()
        if resting_only:
            sql += " AND state IN (?, ?)"
            params = RESTING
        with self._t.reading():
            return [_order(row) for row in self._t.fetchall(sql + "{and_account} ORDER BY id", params)]

    def positions(self, *, include_flat: bool = False, of: OrderLeg | None = None) -> list[PaperPosition]:
        """Every position (open ones only unless `include_flat`); with `of`, those in that leg's contract."""
        sql = "SELECT * FROM {positions} WHERE 1 = 1"
        params: list[str] = []
        if not include_flat:
            sql += " AND net_quantity != 0"
        if of is not None:
            sql += " AND exchange = ? AND contract = ?"
            params += [str(of.exchange), contract_key(of)]
        with self._t.reading():
            rows = self._t.fetchall(sql + "{and_account} ORDER BY exchange, contract, product", params)
            return [_position(row) for row in rows]

    def count_resting(self) -> int:
        """Touches the file (unlike `SELECT 1`), so it doubles as the health check."""
        with self._t.reading():
            row = self._t.fetchone("SELECT count(*) FROM {orders} WHERE state IN (?, ?){and_account}", RESTING)
            return 0 if row is None else int(row[0])

    # -- internals ----------------------------------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[None]:
        """One write transaction (`tables.Tables.write`). A database error before COMMIT rolls back: nothing
        happened, a retry may work (`BrokerUnavailableError`). An error at COMMIT may or may not have persisted
        (`BrokerUnknownOutcomeError`, so tvbridge asks `lookup()` before any retry)."""
        return self._t.write()

    def _find(self, client_order_id: str) -> OrderResult | None:
        order = self._find_order(client_order_id)
        return self._result(order) if order is not None else self._find_noop(client_order_id)

    def _result(self, order: PaperOrder) -> OrderResult:
        """The order as the interface reports it; a bracket's entry also lists its parts (`details["bracket"]`)."""
        result = order.to_result()
        bracket = self._brackets.of(_row_id(order))
        if bracket is None or bracket.entry_id != _row_id(order):
            return result
        parts = []
        for part, row_id in bracket.part_ids():
            current = order if row_id == bracket.entry_id else self._get(row_id)
            if current is not None:
                parts.append(part_of(current, part))
        return attrs.evolve(result, details={**result.details, "bracket": parts})

    # -- brackets (see brackets.py) -----------------------------------------------------------------------------

    def _add_bracket(self, request: OrderRequest, contract: str, entry: PaperOrder, now: datetime) -> None:
        """The entry's exits, waiting (`pending`) for it to fill, linked in `brackets`."""
        leg = request.leg
        exit_side = Side.SELL if leg.side is Side.BUY else Side.BUY
        plain = attrs.evolve(leg, side=exit_side, target_price=None, stoploss_price=None, trailing_jump=None)
        exits = (
            ("target", TARGET_SUFFIX, leg.target_price, OrderType.LIMIT),
            ("stop-loss", STOP_SUFFIX, leg.stoploss_price, OrderType.STOP_LOSS_MARKET),
        )
        ids: list[int | None] = []
        for what, suffix, price, order_type in exits:
            if price is None:
                ids.append(None)
                continue
            limit, trigger = (price, None) if order_type is OrderType.LIMIT else (Decimal(0), price)
            exit_leg = attrs.evolve(plain, order_type=order_type, price=limit, trigger_price=trigger)
            decision = _Decision(
                side=exit_side,
                quantity=entry.quantity,
                state=OrderState.PENDING,
                fill_price=None,
                message=(
                    f"pending: {what} {_side_word(exit_side)} {entry.quantity} at {_fmt(price)}"
                    f" waits for the entry {entry.order_id} to fill"
                ),
            )
            child = attrs.evolve(request, client_order_id=f"{request.client_order_id}{suffix}", leg=exit_leg)
            ids.append(_row_id(self._insert(child, contract, decision, now)))
        self._brackets.add(_row_id(entry), ids[0], ids[1], leg.trailing_jump)

    def _on_filled(self, order: PaperOrder, price: Decimal | None, now: datetime) -> list[int]:
        """A bracket's entry filled: its exits go live. An exit filled: the other one is cancelled (OCO).
        Returns the row ids this ended (cancelled), so a pass over resting orders skips them."""
        bracket = self._brackets.of(_row_id(order))
        if bracket is None:
            return []
        if _row_id(order) == bracket.entry_id:
            self._activate(bracket, price, now)
            return []
        sibling_id = bracket.sibling(_row_id(order))
        sibling = None if sibling_id is None else self._get(sibling_id)
        if sibling is None or sibling.state not in (OrderState.PENDING, *RESTING):
            return []
        what = "target" if _row_id(order) == bracket.target_id else "stop-loss"
        self._set_cancelled(sibling, f"cancelled: one-cancels-other, the {what} {order.order_id} filled", now)
        return [_row_id(sibling)]

    def _activate(self, bracket: Bracket, price: Decimal | None, now: datetime) -> None:
        for part, row_id in bracket.part_ids()[1:]:
            child = self._get(row_id)
            if child is None or child.state is not OrderState.PENDING:
                continue
            if part == "target":
                message = f"open: target {_side_word(child.side)} {child.quantity} limit {_fmt(child.price)} rests"
                self._update(child, state=OrderState.OPEN, message=message, now=now)
            else:
                trigger = _fmt(child.trigger_price or Decimal(0))
                message = f"trigger pending: stop-loss {_side_word(child.side)} {child.quantity} at {trigger}"
                self._update(child, state=OrderState.TRIGGER_PENDING, message=message, now=now)
        self._brackets.set_anchor(bracket.entry_id, price)

    def _trail(self, exchange: Exchange, contract: str, market: Decimal, now: datetime) -> list[tuple[str, str]]:
        """Move the trailing stops in the contract after an alert's price (before that price fills anything)."""
        moved: list[tuple[str, str]] = []
        for bracket, stop_id in self._brackets.trailing_in(str(exchange), contract):
            stop, entry = self._get(stop_id), self._get(bracket.entry_id)
            jump = bracket.trailing_jump
            if stop is None or entry is None or stop.trigger_price is None or jump is None:
                continue
            anchor = bracket.anchor if bracket.anchor is not None else entry.average_price
            if anchor is None:  # the entry filled at an unknown price: trail from the first price seen
                self._brackets.set_anchor(bracket.entry_id, market)
                continue
            trigger, new_anchor = trailed(entry.side, stop.trigger_price, anchor, jump, market)
            if trigger == stop.trigger_price:
                continue
            message = (
                f"trigger pending: stop-loss {_side_word(stop.side)} {stop.quantity} trailed to {_fmt(trigger)}"
                f" (price {_fmt(market)}, trailing_jump {_fmt(jump)})"
            )
            self._t.execute(
                "UPDATE {orders} SET trigger_price = ?, message = ?, updated_at = ? WHERE id = ?{and_account}",
                (str(trigger), message, now.isoformat(), stop_id),
            )
            self._brackets.set_anchor(bracket.entry_id, new_anchor)
            moved.append((stop.order_id, f"trailed to {_fmt(trigger)}"))
        return moved

    def _end(self, bracket: Bracket, why: str, now: datetime) -> list[PaperOrder]:
        """Cancel every part of the bracket that can still fill; the parts cancelled."""
        cancelled = []
        for _, row_id in bracket.part_ids():
            part = self._get(row_id)
            if part is not None and part.state in (OrderState.PENDING, *RESTING):
                cancelled.append(self._set_cancelled(part, why, now))
        return cancelled

    def _entries_of(self, moved: list[tuple[str, str]]) -> list[str]:
        """The entries of the bracket parts in `moved`: follow-up follows a bracket under its entry's id."""
        entries: list[str] = []
        for order_id, _ in moved:
            row_id = parse_order_id(order_id)
            bracket = None if row_id is None else self._brackets.of(row_id)
            if bracket is not None and bracket.entry_id != row_id:
                entries.append(format_order_id(bracket.entry_id))
        return entries

    def _find_order(self, client_order_id: str) -> PaperOrder | None:
        row = self._t.fetchone("SELECT * FROM {orders} WHERE client_order_id = ?{and_account}", (client_order_id,))
        return None if row is None else _order(row)

    def _find_noop(self, client_order_id: str) -> OrderResult | None:
        row = self._t.fetchone("SELECT message FROM {noops} WHERE client_order_id = ?{and_account}", (client_order_id,))
        if row is None:
            return None
        return _noop_result(client_order_id, row["message"])

    def _get(self, row_id: int) -> PaperOrder | None:
        row = self._t.fetchone("SELECT * FROM {orders} WHERE id = ?{and_account}", (row_id,))
        return None if row is None else _order(row)

    def _reference(self, exchange: Exchange, contract: str) -> Decimal | None:
        return self._prices.get(f"{exchange}:{contract}", self._prices.get(contract))

    def _decide(self, leg: OrderLeg, side: Side, quantity: int, contract: str) -> _Decision:
        """What happens to a new order on arrival, judged against the reference price (see the module doc)."""
        reference = self._reference(leg.exchange, contract)
        new = _Decision(side=side, quantity=quantity, state=OrderState.FILLED, fill_price=None, message="")
        name = f"{leg.exchange}:{contract}"
        if leg.order_type is OrderType.MARKET:
            return _decide_market(new, leg.price, reference, name)
        if leg.order_type is OrderType.LIMIT:
            return _decide_limit(new, leg.price, reference, name)
        return _decide_stop(new, leg, reference, name)

    def _cross(self, leg: OrderLeg, contract: str, request: OrderRequest, now: datetime) -> list[tuple[str, str]]:
        """Fill or trigger the resting orders that this leg's price crosses; return (order id, what happened)."""
        market = leg.price
        source = f"alert {request.alert_id} leg {request.leg_number} brought price {_fmt(market)}"
        moved = self._trail(leg.exchange, contract, market, now)
        ended: set[int] = set()
        rows = self._t.fetchall(RESTING_IN_CONTRACT, (str(leg.exchange), contract, *RESTING))
        for row in rows:
            order = _order(row)
            if _row_id(order) in ended:  # the other exit of a bracket whose exit filled in this pass
                continue
            q = order.quantity
            if order.state is OrderState.TRIGGER_PENDING:
                trigger = order.trigger_price
                if trigger is None or not _stop_triggered(order.side, market, trigger):
                    continue
                triggered = f"triggered at {_fmt(trigger)}: {source}"
                if order.order_type is OrderType.STOP_LOSS_MARKET:
                    fill = f"filled: {_side_word(order.side)} {q} at {_fmt(market)}, {triggered}"
                    ended.update(self._fill(order, market, fill, now))
                    moved.append((order.order_id, f"filled at {_fmt(market)}"))
                elif _limit_crossed(order.side, market, order.price):
                    fill = f"filled: {_side_word(order.side)} {q} at {_fmt(order.price)}, {triggered}"
                    ended.update(self._fill(order, order.price, fill, now))
                    moved.append((order.order_id, f"filled at {_fmt(order.price)}"))
                else:
                    message = f"open: {triggered}; rests as a {_side_word(order.side)} limit at {_fmt(order.price)}"
                    self._update(order, state=OrderState.OPEN, message=message, now=now)
                    moved.append((order.order_id, "triggered"))
            elif _limit_crossed(order.side, market, order.price):
                message = f"filled: {_side_word(order.side)} {q} at {_fmt(order.price)}, the limit: {source}"
                ended.update(self._fill(order, order.price, message, now))
                moved.append((order.order_id, f"filled at {_fmt(order.price)}"))
        return moved

    def _fill(self, order: PaperOrder, price: Decimal, message: str, now: datetime) -> list[int]:
        self._t.execute(
            "UPDATE {orders} SET state = ?, filled_quantity = quantity, average_price = ?, message = ?, updated_at = ?"
            " WHERE id = ?{and_account}",
            (str(OrderState.FILLED), str(price), message, now.isoformat(), _row_id(order)),
        )
        self._apply_to_position(order, price, now)
        return self._on_filled(order, price, now)

    def _update(self, order: PaperOrder, *, state: OrderState, message: str, now: datetime) -> PaperOrder:
        self._t.execute(
            "UPDATE {orders} SET state = ?, message = ?, updated_at = ? WHERE id = ?{and_account}",
            (str(state), message, now.isoformat(), _row_id(order)),
        )
        return attrs.evolve(order, state=state, message=message, updated_at=now)

    def _apply_to_position(self, order: PaperOrder, price: Decimal | None, now: datetime) -> None:
        row = self._t.fetchone(
            "SELECT net_quantity, average_price, realized_pnl FROM {positions}"
            " WHERE exchange = ? AND contract = ? AND product = ?{and_account}",
            (str(order.exchange), order.contract, str(order.product)),
        )
        net, average, pnl = (0, None, Decimal(0)) if row is None else (int(row[0]), _decimal(row[1]), _decimal(row[2]))
        signed = order.quantity if order.side is Side.BUY else -order.quantity
        net, average, pnl = net_fill(net, average, pnl, signed, price)
        self._t.execute(
            """
            INSERT INTO {positions} (exchange, contract, product, symbol, instrument, option_type, strike_price,
                                     expiry_date, net_quantity, average_price, realized_pnl, updated_at{account_col})
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{account_val})
            ON CONFLICT ({account_key}exchange, contract, product) DO UPDATE SET
                net_quantity = excluded.net_quantity, average_price = excluded.average_price,
                realized_pnl = excluded.realized_pnl, updated_at = excluded.updated_at
            """,
            (
                str(order.exchange),
                order.contract,
                str(order.product),
                order.symbol,
                str(order.instrument),
                None if order.option_type is None else str(order.option_type),
                _text(order.strike_price),
                None if order.expiry_date is None else order.expiry_date.isoformat(),
                net,
                _text(average),
                _text(pnl),
                now.isoformat(),
            ),
        )

    def _insert(self, request: OrderRequest, contract: str, decision: _Decision, now: datetime) -> PaperOrder:
        leg = request.leg
        filled = decision.state is OrderState.FILLED
        row_id = self._t.insert_order(
            """
            INSERT INTO {orders} (client_order_id, alert_id, leg_number, exchange, symbol, contract, instrument,
                                  option_type, strike_price, expiry_date, product, side, order_type, quantity, price,
                                  trigger_price, state, filled_quantity, average_price, message, created_at,
                                  updated_at{account_col})
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{account_val})
            """,
            (
                request.client_order_id,
                request.alert_id,
                request.leg_number,
                str(leg.exchange),
                leg.symbol,
                contract,
                str(leg.instrument),
                None if leg.option_type is None else str(leg.option_type),
                _text(leg.strike_price),
                None if leg.expiry_date is None else leg.expiry_date.isoformat(),
                str(leg.product),
                str(decision.side),
                str(leg.order_type),
                decision.quantity,
                str(leg.price),
                _text(leg.trigger_price),
                str(decision.state),
                decision.quantity if filled else 0,
                _text(decision.fill_price) if filled else None,
                decision.message,
                now.isoformat(),
                now.isoformat(),
            ),
        )
        return PaperOrder(  # what was just inserted, without reading it back (one statement less per order)
            order_id=format_order_id(row_id),
            client_order_id=request.client_order_id,
            alert_id=request.alert_id,
            leg_number=request.leg_number,
            exchange=leg.exchange,
            symbol=leg.symbol,
            contract=contract,
            instrument=leg.instrument,
            option_type=leg.option_type,
            strike_price=leg.strike_price,
            expiry_date=leg.expiry_date,
            product=leg.product,
            side=decision.side,
            order_type=leg.order_type,
            quantity=decision.quantity,
            price=leg.price,
            trigger_price=leg.trigger_price,
            state=decision.state,
            filled_quantity=decision.quantity if filled else 0,
            average_price=decision.fill_price if filled else None,
            message=decision.message,
            created_at=now,
            updated_at=now,
        )

    def _cancel_one(self, request: CancelRequest, now: datetime, why: str) -> list[OrderResult]:
        leg = request.leg
        order_id = leg.order_id or ""
        row_id = parse_order_id(order_id)
        order = None if row_id is None else self._get(row_id)
        if order is None:
            raise BrokerRejectedError(f"unknown order id {order_id!r}: this paper account has no such order")
        mismatch = [
            f"{name} {given}"
            for name, given, actual in (
                ("symbol", leg.symbol, order.symbol),
                ("exchange", leg.exchange, order.exchange),
                ("side", leg.side, order.side),
            )
            if given is not None and given != actual
        ]
        if mismatch:
            raise BrokerRejectedError(
                f"order {order.order_id} is {order.side} {order.exchange}:{order.symbol}, not {', '.join(mismatch)}: "
                "nothing was cancelled"
            )
        bracket = self._brackets.of(_row_id(order))
        if bracket is not None:  # any part names the whole bracket
            cancelled = self._end(bracket, why, now)
            if cancelled:
                return [c.to_result() for c in cancelled]
        if order.state is OrderState.CANCELLED:
            return [order.to_result(f"already cancelled: {order.message}")]
        if order.state not in RESTING:
            raise BrokerRejectedError(f"order {order.order_id} is already {order.state}: nothing to cancel")
        return [self._set_cancelled(order, why, now).to_result()]

    def _set_cancelled(self, order: PaperOrder, why: str, now: datetime) -> PaperOrder:
        return self._update(order, state=OrderState.CANCELLED, message=f"{why} (was {order.state})", now=now)


def _use_wal(db: sqlite3.Connection, path: Path) -> None:
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":  # e.g. a file system without shared memory; rollback journals would still work, but slower
        raise BrokerUnavailableError(f"paper database {path} cannot use WAL mode (got {mode!r})")


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise BrokerUnavailableError(
            f"paper database {path} has schema version {version}, newer than this tvbridge understands "
            f"({SCHEMA_VERSION}); upgrade tvbridge or point db_path elsewhere"
        )
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")  # two processes starting at once: one creates, the other waits and sees it
    try:
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _decide_market(new: _Decision, price: Decimal, reference: Decimal | None, name: str) -> _Decision:
    what = f"{_side_word(new.side)} {new.quantity}"
    if price > 0:
        return attrs.evolve(new, fill_price=price, message=f"filled: {what} at {_fmt(price)} (the leg's price)")
    if reference is not None:
        message = f"filled: {what} at {_fmt(reference)} (the reference price of {name})"
        return attrs.evolve(new, fill_price=reference, message=message)
    message = (
        f"filled: {what} at an unknown price: the leg's price is 0 and no reference price is configured for "
        f"{name} (set one under the account's prices)"
    )
    return attrs.evolve(new, fill_price=None, message=message)


def _decide_limit(new: _Decision, limit: Decimal, reference: Decimal | None, name: str) -> _Decision:
    what = f"{_side_word(new.side)} {new.quantity}"
    if reference is not None and _limit_crossed(new.side, reference, limit):
        message = (
            f"filled: {what} at {_fmt(reference)}: the reference price of {name} already meets the limit {_fmt(limit)}"
        )
        return attrs.evolve(new, fill_price=reference, message=message)
    message = f"open: {what} limit {_fmt(limit)} rests until an alert's price on {name} reaches it"
    return attrs.evolve(new, state=OrderState.OPEN, message=message)


def _decide_stop(new: _Decision, leg: OrderLeg, reference: Decimal | None, name: str) -> _Decision:
    what = f"{_side_word(new.side)} {new.quantity}"
    trigger = leg.trigger_price
    if trigger is None:  # _check_leg refused it already; this keeps mypy and a future refactor honest
        raise BrokerRejectedError(f"a {leg.order_type} order needs a triggerPrice > 0")
    if reference is None or not _stop_triggered(new.side, reference, trigger):
        message = (
            f"trigger pending: {what} {leg.order_type} triggers when an alert's price on {name} reaches {_fmt(trigger)}"
        )
        return attrs.evolve(new, state=OrderState.TRIGGER_PENDING, message=message)
    at_once = f"triggered at once: the reference price {_fmt(reference)} of {name} is past the trigger {_fmt(trigger)}"
    if leg.order_type is OrderType.STOP_LOSS_MARKET or _limit_crossed(new.side, reference, leg.price):
        message = f"filled: {what} at {_fmt(reference)}, {at_once}"
        return attrs.evolve(new, fill_price=reference, message=message)
    message = f"open: {at_once}; rests as a {_side_word(new.side)} limit at {_fmt(leg.price)}"
    return attrs.evolve(new, state=OrderState.OPEN, message=message)


def _check_leg(leg: OrderLeg) -> None:
    """Refuse what a real exchange would refuse, so practice does not teach orders that fail live."""
    problems: list[str] = []
    if leg.quantity <= 0:
        problems.append(f"quantity must be a positive whole number, got {leg.quantity}")
    if not leg.symbol.strip():
        problems.append("symbol is empty")
    if leg.price < 0:
        problems.append(f"price must not be negative, got {_fmt(leg.price)}")
    if leg.order_type in (OrderType.LIMIT, OrderType.STOP_LOSS) and leg.price <= 0:
        problems.append(f"a {leg.order_type} order needs a price > 0")
    if leg.order_type in (OrderType.STOP_LOSS, OrderType.STOP_LOSS_MARKET) and (
        leg.trigger_price is None or leg.trigger_price <= 0
    ):
        problems.append(f"a {leg.order_type} order needs a triggerPrice > 0")
    if problems:
        raise BrokerRejectedError("; ".join(problems))


def _check_stop_limit(leg: OrderLeg, side: Side) -> None:
    """An SL buy's limit must be at or above its trigger, a sell's at or below (exchanges refuse the rest)."""
    trigger = leg.trigger_price
    if leg.order_type is not OrderType.STOP_LOSS or trigger is None:
        return
    if side is Side.BUY and leg.price < trigger:
        msg = f"a buy SL needs price >= triggerPrice (got price {_fmt(leg.price)}, trigger {_fmt(trigger)})"
        raise BrokerRejectedError(msg)
    if side is Side.SELL and leg.price > trigger:
        msg = f"a sell SL needs price <= triggerPrice (got price {_fmt(leg.price)}, trigger {_fmt(trigger)})"
        raise BrokerRejectedError(msg)


def _as_duplicate(result: OrderResult) -> OrderResult:
    where = f"as {result.order_id}" if result.order_id else "before"
    return attrs.evolve(
        result,
        message=f"already handled {where} (same client order id {result.client_order_id}); now: {result.message}",
        details={**result.details, "duplicate": True},
    )


def _with_moved(
    result: OrderResult, leg: OrderLeg, moved: list[tuple[str, str]], entries: list[str] | None = None
) -> OrderResult:
    """Tell the trader which resting orders this leg's price filled or triggered (they are not in the result).
    `entries`: the bracket entries of moved exits, also listed so follow-up looks the brackets up now."""
    if not moved:
        return result
    what = "; ".join(f"{order_id} {happened}" for order_id, happened in moved)
    ids = [order_id for order_id, _ in moved]
    return attrs.evolve(
        result,
        message=f"{result.message} (this leg's price {_fmt(leg.price)} also moved: {what})",
        details={**result.details, "moved_orders": ids + [e for e in dict.fromkeys(entries or []) if e not in ids]},
    )


def _noop_result(client_order_id: str, message: str) -> OrderResult:
    return OrderResult(
        order_id=None,
        state=OrderState.FILLED,
        message=message,
        client_order_id=client_order_id,
        filled_quantity=0,
        average_price=None,
        details={"broker": "paper", "nothing_to_close": True},
    )


def _row_id(order: PaperOrder) -> int:
    row_id = parse_order_id(order.order_id)
    if row_id is None:  # order ids come from format_order_id; a bad one is a bug, not a trader's mistake
        msg = f"malformed paper order id {order.order_id!r}"
        raise AssertionError(msg)
    return row_id


def _order(row: Row) -> PaperOrder:
    return PaperOrder(
        order_id=format_order_id(int(row["id"])),
        client_order_id=row["client_order_id"],
        alert_id=row["alert_id"],
        leg_number=int(row["leg_number"]),
        exchange=Exchange(row["exchange"]),
        symbol=row["symbol"],
        contract=row["contract"],
        instrument=Instrument(row["instrument"]),
        option_type=None if row["option_type"] is None else OptionType(row["option_type"]),
        strike_price=_decimal(row["strike_price"]),
        expiry_date=None if row["expiry_date"] is None else date.fromisoformat(row["expiry_date"]),
        product=Product(row["product"]),
        side=Side(row["side"]),
        order_type=OrderType(row["order_type"]),
        quantity=int(row["quantity"]),
        price=Decimal(row["price"]),
        trigger_price=_decimal(row["trigger_price"]),
        state=OrderState(row["state"]),
        filled_quantity=int(row["filled_quantity"]),
        average_price=_decimal(row["average_price"]),
        message=row["message"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def _position(row: Row) -> PaperPosition:
    return PaperPosition(
        exchange=Exchange(row["exchange"]),
        symbol=row["symbol"],
        contract=row["contract"],
        instrument=Instrument(row["instrument"]),
        option_type=None if row["option_type"] is None else OptionType(row["option_type"]),
        strike_price=_decimal(row["strike_price"]),
        expiry_date=None if row["expiry_date"] is None else date.fromisoformat(row["expiry_date"]),
        product=Product(row["product"]),
        net_quantity=int(row["net_quantity"]),
        average_price=_decimal(row["average_price"]),
        realized_pnl=_decimal(row["realized_pnl"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )
