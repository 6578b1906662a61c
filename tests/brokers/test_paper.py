"""The paper broker through its public methods, on real SQLite files in tmp_path.

Fixtures live here, not in a conftest.py, so this file merges without touching the other brokers' tests.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import random
import sqlite3
import sys
import textwrap
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import structlog.testing
from helpers import typed_leg

from tvbridge.broker import (
    BrokerContext,
    BrokerRejectedError,
    BrokerUnavailableError,
    BrokerUnsupportedError,
    CancelRequest,
    OpenOrder,
    OrderRequest,
    OrderState,
    Position,
    SharedDatabase,
)
from tvbridge.models import (
    CancelLeg,
    Exchange,
    Instrument,
    OptionType,
    OrderType,
    PositionAction,
    Product,
    Side,
)
from tvbridge.registry import interface_problem
from tvbridge_brokers.paper import PaperBroker, PaperOrder, PaperPosition

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from pathlib import Path

PRICES: dict[str, object] = {"RELIANCE": "2900", "NSE:INFY": 1500.5}


@pytest.fixture
async def context(tmp_path: Path, request: pytest.FixtureRequest) -> BrokerContext:
    """The account's book in its SQLite file, or (`TVBRIDGE_TEST_STORE=postgresql`) in a new migrated PostgreSQL
    database: the same rules, whichever stores the rows (tests of the file itself are `sqlite_only`)."""
    if os.environ.get("TVBRIDGE_TEST_STORE") != "postgresql":
        return BrokerContext(account="practice", data_dir=tmp_path)
    from tvbridge.store.postgres import migrate_url  # noqa: PLC0415 - asyncpg, only on a PostgreSQL run

    url = request.getfixturevalue("pg_url")
    await migrate_url(url)
    return BrokerContext(account="practice", data_dir=tmp_path, database=SharedDatabase(url))


async def started(context: BrokerContext, settings: Mapping[str, object] | None = None) -> PaperBroker:
    broker = PaperBroker.from_settings({} if settings is None else settings, context)
    await broker.start()
    return broker


@pytest.fixture
async def broker(context: BrokerContext) -> AsyncIterator[PaperBroker]:
    """A started paper broker with reference prices for RELIANCE (any exchange) and NSE:INFY."""
    paper = await started(context, {"prices": PRICES})
    yield paper
    await paper.aclose()


make_leg = typed_leg


def order(client_order_id: str, **changes: Any) -> OrderRequest:
    return OrderRequest(client_order_id=client_order_id, alert_id="alert-1", leg_number=1, leg=make_leg(**changes))


def cancel(**fields: Any) -> CancelRequest:
    return CancelRequest(alert_id="alert-9", leg_number=1, leg=attrs.evolve(CancelLeg(), **fields))


def only(positions: list[PaperPosition]) -> PaperPosition:
    assert len(positions) == 1, positions
    return positions[0]


# -- market orders -------------------------------------------------------------------------------------------------


async def test_market_order_fills_at_the_legs_price(broker: PaperBroker) -> None:
    """A MKT leg with a price > 0 fills at once, whole, at that price, and opens a position."""
    result = await broker.place(order("c1", price=Decimal("2950.5")))

    assert result.state is OrderState.FILLED
    assert result.order_id == "PAPER-000001"
    assert result.client_order_id == "c1"
    assert result.filled_quantity == 10
    assert result.average_price == Decimal("2950.5")
    assert "2950.5" in result.message
    position = only(await broker.book_positions())
    assert (position.exchange, position.contract, position.product) == (Exchange.NSE, "RELIANCE", Product.INTRADAY)
    assert position.net_quantity == 10
    assert position.average_price == Decimal("2950.5")


async def test_market_order_without_price_fills_at_the_reference_price(broker: PaperBroker) -> None:
    """A MKT leg with price 0 fills at the configured reference price: by contract, or by EXCHANGE:contract."""
    reliance = await broker.place(order("c1", price=Decimal(0)))
    infy = await broker.place(order("c2", symbol="INFY", side=Side.SELL, quantity=3))

    assert reliance.state is OrderState.FILLED
    assert reliance.average_price == Decimal(2900)
    assert "reference price" in reliance.message
    assert infy.average_price == Decimal("1500.5")  # a TOML float becomes its exact decimal, not 1500.4999...
    positions = {p.contract: p.net_quantity for p in await broker.book_positions()}
    assert positions == {"RELIANCE": 10, "INFY": -3}


async def test_market_order_without_any_price_fills_at_an_unknown_price(broker: PaperBroker) -> None:
    """No leg price and no reference price: the order still fills, the price is None and the message says why."""
    result = await broker.place(order("c1", symbol="TCS"))

    assert result.state is OrderState.FILLED
    assert result.filled_quantity == 10
    assert result.average_price is None
    assert "unknown price" in result.message
    assert "NSE:TCS" in result.message
    position = only(await broker.book_positions())
    assert position.net_quantity == 10
    assert position.average_price is None


# -- limit orders --------------------------------------------------------------------------------------------------


async def test_limit_order_rests_until_a_later_alerts_price_crosses_it(broker: PaperBroker) -> None:
    """A buy limit below the market rests OPEN; a later alert's price above it leaves it; one at or below it fills
    it at the limit price, and the answer to the alert that crossed it (and a log line) say so."""
    resting = await broker.place(order("c1", order_type=OrderType.LIMIT, price=Decimal(2800)))
    assert resting.state is OrderState.OPEN
    assert resting.filled_quantity == 0
    assert resting.average_price is None

    await broker.place(order("c2", side=Side.SELL, quantity=1, price=Decimal(2850)))
    still = await broker.lookup("c1")
    assert still is not None
    assert still.state is OrderState.OPEN

    with structlog.testing.capture_logs() as logs:
        crossing = await broker.place(order("c3", side=Side.SELL, quantity=1, price=Decimal(2790)))
    assert "PAPER-000001 filled at 2800" in crossing.message
    assert crossing.details["moved_orders"] == ["PAPER-000001"]
    assert logs == [
        {
            "event": "paper.orders_moved",
            "log_level": "info",
            "order_ids": ["PAPER-000001"],
            "by_client_order_id": "c3",
        }
    ]
    filled = await broker.lookup("c1")
    assert filled is not None
    assert filled.state is OrderState.FILLED
    assert filled.filled_quantity == 10
    assert filled.average_price == Decimal(2800)  # the limit, not the better 2790: paper never flatters
    assert only(await broker.book_positions()).net_quantity == 10 - 1 - 1


async def test_sell_limit_fills_when_a_later_price_reaches_it(broker: PaperBroker) -> None:
    """A sell limit fills when a later alert's price on its contract is at or above it (a LMT leg's price counts);
    the new limit itself rests, since its own price is its limit, not the market (TCS has no reference price)."""
    await broker.place(order("c1", symbol="TCS", side=Side.SELL, order_type=OrderType.LIMIT, price=Decimal(3000)))
    await broker.place(order("c2", symbol="WIPRO", order_type=OrderType.LIMIT, price=Decimal(3000)))
    await broker.place(order("c3", symbol="TCS", order_type=OrderType.LIMIT, quantity=1, price=Decimal(3000)))

    orders = {o.client_order_id: o for o in await broker.orders()}
    assert orders["c1"].state is OrderState.FILLED
    assert orders["c1"].average_price == Decimal(3000)
    assert orders["c2"].state is OrderState.OPEN
    assert orders["c3"].state is OrderState.OPEN


async def test_a_price_crosses_only_orders_on_the_same_exchange_and_contract(broker: PaperBroker) -> None:
    """An alert's price on BSE, or on another contract of the same symbol, leaves NSE:RELIANCE orders resting."""
    await broker.place(order("lmt", order_type=OrderType.LIMIT, price=Decimal(2800)))
    await broker.place(order("bse", exchange=Exchange.BSE, side=Side.SELL, price=Decimal(2000)))
    await broker.place(order("fut", instrument=Instrument.FUTURE, expiry_date=date(2026, 11, 26), price=Decimal(1)))

    [resting] = await broker.orders(resting_only=True)
    assert resting.client_order_id == "lmt"


