"""Closing positions from what the broker reports: the one mechanism behind EXIT_ALL and flatten, on every broker.

A broker lists positions through the plugin interface (`Broker.positions()`, declared by
`capabilities.positions`); this module turns them into plain orders, so no plugin implements "exit" itself and
paper and Dhan close a position the same way. No I/O, no broker calls (the executor and `flatten.py` do those).

A strategy's own position (issue 19) is the same kind of number from another source: what tvbridge's own orders
under that strategy filled (`book()`, summed from the journal's legs, `Journal.fills`), per account and contract
(`book_key`). `share()` turns it into the `Position` list `exit_all()` and `to_target()` read, so EXIT_ALL and
target positions under a strategy close or move only that strategy's share; the `default` strategy's share is
what the broker holds beyond the named strategies' (so without `[strategies]` nothing changes).

A live broker updates a position only when the exit order fills, so a second EXIT_ALL that arrives while the
first one's order is still open would read the same position and close it again, leaving the opposite position.
`SentExits` remembers the exit orders this process sent; when the broker also lists open orders
(`capabilities.orders`), an exit order still open counts as already closing its part of the position.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.broker import ContractId, Position
from tvbridge.models import Exchange, Instrument, OptionType, OrderLeg, OrderType, Product, Side

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from tvbridge.broker import OpenOrder

ContractKey = tuple[object, ...]


def contract_key(contract: ContractId) -> ContractKey:
    """One contract, as the broker named it: its own id when it has one, else what an alert names."""
    if contract.security_id:
        return (contract.exchange, contract.security_id)
    return (
        contract.exchange,
        contract.symbol,
        contract.instrument,
        contract.expiry_date,
        contract.strike_price,
        contract.option_type,
    )


@attrs.frozen(kw_only=True)
class Exit:
    """What an EXIT_ALL leg does: `leg` is the plain order to send (None: flat, nothing to send)."""

    leg: OrderLeg | None
    net_quantity: int
    """The position it closes (signed units), 0 when flat."""
    message: str
    """What the trader reads: the position found and what closes it, or that there was none."""


def _remaining(order: OpenOrder) -> int:
    """An open order's unfilled quantity, signed as its effect on the position (a sell reduces it)."""
    left = max(order.quantity - order.filled_quantity, 0)
    return left if order.side is Side.BUY else -left


def exit_all(leg: OrderLeg, positions: Sequence[Position], pending: Sequence[OpenOrder] = ()) -> Exit:
    """The order that closes the net position of `leg`'s contract in `leg`'s product.

    `positions` are the broker's positions in the leg's contract (`Broker.positions(leg)`); those in other
    products are left alone (a CNC holding is not closed by an intraday exit). `pending` are earlier exit orders
    for the same contract and product that are still open: what they will close is not closed twice. The order is
    the leg itself with the opposite side of the position and its whole (remaining) size: the leg's own side and
    quantity are ignored, its order type and prices are kept (an EXIT_ALL LMT leg closes with a limit order)."""
    held = sum(p.net_quantity for p in positions if p.product is leg.product)
    where = f"{leg.exchange} {leg.symbol} ({leg.product})"
    if held == 0:
        return Exit(
            leg=None, net_quantity=0, message=f"nothing to close: no open position in {where}; EXIT_ALL sent no order"
        )
    remaining = held + sum(_remaining(o) for o in pending)
    if remaining == 0 or (remaining > 0) != (held > 0):
        ids = ", ".join(o.order_id for o in pending)
        message = (
            f"nothing more to close: the position of {held} in {where} is already being closed by the open exit"
            f" order(s) {ids}; EXIT_ALL sent no order"
        )
        return Exit(leg=None, net_quantity=held, message=message)
    side = Side.SELL if remaining > 0 else Side.BUY
    closing = attrs.evolve(leg, side=side, quantity=abs(remaining), manage_position=None)
    kind = "long" if held > 0 else "short"
    word = "SELL" if side is Side.SELL else "BUY"
    message = f"EXIT_ALL closes the {kind} position of {abs(held)} in {where}: {word}"
    if remaining != held:
        message += f" {abs(remaining)} ({abs(held - remaining)} already being closed by an open exit order)"
    return Exit(leg=closing, net_quantity=held, message=message)


@attrs.frozen(kw_only=True)
class _Sent:
    product: Product
    contracts: frozenset[ContractKey]


