"""How many units a leg sends: the account's `quantity_multiplier` and the leg's `quantity_type`.

`[accounts.NAME] quantity_multiplier` (default 1) scales every alert's quantity on that account (2 on the live
account, 1 on its paper shadow), and a target position too. A leg's `quantity_type` says what its `quantity` holds:

* `fixed` (default): the quantity, in the leg's unit (`lots.py`);
* `capital`: rupees to spend; units = quantity / price;
* `percent_of_funds`: a whole percentage of the account's available funds (`Broker.funds()`: Dhan's fund limits,
  paper's `funds` setting); units = funds x quantity / 100 / price;
* `risk`: rupees to risk; units = quantity / |price - triggerPrice| (the stop).

The result is multiplied, then rounded DOWN to whole lots (1 share for equity; for futures and options the lot
size from the broker's `instrument_info`). A result below one lot is refused with the numbers used, never rounded
up: the trader asked for less than the market sells. A fixed quantity with multiplier 1 is left exactly as sent
(a part lot in units is then refused by the broker, as before). Risk limits (`risk.py`) see the final quantity.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.broker import BrokerRejectedError, BrokerUnsupportedError
from tvbridge.lots import in_units, unit_of
from tvbridge.models import Instrument, MarketPosition, OrderLeg, QuantityType, QuantityUnit

if TYPE_CHECKING:
    from tvbridge.broker import Broker

ONE: Final = Decimal(1)


@attrs.frozen(kw_only=True)
class Sized:
    leg: OrderLeg
    """The leg with its quantity in units (a target leg: `position_size` in units, the target)."""
    note: str | None
    """How the quantity was computed, for the leg's message; None when the alert's quantity went out unchanged."""


def target_of(leg: OrderLeg) -> int:
    """The signed target a leg asks for, in the leg's own unit: `position_size`, else `market_position` with
    `market_position_size` (the parser refused legs where the two disagree)."""
    if leg.position_size is not None:
        return leg.position_size
    size = leg.market_position_size or 0
    return {MarketPosition.LONG: size, MarketPosition.SHORT: -size}.get(leg.market_position or MarketPosition.FLAT, 0)


async def _lot_size(broker: Broker, leg: OrderLeg) -> int:
    if leg.instrument is Instrument.EQUITY:
        return 1
    if not broker.capabilities.instrument_info:
        msg = (
            f"sizing {leg.symbol}: this broker cannot tell the lot size (it does not declare the instrument_info"
            " capability; a paper account needs instruments_path), so the quantity cannot be rounded to whole lots"
        )
        raise BrokerUnsupportedError(msg)
    info = await broker.instrument_info(leg)
    if info.lot_size < 1:
        raise BrokerRejectedError(f"sizing: the broker reports lot size {info.lot_size} for {info.trading_symbol}")
    return info.lot_size


def _whole_lots(units: Decimal, lot: int) -> int:
    """Towards zero, to a whole number of lots (a short target of -1.5 lots is -1 lot)."""
    lots = (abs(units) / lot).to_integral_value(rounding=ROUND_DOWN)
    return int(lots * lot) * (1 if units >= 0 else -1)


def _num(value: Decimal) -> str:
    return (
        format(value.quantize(Decimal("0.01")).normalize(), "f")
        if value != value.to_integral_value()
        else str(int(value))
    )


async def size(broker: Broker, leg: OrderLeg, account_unit: QuantityUnit, multiplier: Decimal) -> Sized:
    """The leg sized for this account. Raises `BrokerRejectedError` for a result below one lot (the numbers used
    in the message), `BrokerUnsupportedError` when the broker lacks what the sizing needs (`instrument_info` for
    lot sizes, `funds` for `percent_of_funds`); nothing is sent then."""
    if leg.position_size is not None or leg.market_position is not None:
        return await _size_target(broker, leg, account_unit, multiplier)
    kind = leg.quantity_type or QuantityType.FIXED
    if leg.manage_position is not None or (kind is QuantityType.FIXED and multiplier == ONE):
        # an exit closes the whole open position, whatever the account's multiplier
        return Sized(leg=await in_units(broker, leg, account_unit), note=None)
    lot = await _lot_size(broker, leg)
    base, how = await _base_units(broker, leg, kind, account_unit, lot)
    wanted = base * multiplier
    if multiplier != ONE:
        how += f" x quantity_multiplier {multiplier}"
    units = _whole_lots(wanted, lot)
    lot_text = f"one lot of {lot} units of {leg.symbol}" if lot > 1 else "one share"
    if units < max(lot, 1):
        msg = f"quantity_type {kind}: {how} = {_num(wanted)} units, below {lot_text}: not sent (never rounded up)"
        raise BrokerRejectedError(msg)
    note = f"sized: {how} = {_num(wanted)} units, rounded down to {units}"
    if lot > 1:
        note += f" ({units // lot} lot(s) of {lot})"
    sized = attrs.evolve(leg, quantity=units, quantity_unit=QuantityUnit.UNITS, quantity_type=None)
    return Sized(leg=sized, note=note)


async def _base_units(
    broker: Broker, leg: OrderLeg, kind: QuantityType, account_unit: QuantityUnit, lot: int
) -> tuple[Decimal, str]:
    """The quantity in units before the multiplier and rounding, and how it was computed."""
    if kind is QuantityType.FIXED:
        if unit_of(leg, account_unit) is QuantityUnit.LOTS:
            return Decimal(leg.quantity * lot), f"{leg.quantity} lot(s) of {lot}"
        return Decimal(leg.quantity), f"{leg.quantity} units"
    price = leg.price
    if kind is QuantityType.CAPITAL:
        return Decimal(leg.quantity) / price, f"capital {leg.quantity} / price {price}"
    if kind is QuantityType.PERCENT_OF_FUNDS:
        if not broker.capabilities.funds:
            msg = (
                "quantity_type percent_of_funds needs the broker capability `funds`, which this broker does not declare"
            )
            raise BrokerUnsupportedError(msg)
        funds = await broker.funds()
        amount = funds * leg.quantity / 100
        return amount / price, f"{leg.quantity}% of funds {funds} = {_num(amount)} / price {price}"
    stop = leg.trigger_price or Decimal(0)
    distance = abs(price - stop)
    return Decimal(leg.quantity) / distance, f"risk {leg.quantity} / |price {price} - stop {stop}| {distance}"


async def _size_target(broker: Broker, leg: OrderLeg, account_unit: QuantityUnit, multiplier: Decimal) -> Sized:
    """A target position in units: the leg's unit converted (lots x lot size) and the multiplier applied, rounded
    towards zero to whole lots; kept in `position_size`, with `market_position` folded into it."""
    target = target_of(leg)
    lots = unit_of(leg, account_unit) is QuantityUnit.LOTS and leg.instrument is not Instrument.EQUITY
    lot = await _lot_size(broker, leg) if lots or multiplier != ONE else 1
    units = Decimal(target * (lot if lots else 1)) * multiplier
    final = _whole_lots(units, lot)
    note = None
    if multiplier != ONE or lots:
        note = f"target {target}{' lot(s)' if lots else ''} x quantity_multiplier {multiplier} = {final} units"
        if final == 0 and target != 0:
            msg = f"{note}: below one lot of {lot} units of {leg.symbol}: not sent (never rounded up)"
            raise BrokerRejectedError(msg)
    sized = attrs.evolve(
        leg, position_size=final, market_position=None, market_position_size=None, quantity_unit=QuantityUnit.UNITS
    )
    return Sized(leg=sized, note=note)