async def test_limit_order_that_the_reference_price_already_meets_fills_at_once(broker: PaperBroker) -> None:
    """A buy limit at or above the reference price is marketable: it fills at once at the reference price."""
    result = await broker.place(order("c1", order_type=OrderType.LIMIT, price=Decimal(3000)))

    assert result.state is OrderState.FILLED
    assert result.average_price == Decimal(2900)


# -- stop orders ---------------------------------------------------------------------------------------------------


async def test_stop_loss_market_waits_for_its_trigger_and_fills_at_the_triggering_price(broker: PaperBroker) -> None:
    """A sell SL-M rests TRIGGER_PENDING; a price above the trigger leaves it; one at or below fills it there."""
    await broker.place(order("entry", price=Decimal(2900)))
    stop = await broker.place(
        order("stop", side=Side.SELL, order_type=OrderType.STOP_LOSS_MARKET, trigger_price=Decimal(2700))
    )
    assert stop.state is OrderState.TRIGGER_PENDING

    await broker.place(order("tick1", quantity=1, price=Decimal(2750)))
    pending = await broker.lookup("stop")
    assert pending is not None
    assert pending.state is OrderState.TRIGGER_PENDING

    await broker.place(order("tick2", quantity=1, price=Decimal(2690)))
    filled = await broker.lookup("stop")
    assert filled is not None
    assert filled.state is OrderState.FILLED
    assert filled.average_price == Decimal(2690)
    assert "triggered at 2700" in filled.message
    assert only(await broker.book_positions()).net_quantity == 10 + 1 + 1 - 10