class SentExits:
    """The exit orders this process sent, per account, until the broker no longer lists them as open.

    In memory only: the window it covers is the seconds between an exit order and its fill."""

    def __init__(self) -> None:
        self._sent: dict[str, dict[str, _Sent]] = {}

    def remember(self, account: str, client_order_id: str, leg: OrderLeg, positions: Iterable[Position]) -> None:
        contracts = frozenset(contract_key(p.contract) for p in positions if p.product is leg.product)
        self._sent.setdefault(account, {})[client_order_id] = _Sent(product=leg.product, contracts=contracts)

    def has(self, account: str) -> bool:
        """Whether any exit this process sent on `account` may still be open (a target move then asks)."""
        return bool(self._sent.get(account))

    def may_be_open(self, account: str, leg: OrderLeg, positions: Iterable[Position]) -> bool:
        """Whether an exit this process sent for these positions could still be open (then ask the broker)."""
        keys = {contract_key(p.contract) for p in positions if p.product is leg.product}
        return any(
            sent.product is leg.product and sent.contracts & keys for sent in self._sent.get(account, {}).values()
        )

    def still_open(
        self, account: str, leg: OrderLeg, positions: Iterable[Position], open_orders: Iterable[OpenOrder]
    ) -> list[OpenOrder]:
        """The open orders that are exits sent for these positions; forgets the exits no longer open."""
        mine = self._sent.get(account, {})
        listed = {o.client_order_id: o for o in open_orders if o.client_order_id in mine}
        for gone in set(mine) - set(listed):
            del mine[gone]
        keys = {contract_key(p.contract) for p in positions if p.product is leg.product}
        return [
            order
            for cid, order in listed.items()
            if cid is not None and mine[cid].product is leg.product and mine[cid].contracts & keys
        ]


def closing_leg(position: Position) -> OrderLeg:
    """The market order that closes `position` (flatten): opposite side, whole size, same contract and product."""
    contract = position.contract
    return OrderLeg(
        side=Side.SELL if position.net_quantity > 0 else Side.BUY,
        order_type=OrderType.MARKET,
        quantity=abs(position.net_quantity),
        exchange=contract.exchange,
        symbol=contract.symbol,
        instrument=Instrument.OPTION if contract.option_type is not None else contract.instrument,
        product=position.product,
        option_type=contract.option_type,
        strike_price=contract.strike_price,
        expiry_date=contract.expiry_date,
    )


@attrs.frozen(kw_only=True)
class Move:
    """What a target-position leg does (`position_size` / `market_position`): `leg` is the plain order that moves
    the position to the target (None: already there, nothing to send)."""

    leg: OrderLeg | None
    before: int
    """The account's net position in the leg's contract and product (signed units) before the move."""
    target: int
    message: str


def to_target(leg: OrderLeg, target: int, positions: Sequence[Position], pending: Sequence[OpenOrder] = ()) -> Move:
    """The one order that takes the net position of `leg`'s contract in `leg`'s product to `target` (signed
    units): the difference, so a reversal from +10 to -10 is one SELL of 20, and an alert repeated after its order
    filled sends nothing. `pending` are orders this process sent earlier for the same contract and product that
    are still open: what they will still fill counts as done (a resent alert does not move the position twice).
    EXIT_ALL is the target 0 (`exit_all()` keeps its own wording). The order is the leg with the side and size of
    the difference and no target fields; its order type and prices are kept."""
    held = sum(p.net_quantity for p in positions if p.product is leg.product)
    in_flight = sum(_remaining(o) for o in pending)
    diff = target - held - in_flight
    where = f"{leg.exchange} {leg.symbol} ({leg.product})"
    flight = f" and {in_flight:+d} still to fill in open order(s) {', '.join(o.order_id for o in pending)}"
    found = f"position {held}{flight if in_flight else ''} in {where}, target {target}"
    if diff == 0:
        return Move(leg=None, before=held, target=target, message=f"{found}: already there, no order sent")
    side = Side.BUY if diff > 0 else Side.SELL
    order = attrs.evolve(
        leg, side=side, quantity=abs(diff), position_size=None, market_position=None, market_position_size=None
    )
    word = "BUY" if diff > 0 else "SELL"
    reversal = " (a reversal, in one order)" if held and target and (held > 0) != (target > 0) else ""
    return Move(leg=order, before=held, target=target, message=f"{found}: {word} {abs(diff)}{reversal}")


def target_key(leg: OrderLeg) -> ContractKey:
    """The contract and product a target leg names, as the alert names it (after tvbridge resolved relative
    strikes and expiries): two alerts for one strategy name it alike."""
    return (
        leg.exchange,
        leg.symbol.strip().upper(),
        leg.instrument,
        leg.expiry_date,
        leg.strike_price,
        leg.option_type,
        leg.product,
    )


class SentMoves:
    """The target-position orders this process sent, per account, until the broker no longer lists them as
    open: an alert resent while its order is still open (a limit order resting, a live fill taking a moment)
    finds it and does not send the difference again. In memory only, like `SentExits`."""

    def __init__(self) -> None:
        self._sent: dict[str, dict[str, ContractKey]] = {}

    def remember(self, account: str, client_order_id: str, leg: OrderLeg) -> None:
        self._sent.setdefault(account, {})[client_order_id] = target_key(leg)

    def may_be_open(self, account: str, leg: OrderLeg) -> bool:
        return target_key(leg) in self._sent.get(account, {}).values()

    def still_open(self, account: str, leg: OrderLeg, open_orders: Iterable[OpenOrder]) -> list[OpenOrder]:
        """The open orders sent for this contract and product; forgets those no longer open."""
        mine = self._sent.get(account, {})
        listed = {o.client_order_id: o for o in open_orders if o.client_order_id in mine}
        for gone in set(mine) - set(listed):
            del mine[gone]
        key = target_key(leg)
        return [order for cid, order in listed.items() if cid is not None and mine[cid] == key]


