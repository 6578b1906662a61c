"""The one exit mechanism (`tvbridge/positions.py`): which order closes a position, on every broker alike."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tvbridge.broker import ContractId, OpenOrder, OrderState, Position
from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, PositionAction, Product, Side
from tvbridge.positions import SentExits, closing_leg, exit_all

RELIANCE = ContractId(exchange=Exchange.NSE, symbol="RELIANCE", instrument=Instrument.EQUITY, security_id="2885")
LEG = OrderLeg(
    side=Side.BUY,
    order_type=OrderType.LIMIT,
    quantity=0,
    exchange=Exchange.NSE,
    symbol="RELIANCE",
    instrument=Instrument.EQUITY,
    product=Product.CNC,
    price=Decimal(2950),
    manage_position=PositionAction.EXIT_ALL,
)


def held(net: int, product: Product = Product.CNC) -> Position:
    return Position(contract=RELIANCE, product=product, net_quantity=net)


def open_exit(side: Side, quantity: int, filled: int = 0, order_id: str = "X1") -> OpenOrder:
    return OpenOrder(
        order_id=order_id,
        state=OrderState.OPEN,
        contract=RELIANCE,
        side=side,
        quantity=quantity,
        filled_quantity=filled,
        client_order_id=f"cid-{order_id}",
    )


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        ([held(10)], (Side.SELL, 10)),
        ([held(-7)], (Side.BUY, 7)),
        ([held(10), held(-4, Product.INTRADAY)], (Side.SELL, 10)),
        ([held(3), held(4)], (Side.SELL, 7)),
    ],
)
def test_the_closing_order_is_the_opposite_side_and_whole_size_in_the_legs_product(
    positions: list[Position], expected: tuple[Side, int]
) -> None:
    """Long -> sell, short -> buy, the whole net size in the leg's product; other products are left alone; the
    order keeps the leg's order type and price and no longer carries manage_position."""
    found = exit_all(LEG, positions)
    assert found.leg is not None
    assert (found.leg.side, found.leg.quantity) == expected
    assert (found.leg.order_type, found.leg.price, found.leg.manage_position) == (OrderType.LIMIT, Decimal(2950), None)


def test_flat_or_only_another_product_sends_nothing() -> None:
    """No position in the leg's product: no order, and the message says why."""
    for positions in ([], [held(5, Product.INTRADAY)]):
        found = exit_all(LEG, positions)
        assert (found.leg, found.net_quantity) == (None, 0)
        assert found.message == "nothing to close: no open position in NSE RELIANCE (C); EXIT_ALL sent no order"


@pytest.mark.parametrize(
    ("pending", "expected"),
    [
        ([open_exit(Side.SELL, 10)], None),
        ([open_exit(Side.SELL, 10, filled=4)], (Side.SELL, 4)),
        ([open_exit(Side.SELL, 6)], (Side.SELL, 4)),
        ([open_exit(Side.SELL, 20)], None),
    ],
)
def test_open_exit_orders_count_as_already_closing(pending: list[OpenOrder], expected: tuple[Side, int] | None) -> None:
    """Long 10 with an open exit: what the exit still has to fill is not closed again; an exit that covers the
    whole position (or more) means nothing is sent, never an order the other way."""
    found = exit_all(LEG, [held(10)], pending)
    if expected is None:
        assert found.leg is None
        assert "already being closed by the open exit order(s) X1" in found.message
    else:
        assert found.leg is not None
        assert (found.leg.side, found.leg.quantity) == expected


def test_sent_exits_match_by_contract_and_product_and_forget_what_is_no_longer_open() -> None:
    """An exit is remembered for its contract and product; other contracts do not ask the broker; once the
    broker no longer lists it as open it is forgotten."""
    exits = SentExits()
    closing = exit_all(LEG, [held(10)]).leg
    assert closing is not None
    exits.remember("dhan", "cid-X1", closing, [held(10)])
    other = ContractId(exchange=Exchange.NSE, symbol="INFY", instrument=Instrument.EQUITY, security_id="1594")
    assert exits.may_be_open("dhan", LEG, [held(10)])
    assert not exits.may_be_open("dhan", LEG, [Position(contract=other, product=Product.CNC, net_quantity=3)])
    assert not exits.may_be_open("paper", LEG, [held(10)])
    assert exits.still_open("dhan", LEG, [held(10)], [open_exit(Side.SELL, 10)]) == [open_exit(Side.SELL, 10)]
    assert exits.still_open("dhan", LEG, [held(10)], []) == []
    assert not exits.may_be_open("dhan", LEG, [held(10)])


def test_flatten_closes_a_position_with_a_market_order_that_names_the_same_contract() -> None:
    """An option position closes with a market leg carrying its underlying, expiry, strike and type."""
    option = ContractId(
        exchange=Exchange.NFO,
        symbol="NIFTY",
        instrument=Instrument.OPTION,
        option_type=None,
        strike_price=Decimal(24000),
        expiry_date=None,
    )
    leg = closing_leg(Position(contract=option, product=Product.MARGIN, net_quantity=-130))
    assert (leg.side, leg.quantity, leg.order_type, leg.product) == (Side.BUY, 130, OrderType.MARKET, Product.MARGIN)
    assert (leg.symbol, leg.exchange, leg.strike_price) == ("NIFTY", Exchange.NFO, Decimal(24000))