async def test_stop_loss_becomes_a_limit_when_triggered(broker: PaperBroker) -> None:
    """A sell SL (trigger 2700, limit 2680) triggers at 2650 but rests OPEN as a limit; 2685 then fills it at 2680."""
    stop = await broker.place(
        order("stop", side=Side.SELL, order_type=OrderType.STOP_LOSS, price=Decimal(2680), trigger_price=Decimal(2700))
    )
    assert stop.state is OrderState.TRIGGER_PENDING

    await broker.place(order("tick1", quantity=1, price=Decimal(2650)))
    triggered = await broker.lookup("stop")
    assert triggered is not None
    assert triggered.state is OrderState.OPEN
    assert "limit at 2680" in triggered.message

    await broker.place(order("tick2", quantity=1, price=Decimal(2685)))
    filled = await broker.lookup("stop")
    assert filled is not None
    assert filled.state is OrderState.FILLED
    assert filled.average_price == Decimal(2680)


async def test_stop_loss_triggered_and_crossed_by_one_price_fills_at_its_limit(broker: PaperBroker) -> None:
    """A buy SL (trigger 105, limit 106) fills at 106 when one alert's price (105.5) both triggers and crosses it."""
    await broker.place(
        order(
            "stop",
            symbol="TCS",
            order_type=OrderType.STOP_LOSS,
            price=Decimal(106),
            trigger_price=Decimal(105),
        )
    )
    await broker.place(order("tick", symbol="TCS", side=Side.SELL, quantity=1, price=Decimal("105.5")))

    filled = await broker.lookup("stop")
    assert filled is not None
    assert filled.state is OrderState.FILLED
    assert filled.average_price == Decimal(106)


async def test_new_stop_whose_trigger_the_reference_price_has_passed_fills_at_once(broker: PaperBroker) -> None:
    """A buy SL-M with its trigger already below the reference price triggers on arrival at the reference price."""
    result = await broker.place(order("c1", order_type=OrderType.STOP_LOSS_MARKET, trigger_price=Decimal(2800)))

    assert result.state is OrderState.FILLED
    assert result.average_price == Decimal(2900)
    assert "triggered at once" in result.message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"order_type": OrderType.LIMIT}, "a LMT order needs a price > 0"),
        ({"order_type": OrderType.STOP_LOSS_MARKET}, "a SL-M order needs a triggerPrice > 0"),
        (
            {"order_type": OrderType.STOP_LOSS, "price": Decimal(99), "trigger_price": Decimal(100)},
            "a buy SL needs price >= triggerPrice",
        ),
        ({"quantity": 0}, "quantity must be a positive whole number"),
    ],
)
async def test_an_order_a_real_exchange_would_refuse_is_rejected_and_not_recorded(
    broker: PaperBroker, changes: dict[str, object], expected: str
) -> None:
    """Legs an exchange refuses raise BrokerRejectedError with the reason; nothing is stored under the id."""
    with pytest.raises(BrokerRejectedError, match=expected):
        await broker.place(order("bad", **changes))

    assert await broker.lookup("bad") is None
    assert await broker.orders() == []


# -- positions -----------------------------------------------------------------------------------------------------


async def test_positions_track_net_quantity_average_price_and_realized_pnl(broker: PaperBroker) -> None:
    """Adding moves the average, reducing books P&L at the average, going through zero opens at the fill price."""
    await broker.place(order("c1", price=Decimal(100)))
    await broker.place(order("c2", price=Decimal(110)))
    added = only(await broker.book_positions())
    assert (added.net_quantity, added.average_price, added.realized_pnl) == (20, Decimal(105), Decimal(0))

    await broker.place(order("c3", side=Side.SELL, quantity=15, price=Decimal(120)))
    reduced = only(await broker.book_positions())
    assert (reduced.net_quantity, reduced.average_price, reduced.realized_pnl) == (5, Decimal(105), Decimal(225))

    await broker.place(order("c4", side=Side.SELL, quantity=10, price=Decimal(90)))
    flipped = only(await broker.book_positions())
    assert (flipped.net_quantity, flipped.average_price, flipped.realized_pnl) == (-5, Decimal(90), Decimal(150))

    await broker.place(order("c5", quantity=5, price=Decimal(80)))
    assert await broker.book_positions() == []
    closed = only(await broker.book_positions(include_flat=True))
    assert (closed.net_quantity, closed.average_price, closed.realized_pnl) == (0, None, Decimal(200))


