"""One order leg -> the exact keyword arguments of `dhanhq.place_order`. Pure: no I/O, no clock, no client.

This is where a wrong field would cost money, so every rule is explicit and every refusal names the alert field
(`quantity`, `strike_price`, ...) before anything is sent:

* segment from exchange + instrument: NSE/BSE equity -> `NSE_EQ`/`BSE_EQ`; futures and options on NSE or NFO ->
  `NSE_FNO`, on BSE or BFO -> `BSE_FNO`, on MCX -> `MCX_COMM`;
* side B/S -> BUY/SELL; MKT/LMT/SL/SL-M -> MARKET/LIMIT/STOP_LOSS/STOP_LOSS_MARKET; product C/I/M/MTF ->
  CNC/INTRADAY/MARGIN/MTF (CNC and MTF are equity-only, MARGIN is derivatives-only); validity DAY;
* price: 0 for MKT and SL-M (whatever the alert says), > 0 for LMT and SL; `triggerPrice` > 0 for SL and SL-M,
  and on the right side of the limit price for SL (buy: trigger <= price, sell: trigger >= price);
* AMO when the leg has `amoTime`: OPEN, OPEN_30 or OPEN_60 (dhanhq 2.3 raises on PRE_OPEN, so we refuse it here);
* quantity, see `dhan_quantity`.

Looking the contract up is `instruments.py`'s job; sending is `broker.py`'s.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.broker import BrokerRejectedError, BrokerUnsupportedError, Listings
from tvbridge.models import Exchange, Instrument, OptionType, OrderLeg, OrderType, Product, Side

if TYPE_CHECKING:
    from datetime import date
    from decimal import Decimal

    from tvbridge_brokers.dhan.instruments import Contract, InstrumentMaster

CLIENT_ORDER_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,25}")
"""Dhan's `correlationId`: at most 25 characters of letters, digits, `_` and `-`."""

SIDES: Final = {Side.BUY: "BUY", Side.SELL: "SELL"}
ORDER_TYPES: Final = {
    OrderType.MARKET: "MARKET",
    OrderType.LIMIT: "LIMIT",
    OrderType.STOP_LOSS: "STOP_LOSS",
    OrderType.STOP_LOSS_MARKET: "STOP_LOSS_MARKET",
}
PRODUCTS: Final = {Product.CNC: "CNC", Product.INTRADAY: "INTRADAY", Product.MARGIN: "MARGIN", Product.MTF: "MTF"}
EQUITY_PRODUCTS: Final = frozenset({Product.CNC, Product.INTRADAY, Product.MTF})
DERIVATIVE_PRODUCTS: Final = frozenset({Product.INTRADAY, Product.MARGIN})
AMO_TIMES: Final = frozenset({"OPEN", "OPEN_30", "OPEN_60"})
"""What dhanhq 2.3's `place_order` accepts; Dhan's PRE_OPEN is refused by the client itself."""
LOT_SEGMENTS: Final = frozenset({"MCX_COMM"})
"""Segments whose API quantity is in lots rather than units (see `dhan_quantity`)."""

_DERIVATIVES: Final = frozenset({Instrument.FUTURE, Instrument.OPTION, Instrument.CALL, Instrument.PUT})
_CONTINUOUS: Final = re.compile(r"(?P<underlying>.+?)(?P<nth>[1-9])!")
"""TradingView's continuous futures ticker: NIFTY1! is the nearest expiry, NIFTY2! the next one."""


@attrs.frozen(kw_only=True)
class Segment:
    exchange: str
    """The master's `SEM_EXM_EXCH_ID`."""
    dhan: str
    """Dhan's `exchangeSegment`."""


def segment_for(exchange: Exchange, instrument: Instrument) -> Segment:
    """Dhan's segment for the leg's exchange and instrument; `BrokerUnsupportedError` naming both otherwise."""
    derivative = instrument in _DERIVATIVES
    if not derivative and exchange in {Exchange.NSE, Exchange.BSE}:
        return Segment(exchange=exchange.value, dhan=f"{exchange.value}_EQ")
    if derivative and exchange in {Exchange.NSE, Exchange.NFO}:
        return Segment(exchange="NSE", dhan="NSE_FNO")
    if derivative and exchange in {Exchange.BSE, Exchange.BFO}:
        return Segment(exchange="BSE", dhan="BSE_FNO")
    if derivative and exchange is Exchange.MCX:
        return Segment(exchange="MCX", dhan="MCX_COMM")
    raise BrokerUnsupportedError(
        f"exchange {exchange} with instrument {instrument}: Dhan has no such segment "
        "(equity on NSE/BSE; futures and options on NSE/NFO, BSE/BFO, MCX)"
    )


