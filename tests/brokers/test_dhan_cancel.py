"""Cancelling on Dhan: by order id, or the open orders this account placed for a symbol."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from dhan_support import leg, request

from tvbridge.broker import BrokerRejectedError, CancelRequest, OrderState
from tvbridge.models import CancelLeg, Exchange, Side

if TYPE_CHECKING:
    from fake_dhan import FakeDhan

    from tvbridge_brokers.dhan import DhanBroker


def cancel(**fields: object) -> CancelRequest:
    return CancelRequest(alert_id="C1", leg_number=1, leg=CancelLeg(**fields))  # type: ignore[arg-type]


async def test_cancel_by_order_id(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """A cancel leg with Dhan's order id cancels that order and reports Dhan's CANCELLED."""
    placed = await dhan_live.place(request())

    results = await dhan_live.cancel(cancel(order_id=placed.order_id))

    assert [(r.order_id, r.state) for r in results] == [(placed.order_id, OrderState.CANCELLED)]
    assert [r.path for r in fake_dhan.requests if r.method == "DELETE"] == [f"/v2/orders/{placed.order_id}"]


async def test_cancel_by_symbol_touches_only_our_open_orders(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """By symbol (and side): only the open orders this account placed for it are cancelled; a traded one,
    another side and another symbol are left alone."""
    buy = await dhan_live.place(request(cid="C-1"))
    traded = await dhan_live.place(request(cid="C-2"))
    sell = await dhan_live.place(request(leg(side=Side.SELL), cid="C-3"))
    await dhan_live.place(request(leg(symbol="TCS"), cid="C-4"))
    assert traded.order_id is not None
    fake_dhan.set_status(traded.order_id, "TRADED")

    results = await dhan_live.cancel(cancel(symbol="reliance", exchange=Exchange.NSE, side=Side.BUY))

    assert [(r.order_id, r.state) for r in results] == [(buy.order_id, OrderState.CANCELLED)]
    assert fake_dhan.orders[str(sell.order_id)]["orderStatus"] == "PENDING"


async def test_cancel_of_a_filled_order_is_refused(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """Dhan refuses to cancel a traded order (DH-906) and the trader sees that refusal."""
    placed = await dhan_live.place(request())
    assert placed.order_id is not None
    fake_dhan.set_status(placed.order_id, "TRADED")

    with pytest.raises(BrokerRejectedError, match="DH-906"):
        await dhan_live.cancel(cancel(order_id=placed.order_id))


async def test_cancel_needs_an_order_id_or_a_symbol(dhan_live: DhanBroker) -> None:
    """An empty cancel leg is refused instead of cancelling everything."""
    with pytest.raises(BrokerRejectedError, match=r"^cancel_order needs an order_id or a symbol$"):
        await dhan_live.cancel(cancel())