async def test_realized_pnl_of_a_round_trip_is_what_was_sold_minus_what_was_bought(broker: PaperBroker) -> None:
    """Over any sequence of fills that ends flat, realized P&L equals sell proceeds minus buy costs (a fixed
    pseudo-random sequence of 60 market orders crossing zero many times, then a close)."""
    rng = random.Random(20261125)  # noqa: S311 - a fixed, reproducible test sequence, not a secret
    cash = Decimal(0)
    for i in range(60):
        side = rng.choice([Side.BUY, Side.SELL])
        quantity = rng.randint(1, 20)
        price = Decimal(rng.randint(9000, 11000)) / 100
        await broker.place(order(f"c{i}", side=side, quantity=quantity, price=price))
        cash += quantity * price * (1 if side is Side.SELL else -1)
    still_open = await broker.book_positions()
    net = still_open[0].net_quantity if still_open else 0
    if net:
        side = Side.SELL if net > 0 else Side.BUY
        closing = await broker.place(order("close", side=side, quantity=abs(net), price=Decimal(100)))
        cash += closing.filled_quantity * Decimal(100) * (1 if net > 0 else -1)

    flat = only(await broker.book_positions(include_flat=True))
    assert flat.net_quantity == 0
    assert flat.realized_pnl is not None
    assert abs(flat.realized_pnl - cash) < Decimal("1e-15")  # only the averages' 28-digit rounding may differ


async def test_a_fill_at_an_unknown_price_makes_the_average_and_pnl_unknown_not_wrong(broker: PaperBroker) -> None:
    """After a fill without a price, the position's average and realized P&L are None rather than made up."""
    await broker.place(order("unknown", symbol="TCS"))
    await broker.place(order("known", symbol="TCS", quantity=5, price=Decimal(100)))
    adding = only(await broker.book_positions())
    assert (adding.net_quantity, adding.average_price) == (15, None)

    await broker.place(order("close", symbol="TCS", side=Side.SELL, quantity=15, price=Decimal(110)))
    closed = only(await broker.book_positions(include_flat=True))
    assert (closed.net_quantity, closed.average_price, closed.realized_pnl) == (0, None, None)


async def test_positions_are_kept_per_contract_and_product(broker: PaperBroker) -> None:
    """A call, a put and the same stock in another product are separate positions with their own prices."""
    option = {
        "exchange": Exchange.NFO,
        "symbol": "NIFTY",
        "instrument": Instrument.OPTION,
        "expiry_date": date(2026, 11, 26),
        "strike_price": Decimal("24000.00"),
        "product": Product.MARGIN,
    }
    await broker.place(order("ce", option_type=OptionType.CALL, price=Decimal(120), **option))
    await broker.place(order("pe", option_type=OptionType.PUT, price=Decimal(80), **option))
    await broker.place(order("cnc", product=Product.CNC, price=Decimal(2900)))
    await broker.place(order("mis", product=Product.INTRADAY, side=Side.SELL, price=Decimal(2910)))

    positions = {(p.contract, p.product): (p.net_quantity, p.average_price) for p in await broker.book_positions()}
    assert positions == {
        ("NIFTY 2026-11-26 24000 CE", Product.MARGIN): (10, Decimal(120)),
        ("NIFTY 2026-11-26 24000 PE", Product.MARGIN): (10, Decimal(80)),
        ("RELIANCE", Product.CNC): (10, Decimal(2900)),
        ("RELIANCE", Product.INTRADAY): (-10, Decimal(2910)),
    }


async def test_positions_through_the_interface_are_per_contract_and_signed(broker: PaperBroker) -> None:
    """`positions()` reports the book's open positions as interface `Position`s (signed units, contract, product);
    with a leg, only those in that leg's exchange and contract, in every product."""
    await broker.place(order("cnc", product=Product.CNC, quantity=7, price=Decimal(2900)))
    await broker.place(order("mis", product=Product.INTRADAY, side=Side.SELL, quantity=4, price=Decimal(2910)))
    await broker.place(order("tcs", symbol="TCS", quantity=2, price=Decimal(4000)))

    every = await broker.positions()
    assert all(isinstance(p, Position) for p in every)
    assert sorted((p.contract.symbol, p.product, p.net_quantity) for p in every) == [
        ("RELIANCE", Product.CNC, 7),
        ("RELIANCE", Product.INTRADAY, -4),
        ("TCS", Product.INTRADAY, 2),
    ]
    mine = await broker.positions(make_leg())
    assert sorted((p.product, p.net_quantity, p.average_price) for p in mine) == [
        (Product.CNC, 7, Decimal(2900)),
        (Product.INTRADAY, -4, Decimal(2910)),
    ]
    assert await broker.positions(make_leg(exchange=Exchange.BSE)) == []


