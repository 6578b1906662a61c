"""The one exit mechanism (`tvbridge/positions.py`): which order closes a position, on every broker alike."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import attrs
import pytest

from tvbridge.broker import ContractId, OpenOrder, OrderState, Position
from tvbridge.models import (
    Exchange,
    Instrument,
    MarketPosition,
    OptionType,
    OrderLeg,
    OrderType,
    PositionAction,
    Product,
    Side,
)
from tvbridge.positions import SentExits, SentMoves, book_key, closing_leg, exit_all, position_of_key, share, to_target

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


WHERE = "NSE RELIANCE (C)"


@pytest.mark.parametrize(
    ("positions", "pending", "side", "quantity", "message"),
    [
        ([held(10)], [], Side.SELL, 10, f"EXIT_ALL closes the long position of 10 in {WHERE}: SELL"),
        ([held(-7)], [], Side.BUY, 7, f"EXIT_ALL closes the short position of 7 in {WHERE}: BUY"),
        ([held(1)], [], Side.SELL, 1, f"EXIT_ALL closes the long position of 1 in {WHERE}: SELL"),
        (
            [held(10)],
            [open_exit(Side.SELL, 6)],
            Side.SELL,
            4,
            f"EXIT_ALL closes the long position of 10 in {WHERE}: SELL 4 (6 already being closed by an open exit order)",
        ),
        (
            [held(10)],
            [open_exit(Side.SELL, 10, filled=10)],
            Side.SELL,
            10,
            f"EXIT_ALL closes the long position of 10 in {WHERE}: SELL",
        ),
    ],
    ids=["long", "short", "one share", "part already closing", "exit filled but still listed"],
)
def test_what_exit_all_sends_and_says(
    positions: list[Position], pending: list[OpenOrder], side: Side, quantity: int, message: str
) -> None:
    """The order and the words the trader reads in the answer: which position, its size, what closes it."""
    found = exit_all(LEG, positions, pending)
    assert found.leg is not None
    assert (found.leg.side, found.leg.quantity) == (side, quantity)
    assert (found.net_quantity, found.message) == (sum(p.net_quantity for p in positions), message)


def test_exits_covering_the_position_are_named() -> None:
    found = exit_all(LEG, [held(10)], [open_exit(Side.SELL, 5, order_id="X1"), open_exit(Side.SELL, 5, order_id="X2")])
    assert (found.leg, found.net_quantity) == (None, 10)
    assert found.message == (
        f"nothing more to close: the position of 10 in {WHERE} is already being closed by the open exit order(s)"
        " X1, X2; EXIT_ALL sent no order"
    )


TARGET_LEG = attrs.evolve(LEG, manage_position=None, position_size=0, order_type=OrderType.MARKET, price=Decimal(0))


def pending_move(side: Side, quantity: int, order_id: str) -> OpenOrder:
    return attrs.evolve(open_exit(side, quantity, order_id=order_id), client_order_id=f"cid-{order_id}")


@pytest.mark.parametrize(
    ("now", "pending", "target", "order", "message"),
    [
        (0, [], 10, (Side.BUY, 10), f"position 0 in {WHERE}, target 10: BUY 10"),
        (5, [], 0, (Side.SELL, 5), f"position 5 in {WHERE}, target 0: SELL 5"),
        (5, [], 8, (Side.BUY, 3), f"position 5 in {WHERE}, target 8: BUY 3"),
        (10, [], -10, (Side.SELL, 20), f"position 10 in {WHERE}, target -10: SELL 20 (a reversal, in one order)"),
        (1, [], -1, (Side.SELL, 2), f"position 1 in {WHERE}, target -1: SELL 2 (a reversal, in one order)"),
        (-1, [], 1, (Side.BUY, 2), f"position -1 in {WHERE}, target 1: BUY 2 (a reversal, in one order)"),
        (
            0,
            [pending_move(Side.BUY, 2, "M1"), pending_move(Side.BUY, 2, "M2")],
            5,
            (Side.BUY, 1),
            f"position 0 and +4 still to fill in open order(s) M1, M2 in {WHERE}, target 5: BUY 1",
        ),
        (10, [], 10, None, f"position 10 in {WHERE}, target 10: already there, no order sent"),
    ],
    ids=["open", "close", "add", "reversal", "reversal of one", "reversal from short", "in flight", "there"],
)
def test_what_a_target_sends_and_says(
    now: int, pending: list[OpenOrder], target: int, order: tuple[Side, int] | None, message: str
) -> None:
    """The one order to the target (the difference, in-flight orders counted) as a plain order, and its words."""
    move = to_target(TARGET_LEG, target, [held(now)] if now else [], pending)
    assert (move.before, move.target, move.message) == (now, target, message)
    if order is None:
        assert move.leg is None
        return
    assert move.leg is not None
    assert (move.leg.side, move.leg.quantity) == order
    assert (move.leg.position_size, move.leg.market_position, move.leg.market_position_size) == (None, None, None)


INFY = ContractId(exchange=Exchange.NSE, symbol="INFY", instrument=Instrument.EQUITY, security_id="1594")


def test_sent_exits_are_told_apart_by_product_and_contract() -> None:
    """An exit sent for the CNC holding is not an open exit of the intraday position of the same stock, nor of
    another stock; `has` says whether the account has any exit that may be open."""
    exits = SentExits()
    assert not exits.has("dhan")
    closing = exit_all(LEG, [held(10)]).leg
    assert closing is not None
    exits.remember("dhan", "cid-X1", closing, [held(10)])
    assert exits.has("dhan")
    assert not exits.has("paper")
    intraday = attrs.evolve(LEG, product=Product.INTRADAY)
    both = [held(10), held(5, Product.INTRADAY)]
    assert exits.still_open("dhan", intraday, both, [open_exit(Side.SELL, 10)]) == []
    infy = [Position(contract=INFY, product=Product.CNC, net_quantity=3)]
    assert exits.still_open("dhan", attrs.evolve(LEG, symbol="INFY"), infy, [open_exit(Side.SELL, 10)]) == []
    assert exits.still_open("dhan", LEG, both, [open_exit(Side.SELL, 10)]) == [open_exit(Side.SELL, 10)]


def test_sent_moves_are_told_apart_by_contract() -> None:
    moves = SentMoves()
    order = pending_move(Side.BUY, 10, "M1")
    assert moves.still_open("paper", TARGET_LEG, [order]) == []
    moves.remember("dhan", "cid-M1", TARGET_LEG)
    assert moves.may_be_open("dhan", TARGET_LEG)
    assert moves.still_open("dhan", attrs.evolve(TARGET_LEG, symbol="INFY"), [order]) == []
    assert moves.still_open("dhan", TARGET_LEG, [order]) == [order]


def test_a_move_is_a_plain_order_without_the_target_fields() -> None:
    """The order sent for `market_position`/`market_position_size` carries none of them: the broker gets an order."""
    leg = attrs.evolve(TARGET_LEG, position_size=None, market_position=MarketPosition.LONG, market_position_size=10)
    move = to_target(leg, 10, [held(4)])
    assert move.leg is not None
    assert (move.leg.side, move.leg.quantity) == (Side.BUY, 6)
    assert (move.leg.position_size, move.leg.market_position, move.leg.market_position_size) == (None, None, None)


def test_flatten_closes_an_option_named_by_its_type_as_an_option() -> None:
    """A position a broker lists as a CE contract closes with an OPT leg carrying CE (one shape for brokers)."""
    call = ContractId(
        exchange=Exchange.NFO,
        symbol="NIFTY",
        instrument=Instrument.CALL,
        option_type=OptionType.CALL,
        strike_price=Decimal(24000),
        expiry_date=date(2026, 12, 29),
    )
    leg = closing_leg(Position(contract=call, product=Product.MARGIN, net_quantity=-75))
    assert (leg.side, leg.quantity, leg.instrument, leg.option_type) == (
        Side.BUY,
        75,
        Instrument.OPTION,
        OptionType.CALL,
    )


def test_flatten_closes_an_option_by_its_type_and_expiry() -> None:
    """A long call closes with a sell of the same call: CE and the expiry are part of the contract."""
    call = ContractId(
        exchange=Exchange.NFO,
        symbol="NIFTY",
        instrument=Instrument.OPTION,
        option_type=OptionType.CALL,
        strike_price=Decimal(24000),
        expiry_date=date(2026, 12, 29),
    )
    leg = closing_leg(Position(contract=call, product=Product.MARGIN, net_quantity=1))
    assert (leg.side, leg.quantity, leg.instrument) == (Side.SELL, 1, Instrument.OPTION)
    assert (leg.option_type, leg.strike_price, leg.expiry_date) == (OptionType.CALL, Decimal(24000), date(2026, 12, 29))


@pytest.mark.parametrize(
    "contract",
    [
        {
            "exchange": Exchange.NFO,
            "symbol": "NIFTY",
            "instrument": Instrument.OPTION,
            "option_type": OptionType.CALL,
            "strike_price": Decimal(24050),
            "expiry_date": date(2026, 12, 8),
        },
        {
            "exchange": Exchange.NFO,
            "symbol": "BANKNIFTY",
            "instrument": Instrument.OPTION,
            "option_type": OptionType.PUT,
            "strike_price": Decimal("51000.5"),
            "expiry_date": date(2026, 12, 29),
        },
        {
            "exchange": Exchange.NFO,
            "symbol": "NIFTY",
            "instrument": Instrument.FUTURE,
            "expiry_date": date(2026, 12, 29),
        },
        {"exchange": Exchange.NSE, "symbol": "RELIANCE", "instrument": Instrument.EQUITY},
    ],
    ids=["call", "put", "future", "equity"],
)
def test_a_strategys_share_is_closed_in_the_very_contract_it_was_bought_in(contract: dict[str, Any]) -> None:
    """A strategy's position is kept by the contract key of its fills (`book_key`); square-off and a strategy's
    EXIT_ALL rebuild the position from that key (`position_of_key`) and close it. The close must name the same
    contract: the option type, strike and expiry of an option, the expiry of a future (the wrong strike or week
    would open a second position instead of closing the first), in the fill's product, opposite side, whole size."""
    bought = attrs.evolve(LEG, manage_position=None, quantity=75, product=Product.INTRADAY, **contract)
    position = position_of_key(book_key(bought), 75)
    close = closing_leg(position)
    fields = ("exchange", "symbol", "instrument", "option_type", "strike_price", "expiry_date", "product")
    assert {f: getattr(close, f) for f in fields} == {f: getattr(bought, f) for f in fields}
    assert (close.side, close.quantity, close.order_type) == (Side.SELL, 75, OrderType.MARKET)
    assert position_of_key(book_key(bought), -30).net_quantity == -30
    assert closing_leg(position_of_key(book_key(bought), -30)).side is Side.BUY


def test_a_strategys_share_is_sized_in_the_legs_product_and_built_when_the_broker_lists_none() -> None:
    """`share` gives an exit the strategy's own net in the leg's product, the broker's other products untouched;
    when the broker lists nothing in that product (its view and the strategy's fills disagree: the caller
    reports it), the position is built from the leg's own contract, so the exit still closes the strategy's net."""
    leg = attrs.evolve(LEG, product=Product.INTRADAY)
    cnc, intraday = held(40, Product.CNC), held(25, Product.INTRADAY)
    assert share(leg, [cnc, intraday], 10) == [cnc, attrs.evolve(intraday, net_quantity=10)]
    assert share(leg, [intraday, cnc], -3) == [cnc, attrs.evolve(intraday, net_quantity=-3)]
    assert share(leg, [cnc, intraday], 0) == [cnc]
    [kept, built] = share(leg, [cnc], 7)
    assert kept == cnc
    assert (built.product, built.net_quantity) == (Product.INTRADAY, 7)
    assert (built.contract.exchange, built.contract.symbol, built.contract.instrument) == (
        Exchange.NSE,
        "RELIANCE",
        Instrument.EQUITY,
    )