# a strategy's own position (issue 19)

KEY_SEPARATOR = "|"


def book_key(leg: OrderLeg) -> str:
    """A contract and product as one string (journaled with every order leg as `position_key`): what a
    strategy's fills are summed by. Built from the leg as sent, after relative strikes and expiries were chosen."""
    strike = "" if leg.strike_price is None else format(leg.strike_price.normalize(), "f")
    instrument = Instrument.OPTION if leg.option_type is not None else leg.instrument
    parts = (
        leg.exchange.value,
        leg.symbol.strip().upper(),
        instrument.value,
        "" if leg.expiry_date is None else leg.expiry_date.isoformat(),
        strike,
        "" if leg.option_type is None else leg.option_type.value,
        leg.product.value,
    )
    return KEY_SEPARATOR.join(parts)


def position_of_key(key: str, net_quantity: int) -> Position:
    """The `Position` a `book_key` names, with a strategy's net quantity (square-off closes it through flatten)."""
    exchange, symbol, instrument, expiry, strike, option_type, product = key.split(KEY_SEPARATOR)
    contract = ContractId(
        exchange=Exchange(exchange),
        symbol=symbol,
        instrument=Instrument(instrument),
        option_type=OptionType(option_type) if option_type else None,
        strike_price=Decimal(strike) if strike else None,
        expiry_date=date.fromisoformat(expiry) if expiry else None,
    )
    return Position(contract=contract, product=Product(product), net_quantity=net_quantity)


@attrs.frozen(kw_only=True)
class StrategyFill:
    """One order leg tvbridge placed, as the journal has it now (filled quantity kept by order follow-up)."""

    strategy: str
    key: str
    side: str
    """`B` or `S`."""
    quantity: int
    """Units filled."""
    bracket: tuple[Mapping[str, object], ...] = ()
    """A bracket's parts: a filled target or stop-loss closed what the entry opened."""
    at: str = ""
    """When its alert was received (the journal's UTC ISO stamp): an intraday fill counts only on its own day."""
    resets: bool = False
    """A close by `tvbridge flatten` / `POST /admin/flatten` (no strategy's own order): it closed every strategy's
    share in its contract, so the book of every strategy there starts again from zero."""


def _signed(fill: StrategyFill) -> int:
    signed = fill.quantity if fill.side == Side.BUY.value else -fill.quantity
    exited = any(p.get("part") in {"target", "stop_loss"} and p.get("state") == "filled" for p in fill.bracket)
    return 0 if exited else signed


INTRADAY_SUFFIX: Final = KEY_SEPARATOR + Product.INTRADAY.value


def book(fills: Iterable[StrategyFill], *, intraday_since: str = "") -> dict[tuple[str, str], int]:
    """(strategy, book key) -> net units from fills (in the order they were received); flat entries are left out.

    Intraday (`I`) fills received before `intraday_since` (the start of today's exchange day, as a UTC ISO stamp)
    are left out: the broker closes intraday positions at the end of their day, so yesterday's would otherwise
    stay in the book for ever. A flatten's close (`resets`) zeroes every strategy's share in its contract."""
    net: dict[tuple[str, str], int] = {}
    for fill in fills:
        if fill.key.endswith(INTRADAY_SUFFIX) and fill.at < intraday_since:
            continue
        if fill.resets:
            for k in [k for k in net if k[1] == fill.key]:
                net[k] = 0
            continue
        net[(fill.strategy, fill.key)] = net.get((fill.strategy, fill.key), 0) + _signed(fill)
    return {k: v for k, v in net.items() if v}


def clamp(own: int, held: int) -> int:
    """A strategy's share as the broker can hold it: `own` (from its fills) cut to the broker's net `held`: same
    sign and no larger, 0 when the broker is flat or holds the other side. The broker is what an order moves: a
    share the broker no longer holds (closed in its terminal, by its risk desk, expired) must never be "closed"
    again, which would open the opposite position."""
    if held == 0 or own == 0 or (own > 0) != (held > 0):
        return 0
    return own if abs(own) <= abs(held) else held


def share(leg: OrderLeg, positions: Sequence[Position], net: int) -> list[Position]:
    """The broker's positions in `leg`'s contract, with the one in `leg`'s product re-sized to `net` (a
    strategy's share); built from the leg when the broker lists none (a disagreement the caller reports)."""
    others = [p for p in positions if p.product is not leg.product]
    if net == 0:
        return others
    same = [p for p in positions if p.product is leg.product]
    base = same[0] if same else position_of_key(book_key(leg), net)
    return [*others, attrs.evolve(base, net_quantity=net)]