async def test_open_orders_lists_only_what_can_still_be_cancelled(broker: PaperBroker) -> None:
    """`open_orders()` lists resting limits and waiting stops with their side, size and prices; filled and
    cancelled orders are not in it."""
    await broker.place(order("filled", price=Decimal(2900)))
    limit = await broker.place(order("limit", order_type=OrderType.LIMIT, price=Decimal(2000), quantity=3))
    await broker.place(order("gone", order_type=OrderType.LIMIT, price=Decimal(2001)))
    await broker.cancel(cancel(order_id="PAPER-000003"))

    (resting,) = await broker.open_orders()
    assert isinstance(resting, OpenOrder)
    assert (resting.order_id, resting.state, resting.side, resting.quantity, resting.price) == (
        limit.order_id,
        OrderState.OPEN,
        Side.BUY,
        3,
        Decimal(2000),
    )
    assert (resting.contract.exchange, resting.contract.symbol, resting.client_order_id) == (
        Exchange.NSE,
        "RELIANCE",
        "limit",
    )


async def test_a_leg_that_still_carries_exit_all_is_refused_unplaced(broker: PaperBroker) -> None:
    """EXIT_ALL is resolved by tvbridge into a plain order before `place()`; a leg that reaches paper with it is
    refused, never placed as the alert's own side and quantity."""
    with pytest.raises(BrokerUnsupportedError, match="manage_position EXIT_ALL"):
        await broker.place(order("exit", manage_position=PositionAction.EXIT_ALL))
    assert await broker.orders() == []


# -- idempotency ---------------------------------------------------------------------------------------------------


async def test_the_same_client_order_id_twice_returns_the_first_order(broker: PaperBroker) -> None:
    """A repeat of a client order id (even with a different leg) returns the first order; no second one exists."""
    first = await broker.place(order("c1", price=Decimal(2900)))
    second = await broker.place(order("c1", side=Side.SELL, quantity=99, price=Decimal(1)))

    assert second.order_id == first.order_id
    assert second.state is OrderState.FILLED
    assert (second.filled_quantity, second.average_price) == (10, Decimal(2900))
    assert second.details["duplicate"] is True
    assert "already handled as PAPER-000001" in second.message
    assert len(await broker.orders()) == 1
    assert only(await broker.book_positions()).net_quantity == 10


async def test_twenty_concurrent_places_with_one_client_order_id_make_one_order(broker: PaperBroker) -> None:
    """Twenty place() calls racing with one client order id all get the same order; one row, one fill."""
    results = await asyncio.gather(*(broker.place(order("race", price=Decimal(2900))) for _ in range(20)))

    assert {r.order_id for r in results} == {"PAPER-000001"}
    assert len(await broker.orders()) == 1
    assert only(await broker.book_positions()).net_quantity == 10


async def test_two_brokers_on_one_file_racing_make_one_order(context: BrokerContext) -> None:
    """Two instances on the same database (two processes, or an overlapping restart) still place once."""
    first, second = await started(context), await started(context)
    try:
        results = await asyncio.gather(
            *(b.place(order("race", price=Decimal(2900))) for _ in range(10) for b in (first, second))
        )
        assert {r.order_id for r in results} == {"PAPER-000001"}
        assert len(await first.orders()) == 1
    finally:
        await first.aclose()
        await second.aclose()


# -- cancel --------------------------------------------------------------------------------------------------------


async def test_cancel_by_order_id(broker: PaperBroker) -> None:
    """Cancelling a resting order by id answers CANCELLED; repeating it answers the same; lookup agrees."""
    placed = await broker.place(order("c1", order_type=OrderType.LIMIT, price=Decimal(2000)))
    assert placed.order_id is not None

    [cancelled] = await broker.cancel(cancel(order_id=placed.order_id))
    assert cancelled.order_id == placed.order_id
    assert cancelled.state is OrderState.CANCELLED
    assert "alert-9" in cancelled.message
    [again] = await broker.cancel(cancel(order_id=placed.order_id))
    assert again.state is OrderState.CANCELLED
    assert "already cancelled" in again.message
    looked_up = await broker.lookup("c1")
    assert looked_up is not None
    assert looked_up.state is OrderState.CANCELLED

    await broker.place(order("tick", side=Side.SELL, price=Decimal(1000)))  # would have crossed it
    assert only(await broker.book_positions()).net_quantity == -10


