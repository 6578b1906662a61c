"""Lots or units: the quantity a broker receives, always in units, whatever the alert counted.

The guide's alerts and dhanhq count units (shares; for futures and options contracts x lot size), Dhan's own
TradingView panel counts lots (`"quantity": "1"` on NIFTY1! is one lot of 65). `[accounts.NAME] quantity_unit`
says which one an account's alerts use, and a leg's own `"quantity_unit"` overrides it. The conversion happens
here, in the host, before risk limits (which always count units) and before the broker: the response, the journal
and the order log then show the units sent.

Equity has a lot of 1 on every exchange tvbridge knows, so only futures and options need the lot size; it comes
from the broker's instrument master through the optional `instrument_info` capability (`tvbridge/broker.py`),
so the lot size is the very one the broker will check the order against. A broker that does not declare it cannot
take a derivative quantity in lots: the leg fails before sending, naming the capability.

Getting this wrong costs money in one direction: an account that counts lots receiving the guide's units would
trade 65 times the intended size on NIFTY. That is why `units` is the default and Dhan refuses a units quantity
that is not a whole number of lots (a trader who meant "1 lot" and sent `1` gets a refusal, not one share).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from tvbridge.broker import BrokerRejectedError, BrokerUnsupportedError
from tvbridge.models import Instrument, QuantityUnit

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tvbridge.broker import Broker
    from tvbridge.config import Config
    from tvbridge.models import OrderLeg


def unit_of(leg: OrderLeg, account_unit: QuantityUnit) -> QuantityUnit:
    """What the leg's quantity counts: its own `quantity_unit`, else the account's."""
    return leg.quantity_unit or account_unit


async def in_units(broker: Broker, leg: OrderLeg, account_unit: QuantityUnit) -> OrderLeg:
    """The leg with its quantity in units (and `quantity_unit` units), ready for risk limits and `place()`.

    Raises `BrokerUnsupportedError` when lots must be converted and the broker declares no `instrument_info`,
    `BrokerRejectedError` when the broker does not know the contract (its own message, the one `place()` would
    give) or reports a lot size below 1, and whatever `instrument_info()` raises otherwise. Nothing is sent."""
    if unit_of(leg, account_unit) is QuantityUnit.UNITS:
        return leg
    if leg.instrument is Instrument.EQUITY or leg.manage_position is not None:
        # equity: 1 lot = 1 share; an exit closes the open position whatever its quantity says
        return attrs.evolve(leg, quantity_unit=QuantityUnit.UNITS)
    if not broker.capabilities.instrument_info:
        msg = (
            f"quantity_unit lots: this broker cannot tell the lot size of {leg.symbol} (it does not declare the"
            " instrument_info capability; a paper account needs instruments_path): send the quantity in units"
        )
        raise BrokerUnsupportedError(msg)
    info = await broker.instrument_info(leg)
    if info.lot_size < 1:
        msg = f"quantity_unit lots: the broker reports lot size {info.lot_size} for {info.trading_symbol}"
        raise BrokerRejectedError(msg)
    return attrs.evolve(leg, quantity=leg.quantity * info.lot_size, quantity_unit=QuantityUnit.UNITS)


def instrument_warnings(config: Config, brokers: Mapping[str, Broker]) -> list[str]:
    """What `tvbridge check-config` warns about accounts whose broker knows no instrument master: a paper account
    then accepts any symbol and quantity (practice that does not predict Dhan), and an account counting lots can
    convert equity only."""
    warnings: list[str] = []
    for account, broker in brokers.items():
        if broker.capabilities.instrument_info:
            continue
        name = config.broker_of(account)
        if name == "paper":
            warnings.append(
                f"accounts.{account}: no instruments_path: this paper account accepts any symbol and any quantity,"
                " where Dhan refuses a symbol its instrument master does not list and a part lot; set"
                " instruments_path to the master your dhan account reads so paper refuses what Dhan would"
            )
        if config.quantity_unit(account) is QuantityUnit.LOTS:
            warnings.append(
                f'accounts.{account}: quantity_unit = "lots", but broker {name} declares no instrument_info (lot'
                " sizes): futures and options legs in lots will fail; equity works (1 lot = 1 share)"
            )
    return warnings
