"""What the paper broker reports about its orders and positions: plain frozen records, no I/O.

`book.py` builds them from its SQLite rows; the broker returns them from `orders()` / `positions()` so tests, a
status page or a flatten command can read the paper account without knowing its tables.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import attrs

from tvbridge.broker import ContractId, OpenOrder, OrderResult, OrderState, Position
from tvbridge.models import (
    Exchange,
    Instrument,
    OptionType,
    OrderType,
    Product,
    Side,
)


@attrs.frozen(kw_only=True)
class PaperOrder:
    """One simulated order as it stands now.

    `contract` names the traded contract (`RELIANCE`, `NIFTY FUT 2026-11-27`, `NIFTY 2026-11-27 24000 CE`): orders
    cross, and positions net, per exchange and contract, not per bare symbol, so a call and a put never mix.
    `price` is the leg's price as sent (0 for a market order without one).
    """

    order_id: str
    client_order_id: str
    alert_id: str
    leg_number: int
    exchange: Exchange
    symbol: str
    contract: str
    instrument: Instrument
    option_type: OptionType | None
    strike_price: Decimal | None
    expiry_date: date | None
    product: Product
    side: Side
    order_type: OrderType
    quantity: int
    price: Decimal
    trigger_price: Decimal | None
    state: OrderState
    filled_quantity: int
    average_price: Decimal | None
    message: str
    created_at: datetime
    updated_at: datetime

    def to_result(self, message: str | None = None) -> OrderResult:
        """The order as the plugin interface reports it; `message` replaces the stored one when given."""
        return OrderResult(
            order_id=self.order_id,
            state=self.state,
            message=self.message if message is None else message,
            client_order_id=self.client_order_id,
            filled_quantity=self.filled_quantity,
            average_price=self.average_price,
            details={"broker": "paper", "contract": self.contract, "exchange": str(self.exchange)},
        )


@attrs.frozen(kw_only=True)
class PaperPosition:
    """The net position in one contract and product.

    `net_quantity` is positive when long, negative when short, 0 when flat. `average_price` is the average entry
    price of the open quantity: None when flat, or when a fill at an unknown price went into it (a market order
    with price 0 and no reference price). `realized_pnl` is the profit booked by closing trades, None once a fill
    at an unknown price made it unknowable.
    """

    exchange: Exchange
    symbol: str
    contract: str
    instrument: Instrument
    option_type: OptionType | None
    strike_price: Decimal | None
    expiry_date: date | None
    product: Product
    net_quantity: int
    average_price: Decimal | None
    realized_pnl: Decimal | None
    updated_at: datetime


def _contract_id(record: PaperOrder | PaperPosition) -> ContractId:
    option_type = record.option_type
    if option_type is None and record.instrument in (Instrument.CALL, Instrument.PUT):
        option_type = OptionType(record.instrument.value)
    return ContractId(
        exchange=record.exchange,
        symbol=record.symbol,
        instrument=Instrument.OPTION if option_type is not None else record.instrument,
        option_type=option_type,
        strike_price=record.strike_price,
        expiry_date=record.expiry_date,
        trading_symbol=record.contract,
    )


def position_of(position: PaperPosition) -> Position:
    """The book's position as the plugin interface reports it."""
    return Position(
        contract=_contract_id(position),
        product=position.product,
        net_quantity=position.net_quantity,
        average_price=position.average_price,
        details={"realized_pnl": None if position.realized_pnl is None else str(position.realized_pnl)},
    )


def open_order_of(order: PaperOrder) -> OpenOrder:
    """A resting order as the plugin interface reports it."""
    return OpenOrder(
        order_id=order.order_id,
        state=order.state,
        contract=_contract_id(order),
        side=order.side,
        quantity=order.quantity,
        product=order.product,
        order_type=order.order_type,
        filled_quantity=order.filled_quantity,
        price=order.price,
        trigger_price=order.trigger_price,
        client_order_id=order.client_order_id,
    )