async def test_cancel_of_an_unknown_or_filled_order_is_rejected(broker: PaperBroker) -> None:
    """An order id this account never issued, or one already filled, raises BrokerRejectedError."""
    filled = await broker.place(order("c1", price=Decimal(2900)))
    assert filled.order_id is not None

    with pytest.raises(BrokerRejectedError, match="unknown order id 'PAPER-000099'"):
        await broker.cancel(cancel(order_id="PAPER-000099"))
    with pytest.raises(BrokerRejectedError, match="unknown order id '12345'"):
        await broker.cancel(cancel(order_id="12345"))
    with pytest.raises(BrokerRejectedError, match="already filled"):
        await broker.cancel(cancel(order_id=filled.order_id))
    with pytest.raises(BrokerRejectedError, match="needs an order_id or a symbol"):
        await broker.cancel(cancel())


async def test_cancel_by_order_id_with_another_symbol_is_rejected(broker: PaperBroker) -> None:
    """An order id whose order is for another symbol or side than the cancel leg says is refused, not cancelled."""
    placed = await broker.place(order("c1", order_type=OrderType.LIMIT, price=Decimal(2000)))

    with pytest.raises(BrokerRejectedError, match="not symbol TCS"):
        await broker.cancel(cancel(order_id=placed.order_id, symbol="TCS"))
    with pytest.raises(BrokerRejectedError, match="not side S"):
        await broker.cancel(cancel(order_id=placed.order_id, side=Side.SELL))
    assert len(await broker.orders(resting_only=True)) == 1


async def test_cancel_by_symbol_cancels_only_that_symbols_resting_orders(broker: PaperBroker) -> None:
    """Without an order id, every OPEN or TRIGGER_PENDING order of the symbol is cancelled, nothing else."""
    await broker.place(order("lmt", order_type=OrderType.LIMIT, price=Decimal(2000)))
    await broker.place(
        order("stop", side=Side.SELL, order_type=OrderType.STOP_LOSS_MARKET, trigger_price=Decimal(2500))
    )
    await broker.place(order("filled", price=Decimal(2900)))
    await broker.place(order("other", symbol="TCS", order_type=OrderType.LIMIT, price=Decimal(3000)))

    results = await broker.cancel(cancel(symbol="RELIANCE"))

    assert [r.client_order_id for r in results] == ["lmt", "stop"]
    assert {r.state for r in results} == {OrderState.CANCELLED}
    states = {o.client_order_id: o.state for o in await broker.orders()}
    assert states == {
        "lmt": OrderState.CANCELLED,
        "stop": OrderState.CANCELLED,
        "filled": OrderState.FILLED,
        "other": OrderState.OPEN,
    }
    assert await broker.cancel(cancel(symbol="RELIANCE")) == []


async def test_cancel_by_symbol_and_side_or_exchange_narrows_it(broker: PaperBroker) -> None:
    """A side (or exchange) in the cancel leg keeps the other side's (or exchange's) orders resting."""
    await broker.place(order("buy", order_type=OrderType.LIMIT, price=Decimal(2000)))
    await broker.place(order("sell", side=Side.SELL, order_type=OrderType.LIMIT, price=Decimal(4000)))
    await broker.place(order("bse", exchange=Exchange.BSE, order_type=OrderType.LIMIT, price=Decimal(2000)))

    by_side = await broker.cancel(cancel(symbol="RELIANCE", side=Side.SELL))
    by_exchange = await broker.cancel(cancel(symbol="RELIANCE", exchange=Exchange.BSE))

    assert [r.client_order_id for r in by_side] == ["sell"]
    assert [r.client_order_id for r in by_exchange] == ["bse"]
    states = {o.client_order_id: o.state for o in await broker.orders()}
    assert states["buy"] is OrderState.OPEN


# -- persistence and lifecycle -------------------------------------------------------------------------------------


async def test_orders_and_positions_survive_a_restart(context: BrokerContext) -> None:
    """A new broker on the same file sees the orders, positions and client order ids; resting orders still work."""
    before = await started(context)
    await before.place(order("long", price=Decimal(2900)))
    await before.place(order("lmt", side=Side.SELL, order_type=OrderType.LIMIT, price=Decimal(3000)))
    orders_before = await before.orders()
    await before.aclose()

    after = await started(context)
    try:
        assert await after.orders() == orders_before
        assert only(await after.book_positions()).net_quantity == 10
        repeat = await after.place(order("long", price=Decimal(1)))
        assert repeat.order_id == "PAPER-000001"
        assert repeat.average_price == Decimal(2900)

        new = await after.place(order("tick", quantity=1, price=Decimal(3001)))
        assert new.order_id == "PAPER-000003"
        lmt = await after.lookup("lmt")
        assert lmt is not None
        assert lmt.state is OrderState.FILLED
        assert only(await after.book_positions()).net_quantity == 10 + 1 - 10
    finally:
        await after.aclose()