@attrs.frozen(kw_only=True)
class PlaceOrder:
    """The arguments of `dhanhq.place_order`, in its own names; `kwargs()` is exactly what gets passed."""

    security_id: str
    exchange_segment: str
    transaction_type: str
    quantity: int
    order_type: str
    product_type: str
    price: float
    trigger_price: float
    after_market_order: bool
    amo_time: str
    validity: str
    tag: str
    trading_symbol: str
    lot_size: int

    def kwargs(self) -> dict[str, object]:
        return {
            "security_id": self.security_id,
            "exchange_segment": self.exchange_segment,
            "transaction_type": self.transaction_type,
            "quantity": self.quantity,
            "order_type": self.order_type,
            "product_type": self.product_type,
            "price": self.price,
            "trigger_price": self.trigger_price,
            "after_market_order": self.after_market_order,
            "amo_time": self.amo_time,
            "validity": self.validity,
            "tag": self.tag,
        }


def check_client_order_id(client_order_id: str) -> None:
    """The core promises Dhan's correlationId format; a broken promise is refused before anything is sent."""
    if not CLIENT_ORDER_ID.fullmatch(client_order_id):
        raise BrokerRejectedError(
            f"client_order_id {client_order_id!r} is not a valid Dhan correlationId (1-25 of A-Z a-z 0-9 _ -)"
        )


def listings_of(leg: OrderLeg, master: InstrumentMaster) -> Listings:
    """What the master lists for the leg's underlying (`Broker.listings()`): its futures' or options' expiries,
    and for an option leg naming its expiry and CE/PE, that expiry's strikes."""
    segment = segment_for(leg.exchange, leg.instrument)
    symbol = leg.symbol.strip().upper()
    continuous = _CONTINUOUS.fullmatch(symbol)
    if continuous:
        symbol = continuous["underlying"]
    if leg.instrument not in {Instrument.FUTURE, Instrument.OPTION, Instrument.CALL, Instrument.PUT}:
        raise BrokerRejectedError(f"instrument {leg.instrument}: only futures and options have expiries and strikes")
    options = leg.instrument is not Instrument.FUTURE
    expiries = master.expiries(segment.exchange, symbol, options=options)
    option_type = leg.option_type
    if option_type is None and leg.instrument in {Instrument.CALL, Instrument.PUT}:
        option_type = OptionType(leg.instrument.value)
    strikes: list[Decimal] = []
    if options and leg.expiry_date is not None and option_type is not None:
        strikes = master.strikes(segment.exchange, symbol, expiry=leg.expiry_date, option_type=option_type.value)
    return Listings(expiries=tuple(expiries), strikes=tuple(strikes))


def resolve_contract(leg: OrderLeg, master: InstrumentMaster, *, today: date) -> Contract:
    """The master row the leg means. `today` is the exchange's date (IST), for "nearest unexpired"."""
    segment = segment_for(leg.exchange, leg.instrument)
    symbol = leg.symbol.strip().upper()
    if not symbol:
        raise BrokerRejectedError("symbol: empty")
    if leg.instrument is Instrument.EQUITY:
        return master.equity(segment.exchange, symbol)
    if leg.instrument is Instrument.FUTURE:
        continuous = _CONTINUOUS.fullmatch(symbol)
        if continuous and leg.expiry_date is None:
            return master.future(
                segment.exchange, continuous["underlying"], today=today, expiry=None, nth=int(continuous["nth"])
            )
        return master.future(segment.exchange, symbol, today=today, expiry=leg.expiry_date)
    option_type = leg.option_type
    if option_type is None and leg.instrument in {Instrument.CALL, Instrument.PUT}:
        option_type = OptionType(leg.instrument.value)
    if option_type is None:
        raise BrokerRejectedError("option_type: required for options (CE or PE)")
    if leg.expiry_date is None:
        raise BrokerRejectedError("expiry_date: required for options (YYYY-MM-DD); the nearest expiry is not guessed")
    if leg.strike_price is None or leg.strike_price <= 0:
        raise BrokerRejectedError("strike_price: required for options and > 0")
    return master.option(
        segment.exchange, symbol, expiry=leg.expiry_date, strike=leg.strike_price, option_type=option_type.value
    )


