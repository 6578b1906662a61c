"""Closing positions from what the broker reports: the one mechanism behind EXIT_ALL and flatten, on every broker.

A broker lists positions through the plugin interface (`Broker.positions()`, declared by
`capabilities.positions`); this module turns them into plain orders, so no plugin implements "exit" itself and
paper and Dhan close a position the same way. Pure: no I/O, no broker calls (the executor and `flatten.py` do
those).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from tvbridge.models import Instrument, OrderLeg, OrderType, Side

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tvbridge.broker import Position


@attrs.frozen(kw_only=True)
class Exit:
    """What an EXIT_ALL leg does: `leg` is the plain order to send (None: flat, nothing to send)."""

    leg: OrderLeg | None
    net_quantity: int
    """The position it closes (signed units), 0 when flat."""
    message: str
    """What the trader reads: the position found and what closes it, or that there was none."""


def exit_all(leg: OrderLeg, positions: Sequence[Position]) -> Exit:
    """The order that closes the net position of `leg`'s contract in `leg`'s product.

    `positions` are the broker's positions in the leg's contract (`Broker.positions(leg)`); those in other
    products are left alone (a CNC holding is not closed by an intraday exit). The order is the leg itself with
    the opposite side of the position and its whole size: the leg's own side and quantity are ignored, its order
    type and prices are kept (an EXIT_ALL LMT leg closes with a limit order)."""
    net = sum(p.net_quantity for p in positions if p.product is leg.product)
    where = f"{leg.exchange} {leg.symbol} ({leg.product})"
    if net == 0:
        return Exit(
            leg=None, net_quantity=0, message=f"nothing to close: no open position in {where}; EXIT_ALL sent no order"
        )
    side = Side.SELL if net > 0 else Side.BUY
    closing = attrs.evolve(leg, side=side, quantity=abs(net), manage_position=None)
    kind = "long" if net > 0 else "short"
    word = "SELL" if side is Side.SELL else "BUY"
    return Exit(
        leg=closing, net_quantity=net, message=f"EXIT_ALL closes the {kind} position of {abs(net)} in {where}: {word}"
    )


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
