"""Flatten an account: cancel its resting orders and close its open positions, after showing the plan.

Reading what is open needs more than the broker interface has (it places, cancels and looks up by client order
id): a broker that also offers `orders(resting_only=True)` and `positions()` (the paper broker does) can be
flattened here; for any other the plan says so and the trader uses the broker's own terminal.

Flatten is the emergency exit, so it works while trading is halted and is not held to the risk limits: closing
a position must never be refused by a limit meant to stop opening one. Closing orders are market orders with
client order ids `F<id>-<n>`, so running the same plan twice does not close twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import structlog

from tvbridge.broker import CancelRequest, OrderRequest
from tvbridge.middlewares.request_id import new_alert_id
from tvbridge.models import CancelLeg, OrderLeg, OrderType, Side

if TYPE_CHECKING:
    from tvbridge.broker import Broker

log = structlog.get_logger()


@attrs.frozen(kw_only=True)
class FlattenPlan:
    account: str
    cancels: tuple[tuple[str, str], ...] = ()
    """(order id, description) of each resting order to cancel."""
    closes: tuple[OrderLeg, ...] = ()
    unsupported: str = ""

    def lines(self) -> list[str]:
        if self.unsupported:
            return [self.unsupported]
        out = [
            f"account {self.account}: {len(self.cancels)} order(s) to cancel, {len(self.closes)} position(s) to close"
        ]
        out += [f"  cancel {order_id}: {what}" for order_id, what in self.cancels]
        out += [
            f"  close: {'SELL' if leg.side is Side.SELL else 'BUY'} {leg.quantity} {leg.exchange} {leg.symbol}"
            f" ({leg.product}) at market"
            for leg in self.closes
        ]
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "unsupported": self.unsupported or None,
            "cancel": [{"order_id": order_id, "order": what} for order_id, what in self.cancels],
            "close": [
                {"side": leg.side.value, "quantity": leg.quantity, "exchange": leg.exchange.value, "symbol": leg.symbol}
                for leg in self.closes
            ],
        }


async def make_plan(account: str, broker: Broker) -> FlattenPlan:
    """What flattening `account` would do; sends nothing."""
    orders, positions = getattr(broker, "orders", None), getattr(broker, "positions", None)
    if not callable(orders) or not callable(positions):
        return FlattenPlan(
            account=account,
            unsupported=f"account {account}: its broker plugin cannot list orders and positions through tvbridge;"
            " flatten it in the broker's own terminal",
        )
    cancels = tuple(
        (o.order_id, f"{o.side} {o.quantity} {o.exchange} {o.contract} {o.order_type} {o.price}")
        for o in await orders(resting_only=True)
    )
    closes = tuple(
        OrderLeg(
            side=Side.SELL if p.net_quantity > 0 else Side.BUY,
            order_type=OrderType.MARKET,
            quantity=abs(p.net_quantity),
            exchange=p.exchange,
            symbol=p.symbol,
            instrument=p.instrument,
            product=p.product,
            option_type=p.option_type,
            strike_price=p.strike_price,
            expiry_date=p.expiry_date,
        )
        for p in await positions()
        if p.net_quantity
    )
    return FlattenPlan(account=account, cancels=cancels, closes=closes)


async def execute(plan: FlattenPlan, broker: Broker) -> list[str]:
    """Carry the plan out; returns one line per action with the broker's answer. Errors are reported, not raised,
    so one refused cancel does not stop the positions from being closed."""
    if plan.unsupported:
        return [plan.unsupported]
    flatten_id = f"F{new_alert_id()}"
    out: list[str] = []
    for number, (order_id, _) in enumerate(plan.cancels, start=1):
        try:
            await broker.cancel(CancelRequest(alert_id=flatten_id, leg_number=number, leg=CancelLeg(order_id=order_id)))
            out.append(f"cancelled {order_id}")
        except Exception as e:  # noqa: BLE001 - reported to the operator, the rest goes on
            out.append(f"cancel {order_id} failed: {e}")
    for number, leg in enumerate(plan.closes, start=1):
        client_id = f"{flatten_id}-{number}"
        try:
            result = await broker.place(
                OrderRequest(client_order_id=client_id, alert_id=flatten_id, leg_number=number, leg=leg)
            )
            out.append(f"close {leg.symbol}: order {result.order_id} {result.state}")
        except Exception as e:  # noqa: BLE001 - reported to the operator, the rest goes on
            out.append(f"close {leg.symbol} failed: {e}")
    log.warning("account.flattened", account=plan.account, flatten_id=flatten_id, actions=out)
    return out
