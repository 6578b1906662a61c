"""Part lots: a futures or options quantity that is not a whole number of lots is refused before anything is sent.

The alert's quantity is in units (docs: `dhan_quantity`); 100 with NIFTY's lot of 65 is one lot and 35 units
over, which Dhan would refuse at best and a wrong rounding would turn into another exposure. The refusal must
come from the mapping, for live and dry-run alike, with no request reaching the (fake) Dhan API; whole
multiples pass with the quantity Dhan expects (units on NSE/BSE F&O, lots on MCX).
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

import pytest
from dhan_support import leg, request

from tvbridge.broker import BrokerRejectedError, OrderState
from tvbridge.models import Exchange, Instrument, OptionType, Product

if TYPE_CHECKING:
    from dhan_support import MakeDhan
    from fake_dhan import FakeDhan

CONTRACTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "NIFTY future": (
        {"exchange": Exchange.NFO, "symbol": "NIFTY", "instrument": Instrument.FUTURE},
        65,
        "NIFTY-Dec2026-FUT",
    ),
    "NIFTY option": (
        {
            "exchange": Exchange.NFO,
            "symbol": "NIFTY",
            "instrument": Instrument.OPTION,
            "option_type": OptionType.CALL,
            "strike_price": "24000",
            "expiry_date": date(2026, 12, 29),
        },
        65,
        "NIFTY-Dec2026-24000-CE",
    ),
    "SENSEX future": (
        {"exchange": Exchange.BFO, "symbol": "SENSEX", "instrument": Instrument.FUTURE},
        20,
        "SENSEX-Dec2026-FUT",
    ),
    "CRUDEOIL option": (
        {
            "exchange": Exchange.MCX,
            "symbol": "CRUDEOIL",
            "instrument": Instrument.OPTION,
            "option_type": OptionType.CALL,
            "strike_price": "5500",
            "expiry_date": date(2026, 12, 16),
        },
        100,
        "CRUDEOIL-Dec2026-5500-CE",
    ),
}


def part_lots(lot: int) -> list[int]:
    """One lot and a part (100 with a lot of 65), a part alone, two lots less one unit, two lots and one unit."""
    return [lot + lot // 2 + 3, lot // 2, 2 * lot - 1, 2 * lot + 1]


@pytest.mark.parametrize("live", [True, False], ids=["live", "dry-run"])
@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=CONTRACTS.keys())
async def test_a_quantity_that_is_not_whole_lots_is_refused_before_sending(
    make_dhan: MakeDhan,
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    contract: tuple[dict[str, Any], int, str],
    *,
    live: bool,
) -> None:
    """Every part-lot quantity is refused with the lot size in the message; Dhan receives no order."""
    changes, lot, symbol = contract
    broker = await make_dhan({**dhan_settings, "live": live})
    for quantity in part_lots(lot):
        with pytest.raises(BrokerRejectedError) as caught:
            await broker.place(request(leg(**changes, quantity=quantity, product=Product.MARGIN)))
        assert str(caught.value) == (
            f"quantity {quantity}: must be a whole number of lots of {lot} units for {symbol}"
            f" (quantity is in units: {lot} = 1 lot;"
            ' an account or leg with quantity_unit = "lots" counts lots)'
        )
    assert fake_dhan.placed() == []


@pytest.mark.parametrize("live", [True, False], ids=["live", "dry-run"])
@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=CONTRACTS.keys())
async def test_whole_lots_pass(
    make_dhan: MakeDhan,
    dhan_settings: dict[str, object],
    fake_dhan: FakeDhan,
    contract: tuple[dict[str, Any], int, str],
    *,
    live: bool,
) -> None:
    """One lot and three lots are sent (live) or shown (dry-run) with Dhan's quantity: units, or lots on MCX."""
    changes, lot, symbol = contract
    broker = await make_dhan({**dhan_settings, "live": live})
    shown = []
    for n, lots in enumerate((1, 3), start=1):
        the_leg = leg(**changes, quantity=lots * lot, product=Product.MARGIN)
        result = await broker.place(request(the_leg, cid=f"A1B2C3-{n}"))
        assert result.state is (OrderState.PENDING if live else OrderState.DRY_RUN)
        if not live:  # dry-run shows what it would send
            assert result.details["trading_symbol"] == symbol
            place_order = result.details["place_order"]
            assert isinstance(place_order, dict)
            shown.append(place_order["quantity"])
    sent = [order["quantity"] for order in fake_dhan.placed()]
    per_lot = 1 if changes["exchange"] is Exchange.MCX else lot  # Dhan counts MCX in lots, the rest in units
    assert (sent if live else shown) == [per_lot, 3 * per_lot]
    assert not (shown if live else sent)