async def test_an_order_placed_just_before_a_crash_is_found_and_not_placed_again(tmp_path: Path) -> None:
    """A process killed right after place() (no aclose) left a committed order: lookup finds it, place returns it."""
    db_path = tmp_path / "crash.sqlite3"
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from decimal import Decimal
        from pathlib import Path
        from tvbridge.broker import BrokerContext, OrderRequest
        from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, Product, Side
        from tvbridge_brokers.paper import PaperBroker

        async def main():
            path = Path(sys.argv[1])
            broker = PaperBroker.from_settings({"db_path": str(path)}, BrokerContext(account="x", data_dir=path.parent))
            await broker.start()
            leg = OrderLeg(side=Side.BUY, order_type=OrderType.MARKET, quantity=10, exchange=Exchange.NSE,
                           symbol="RELIANCE", instrument=Instrument.EQUITY, product=Product.INTRADAY,
                           price=Decimal(2900))
            result = await broker.place(OrderRequest(client_order_id="c1", alert_id="a", leg_number=1, leg=leg))
            print(result.order_id, flush=True)
            os._exit(0)  # no aclose: the process dies with the connection open

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(db_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == "PAPER-000001"

    context = BrokerContext(account="other", data_dir=tmp_path)
    broker = await started(context, {"db_path": "crash.sqlite3"})
    try:
        found = await broker.lookup("c1")
        assert found is not None
        assert found.order_id == "PAPER-000001"
        again = await broker.place(order("c1", price=Decimal(2900)))
        assert again.order_id == "PAPER-000001"
        assert len(await broker.orders()) == 1
        assert only(await broker.book_positions()).net_quantity == 10
    finally:
        await broker.aclose()


@pytest.mark.sqlite_only
async def test_a_database_locked_by_another_process_fails_the_order_cleanly(
    broker: PaperBroker, tmp_path: Path
) -> None:
    """While another writer holds the file past the 1 s busy timeout, place() raises BrokerUnavailableError and
    places nothing; once the lock is gone the same client order id places normally."""
    other = sqlite3.connect(tmp_path / "paper-practice.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(BrokerUnavailableError, match="nothing was done"):
            await broker.place(order("c1", price=Decimal(2900)))
        other.execute("ROLLBACK")
    finally:
        other.close()

    assert await broker.lookup("c1") is None
    placed = await broker.place(order("c1", price=Decimal(2900)))
    assert placed.state is OrderState.FILLED
    assert len(await broker.orders()) == 1


async def test_health_follows_the_lifecycle(context: BrokerContext) -> None:
    """Unhealthy before start and after aclose, healthy in between; calls after aclose raise, nothing placed."""
    broker = PaperBroker.from_settings({}, context)
    assert not (await broker.health()).ok
    with pytest.raises(BrokerUnavailableError, match="not started"):
        await broker.place(order("c1"))

    await broker.start()
    await broker.place(order("c0", order_type=OrderType.LIMIT, price=Decimal(1)))
    health = await broker.health()
    assert health.ok
    assert "1 resting order" in health.detail
    await broker.aclose()
    await broker.aclose()

    closed = await broker.health()
    assert not closed.ok
    assert "closed" in closed.detail
    with pytest.raises(BrokerUnavailableError, match="closed"):
        await broker.place(order("c1"))
    with pytest.raises(BrokerUnavailableError, match="closed"):
        await broker.start()


async def test_aclose_lets_calls_already_made_finish(context: BrokerContext) -> None:
    """Calls made before aclose() complete (shutdown must not drop an order half-way); the file then has them."""
    broker = await started(context)
    # gather starts its tasks in order: the five place() calls reach the worker queue before aclose() does
    *results, _ = await asyncio.gather(
        *(broker.place(order(f"c{i}", price=Decimal(2900))) for i in range(5)), broker.aclose()
    )

    assert [r.state for r in results if r is not None] == [OrderState.FILLED] * 5
    reopened = await started(context)
    try:
        assert len(await reopened.orders()) == 5
    finally:
        await reopened.aclose()


async def test_concurrent_start_and_aclose_leave_one_clean_state(context: BrokerContext) -> None:
    """Two start() calls at once open the database once; an aclose() racing a start() ends closed, not half-open."""
    broker = PaperBroker.from_settings({}, context)
    await asyncio.gather(broker.start(), broker.start())
    await broker.place(order("c1", price=Decimal(1)))
    assert len(await broker.orders()) == 1
    await broker.aclose()

    racing = PaperBroker.from_settings({}, context)
    await asyncio.gather(racing.start(), racing.aclose())
    assert not (await racing.health()).ok
    with pytest.raises(BrokerUnavailableError, match="closed"):
        await racing.orders()


async def test_start_fails_clearly_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    """A db_path that is a directory makes start() raise BrokerUnavailableError naming the file."""
    (tmp_path / "dir.sqlite3").mkdir()
    broker = PaperBroker.from_settings({"db_path": "dir.sqlite3"}, BrokerContext(account="p", data_dir=tmp_path))

    with pytest.raises(BrokerUnavailableError, match=r"dir\.sqlite3 cannot be opened"):
        await broker.start()
    await broker.aclose()


@pytest.mark.sqlite_only
async def test_a_database_from_a_newer_version_is_refused(context: BrokerContext, tmp_path: Path) -> None:
    """A file whose schema is newer than this code is not touched: start() says to upgrade."""
    path = tmp_path / "paper-practice.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    broker = PaperBroker.from_settings({}, context)

    with pytest.raises(BrokerUnavailableError, match="schema version 99"):
        await broker.start()
    await broker.aclose()


# -- settings and discovery ----------------------------------------------------------------------------------------


def test_settings_default_to_a_file_per_account_in_the_data_directory(context: BrokerContext, tmp_path: Path) -> None:
    """Without db_path the file is <data_dir>/paper-<account>.sqlite3; a relative db_path is under data_dir."""
    default = PaperBroker.from_settings({}, context)
    relative = PaperBroker.from_settings({"db_path": "sub/p.db", "broker": "paper"}, context)

    assert default.settings.db_path == tmp_path / "paper-practice.sqlite3"
    assert relative.settings.db_path == tmp_path / "sub" / "p.db"
    assert dict(default.settings.prices) == {}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"price": {"RELIANCE": 1}}, "unknown key 'price'"),
        ({"slippage_bps": 5}, "unknown key 'slippage_bps'"),
        ({"prices": {"RELIANCE": "abc"}}, "prices.RELIANCE: 'abc' is not a price"),
        ({"prices": {"RELIANCE": -1}}, "prices.RELIANCE: -1 is not a price"),
        ({"prices": {"RELIANCE": True}}, "prices.RELIANCE: True is not a price"),
        ({"prices": {"RELIANCE": float("nan")}}, "prices.RELIANCE: nan is not a price"),
        ({"prices": [1, 2]}, "prices: expected a table"),
        ({"db_path": 5}, "db_path: expected a file path"),
        ({"db_path": ""}, "db_path: expected a file path"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(
    context: BrokerContext, settings: dict[str, object], expected: str
) -> None:
    """An unknown key or a bad value raises ValueError whose message names the key."""
    with pytest.raises(ValueError, match=expected):
        PaperBroker.from_settings(settings, context)


async def test_it_satisfies_the_broker_protocol_and_is_found_through_its_entry_point(broker: PaperBroker) -> None:
    """The `paper` entry point loads PaperBroker, which fits the Broker interface for API version 1 with every
    order capability, positions and open orders (it has nothing to reconfigure on SIGHUP)."""
    [entry_point] = importlib.metadata.entry_points(group="tvbridge.brokers", name="paper")

    assert entry_point.load() is PaperBroker
    assert interface_problem(broker) == ""
    assert PaperBroker.api_version == 1
    assert (broker.capabilities.positions, broker.capabilities.orders) == (True, True)
    assert broker.capabilities.reconfigure is False
    assert broker.capabilities.live is False
    assert set(broker.capabilities.order_types) == set(OrderType)
    assert set(broker.capabilities.exchanges) == set(Exchange)


async def test_orders_report_what_was_asked_and_what_happened(broker: PaperBroker) -> None:
    """orders() gives every field a status page needs, with aware timestamps."""
    await broker.place(order("c1", order_type=OrderType.LIMIT, price=Decimal("2000.05")))

    [paper_order] = await broker.orders()
    assert isinstance(paper_order, PaperOrder)
    assert (paper_order.order_id, paper_order.client_order_id, paper_order.alert_id) == (
        "PAPER-000001",
        "c1",
        "alert-1",
    )
    assert (paper_order.side, paper_order.order_type, paper_order.quantity) == (Side.BUY, OrderType.LIMIT, 10)
    assert paper_order.price == Decimal("2000.05")
    assert paper_order.state is OrderState.OPEN
    assert paper_order.created_at.tzinfo is not None