def dhan_quantity(leg: OrderLeg, contract: Contract, segment: str) -> int:
    """The alert's quantity is always in **units** (shares; for derivatives contracts x lot size, e.g. 65 for one
    NIFTY lot of 65) and must be a whole number of lots. Units, not lots, because a wrong guess then fails safe:
    a trader who meant "1 lot" gets a refusal naming the lot size, whereas reading "65 units" as 65 lots would
    place 65 times the intended exposure. Dhan's API takes units for NSE_FNO/BSE_FNO and lots for MCX_COMM, so
    MCX quantities are divided by `SEM_LOT_UNITS` here."""
    if leg.quantity <= 0:
        raise BrokerRejectedError(f"quantity {leg.quantity}: must be a positive whole number")
    if leg.instrument is Instrument.EQUITY:
        return leg.quantity
    lots, rest = divmod(leg.quantity, contract.lot_size)
    if rest or lots == 0:
        raise BrokerRejectedError(
            f"quantity {leg.quantity}: must be a whole number of lots of {contract.lot_size} units for "
            f"{contract.trading_symbol} (quantity is in units: {contract.lot_size} = 1 lot; an account or leg"
            ' with quantity_unit = "lots" counts lots)'
        )
    return lots if segment in LOT_SEGMENTS else leg.quantity


def _check_product(leg: OrderLeg) -> None:
    allowed = EQUITY_PRODUCTS if leg.instrument is Instrument.EQUITY else DERIVATIVE_PRODUCTS
    if leg.product not in allowed:
        kind = "equity" if leg.instrument is Instrument.EQUITY else "futures and options"
        names = ", ".join(f"{p.value} ({PRODUCTS[p]})" for p in sorted(allowed))
        raise BrokerRejectedError(
            f"productType {leg.product} ({PRODUCTS[leg.product]}) is not valid for {kind}: use {names}"
        )


def _prices(leg: OrderLeg) -> tuple[Decimal | int, Decimal | int]:
    """(price, trigger price) as sent."""
    needs_price = leg.order_type in {OrderType.LIMIT, OrderType.STOP_LOSS}
    needs_trigger = leg.order_type in {OrderType.STOP_LOSS, OrderType.STOP_LOSS_MARKET}
    if needs_price and not leg.price.is_finite():  # first: comparing a NaN Decimal raises InvalidOperation
        raise BrokerRejectedError(f"price {leg.price}: not a number")
    if needs_price and leg.price <= 0:
        raise BrokerRejectedError(f"price {leg.price}: must be > 0 for orderType {leg.order_type}")
    trigger = leg.trigger_price
    if needs_trigger:
        if trigger is None or not trigger.is_finite() or trigger <= 0:
            raise BrokerRejectedError(f"triggerPrice: required and > 0 for orderType {leg.order_type}")
        if leg.order_type is OrderType.STOP_LOSS:
            if leg.side is Side.BUY and trigger > leg.price:
                raise BrokerRejectedError(
                    f"triggerPrice {trigger}: a buy stop-loss triggers at or below its price {leg.price}"
                )
            if leg.side is Side.SELL and trigger < leg.price:
                raise BrokerRejectedError(
                    f"triggerPrice {trigger}: a sell stop-loss triggers at or above its price {leg.price}"
                )
    return (leg.price if needs_price else 0), (trigger if needs_trigger and trigger is not None else 0)


def _amo(leg: OrderLeg) -> tuple[bool, str]:
    if leg.amo_time is None or not leg.amo_time.strip():
        return False, "OPEN"
    amo = leg.amo_time.strip().upper()
    if amo == "PRE_OPEN":
        raise BrokerUnsupportedError(
            "amoTime PRE_OPEN is not supported by the Dhan client (dhanhq 2.3): use OPEN, OPEN_30 or OPEN_60"
        )
    if amo not in AMO_TIMES:
        raise BrokerRejectedError(f"amoTime {leg.amo_time!r}: must be OPEN, OPEN_30 or OPEN_60")
    return True, amo


def build_place_order(leg: OrderLeg, contract: Contract, *, client_order_id: str) -> PlaceOrder:
    """Map a leg whose contract is resolved. Raises `BrokerRejectedError`/`BrokerUnsupportedError` naming the
    field; nothing has been sent when it does."""
    check_client_order_id(client_order_id)
    if leg.manage_position is not None:  # tvbridge sends EXIT_ALL as the plain closing order (tvbridge/positions.py)
        raise BrokerUnsupportedError(
            f"manage_position {leg.manage_position} reached the dhan broker unresolved: tvbridge turns it into the"
            " closing order before place(); nothing was sent"
        )
    segment = segment_for(leg.exchange, leg.instrument)
    _check_product(leg)
    price, trigger = _prices(leg)
    after_market, amo_time = _amo(leg)
    return PlaceOrder(
        security_id=contract.security_id,
        exchange_segment=segment.dhan,
        transaction_type=SIDES[leg.side],
        quantity=dhan_quantity(leg, contract, segment.dhan),
        order_type=ORDER_TYPES[leg.order_type],
        product_type=PRODUCTS[leg.product],
        price=float(price),
        trigger_price=float(trigger),
        after_market_order=after_market,
        amo_time=amo_time,
        validity="DAY",
        tag=client_order_id,
        trading_symbol=contract.trading_symbol,
        lot_size=contract.lot_size,
    )
