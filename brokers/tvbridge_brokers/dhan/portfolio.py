"""Dhan's position and order-book rows -> the interface's `Position` and `OpenOrder`. Pure: no I/O, no client.

Dhan names a contract by `exchangeSegment` + `securityId`; the instrument master turns that back into what an
alert names (exchange, underlying, expiry, strike, CE/PE), so flatten can close a position with an ordinary leg
that `mapping.resolve_contract` resolves to the same security id. A security id the master does not list (a
stale master) is still reported, from Dhan's own `tradingSymbol` and `drv*` fields, so nothing open is hidden.

Quantities are Dhan's `netQty` / `quantity` as they come, read as units. Dhan's API counts MCX orders in lots
(`mapping.dhan_quantity`); if its positions count MCX in lots too, an MCX exit computed from them is not a whole
number of lots and is refused before sending, never sent oversized. Verify MCX on a small position first.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Final

from tvbridge.broker import OPEN_STATES, ContractId, OpenOrder, Position
from tvbridge.models import Exchange, Instrument, OptionType, OrderType, Product, Side
from tvbridge_brokers.dhan.instruments import EQUITY_NAMES, FUTURE_NAMES
from tvbridge_brokers.dhan.mapping import ORDER_TYPES, PRODUCTS, SIDES
from tvbridge_brokers.dhan.orders import order_state

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tvbridge_brokers.dhan.instruments import InstrumentMaster

SEGMENT_EXCHANGES: Final = {
    "NSE_EQ": (Exchange.NSE, "NSE"),
    "BSE_EQ": (Exchange.BSE, "BSE"),
    "NSE_FNO": (Exchange.NFO, "NSE"),
    "BSE_FNO": (Exchange.BFO, "BSE"),
    "MCX_COMM": (Exchange.MCX, "MCX"),
}
"""Dhan segment -> (the exchange an alert names, the master's `SEM_EXM_EXCH_ID`)."""
PRODUCT_OF: Final[Mapping[str, Product]] = {dhan: ours for ours, dhan in PRODUCTS.items()}
ORDER_TYPE_OF: Final[Mapping[str, OrderType]] = {dhan: ours for ours, dhan in ORDER_TYPES.items()}
SIDE_OF: Final[Mapping[str, Side]] = {dhan: ours for ours, dhan in SIDES.items()}
_OPTION_TYPES: Final = {"CALL": OptionType.CALL, "PUT": OptionType.PUT, "CE": OptionType.CALL, "PE": OptionType.PUT}


def _int(value: object) -> int:
    try:
        return int(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return 0


def _decimal(value: object) -> Decimal | None:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number > 0 else None


def _date(value: object) -> date | None:
    try:
        found = date.fromisoformat(str(value)[:10])
    except ValueError:
        return None
    return found if found.year > 1900 else None  # Dhan sends 0001-01-01 for "no expiry"


def contract_of(row: Mapping[str, object], master: InstrumentMaster) -> ContractId | None:
    """The contract of a Dhan position or order row; None for a segment tvbridge does not trade."""
    segment = str(row.get("exchangeSegment") or "").upper()
    if segment not in SEGMENT_EXCHANGES:
        return None
    exchange, master_exchange = SEGMENT_EXCHANGES[segment]
    security_id = str(row.get("securityId") or "").strip()
    trading_symbol = str(row.get("tradingSymbol") or "").strip()
    known = master.by_security_id(master_exchange, security_id)
    if known is not None:
        option_type = _OPTION_TYPES.get(known.option_type or "")
        if known.instrument_name in EQUITY_NAMES:
            instrument = Instrument.EQUITY
        elif known.instrument_name in FUTURE_NAMES:
            instrument = Instrument.FUTURE
        else:
            instrument = Instrument.OPTION
        return ContractId(
            exchange=exchange,
            symbol=known.underlying,
            instrument=instrument,
            option_type=option_type if instrument is Instrument.OPTION else None,
            strike_price=known.strike,
            expiry_date=known.expiry,
            security_id=security_id,
            trading_symbol=known.trading_symbol,
        )
    option_type = _OPTION_TYPES.get(str(row.get("drvOptionType") or "").upper())
    if segment.endswith("_EQ"):
        instrument = Instrument.EQUITY
    else:
        instrument = Instrument.OPTION if option_type is not None else Instrument.FUTURE
    return ContractId(
        exchange=exchange,
        symbol=trading_symbol.split("-", 1)[0].upper() if instrument is not Instrument.EQUITY else trading_symbol,
        instrument=instrument,
        option_type=option_type,
        strike_price=_decimal(row.get("drvStrikePrice")) if option_type is not None else None,
        expiry_date=_date(row.get("drvExpiryDate")) if instrument is not Instrument.EQUITY else None,
        security_id=security_id,
        trading_symbol=trading_symbol,
    )


def position_of(row: Mapping[str, object], master: InstrumentMaster) -> Position | str | None:
    """The position in a row of `get_positions`: None when flat, a reason (str) when it cannot be one (a
    product or segment tvbridge does not trade: it is logged, so an open position is never silently dropped)."""
    net = _int(row.get("netQty"))
    if net == 0:
        return None
    product = PRODUCT_OF.get(str(row.get("productType") or "").upper())
    contract = contract_of(row, master)
    if product is None or contract is None:
        return (
            f"position {row.get('tradingSymbol')} ({row.get('exchangeSegment')}, {row.get('productType')}) of"
            f" {net}: a segment or product tvbridge does not trade; close it in Dhan's terminal"
        )
    average = _decimal(row.get("buyAvg") if net > 0 else row.get("sellAvg")) or _decimal(row.get("costPrice"))
    details = {
        key: row[key]
        for key in ("tradingSymbol", "positionType", "realizedProfit", "unrealizedProfit", "buyQty", "sellQty")
        if key in row
    }
    return Position(contract=contract, product=product, net_quantity=net, average_price=average, details=details)


def open_order_of(row: Mapping[str, object], master: InstrumentMaster) -> OpenOrder | str | None:
    """The order in a row of `get_order_list` if it can still be cancelled, None if not, a reason (str) when it
    is open in a segment tvbridge does not trade (logged, never silently dropped)."""
    state = order_state(dict(row))
    order_id = str(row.get("orderId") or "")
    side = SIDE_OF.get(str(row.get("transactionType") or "").upper())
    if state not in OPEN_STATES or not order_id or side is None:
        return None
    contract = contract_of(row, master)
    if contract is None:
        return (
            f"open order {order_id} ({row.get('tradingSymbol')}, {row.get('exchangeSegment')}): a segment tvbridge"
            " does not trade; cancel it in Dhan's terminal"
        )
    return OpenOrder(
        order_id=order_id,
        state=state,
        contract=contract,
        side=side,
        quantity=_int(row.get("quantity")),
        product=PRODUCT_OF.get(str(row.get("productType") or "").upper()),
        order_type=ORDER_TYPE_OF.get(str(row.get("orderType") or "").upper()),
        filled_quantity=_int(row.get("filledQty")),
        price=_decimal(row.get("price")),
        trigger_price=_decimal(row.get("triggerPrice")),
        client_order_id=str(row.get("correlationId") or "") or None,
        details={"orderStatus": row.get("orderStatus"), "exchangeSegment": row.get("exchangeSegment")},
    )
